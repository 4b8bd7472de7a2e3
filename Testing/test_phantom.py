"""The procedural hand phantom: determinism, contrast physics, anatomy, landmarks, files and CLI."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from T1ToT2Lib.phantom import render as P
from T1ToT2Lib.cli import main
from T1ToT2Lib.io.files import read_volume

T = P.TISSUES
NAMES = ("left_t1", "left_t2", "left_t2_clean", "right_t1", "right_t2", "right_t2_clean", "left_labels", "right_labels")


@pytest.fixture(scope="module")
def hands():
    return P.make_phantom("small", seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The CLI's output for seed 0, written once for the file tests."""
    out = tmp_path_factory.mktemp("phantom") / "cli"
    code = main(["phantom", str(out), "--size", "small", "--seed", "0"])
    return code, out


def _label_at(labels_volume, point_ras):
    i, j, k = np.round(labels_volume.ras_to_ijk(point_ras)[0]).astype(int)
    return int(labels_volume.array[k, j, i])


def _medians(vol, labels, tissue):
    return float(np.median(vol.array[labels.array == T[tissue]]))


# --- determinism --------------------------------------------------------------------
def test_same_seed_gives_identical_arrays_and_other_seed_differs(hands):
    again = P.make_phantom("small", seed=0)
    for name in NAMES:
        assert np.array_equal(again[name].array, hands[name].array), name
        assert np.array_equal(again[name].ijk_to_ras, hands[name].ijk_to_ras)
    other = P.make_phantom("small", seed=1)
    assert not np.array_equal(other["left_labels"].array, hands["left_labels"].array)  # anatomy varies by seed
    assert not np.array_equal(other["left_t1"].array, hands["left_t1"].array)


def test_files_written_twice_are_byte_identical(written, tmp_path):
    code, first = written
    assert code == 0
    second = P.write_phantom(tmp_path / "again", size="small", seed=0)
    assert len(second) == 11  # 8 volumes, the two T1s' BIDS sidecars and landmarks.json
    for name, path in second.items():
        assert path.read_bytes() == (first / path.name).read_bytes(), name


# --- the property the paper hinges on --------------------------------------------------
def test_fat_and_cortex_dark_on_t1_but_fat_bright_on_t2(hands):
    for side in ("left", "right"):
        labels, t1, t2 = hands[f"{side}_labels"], hands[f"{side}_t1"], hands[f"{side}_t2"]
        muscle_t1 = _medians(t1, labels, "muscle")
        assert _medians(t1, labels, "subcutaneous_fat") < 0.4 * muscle_t1
        assert _medians(t1, labels, "cortical_bone") < 0.4 * muscle_t1
        assert _medians(t1, labels, "marrow") < 0.4 * muscle_t1
        fat_t2 = _medians(t2, labels, "subcutaneous_fat")
        assert fat_t2 > 2.0 * _medians(t2, labels, "muscle")
        assert _medians(t2, labels, "cortical_bone") < 0.35 * fat_t2
        assert _medians(t2, labels, "marrow") > 0.7 * fat_t2
        # Flow: vessels bright on VIBE, void on SPACE.
        assert _medians(t1, labels, "vessel") > muscle_t1
        assert _medians(t2, labels, "vessel") < 0.35 * fat_t2


def test_one_dark_t1_intensity_maps_to_two_very_different_t2_intensities(hands):
    labels, t1, t2 = hands["left_labels"], hands["left_t1"], hands["left_t2"]
    inside = labels.array > 0
    muscle_t1 = _medians(t1, labels, "muscle")
    fat_t2 = _medians(t2, labels, "subcutaneous_fat")
    # Every voxel of the hand that is dark on VIBE (fat, marrow, cortex, some tendon) ...
    band = inside & (t1.array < 0.25 * muscle_t1)
    assert band.sum() > 5000
    t2_in_band = t2.array[band]
    dark = np.mean(t2_in_band < 0.3 * fat_t2)
    bright = np.mean(t2_in_band > 0.7 * fat_t2)
    # ... is clearly dark or clearly bright on SPACE: two populations, so T2 is not a function of T1.
    assert dark > 0.05 and bright > 0.5
    assert np.std(t2_in_band) > 0.25 * fat_t2
    # Where the fat and the cortex/tendon populations meet, one narrow T1 bin holds both.
    narrow = inside & (np.abs(t1.array - 0.1375 * muscle_t1) < 0.0125 * muscle_t1)
    assert narrow.sum() > 500
    assert np.mean(t2.array[narrow] < 0.3 * fat_t2) > 0.1 and np.mean(t2.array[narrow] > 0.7 * fat_t2) > 0.1


def test_signal_equations_follow_the_physics():
    # The spoiled gradient echo peaks at the Ernst angle arccos(exp(-TR/T1)).
    flips = np.linspace(1.0, 40.0, 391)
    signal = P.vibe_signal(1420.0, 32.0, 0.8, flip_deg=flips)
    ernst = np.degrees(np.arccos(np.exp(-P.VIBE["TR"] / 1420.0)))
    assert abs(flips[np.argmax(signal)] - ernst) < 0.15
    # Water excitation leaves only the fat residual.
    assert P.vibe_signal(382.0, 68.0, 0.9, fat=True) == pytest.approx(0.1 * P.vibe_signal(382.0, 68.0, 0.9))
    # Longer TE on SPACE darkens short-T2 tissue; full recovery when TR >> T1.
    assert P.space_signal(1000.0, 30.0, 1.0) < P.space_signal(1000.0, 300.0, 1.0)
    assert P.space_signal(10.0, 1e9, 0.7) == pytest.approx(0.7)


# --- anatomy and geometry ------------------------------------------------------------------
def test_every_tissue_is_present_and_bones_have_cortex_around_marrow(hands):
    from scipy import ndimage

    for side in ("left", "right"):
        lab = hands[f"{side}_labels"].array
        present = set(np.unique(lab).astype(int))
        assert set(T.values()) <= present, set(T.values()) - present
        marrow = lab == T["marrow"]
        # Marrow is wrapped in cortex: its outer rim touches cortical bone or cartilage/joint, never fat.
        rim = ndimage.binary_dilation(marrow) & ~marrow
        neighbours = np.bincount(lab[rim].astype(int), minlength=len(T))
        # (1.5 mm voxels lose some of the thin subchondral plate at the bone ends to partial volume.)
        assert neighbours[T["cortical_bone"]] > 0.75 * neighbours.sum()
        assert neighbours[T["subcutaneous_fat"]] < 0.15 * neighbours.sum()


def test_hands_are_mirrored_but_not_identical(hands):
    left, right = hands["left_labels"], hands["right_labels"]
    assert left.same_geometry(hands["left_t1"]) and left.same_geometry(hands["left_t2"])
    assert right.same_geometry(hands["right_t1"]) and right.same_geometry(hands["right_t2"])
    # Left hand on the patient's left (R < 0), right hand on the right.
    assert left.ijk_to_ras_points([[left.shape[2] - 1, 0, 0]])[0, 0] < 0 < right.origin[0]
    bone = lambda a: np.isin(a, (T["cortical_bone"], T["marrow"]))  # noqa: E731
    mirrored = bone(right.array[:, :, ::-1])
    overlap = 2 * (bone(left.array) & mirrored).sum() / (bone(left.array).sum() + mirrored.sum())
    assert overlap > 0.6  # one anatomy...
    assert np.mean(left.array != right.array[:, :, ::-1]) > 0.005  # ...with natural differences
    # Thumbs point to the midline: +R on the left hand, -R on the right.
    marks = P.landmarks("small", 0)
    for side, sign in (("left", 1), ("right", -1)):
        vol = hands[f"{side}_labels"]
        hand_centre_r = vol.ijk_to_ras_points(np.argwhere(vol.array > 0)[:, ::-1].mean(axis=0))[0, 0]
        thumb_r = np.mean(marks[side]["thumb_metacarpal_profile"], axis=0)[0]
        assert sign * (thumb_r - hand_centre_r) > 10


def test_sizes_and_unknown_size():
    assert P.grid_shape("small") == (196, 30, 89)
    assert P.grid_shape("full") == (491, 76, 223)
    with pytest.raises(P.T1ToT2Error, match="unknown phantom size"):
        P.make_phantom("medium")


# --- landmarks -------------------------------------------------------------------------------
def test_occlusion_points_lie_in_their_tissues(hands):
    marks = P.landmarks("small", 0)
    for side in ("left", "right"):
        for tissue, point in marks[side]["occlusion_points"].items():
            assert _label_at(hands[f"{side}_labels"], point) == T[tissue], (side, tissue)


def test_thumb_profile_crosses_fat_cortex_marrow_cortex_fat(hands):
    marks = P.landmarks("small", 0)
    for side in ("left", "right"):
        labels = hands[f"{side}_labels"]
        a, b = np.asarray(marks[side]["thumb_metacarpal_profile"])
        samples = [_label_at(labels, a + t * (b - a)) for t in np.linspace(0, 1, 400)]
        runs = [v for n, v in enumerate(samples) if n == 0 or v != samples[n - 1]]
        fat, cortex, marrow = T["subcutaneous_fat"], T["cortical_bone"], T["marrow"]
        assert runs[0] == fat and runs[-1] == fat, runs
        assert [v for v in runs if v in (fat, cortex, marrow)] == [fat, cortex, marrow, cortex, fat], runs
        assert _label_at(labels, (a + b) / 2) == marrow  # centred on the shaft
        assert 10 < np.linalg.norm(b - a) < 30


# --- acquisition effects ---------------------------------------------------------------------------
def test_bias_field_is_smooth_and_bounded():
    field = P.bias_field((40, 20, 30), np.random.default_rng(3))
    assert np.exp(-P.BIAS_AMPLITUDE) - 1e-6 <= field.min() and field.max() <= np.exp(P.BIAS_AMPLITUDE) + 1e-6
    assert field.max() - field.min() > 0.1
    assert max(np.abs(np.diff(field, axis=a)).max() for a in range(3)) < 0.05


def test_rician_noise_floor_of_empty_signal():
    noise = P.rician(np.zeros((50, 50, 50), np.float32), 10.0, np.random.default_rng(0))
    assert noise.min() >= 0
    assert noise.mean() == pytest.approx(10.0 * np.sqrt(np.pi / 2), rel=0.02)


def test_rigid_move_translates_content_by_the_given_millimetres():
    image = np.zeros((20, 20, 20), np.float32)
    image[8:12, 8:12, 8:12] = 1.0
    moved = P._move_image(image, np.eye(3), shift_mm=(3.0, 0.0, -1.5), spacing=1.5)  # (x, y, z) mm
    com = lambda a: np.array(np.nonzero(a > 0.5)).mean(axis=1)  # noqa: E731
    assert np.allclose(com(moved) - com(image), [-1.0, 0.0, 2.0])  # (k, j, i) voxels


def test_misregistration_moves_t2_against_t1_and_is_recorded(hands):
    moved = P.make_phantom("small", seed=0, misregistration=True)
    motion = moved["left_t2"].meta["misregistration"]
    assert np.all(np.abs(motion["rotation_deg_xyz"]) <= P.MISREGISTRATION[0])
    assert np.any(np.abs(motion["translation_mm_xyz"]) > 0.05)
    assert np.array_equal(moved["left_labels"].array, hands["left_labels"].array)
    # T2 no longer lines up as well with the T1-space labels: bright T2 inside marrow drops.
    marrow = hands["left_labels"].array == T["marrow"]
    assert moved["left_t2"].array[marrow].mean() < hands["left_t2"].array[marrow].mean()


# --- files and command line ------------------------------------------------------------------------
def test_cli_writes_its_files_with_the_returned_geometry_labelled_synthetic(written, hands, capsys):
    code, out = written
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"{n}.nii.gz" for n in NAMES] + ["landmarks.json", "left_t1.json", "right_t1.json"])
    for side in ("left", "right"):  # each T1's VIBE, read back from its BIDS sidecar
        assert read_volume(out / f"{side}_t1.nii.gz").meta["sequence_parameters"] == {"TR": P.VIBE["TR"], "TE": P.VIBE["TE"],
                                                                                     "flip_deg": P.VIBE["flip_deg"]}
    for name in NAMES:
        vol = read_volume(out / f"{name}.nii.gz")
        assert vol.same_geometry(hands[name], tol=1e-5), name
        assert np.array_equal(vol.array, hands[name].array), name
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(out / f"{name}.nii.gz"))
        reader.ReadImageInformation()
        assert "SYNTHETIC" in reader.GetMetaData("descrip")
    info = json.loads((out / "landmarks.json").read_text())
    assert info["synthetic"] is True and info["seed"] == 0
    assert info["landmarks"] == P.landmarks("small", 0)
    # The file is what `analyze occlusion --landmarks` and `analyze profile` read as it is.
    from T1ToT2Lib.research.analysis import landmark_entry

    assert landmark_entry(out / "landmarks.json", "right", "occlusion_points") == P.landmarks("small", 0)["right"]["occlusion_points"]


def test_cli_bad_size_is_a_one_line_error(tmp_path, capsys):
    code = main(["phantom", str(tmp_path / "x"), "--size", "huge"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "unknown phantom size 'huge'" in err and "small" in err and "full" in err
    assert not (tmp_path / "x").exists()


def test_clean_t2_is_the_acquired_t2_without_noise_and_coil_field(hands):
    """The oracle differs from the acquired T2 only by a smooth field and zero-mean-ish noise."""
    from scipy import ndimage

    for side in ("left", "right"):
        clean, acquired = hands[f"{side}_t2_clean"].array, hands[f"{side}_t2"].array
        assert hands[f"{side}_t2_clean"].same_geometry(hands[f"{side}_t2"], tol=0)
        bright = clean > 300
        ratio = acquired[bright] / clean[bright]
        # Multiplicative coil field within 1 +- BIAS_AMPLITUDE (plus noise), never a different image.
        assert abs(np.median(ratio) - 1) < P.BIAS_AMPLITUDE
        residual = acquired - clean * ndimage.gaussian_filter(np.where(bright, acquired / np.maximum(clean, 1), 1), 8)
        # Background of the clean render is exactly zero; the acquired one holds only Rician noise there.
        air = hands[f"{side}_labels"].array == 0
        assert np.all(clean[air & (ndimage.binary_dilation(~air, iterations=2) == 0)] == 0)
        assert np.std(residual[bright]) < 3 * P.NOISE_SIGMA
