"""Preprocessing recorded in the model: the training voxel size (resampled for the network and back) and N4."""

import numpy as np
import pytest

from T1ToT2Lib.core.metrics import evaluate_volumes, foreground_mask
from T1ToT2Lib.networks.modelfile import load_model
from T1ToT2Lib.inference.preprocess import (acquired_spacing, background_noise_correlation, interpolation_factors,
                                            model_preprocessing, n4_correct, onto_grid, prepare_input,
                                            preprocessing_record, resample_to_spacing)
from T1ToT2Lib.inference.synthesize import synthesize_as_trained

from conftest import cropped


@pytest.fixture(scope="module")
def hand():
    from T1ToT2Lib.phantom.render import make_phantom

    return make_phantom(size="small", seed=0)


@pytest.fixture(scope="module")
def hand_1mm():
    """The same hand acquired at 1 mm (rendered on that grid: white noise, real detail)."""
    from dataclasses import replace

    from T1ToT2Lib.phantom.render import Acquisition, make_phantom

    return make_phantom(size="small", seed=0, acquisition=replace(Acquisition.preset("small"), voxel_mm=(1.0, 1.0, 1.0)))


@pytest.fixture(scope="module")
def demo_model():
    from pathlib import Path

    return load_model(Path(__file__).resolve().parents[1] / "Resources" / "demo_model.safetensors")


def test_model_files_give_their_training_voxel_size(demo_model):
    record = model_preprocessing(demo_model.metadata)
    assert record["voxel_mm"] == [1.5, 1.5, 1.5]
    assert record["n4"] is True  # trained, as the recipe trains, on N4-corrected T1s (its card says so)


def _middle_slab(volumes: dict, slices: int) -> dict:
    """The right hand's ``slices`` slices (along S) through the middle of the hand: the synthesis tests stay quick."""
    k0 = int(np.median(np.nonzero(volumes["right_labels"].array)[0])) - slices // 2
    return {name: cropped(volumes[name], k=slice(k0, k0 + slices)) for name in ("right_t1", "right_t2", "right_labels")}


@pytest.fixture(scope="module")
def slab(hand):
    """60 mm of the right hand at 1.5 mm, air on every side in-plane (what the noise estimate reads)."""
    return _middle_slab(hand, 40)


@pytest.fixture(scope="module")
def native_and_fine(slab, hand_1mm, demo_model):
    """The slab synthesized at its own 1.5 mm and from a 1 mm acquisition, with what the 1 mm run wrote to stderr."""
    import contextlib
    import io

    native = synthesize_as_trained(demo_model, slab["right_t1"], plane="coronal", device="cpu")
    fine_t1 = _middle_slab(hand_1mm, 60)["right_t1"]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        fine = synthesize_as_trained(demo_model, fine_t1, plane="coronal", device="cpu")
    return {"native": native, "fine_t1": fine_t1, "fine": fine, "fine_stderr": stderr.getvalue()}


def test_a_1mm_t1_is_synthesized_on_its_exact_grid_with_a_note(slab, native_and_fine):
    t1, fine_t1, fine = slab["right_t1"], native_and_fine["fine_t1"], native_and_fine["fine"]
    native = native_and_fine["native"]
    assert native.same_geometry(t1, tol=0) and "notes" not in native.meta  # the model's own 1.5 mm: nothing to say
    assert np.allclose(fine_t1.spacing, 1.0) and fine.same_geometry(fine_t1, tol=0)
    # |1.0 / 1.5 - 1| = 33%: above preprocess.LARGE_DIFFERENCE (30%), so the note says the scales are unfamiliar.
    (note,) = fine.meta["notes"]
    assert note.startswith("T1 voxel size [1.0, 1.0, 1.0] mm") and "33%" in note and "[1.5, 1.5, 1.5]" in note
    assert f"note: {note}" in native_and_fine["fine_stderr"]


# --- interpolated inputs -----------------------------------------------------------------------
def _white_noise_volume(shape=(40, 44, 48), spacing=(1.0, 1.0, 1.0), seed=0):
    """An object (signal 300) in the middle of a magnitude image with white noise (sigma 10 per channel): air is Rayleigh."""
    from T1ToT2Lib.core.volume import Volume

    rng = np.random.default_rng(seed)
    signal = np.zeros(shape)
    signal[tuple(slice(n // 3, 2 * n // 3) for n in shape)] = 300.0
    image = np.hypot(signal + rng.normal(0, 10, shape), rng.normal(0, 10, shape)).astype(np.float32)
    return Volume.from_geometry(image, spacing, (0.0, 0.0, 0.0), np.eye(3))


def _zero_filled(volume, factor: int, axis: int):
    """``volume`` interpolated ``factor`` times along array ``axis`` as a scanner does: zero-filled k-space."""
    from scipy.signal import resample

    from T1ToT2Lib.core.volume import Volume

    array = np.maximum(resample(volume.array, volume.shape[axis] * factor, axis=axis), 0).astype(np.float32)
    spacing = volume.spacing.copy()
    spacing[2 - axis] /= factor
    return Volume.from_geometry(array, spacing, volume.origin, volume.direction)


@pytest.mark.parametrize("kind, factor", [("linear", 1.5), ("linear", 2.0), ("sinc", 1.5), ("sinc", 2.0),
                                          ("sinc", 3.0), ("zero-fill", 2.0), ("zero-fill", 3.0)])
def test_the_interpolation_factor_is_read_from_the_noise_within_12_percent(kind, factor):
    """SimpleITK's linear and Lanczos resampling and scipy's Fourier (zero-filled k-space) interpolation of white
    noise, by a known factor along every axis (zero-fill: along the first array axis only): the estimate is within 12%
    of it; the axes left alone read as not interpolated."""
    acquired = _white_noise_volume(spacing=(1.5, 1.5, 1.5))
    if kind == "zero-fill":
        fine, axes = _zero_filled(acquired, int(factor), axis=0), [0]
    else:
        fine, axes = resample_to_spacing(acquired, (1.5 / factor,) * 3, interpolator=kind), [0, 1, 2]
    estimated = interpolation_factors(background_noise_correlation(fine))
    for axis in range(3):
        expected = factor if axis in axes else 1.0
        assert abs(estimated[axis] / expected - 1.0) < 0.12, (kind, factor, estimated)


def test_acquired_images_and_masked_backgrounds_do_not_read_as_interpolated(hand, hand_1mm):
    assert acquired_spacing(_white_noise_volume()) is None
    for t1 in (hand["right_t1"], hand_1mm["right_t1"]):  # rendered on their grids: white noise
        assert np.all(np.abs(background_noise_correlation(t1)) < 0.02) and acquired_spacing(t1) is None
    masked = hand["right_t1"].with_array(np.where(hand["right_labels"].array > 0, hand["right_t1"].array, 0.0))
    assert background_noise_correlation(masked) is None  # no noise to read: no guess


def test_an_in_plane_interpolation_by_two_reads_as_the_acquired_grid(hand):
    t1 = hand["right_t1"]  # 1.5 mm
    fine = resample_to_spacing(t1, (0.75, 1.5, 0.75))
    np.testing.assert_allclose(acquired_spacing(fine), (1.5, 1.5, 1.5), rtol=0.05)


def test_a_model_trained_on_an_interpolated_t1_takes_such_inputs_on_their_own_grid(slab, demo_model):
    """Its trees learnt interpolated texture, so un-interpolating its inputs would show them another texture; a model
    trained on acquired T1s (the record's None, and older files without the key) gets them on the acquired grid."""
    import copy

    fine_t1 = resample_to_spacing(slab["right_t1"], (0.75, 1.5, 0.75))
    record = preprocessing_record(fine_t1)
    np.testing.assert_allclose(record["interpolated_from_mm"], (1.5, 1.5, 1.5), rtol=0.05)
    assert record["voxel_mm"] == [0.75, 1.5, 0.75] and preprocessing_record(slab["right_t1"])["interpolated_from_mm"] is None
    model = copy.copy(demo_model)
    model.metadata = {**demo_model.metadata, "preprocessing": record}
    assert prepare_input(fine_t1, model) is None  # the model's own grid and texture: nothing to prepare
    model.metadata = {**demo_model.metadata, "preprocessing": {**record, "interpolated_from_mm": None}}
    prepared = prepare_input(fine_t1, model)
    np.testing.assert_allclose(prepared.native.spacing, (1.5, 1.5, 1.5), rtol=0.05)  # the trees' grid: the acquired one
    assert prepared.volume.same_geometry(fine_t1, tol=0)  # the network's: the model's voxel size
    interpolated, voxel_size = prepared.volume.meta["notes"]  # the trees' grid is named as the acquired one
    assert interpolated.startswith("the T1 looks interpolated") and voxel_size.startswith("acquired voxel size")


@pytest.mark.parametrize("kind, spacing, bound_db", [("linear", (0.75, 1.5, 0.75), 0.5), ("sinc", (1.0, 1.0, 1.0), 3.0)])
def test_an_interpolated_t1_is_synthesized_nearly_as_well_as_its_acquisition(slab, native_and_fine, demo_model, kind,
                                                                              spacing, bound_db):
    """An interpolated T1 carries no detail its acquisition lacks, so its synthesis, put back on the acquired grid,
    scores within ``bound_db`` of the acquisition's own (coronal, against the acquired T2).  Before the trees were run
    on the acquired grid they read the smoothed noise as texture: 1.0 and 5.0 dB lost."""
    t1, t2 = slab["right_t1"], slab["right_t2"]
    fine_t1 = resample_to_spacing(t1, spacing, interpolator=kind)
    fine = synthesize_as_trained(demo_model, fine_t1, plane="coronal", device="cpu")
    assert fine.same_geometry(fine_t1, tol=0)
    assert any("looks interpolated from about [1.5, 1.5, 1.5] mm" in note for note in fine.meta["notes"])
    # Scored away from the slab's cut faces, where resampling a cut through the hand rings.
    inner = slice(6, -6)
    score = lambda v: evaluate_volumes(cropped(v, k=inner), cropped(t2, k=inner), planes=("coronal",))["overall"]["psnr"]["mean"]  # noqa: E731
    psnr_native, psnr_fine = score(native_and_fine["native"]), score(onto_grid(fine, t1))
    assert psnr_native > 18.0 and psnr_native - psnr_fine < bound_db, (psnr_native, psnr_fine)


def test_sinc_resampling_follows_a_band_limited_image_closer_than_linear_and_stays_non_negative():
    from T1ToT2Lib.core.volume import Volume

    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (24, 20, 28)), indexing="ij")
    wave = lambda i_mm: 100.0 + 80.0 * np.sin(2 * np.pi * i_mm / 6.0)  # period 6 mm: 4 samples at 1.5 mm
    volume = Volume.from_geometry(wave(1.5 * i).astype(np.float32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), np.eye(3))
    errors = {}
    for method in ("linear", "sinc"):
        fine = resample_to_spacing(volume, (1.0, 1.0, 1.0), interpolator=method)
        inner = fine.array[6:-6, 6:-6, 6:-6]  # away from the edges, where the kernels run out of samples
        expected = wave(np.arange(fine.shape[2], dtype=np.float64))[6:-6]
        errors[method] = float(np.abs(inner - expected).mean())
        assert fine.array.min() >= 0.0
    assert errors["sinc"] < 0.5 * errors["linear"], errors  # measured 0.27 against 10.4


def test_n4_reduces_the_coil_field_of_the_phantom_t2(hand):
    clean, biased = hand["left_t2_clean"], hand["left_t2"]
    inside = foreground_mask(hand["left_labels"], dilate=0) & (clean.array > 100)

    def field_spread(volume):  # spread of log(acquired / noise-free render): coil field plus noise
        return float(np.std(np.log(np.maximum(volume.array[inside], 1.0) / clean.array[inside])))

    corrected = n4_correct(biased)
    assert corrected.same_geometry(biased, tol=0) and corrected.meta["n4"]
    assert field_spread(corrected) < 0.95 * field_spread(biased)  # measured 0.0416 -> 0.0382


@pytest.mark.parametrize("kind", ["t1", "t2"])
def test_n4_keeps_the_volumes_intensity_level(hand, kind):
    """A bias correction divides out a coil field, not the image's scale: a T2 target corrected at N4's own level
    (its field averaged 0.87 to 0.95 over phantom hands) trained a model whose synthetic T2 was that much brighter."""
    biased = hand[f"left_{kind}"]
    inside = foreground_mask(hand["left_labels"], dilate=0)
    corrected = n4_correct(biased)
    assert abs(float(corrected.array[inside].mean()) / float(biased.array[inside].mean()) - 1.0) < 0.02


def test_the_trees_run_on_the_t1s_own_grid_with_features_at_their_trained_mm(hand_1mm, demo_model, monkeypatch):
    """A 1 mm T1 and a model trained at 1.5 mm: the trees are asked about the T1's own voxels (never a resampled T1),
    with a zoom of 1.5 / 1.0 per axis; with the CNN's head zeroed (the gate's 'prior only' model) the synthetic is
    exactly those trees' prediction, on the T1's exact grid."""
    import copy

    import torch

    from T1ToT2Lib.inference.slices import foreground_scale

    # The 16 slices through the middle of the hand: a slab keeps the test quick.
    k0 = int(np.median(np.nonzero(hand_1mm["right_labels"].array)[0])) - 8
    fine_t1 = cropped(hand_1mm["right_t1"], k=slice(k0, k0 + 16))
    model = copy.copy(demo_model)
    model.generator = copy.deepcopy(demo_model.generator)
    with torch.no_grad():
        model.generator.reset_head()
    seen = []
    predict = type(model.prior).predict_volume

    def recording(self, normalised, *args, **kwargs):
        seen.append((normalised.shape, kwargs.get("zoom")))
        return predict(self, normalised, *args, **kwargs)

    monkeypatch.setattr(type(model.prior), "predict_volume", recording)
    synthetic = synthesize_as_trained(model, fine_t1, plane="fuse", device="cpu")
    ((shape, zoom),) = seen
    assert shape == fine_t1.shape and np.allclose(zoom, 1.5)
    assert synthetic.same_geometry(fine_t1, tol=0)
    corrected = n4_correct(fine_t1).array  # the model's preprocessing: its trees learnt N4-corrected T1s
    trees = predict(model.prior, corrected / np.float32(foreground_scale(corrected, model.t1_percentile)), zoom=zoom)
    expected = np.maximum(trees * np.float32(model.t2_scale), 0.0)
    np.testing.assert_allclose(synthetic.array, expected, rtol=0, atol=1e-3 * float(model.t2_scale))
