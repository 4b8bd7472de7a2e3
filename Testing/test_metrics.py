"""Metrics agree with scikit-image under the paper's definitions; grid energy sees checkerboards; CLI errors are one line."""

import json

import numpy as np
import pytest
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from T1ToT2Lib.core import metrics
from T1ToT2Lib.cli import main
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import write_volume


def _pairs(rng):
    """(generated, acquired) 2-D pairs: random, and a hand-like disc image with a perturbed copy."""
    a = rng.random((40, 52))
    b = a + 0.2 * rng.standard_normal(a.shape)
    yy, xx = np.mgrid[:64, :64]
    disc = np.where((yy - 30) ** 2 + (xx - 34) ** 2 < 400, 300.0, 0.0) + np.where((yy - 28) ** 2 + (xx - 30) ** 2 < 40, 900.0, 0.0)
    acquired = disc + 5 * rng.standard_normal(disc.shape)
    generated = disc * 0.9 + 20 * np.sin(xx / 3.0) + 5 * rng.standard_normal(disc.shape)
    return [(b, a), (generated, acquired)]


def test_metrics_match_skimage_with_the_papers_definitions(rng):
    for g, i in _pairs(rng):
        assert metrics.nrmse(g, i) == pytest.approx(normalized_root_mse(i, g, normalization="min-max"), abs=1e-6)
        peak = max(g.max(), i.max())
        assert metrics.psnr(g, i) == pytest.approx(peak_signal_noise_ratio(i, g, data_range=peak), abs=1e-6)
        L = max(g.max(), i.max()) - min(g.min(), i.min())
        assert metrics.ssim(g, i) == pytest.approx(structural_similarity(i, g, data_range=L, win_size=7), abs=1e-6)
        assert metrics.ssim(g, i, data_range=2.5, win_size=5) == pytest.approx(
            structural_similarity(i, g, data_range=2.5, win_size=5), abs=1e-6
        )
        assert metrics.ssim(g, i, gaussian=True) == pytest.approx(
            structural_similarity(i, g, data_range=L, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), abs=1e-6
        )


def test_metrics_match_skimage_on_phantom_slices():
    from T1ToT2Lib.phantom.render import make_phantom

    vols = make_phantom(size="small", seed=3)
    t2 = vols["right_t2"].slices("axial")
    acquired = t2[t2.shape[0] // 2].astype(np.float64)
    generated = vols["left_t2"].slices("axial")[t2.shape[0] // 2].astype(np.float64)
    if generated.shape != acquired.shape:
        generated = acquired * 0.8 + 0.05 * acquired.max() * np.random.default_rng(0).standard_normal(acquired.shape)
    L = max(generated.max(), acquired.max()) - min(generated.min(), acquired.min())
    assert metrics.ssim(generated, acquired) == pytest.approx(structural_similarity(acquired, generated, data_range=L), abs=1e-6)
    assert metrics.psnr(generated, acquired) == pytest.approx(
        peak_signal_noise_ratio(acquired, generated, data_range=max(generated.max(), acquired.max())), abs=1e-6
    )
    assert metrics.nrmse(generated, acquired) == pytest.approx(normalized_root_mse(acquired, generated, normalization="min-max"), abs=1e-6)


def test_volume_scores_are_per_slice_means_per_plane(rng):
    actual = rng.random((8, 20, 24)).astype(np.float32) * 100
    actual[0] = 0  # an empty axial slice: skipped and reported
    generated = actual + rng.standard_normal(actual.shape).astype(np.float32) * 5
    vol_i = Volume.from_geometry(actual, spacing=(0.5, 0.6, 2.0))
    vol_g = vol_i.with_array(generated)
    result = metrics.evaluate_volumes(vol_g, vol_i)

    axial = result["per_plane"]["axial"]
    assert axial["n_slices"] == 7 and axial["n_skipped"] == 1
    assert any("axial" in note and "skipped 1" in note for note in result["notes"])
    expected = []
    for k in range(1, 8):
        g, i = generated[k].astype(np.float64), actual[k].astype(np.float64)
        L = max(g.max(), i.max()) - min(g.min(), i.min())
        expected.append(structural_similarity(i, g, data_range=L))
    assert axial["ssim"]["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert axial["ssim"]["std"] == pytest.approx(np.std(expected), abs=1e-6)
    sagittal_psnr = [
        peak_signal_noise_ratio(actual[:, :, c].astype(np.float64), generated[:, :, c].astype(np.float64),
                                data_range=max(actual[:, :, c].max(), generated[:, :, c].max()))
        for c in range(actual.shape[2])
    ]
    assert result["per_plane"]["sagittal"]["psnr"]["mean"] == pytest.approx(np.mean(sagittal_psnr), abs=1e-6)
    assert result["per_plane"]["sagittal"]["n_slices"] == actual.shape[2]
    total = sum(result["per_plane"][p]["n_slices"] for p in ("axial", "coronal", "sagittal"))
    assert result["overall"]["n_slices"] == total


def test_mask_restricts_scoring_to_the_foreground(rng):
    actual = rng.random((8, 16, 16)).astype(np.float32) + 1
    generated = actual.copy()
    mask = np.zeros(actual.shape, bool)
    mask[2:6, 4:12, 4:12] = True
    generated[~mask] += 50  # wrong only outside the mask
    vol = Volume.from_geometry(actual)
    unmasked = metrics.evaluate_volumes(vol.with_array(generated), vol)
    masked = metrics.evaluate_volumes(vol.with_array(generated), vol, mask=mask)
    assert unmasked["overall"]["nrmse"]["mean"] > 1
    assert masked["overall"]["nrmse"]["mean"] == 0
    assert masked["per_plane"]["axial"]["n_slices"] == 4  # slices without foreground are skipped


def test_grid_energy_is_zero_for_whole_period_sinusoids_and_sees_a_half_percent_checkerboard(rng):
    yy, xx = np.mgrid[:64, :96].astype(np.float64)
    # Period 32 = 4 x 8 = 16 x 2: for every p in (2, 4, 8) each phase class samples whole periods, so
    # every class mean is the same (zero) and the p x p pattern has no variance at all.
    smooth = np.sin(2 * np.pi * xx / 32) + 0.5 * np.cos(2 * np.pi * yy / 16)
    for p in (2, 4, 8):
        assert metrics.grid_energy(smooth, p) < 1e-20
        assert metrics.grid_energy(np.full((16, 16), 3.0), p) == 0.0
    # A linear ramp is smooth but NOT zero: its class means step by slope * phase, so E_p ~ p^2 / width^2.
    ramp = xx / 96
    assert 0 < metrics.grid_energy(ramp, 8) < (8 / 96) ** 2 * 1.1

    acquired = 1000 * (1 + 0.3 * np.sin(xx / 10) * np.cos(yy / 7))
    noise = 2.0 * rng.standard_normal(acquired.shape)  # 0.2% noise
    checker = 0.005 * acquired.max() * np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    clean = metrics.grid_energy((acquired + noise) - acquired, 2)
    planted = metrics.grid_energy((acquired + noise + checker) - acquired, 2)
    assert clean < 0.01
    assert planted > 0.5 and planted > 50 * clean
    # A 3-D residual pools the phase classes over its slices.
    stack = np.stack([noise + checker] * 3)
    assert metrics.grid_energy(stack, 2) == pytest.approx(planted, rel=0.05)


def test_evaluate_cli_writes_table_json_and_csv(tmp_path, rng, capsys):
    actual = rng.random((10, 18, 18)).astype(np.float32) * 50 + 10
    labels = np.zeros(actual.shape, np.float32)
    labels[3:7, 5:13, 5:13] = 2
    vol = Volume.from_geometry(actual, spacing=(0.6, 0.6, 0.6), origin=(10, -5, 3))
    write_volume(vol, tmp_path / "t2.nii.gz")
    write_volume(vol.with_array(actual + rng.standard_normal(actual.shape).astype(np.float32)), tmp_path / "syn.nii.gz")
    write_volume(vol.with_array(labels), tmp_path / "labels.nii.gz")
    code = main(["evaluate", str(tmp_path / "syn.nii.gz"), str(tmp_path / "t2.nii.gz"), "--mask", str(tmp_path / "labels.nii.gz"),
                 "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv")])
    assert code == 0
    table = capsys.readouterr().out
    assert "PSNR" in table and "sagittal" in table
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["masked"] and result["generated_is_synthetic"]
    assert result["per_plane"]["axial"]["n_slices"] == 8  # 4 labelled slices grown by 2 on each side
    assert 20 < result["overall"]["psnr"]["mean"] < 60
    lines = (tmp_path / "m.csv").read_text().strip().splitlines()
    assert lines[0].startswith("scope,n_slices,nrmse_mean") and len(lines) == 5


def test_mismatched_geometry_is_a_one_line_error(tmp_path, rng, capsys):
    actual = rng.random((6, 12, 12)).astype(np.float32)
    write_volume(Volume.from_geometry(actual, spacing=(0.6, 0.6, 0.6)), tmp_path / "t2.nii.gz")
    write_volume(Volume.from_geometry(actual, spacing=(0.6, 0.6, 1.2)), tmp_path / "syn.nii.gz")
    code = main(["evaluate", str(tmp_path / "syn.nii.gz"), str(tmp_path / "t2.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("t1tot2 evaluate: error:") and "spacing" in err and "resample" in err
    with pytest.raises(T1ToT2Error, match="differs"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 9)))


def test_thin_slab_scores_without_the_grid_periods_that_do_not_fit(rng):
    from T1ToT2Lib.core.metrics import evaluate_volumes
    from T1ToT2Lib.core.volume import Volume

    actual = Volume.from_geometry(rng.uniform(1, 2, size=(6, 20, 24)).astype(np.float32))
    generated = actual.with_array(actual.array + rng.normal(0, 0.05, size=actual.shape).astype(np.float32))
    result = evaluate_volumes(generated, actual)
    axial = result["per_plane"]["axial"]["grid_energy"]
    assert all(np.isfinite(axial[p]) for p in ("2", "4", "8"))  # 20x24 slices fit every period
    coronal = result["per_plane"]["coronal"]["grid_energy"]  # 6x24 slices: E_8 cannot be measured
    assert np.isfinite(coronal["2"]) and np.isfinite(coronal["4"]) and np.isnan(coronal["8"])
    assert np.isfinite(result["grid_energy"]["8"]) and any("too small for E_8" in n for n in result["notes"])


def test_tissue_table_on_a_constructed_case():
    """Two tissues with known means: the table's means, errors and relative errors follow by hand."""
    from T1ToT2Lib.core.metrics import format_tissue_table, tissue_table

    labels = np.zeros((4, 5, 6), np.float32)
    labels[:2] = 1
    labels[2:, :, :3] = 2
    acquired = np.where(labels == 1, 100.0, np.where(labels == 2, 40.0, 0.0)).astype(np.float32)
    synthetic = acquired.copy()
    synthetic[labels == 1] = 110.0  # +10 on every voxel of tissue 1
    synthetic[(labels == 2) & (np.indices(labels.shape)[2] == 0)] = 20.0  # -20 on a third of tissue 2
    vol = lambda a: Volume.from_geometry(a)  # noqa: E731
    rows = tissue_table(vol(synthetic), vol(acquired), vol(labels), names={1: "fat", 2: "cortex"})
    assert [r["tissue"] for r in rows] == ["fat", "cortex"] and [r["voxels"] for r in rows] == [60, 30]
    fat, cortex = rows
    assert fat["acquired_mean"] == 100 and fat["synthetic_mean"] == 110 and fat["relative_error"] == pytest.approx(0.1)
    assert cortex["synthetic_mean"] == pytest.approx(40 - 20 / 3) and cortex["mean_abs_error"] == pytest.approx(20 / 3)
    assert cortex["relative_error"] == pytest.approx(-1 / 6)
    assert "fat" in format_tissue_table(rows) and "+10.0%" in format_tissue_table(rows)
