"""Acquisition randomization of the phantom: chosen or drawn voxel size, noise, coil field, sequence, field of view
and pose; recorded in landmarks.json and reproducible from the seed."""

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from T1ToT2Lib.cli import main
from T1ToT2Lib.io.files import read_volume
from T1ToT2Lib.phantom import render as P

T = P.TISSUES
#: Coarse voxels keep these renders to a second or two; the checks do not depend on the size.
COARSE = dict(voxel_mm=(2.5, 3.0, 2.0), fov_mm=(270.0, 48.0, 130.0))


def _principal_angle(mask_sr: np.ndarray) -> float:
    """Angle (degrees) of the main axis of a 2-D mask (S rows, R columns) from the S axis."""
    s, r = np.nonzero(mask_sr)
    cov = np.cov(np.vstack([s - s.mean(), r - r.mean()]))
    w, v = np.linalg.eigh(cov)
    axis = v[:, np.argmax(w)]
    return float(np.degrees(np.arctan2(axis[1], axis[0])) % 180.0)


def test_random_acquisition_is_a_function_of_the_seed_and_stays_in_its_ranges():
    draws = [P.random_acquisition(seed) for seed in range(40)]
    assert P.random_acquisition(7).record() == draws[7].record()
    assert len({json.dumps(d.record(), sort_keys=True) for d in draws}) == 40
    r = P.RANDOM_RANGES
    for d in draws:
        assert all(r["voxel_mm"][0] <= v <= r["voxel_mm"][1] for v in d.voxel_mm)
        assert d.voxel_mm[1] >= d.voxel_mm[0]  # slices (A) at least as thick as the in-plane voxels
        assert r["noise_factor"][0] * P.NOISE_SIGMA <= d.noise_sigma <= r["noise_factor"][1] * P.NOISE_SIGMA
        assert r["vibe_TE"][0] <= d.vibe["TE"] < d.vibe["TR"] <= r["vibe_TR"][1]
        assert r["space_TE"][0] <= d.space["TE"] < d.space["TR"] <= r["space_TR"][1]
        assert all(abs(a) <= m for a, m in zip(d.pose_deg, r["pose_deg"]))
    # Anisotropic voxels and both ends of the voxel range are actually drawn.
    assert any(d.voxel_mm[1] > 1.2 * d.voxel_mm[0] for d in draws)
    assert min(d.voxel_mm[0] for d in draws) < 0.7 and max(d.voxel_mm[0] for d in draws) > 1.3


def test_chosen_grid_is_the_volumes_geometry_and_is_recorded():
    acq = P.Acquisition(**COARSE)
    vols = P.make_phantom("small", seed=2, acquisition=acq)
    expected_shape = tuple(int(round(f / s)) for f, s in zip((270.0, 48.0, 130.0), (2.0, 3.0, 2.5)))
    for name, vol in vols.items():
        assert vol.shape == expected_shape, name
        assert np.allclose(vol.spacing, (2.5, 3.0, 2.0)), name
        assert vol.meta["acquisition"]["voxel_mm_RAS"] == [2.5, 3.0, 2.0]
    again = P.make_phantom("small", seed=2, acquisition=P.Acquisition(**COARSE))
    assert all(np.array_equal(vols[k].array, again[k].array) for k in vols)


def test_noise_level_sets_the_rayleigh_floor_of_the_air():
    # Air is signal-free: Rician magnitude of zero signal is Rayleigh, mean sigma * sqrt(pi / 2).
    for sigma in (5.0, 30.0):
        vols = P.make_phantom("small", seed=1, acquisition=P.Acquisition(**COARSE, noise_sigma=sigma))
        # Air well away from the hand: partial volume at the skin puts some signal into label-0 voxels.
        air = ndimage.binary_erosion(vols["left_labels"].array == 0, iterations=3)
        for name in ("left_t1", "left_t2"):
            mean = float(vols[name].array[air].mean())
            assert abs(mean - sigma * np.sqrt(np.pi / 2)) < 0.06 * sigma * np.sqrt(np.pi / 2), (sigma, name, mean)


def test_sequence_parameters_change_contrast_as_the_signal_equation_says():
    # A shorter VIBE TE leaves more of the short-T2* tendon: tendon/muscle grows by exp(dTE/T2*_tendon - dTE/T2*_muscle).
    p = P.TISSUE_PROPERTIES
    ratio = lambda lut: lut[T["tendon"]] / lut[T["muscle"]]  # noqa: E731
    long_te, _ = P.tissue_signals({"TE": 6.0})
    short_te, _ = P.tissue_signals({"TE": 3.0})
    expected = np.exp(3.0 / p["tendon"]["T2star"] - 3.0 / p["muscle"]["T2star"])
    assert ratio(short_te) / ratio(long_te) == pytest.approx(expected, rel=1e-4)
    # A longer SPACE TE darkens muscle against fluid: exp(-dTE (1/T2_muscle - 1/T2_fluid)).
    _, te100 = P.tissue_signals(space={"TE": 100.0})
    _, te140 = P.tissue_signals(space={"TE": 140.0})
    m, f = p["muscle"]["T2_space"], p["synovial_fluid"]["T2_space"]
    got = (te140[T["muscle"]] / te140[T["synovial_fluid"]]) / (te100[T["muscle"]] / te100[T["synovial_fluid"]])
    assert got == pytest.approx(np.exp(-40.0 * (1 / m - 1 / f)), rel=1e-4)


def test_pose_turns_the_hand_and_its_landmarks_with_it():
    straight = P.make_phantom("small", seed=0, acquisition=P.Acquisition(**COARSE))
    turned_acq = P.Acquisition(**{**COARSE, "fov_mm": (270.0, 48.0, 170.0)}, pose_deg=(0.0, 12.0, 0.0))
    turned = P.make_phantom("small", seed=0, acquisition=turned_acq)
    # Rotating about the volar (y) axis turns the hand within the coronal (S, R) plane by that angle.
    project = lambda v: (v["left_labels"].array > 0).any(axis=1)  # noqa: E731
    change = (_principal_angle(project(turned)) - _principal_angle(project(straight)) + 90) % 180 - 90
    assert abs(abs(change) - 12.0) < 2.5, change
    marks, unposed = P.landmarks("small", 0, turned_acq), P.landmarks("small", 0)
    for side in ("left", "right"):
        labels = turned[f"{side}_labels"]
        # The forearm points lie ~110 mm below the centre of rotation: a 12 degree turn moves them ~23 mm.
        moved = np.subtract(marks[side]["occlusion_points"]["muscle"], unposed[side]["occlusion_points"]["muscle"])
        assert np.linalg.norm(moved) > 15.0
        for tissue, allowed in (("muscle", {"muscle"}), ("subcutaneous_fat", {"subcutaneous_fat"}), ("marrow", {"marrow", "cortical_bone"})):
            i, j, k = np.round(labels.ras_to_ijk(marks[side]["occlusion_points"][tissue])[0]).astype(int)
            assert int(labels.array[k, j, i]) in {T[a] for a in allowed}, (side, tissue)


def test_a_posed_acquisition_widens_its_field_of_view_to_hold_the_turned_hand():
    from T1ToT2Lib.research.robustness import OBLIQUE_POSE as pose

    square = P.Acquisition(**COARSE)
    for acquisition, holds in ((P.posed(square, pose), True), (P.Acquisition(**COARSE, pose_deg=pose), False)):
        hands = P.make_phantom("small", seed=0, acquisition=acquisition)
        cut = [P.tissue_on_side_faces(hands[f"{side}_labels"].array) for side in ("left", "right")]
        assert (max(cut) == 0) == holds, (pose, acquisition.fov_mm, cut)
    assert P.posed(square, pose).pose_deg == pose


def test_cli_subjects_randomized_are_recorded_reproducible_and_listed_in_pairs_csv(tmp_path, capsys):
    args = ["--subjects", "2", "--seed", "4", "--randomize", "--voxel-mm", "2.5,3,2", "--fov", "270,48,130"]
    assert main(["phantom", str(tmp_path / "a"), *args]) == 0
    assert main(["phantom", str(tmp_path / "b"), *args]) == 0
    with open(tmp_path / "a" / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["t1"] for r in rows] == ["subject_004/left_t1.nii.gz", "subject_004/right_t1.nii.gz",
                                       "subject_005/left_t1.nii.gz", "subject_005/right_t1.nii.gz"]
    for seed in (4, 5):
        info = json.loads((tmp_path / "a" / f"subject_{seed:03d}" / "landmarks.json").read_text())
        drawn = P.random_acquisition(seed).record()
        acq = info["acquisition"]
        # Chosen values win; everything not chosen is the seed's draw.
        assert acq["voxel_mm_RAS"] == [2.5, 3.0, 2.0] and acq["fov_mm_SAR"] == [270.0, 48.0, 130.0]
        for key in ("noise_sigma", "bias_amplitude", "vibe", "space", "pose_deg_xyz"):
            assert acq[key] == drawn[key], key
        assert info["sequences"]["T1 VIBE"]["TR"] == pytest.approx(drawn["vibe"]["TR"], abs=1e-6)
        t1 = read_volume(tmp_path / "a" / f"subject_{seed:03d}" / "right_t1.nii.gz")
        assert np.allclose(t1.spacing, acq["voxel_mm_RAS"], atol=1e-5)
        # The drawn VIBE also sits beside the T1 as a BIDS sidecar (seconds, degrees), which read_volume reads back.
        sidecar = json.loads((tmp_path / "a" / f"subject_{seed:03d}" / "right_t1.json").read_text())
        assert sidecar["RepetitionTime"] * 1000 == pytest.approx(drawn["vibe"]["TR"], abs=1e-5)
        assert sidecar["EchoTime"] * 1000 == pytest.approx(drawn["vibe"]["TE"], abs=1e-5)
        assert sidecar["FlipAngle"] == pytest.approx(drawn["vibe"]["flip_deg"], abs=1e-5)
        assert t1.meta["sequence_parameters"] == pytest.approx({"TR": drawn["vibe"]["TR"], "TE": drawn["vibe"]["TE"],
                                                                "flip_deg": drawn["vibe"]["flip_deg"]}, abs=1e-5)
        for name in ("left_t1.nii.gz", "left_t1.json", "right_t2.nii.gz", "landmarks.json"):
            first = (tmp_path / "a" / f"subject_{seed:03d}" / name).read_bytes()
            assert first == (tmp_path / "b" / f"subject_{seed:03d}" / name).read_bytes(), name


@pytest.mark.parametrize("option,value", [("--voxel-mm", "1,2"), ("--pose", "0,100,0"), ("--vibe", "5,8,10"), ("--noise", "-1")])
def test_cli_bad_acquisition_is_a_one_line_error(tmp_path, capsys, option, value):
    code = main(["phantom", str(tmp_path / "x"), option, value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
