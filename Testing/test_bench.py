"""``t1tot2 bench`` (smoke preset only: CI never runs the full bench) and the fast synthesis path.

No test here asserts a time: the bench reports ratios; these tests check that it reports them and that
the fast path computes what the naive path computes.
"""

import json
import math

import numpy as np
import pytest
import torch

from T1ToT2Lib.research import bench
from T1ToT2Lib.cli import main
from T1ToT2Lib.inference.slices import context_stack, pad_to_multiple
from T1ToT2Lib.core.devices import auto_precision, check_precision, effective_precision, native_bf16
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks import build_generator, default_config, required_multiple
from T1ToT2Lib.inference.synthesize import _predict_plane, inference_generator


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", "--preset", "smoke", "--device", "cpu", "--threads", "1", "--quiet", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_smoke_bench_json_has_every_issue_key(smoke):
    for key in bench.SUMMARY_KEYS:
        assert key in smoke, key
    for key in ("matmul_gflops_fp32", "matmul_gflops_bf16", "synthesis_fraction_of_ceiling", "synthesis_speedup_vs_naive",
                "train_speedup_vs_naive", "synthesis_volume_peak_rss_gb"):
        assert isinstance(smoke[key], float) and smoke[key] > 0, key
    assert math.isfinite(smoke["bf16_psnr_delta_db"])


def test_smoke_bench_reports_naive_and_fast_rows_and_cpu_times(smoke):
    synthesis = [r for r in smoke["synthesis"] if "skipped" not in r]
    assert {r["path"] for r in synthesis} == {"naive", "fast"}
    for r in synthesis:
        assert r["user_cpu_s"] >= 0 and r["system_cpu_s"] >= 0 and 0 < r["fraction_of_ceiling"]
    fast = [r for r in synthesis if r["path"] == "fast"]
    assert all(r["max_abs_diff_vs_naive"] < (1e-4 if r["precision"] == "fp32" else 0.1) for r in fast)
    archs = {r["arch"] for r in smoke["training"]}
    assert archs == {"pix2pix", "cyclegan", "unit", "refiner"}
    assert "briefly trained" in smoke["bf16_quality"]["model"]
    assert smoke["volume"]["peak_rss_gb"] >= smoke["volume"]["rss_after_imports_gb"] > 0


def test_bench_default_precision_is_the_automatic_one(smoke):
    """The precision the summary is stated in is the one ``--precision auto`` picks on this machine."""
    cpu = torch.device("cpu")
    assert smoke["default_precision"] == auto_precision(cpu) == effective_precision(cpu, "auto")
    assert smoke["ceilings"]["bf16"]["native"] == native_bf16(cpu)
    if not native_bf16(cpu):  # emulated bf16 is far slower than fp32: auto must not pick it
        assert auto_precision(cpu) == "fp32"


def test_precision_names():
    assert check_precision("AUTO") == "auto"
    assert effective_precision(torch.device("cpu"), "fp32") == "fp32"  # explicit choices are unchanged
    assert effective_precision(torch.device("cpu"), "fp16", warn=lambda m: None) == "bf16"
    with pytest.raises(T1ToT2Error, match="unknown precision"):
        check_precision("fp8")


def _plain_predict(generator, volume, context, multiple, prior=None):
    """The straightforward loop: one slice at a time, context_stack + np.pad, float32."""
    out = np.zeros_like(volume, dtype=np.float32)
    for i in range(volume.shape[0]):
        stack = context_stack(volume, [i], context)
        if prior is not None:
            stack = np.concatenate([stack, context_stack(prior, [i], context)], axis=1)
        padded, crop = pad_to_multiple(np.ascontiguousarray(stack, dtype=np.float32), multiple)
        with torch.no_grad():
            out[i] = crop.apply(generator(torch.from_numpy(padded)).numpy()[:, 0])[0]
    return out


@pytest.mark.parametrize("shape,context,batch", [((7, 20, 27), 1, 3), ((5, 16, 16), 3, 8), ((1, 9, 33), 3, 2)])
def test_fast_path_matches_the_plain_path_unet(shape, context, batch):
    torch.manual_seed(0)
    config = default_config("pix2pix", ngf=4, ndf=4, depth=3, in_channels=context)
    generator = inference_generator(build_generator(config))
    volume = np.random.default_rng(1).random(shape, dtype=np.float32)
    expected = _plain_predict(generator, volume, context, required_multiple(config))
    for precision, tolerance in (("fp32", 1e-5), ("bf16", 0.05)):
        out = np.zeros_like(volume)
        _predict_plane(generator, volume, 0, context, required_multiple(config), torch.device("cpu"), precision, batch,
                       out, lambda n: None, None)
        scale = float(np.abs(expected).max())
        assert np.abs(out - expected).max() <= tolerance * max(scale, 1.0), precision


def test_fast_path_matches_the_plain_path_refiner_with_prior_and_squares():
    torch.manual_seed(0)
    config = default_config("refiner", in_channels=3, ngf=8, n_layers=3)
    generator = inference_generator(build_generator(config))
    torch.nn.init.normal_(generator.head.weight)  # the untrained head is zero: make the network matter
    rng = np.random.default_rng(2)
    volume, prior = rng.random((6, 11, 13), dtype=np.float32), rng.random((6, 11, 13), dtype=np.float32)
    expected = _plain_predict(generator, volume, 3, 1, prior)
    out, squares = np.zeros_like(volume), np.zeros_like(volume)
    _predict_plane(generator, volume, 0, 3, 1, torch.device("cpu"), "fp32", 4, out, lambda n: None, None, prior, squares)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(squares, expected * expected, atol=1e-4, rtol=1e-5)


def test_bench_fast_and_naive_synthesis_agree():
    torch.manual_seed(0)
    config = bench._unet_config(32, 4)
    generator = inference_generator(build_generator(config))
    volume = np.random.default_rng(3).random((3, 32, 32), dtype=np.float32)
    naive = bench.naive_synthesis(generator, volume, np.zeros_like(volume))
    fast = bench.fast_synthesis(generator, volume, np.zeros_like(volume), required_multiple(config), torch.device("cpu"), "fp32", 2)
    np.testing.assert_allclose(fast, naive, atol=1e-5, rtol=1e-5)


def test_smoke_bench_trains_and_runs_the_recommended_model_in_fresh_processes(smoke):
    for key in bench.PRODUCT_KEYS:
        assert isinstance(smoke[key], float) and smoke[key] > 0, key
    assert smoke["product_synthesis_gflop_s_product"] == pytest.approx(smoke["product_synthesis_s"] * smoke["matmul_gflops_fp32"])
    synthesis = smoke["product"]["synthesis"]
    assert {"features", "trees", "error map (error trees)", "CNN axial", "CNN coronal", "CNN sagittal", "writing"} <= set(synthesis["stages_s"])
    assert synthesis["peak_rss_gb"] > synthesis["rss_after_imports_gb"] > 0
