"""Preprocessing recorded in the model: the training voxel size (resampled for the network and back) and N4."""

import numpy as np
import pytest

from T1ToT2Lib.core.metrics import evaluate_volumes, foreground_mask
from T1ToT2Lib.networks.modelfile import load_model
from T1ToT2Lib.inference.preprocess import model_preprocessing, n4_correct, resample_to_spacing
from T1ToT2Lib.inference.synthesize import synthesize_as_trained


@pytest.fixture(scope="module")
def hand():
    from T1ToT2Lib.phantom.render import make_phantom

    return make_phantom(size="small", seed=0)


@pytest.fixture(scope="module")
def demo_model():
    from pathlib import Path

    return load_model(Path(__file__).resolve().parents[1] / "Resources" / "demo_model.safetensors")


def test_model_files_give_their_training_voxel_size(demo_model):
    record = model_preprocessing(demo_model.metadata)
    assert record["voxel_mm"] == [1.5, 1.5, 1.5] and not record["n4"]


@pytest.fixture(scope="module")
def native_and_fine(hand, demo_model):
    """The right hand synthesized at its own 1.5 mm and from a 1 mm resampling, with what the 1 mm run wrote to stderr."""
    import contextlib
    import io

    t1 = hand["right_t1"]
    native = synthesize_as_trained(demo_model, t1, plane="coronal", device="cpu")
    fine_t1 = resample_to_spacing(t1, (1.0, 1.0, 1.0))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        fine = synthesize_as_trained(demo_model, fine_t1, plane="coronal", device="cpu")
    return {"native": native, "fine_t1": fine_t1, "fine": fine, "fine_stderr": stderr.getvalue()}


def test_a_1mm_t1_is_synthesized_on_its_exact_grid_with_a_note(hand, native_and_fine):
    t1, fine_t1, fine = hand["right_t1"], native_and_fine["fine_t1"], native_and_fine["fine"]
    native = native_and_fine["native"]
    assert native.same_geometry(t1, tol=0) and "notes" not in native.meta  # the model's own 1.5 mm: nothing to say
    # 1.5 mm x (196-1, 30-1, 89-1) voxels of extent = 292.5 x 43.5 x 132 mm: 293 x 44 x 133 samples at 1 mm (k, j, i).
    assert fine_t1.shape == (293, 44, 133) and np.allclose(fine_t1.spacing, 1.0)
    assert fine.same_geometry(fine_t1, tol=0) and fine.shape == (293, 44, 133)
    # |1.0 / 1.5 - 1| = 33%: above preprocess.LARGE_DIFFERENCE (30%), so the note says the scales are unfamiliar.
    (note,) = fine.meta["notes"]
    assert "33%" in note and "[1.0, 1.0, 1.0]" in note and "[1.5, 1.5, 1.5]" in note
    assert f"note: {note}" in native_and_fine["fine_stderr"]


def test_a_1mm_interpolation_of_a_1_5mm_t1_is_synthesized_within_6_db_of_native(hand, native_and_fine):
    """An *interpolated* T1 (a 1.5 mm scan linearly resampled to 1 mm: no new detail, its noise smoothed) is the case
    the trees' zoomed features serve worst: they read the smoothed noise as texture.  A real 1 mm acquisition is
    served better than by resampling it to the model's grid (README, robustness table).  This bounds the loss."""
    t2 = hand["right_t2"]
    fine_t2 = resample_to_spacing(t2, (1.0, 1.0, 1.0))
    psnr_native = evaluate_volumes(native_and_fine["native"], t2, planes=("coronal",))["overall"]["psnr"]["mean"]
    psnr_fine = evaluate_volumes(native_and_fine["fine"], fine_t2, planes=("coronal",))["overall"]["psnr"]["mean"]
    assert psnr_native > 18.0 and abs(psnr_fine - psnr_native) < 6.0, (psnr_native, psnr_fine)


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


def test_the_trees_run_on_the_t1s_own_grid_with_features_at_their_trained_mm(hand, demo_model, monkeypatch):
    """A 1 mm T1 and a model trained at 1.5 mm: the trees are asked about the T1's own voxels (never a resampled T1),
    with a zoom of 1.5 / 1.0 per axis; with the CNN's head zeroed (the gate's 'prior only' model) the synthetic is
    exactly those trees' prediction, on the T1's exact grid."""
    import copy

    import torch

    from T1ToT2Lib.inference.slices import foreground_scale

    fine_t1 = resample_to_spacing(hand["right_t1"], (1.0, 1.0, 1.0), interpolator="sinc")
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
    trees = predict(model.prior, fine_t1.array / np.float32(foreground_scale(fine_t1.array, model.t1_percentile)), zoom=zoom)
    expected = np.maximum(trees * np.float32(model.t2_scale), 0.0)
    np.testing.assert_allclose(synthetic.array, expected, rtol=0, atol=1e-3 * float(model.t2_scale))
