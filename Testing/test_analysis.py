"""Analyses against analytic answers: profiles through a ramp and a sphere, an exact one-to-one look-up,
a box-filter model's occlusion curve; outputs keep geometry and errors are one line."""

import json

import numpy as np
import pytest
import torch
from conftest import oblique_direction

from T1ToT2Lib.research import analysis
from T1ToT2Lib.core import metrics
from T1ToT2Lib.cli import main
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.modelfile import LoadedModel
from T1ToT2Lib.networks.lookup import LookupTranslator
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import read_volume, write_volume


def _ras_grid(volume):
    k, j, i = np.indices(volume.shape)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    return volume.ijk_to_ras_points(ijk).reshape(volume.shape + (3,))


def _ramp(r, a, s):
    return 2.0 * r - a + 0.5 * s + 10.0


def test_profile_through_a_linear_ramp_matches_the_ramp_on_an_oblique_grid():
    geometry = Volume.from_geometry(np.zeros((30, 34, 38)), spacing=(0.7, 0.9, 1.3), origin=(-12, 5, 30), direction=oblique_direction())
    ras = _ras_grid(geometry)
    ramp = geometry.with_array(_ramp(ras[..., 0], ras[..., 1], ras[..., 2]))
    centre = geometry.ijk_to_ras_points([[19, 17, 15]])[0]
    points = np.array([centre + [-6, -4, 2], centre, centre + [5, 6, -3]])
    distances, profiles = analysis.line_profile({"ramp": ramp, "double": ramp.with_array(2 * ramp.array)}, points)

    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert distances[0] == 0 and distances[-1] == pytest.approx(lengths.sum())
    assert np.diff(distances).max() <= 0.35 + 1e-9  # half the smallest spacing
    samples, _ = analysis.polyline_samples(points, 0.35)
    expected = _ramp(samples[:, 0], samples[:, 1], samples[:, 2])
    np.testing.assert_allclose(profiles["ramp"], expected, atol=1e-3)
    np.testing.assert_allclose(profiles["double"], 2 * expected, atol=2e-3)
    assert np.nanmax(np.abs(analysis.normalise_profile(profiles["ramp"]))) == pytest.approx(1.0)


def test_profile_through_a_sphere_crosses_half_height_at_its_radius():
    spacing = (0.6, 0.6, 0.8)
    geometry = Volume.from_geometry(np.zeros((40, 48, 48)), spacing=spacing, origin=(0, 0, 0))
    ras = _ras_grid(geometry)
    centre, radius = np.array([14.0, 14.5, 15.5]), 8.0
    sphere = geometry.with_array((np.linalg.norm(ras - centre, axis=-1) <= radius).astype(np.float32))
    start, end = centre - [13, 0, 0], centre + [13, 0, 0]
    distances, profiles = analysis.line_profile({"sphere": sphere}, [start, end])
    values = profiles["sphere"]
    inside = distances[values >= 0.5]
    assert values[np.argmin(np.abs(distances - 13))] == pytest.approx(1.0)
    assert values[0] == 0 and values[-1] == 0
    assert abs((13 - inside.min()) - radius) <= max(spacing) and abs((inside.max() - 13) - radius) <= max(spacing)
    # Outside the volume the profile is NaN, not a clamped edge value.
    _, outside = analysis.line_profile({"sphere": sphere}, [[-50, 10, 10], [-40, 10, 10]])
    assert np.isnan(outside["sphere"]).all()


def _tissue_volume(t1_of, t2_of, shape=(12, 40, 40), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    zz, yy, xx = np.indices(shape)
    for label in range(1, len(t1_of)):
        cy, cx, r = rng.integers(8, 32), rng.integers(8, 32), rng.integers(4, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = label
    labels[:, :3] = 0
    geometry = Volume.from_geometry(np.zeros(shape), spacing=(0.6, 0.6, 1.0))
    t1 = geometry.with_array(np.take(np.asarray(t1_of, float), labels))
    t2 = geometry.with_array(np.take(np.asarray(t2_of, float), labels))
    return t1, t2, labels


def _apply_lookup(config, state, t1):
    from T1ToT2Lib.inference.slices import foreground_scale

    module = LookupTranslator(config)
    module.load_state_dict(state)
    x = torch.from_numpy(t1.array / foreground_scale(t1.array))[:, None]
    with torch.no_grad():
        return module(torch.cat([x, x, x], dim=1))[:, 0].numpy()  # 2.5D input: the centre channel is used


def test_lookup_reproduces_a_one_to_one_mapping_exactly():
    # Non-monotonic but one-to-one: every T1 value has exactly one T2 value.
    t1, t2, _ = _tissue_volume([0, 200, 350, 500, 800, 1000], [0, 900, 100, 600, 300, 50])
    config, state, t2_scale = analysis.fit_lookup(t1, t2, bins=64)
    assert config["arch"] == "lookup" and state["table"].shape == (64,)
    predicted = _apply_lookup(config, state, t1) * t2_scale
    np.testing.assert_allclose(predicted, t2.array, atol=1e-3 * t2.array.max())
    # A continuous one-to-one map (linear) is reproduced everywhere between the first and last knots
    # (outside them the table holds its end values).
    ramp = t1.with_array(np.linspace(0, 1000, t1.array.size).reshape(t1.shape))
    config, state, t2_scale = analysis.fit_lookup(ramp, ramp.with_array(3 * ramp.array + 5), bins=32)
    inside = (ramp.array >= 30) & (ramp.array <= 970)  # beyond the outermost bins' mean T1 values
    predicted = _apply_lookup(config, state, ramp) * t2_scale
    np.testing.assert_allclose(predicted[inside], 3 * ramp.array[inside] + 5, rtol=1e-4, atol=0.05)


def test_lookup_fails_where_one_t1_value_has_two_t2_values():
    # Fat (label 1) and cortical bone (label 2) are equally dark on T1, but fat is bright on T2.
    t1, t2, labels = _tissue_volume([0, 120, 120, 700], [0, 900, 10, 300], seed=4)
    config, state, t2_scale = analysis.fit_lookup(t1, t2, bins=64)
    predicted = t1.with_array(_apply_lookup(config, state, t1) * t2_scale)
    both = np.isin(labels, (1, 2))
    errors = np.abs(predicted.array - t2.array)[both]
    assert errors.max() > 0.5 * t2.array.max()  # one of the two tissues is necessarily wrong
    good = metrics.evaluate_volumes(t2.with_array(t2.array), t2, planes=("axial",))
    bad = metrics.evaluate_volumes(predicted, t2, planes=("axial",))
    assert good["overall"]["ssim"]["mean"] == pytest.approx(1.0)
    assert bad["overall"]["ssim"]["mean"] < 0.9


def test_lookup_on_the_phantom_is_worse_than_on_a_one_to_one_copy():
    from T1ToT2Lib.phantom.render import make_phantom

    vols = make_phantom(size="small", seed=0)
    left_t1, left_t2, right_t1, right_t2 = vols["left_t1"], vols["left_t2"], vols["right_t1"], vols["right_t2"]
    mask = metrics.foreground_mask(vols["right_labels"])
    config, state, t2_scale = analysis.fit_lookup(left_t1, left_t2, bins=128, mask=vols["left_labels"].array > 0)
    predicted = right_t1.with_array(_apply_lookup(config, state, right_t1) * t2_scale)
    scores = metrics.evaluate_volumes(predicted, right_t2, mask=mask)
    assert scores["overall"]["ssim"]["mean"] < 0.85


def test_lookup_model_file_runs_through_synthesize(tmp_path):
    from T1ToT2Lib.inference import synthesize
    from T1ToT2Lib.networks.modelfile import load_model, read_metadata

    t1, t2, _ = _tissue_volume([0, 200, 350, 500, 800, 1000], [0, 900, 100, 600, 300, 50], shape=(8, 32, 32))
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    path = tmp_path / "lookup.safetensors"
    assert main(["analyze", "lookup", str(tmp_path / "t1.nii.gz"), str(tmp_path / "t2.nii.gz"), str(path), "--bins", "64"]) == 0
    meta = read_metadata(path)
    assert meta["config"]["arch"] == "lookup" and meta["in_channels"] == 1 and meta["intensity"]["t2_scale"] > 0
    model = load_model(path)
    out = synthesize.synthesize_volume(model, t1, plane="axial")
    assert out.same_geometry(t1)
    np.testing.assert_allclose(out.array, t2.array, atol=2e-3 * t2.array.max())

    # The same file through the command lines: synthesize, and evaluate straight from the model.
    assert main(["synthesize", str(path), str(tmp_path / "t1.nii.gz"), str(tmp_path / "syn.nii.gz")]) == 0
    np.testing.assert_allclose(read_volume(tmp_path / "syn.nii.gz").array, t2.array, atol=2e-3 * t2.array.max())
    assert main(["evaluate", str(path), str(tmp_path / "t2.nii.gz"), "--t1", str(tmp_path / "t1.nii.gz"),
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["overall"]["ssim"]["mean"] > 0.999


def test_occlusion_of_a_box_filter_model_converges_at_the_filter_width():
    conv = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False)
    conv.weight.data.fill_(1 / 25)
    model = LoadedModel(generator=conv.eval(), config={}, metadata={}, planes=["axial"], in_channels=1,
                        t2_scale=2.0, t1_percentile=99.5)
    array = np.zeros((5, 30, 30), np.float32)
    array[:, 5:25, 5:25] = 100.0
    t1 = Volume.from_geometry(array, spacing=(0.5, 0.5, 2.0))
    t2 = t1.with_array(array * 3)
    point = t1.ijk_to_ras_points([[15, 15, 2]])[0]
    result = analysis.occlusion_study(model, t1, t2, {"centre": point}, widths=[1, 3, 5, 7, 11])
    entry = result["points"]["centre"]
    # The window keeps w^2 of the 25 pixels the filter sees: 1/25, 9/25, then all of them.
    np.testing.assert_allclose(entry["predicted"], np.array([1, 9, 25, 25, 25]) / 25 * 2.0, rtol=1e-5)
    assert entry["full_context"] == pytest.approx(2.0)
    assert entry["acquired"] == 300.0
    assert entry["converged_width_px"] == 5 and entry["converged_width_mm"] == pytest.approx(2.5)
    with pytest.raises(T1ToT2Error, match="outside the T1 volume"):
        analysis.occlusion_study(model, t1, t2, [[500.0, 0.0, 0.0]], widths=[1, 3])


def test_occlusion_full_context_is_the_synthesis_pipelines_value_for_a_batch_norm_network():
    """A batch-norm GAN is probed as synthesis runs it (each slice's own statistics), not with running statistics."""
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    torch.manual_seed(0)
    generator = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.BatchNorm2d(1))
    generator[1].running_mean.fill_(5.0)  # statistics no slice has: running-statistics output would differ
    generator[1].running_var.fill_(0.01)
    model = LoadedModel(generator=generator.eval(), config={}, metadata={}, planes=["axial"], in_channels=1,
                        t2_scale=100.0, t1_percentile=99.5)
    rng = np.random.default_rng(0)
    array = (rng.random((5, 24, 24)) * 100).astype(np.float32)
    t1 = Volume.from_geometry(array, spacing=(0.5, 0.5, 2.0))
    point = t1.ijk_to_ras_points([[12, 12, 2]])[0]
    result = analysis.occlusion_study(model, t1, t1, {"centre": point}, widths=[1, 49])
    synthetic = synthesize_volume(model, t1, plane="axial", device="cpu")
    assert result["points"]["centre"]["full_context"] == pytest.approx(float(synthetic.array[2, 12, 12]), rel=1e-5)
    assert result["points"]["centre"]["predicted"][-1] == pytest.approx(float(synthetic.array[2, 12, 12]), rel=1e-5)
    from T1ToT2Lib.inference.slices import foreground_scale

    with torch.no_grad():  # what the study used to report: the running statistics
        x = torch.from_numpy(array[2:3, None] / np.float32(foreground_scale(array, 99.5)))
        running = float(generator.eval()(x)[0, 0, 12, 12]) * 100.0
    assert abs(running - float(synthetic.array[2, 12, 12])) > 10.0


def test_difference_histogram_and_render_outputs(tmp_path):
    t1, t2, labels = _tissue_volume([0, 120, 120, 700], [0, 900, 10, 300], shape=(10, 36, 36))
    t1 = Volume(t1.array, Volume.from_geometry(t1.array, spacing=(0.6, 0.6, 1.0), origin=(3, -4, 5),
                                               direction=oblique_direction()).ijk_to_ras)
    t2 = t1.with_array(t2.array)
    generated = t2.with_array(t2.array * 0.9 + 7)
    written = analysis.write_difference(generated, t2, tmp_path / "diff")
    back = read_volume(written["nifti"])
    np.testing.assert_allclose(back.ijk_to_ras, t2.ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(back.array, np.abs(t2.array * 0.1 - 7), atol=1e-3)

    hist = analysis.write_joint_histograms({"acquired": (t1, t2), "synthetic": (t1, generated)}, tmp_path / "hist", bins=32)
    data = np.load(hist["npz"])
    assert data["acquired_counts"].sum() == t1.array.size
    assert data["acquired_counts"].shape == (32, 32)

    png = analysis.render_volume(generated, tmp_path / "render.png")
    from matplotlib.image import imread

    image = imread(png)
    assert image.shape[1] > image.shape[0] > 100 and image[..., :3].std() > 0.05
    for path in (written["png"], hist["png"]):
        assert imread(path).shape[0] > 100


def test_analyze_cli_profile_and_difference(tmp_path, capsys):
    array = np.arange(8 * 20 * 20, dtype=np.float32).reshape(8, 20, 20)
    vol = Volume.from_geometry(array, spacing=(0.5, 0.5, 1.0))
    write_volume(vol, tmp_path / "t1.nii.gz")
    write_volume(vol.with_array(array * 2), tmp_path / "syn.nii.gz")
    landmarks = {"right": {"thumb_metacarpal_profile": [[1, 1, 2], [8, 6, 5]]}}
    (tmp_path / "lm.json").write_text(json.dumps(landmarks))
    code = main(["analyze", "profile", f"T1={tmp_path / 't1.nii.gz'}", f"synthetic T2={tmp_path / 'syn.nii.gz'}",
                 "--landmarks", str(tmp_path / "lm.json"), "-o", str(tmp_path / "prof")])
    assert code == 0
    header, *rows = (tmp_path / "prof" / "profile.csv").read_text().strip().splitlines()
    assert header == "distance_mm,T1,synthetic T2"
    first = [float(v) for v in rows[0].split(",")]
    assert first[2] == pytest.approx(2 * first[1], rel=1e-4)
    assert (tmp_path / "prof" / "profile.png").stat().st_size > 0

    code = main(["analyze", "profile", f"T1={tmp_path / 't1.nii.gz'}", "--points", "1,2", "-o", str(tmp_path / "p2")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "r,a,s" in err

    other = Volume.from_geometry(array, spacing=(0.5, 0.5, 2.0))
    write_volume(other, tmp_path / "other.nii.gz")
    code = main(["analyze", "difference", str(tmp_path / "other.nii.gz"), str(tmp_path / "t1.nii.gz"), "-o", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "different grids" in err
    assert not (tmp_path / "d" / "difference.nii.gz").exists()
