"""One synthesis pipeline for both engines: the ONNX engine writes the torch engine's error map, refuses what it
cannot honour in one line, and every stage (the trees' prior included) reports progress with an ETA."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from T1ToT2Lib.core.progress import StageProgress
from T1ToT2Lib.io.files import read_volume, write_volume

from conftest import cropped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "Resources" / "demo_model.safetensors"
DEMO_ONNX = ROOT / "Resources" / "demo_model.onnx"
needs_demo = pytest.mark.skipif(not (DEMO_MODEL.is_file() and DEMO_ONNX.is_file()), reason="the bundled demo model is absent")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "T1ToT2Lib.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """A crop of the phantom's right hand (seconds, not minutes)."""
    from T1ToT2Lib.phantom.render import make_phantom

    t1 = make_phantom("small", seed=0)["right_t1"]
    k, j, i = np.array(t1.shape) // 2
    folder = tmp_path_factory.mktemp("pipeline")
    return folder, write_volume(cropped(t1, k=slice(k - 16, k + 16), i=slice(i - 20, i + 20)), folder / "t1.nrrd")


@pytest.fixture(scope="module")
def tiny_pix2pix(hand, tmp_path_factory):
    """A small random Pix2Pix trained on all planes (its error map is the planes' spread) and its ONNX export."""
    import torch

    from T1ToT2Lib import networks
    from T1ToT2Lib.inference.onnx_engine import export_onnx
    from T1ToT2Lib.networks.modelfile import save_model

    torch.manual_seed(0)
    config = networks.default_config("pix2pix", in_channels=3, ngf=4, ndf=4, depth=3)
    folder = tmp_path_factory.mktemp("pix2pix")
    path = save_model(folder / "p2p.safetensors", networks.build_generator(config).state_dict(), {
        "config": config, "planes": ["axial", "coronal", "sagittal"], "in_channels": 3,
        "intensity": {"t1_percentile": 99.5, "t2_scale": 300.0}})
    export_onnx(path, folder / "p2p.onnx")
    return path


@needs_demo
@pytest.mark.parametrize("model", ["demo-onnx", "demo-safetensors-engine-onnx", "pix2pix-engine-onnx"])
def test_onnx_error_map_equals_the_torch_engines(model, hand, tiny_pix2pix):
    folder, t1 = hand
    torch_model = tiny_pix2pix if model.startswith("pix2pix") else DEMO_MODEL
    onnx_argument = DEMO_ONNX if model == "demo-onnx" else torch_model  # a .safetensors runs its .onnx sibling
    outputs = {}
    for engine, argument in (("torch", torch_model), ("onnx", onnx_argument)):
        out, err = folder / f"{model}_{engine}.nrrd", folder / f"{model}_{engine}_error.nrrd"
        result = cli("synthesize", argument, t1, out, "--engine", engine, "--uncertainty", err, "--progress", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1])["engine"] == engine
        outputs[engine] = read_volume(out), read_volume(err)
    (torch_t2, torch_err), (onnx_t2, onnx_err) = outputs["torch"], outputs["onnx"]
    assert onnx_err.same_geometry(read_volume(t1), tol=1e-6)
    assert float(torch_err.array.max()) > 0  # a real map, not zeros that would trivially agree
    assert relative_rms(onnx_err.array, torch_err.array) < 1e-3
    assert relative_rms(onnx_t2.array, torch_t2.array) < 1e-3


@needs_demo
@pytest.mark.parametrize("options, words", [
    (("--precision", "bf16"), ("fp32 only", "--precision fp32")),
    (("--precision", "fp16"), ("fp32 only", "--engine torch")),
    (("--batch-norm", "running"), ("exported with batch-norm 'slice'", "--engine torch")),
])
def test_options_the_onnx_engine_cannot_honour_are_refused_in_one_line(options, words, hand):
    folder, t1 = hand
    out = folder / "refused.nrrd"
    result = cli("synthesize", DEMO_ONNX, t1, out, *options)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()


def test_onnx_devices_map_to_execution_providers():
    import onnxruntime as ort

    from T1ToT2Lib.core.errors import T1ToT2Error
    from T1ToT2Lib.inference.onnx_engine import providers_for_device

    available = ort.get_available_providers()
    assert providers_for_device("cpu") == ["CPUExecutionProvider"]
    assert providers_for_device("auto")[-1] == "CPUExecutionProvider"
    assert set(providers_for_device("auto")) <= set(available)
    for device, provider in (("cuda", "CUDAExecutionProvider"), ("mps", "CoreMLExecutionProvider")):
        if provider in available:
            assert providers_for_device(device)[0] == provider
        else:
            with pytest.raises(T1ToT2Error, match="--device cpu"):
                providers_for_device(device)


class _OutOfMemoryOnce:
    """A predictor whose accelerator runs out of memory on the first batch (the pipeline's contract)."""

    engine, where = "fake", "fake:0"

    def __init__(self, inner, fail=True):
        self.inner, self.fail = inner, fail

    def allocate(self, *shape):
        return self.inner.allocate(*shape)

    def predict(self, n):
        if self.fail:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.predict(n)

    def is_out_of_memory(self, exc):
        return self.fail and "out of memory" in str(exc)

    def on_cpu(self):
        return _OutOfMemoryOnce(self.inner, fail=False)


@needs_demo
@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_out_of_memory_reruns_on_the_cpu_with_a_note_for_both_engines(engine, hand):
    from T1ToT2Lib.inference import pipeline

    _, t1_path = hand
    t1 = read_volume(t1_path)
    model = pipeline.load_any(DEMO_ONNX if engine == "onnx" else DEMO_MODEL)
    reference = pipeline.synthesize(model, t1, pipeline.make_predictor(model, "cpu"), plane="coronal")
    fallback = pipeline.synthesize(model, t1, _OutOfMemoryOnce(pipeline.make_predictor(model, "cpu")), plane="coronal")
    np.testing.assert_array_equal(fallback.array, reference.array)
    assert any("ran out of memory" in note for note in fallback.meta["notes"])


@needs_demo
@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_progress_events_arrive_during_the_prior_stage(engine, hand):
    """The trees run before the first slice: their stage reports chunks with an ETA, then the network's."""
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    _, t1_path = hand
    events = []
    synthesize_volume(DEMO_ONNX if engine == "onnx" else DEMO_MODEL, read_volume(t1_path), plane="coronal",
                      device="cpu", progress=events.append)
    stages = [e["stage"] for e in events if "stage" in e]
    assert stages.index("prepare") < stages.index("prior") < stages.index("slices")
    prior = [e for e in events if e.get("stage") == "prior"]
    total = prior[0]["total"]
    assert any(0 < e["done"] < total for e in prior)  # a chunk reported while the stage still ran
    assert prior[-1]["done"] == total
    assert all(e["eta_s"] is not None and e["eta_s"] >= 0 for e in prior if e["done"])
    assert [e["done"] for e in prior] == sorted(e["done"] for e in prior)
    slices = [e for e in events if e.get("stage") == "slices"]
    assert slices[-1]["done"] == slices[-1]["total"] == read_volume(t1_path).shape[1]  # coronal: axis j


def test_a_stage_that_makes_no_progress_still_reports_within_the_interval():
    """The heartbeat: one long chunk (a slab of trees) must not leave the bar standing still."""
    events, second = [], threading.Event()

    def emit(event):
        events.append(event)
        if len(events) >= 2:
            second.set()

    with StageProgress(emit, "prior", 10, interval=0.05) as stage:
        assert second.wait(timeout=30), "no heartbeat event"  # nothing was updated meanwhile
        stage.update(5)
    assert events[0]["done"] == 0 and events[0]["eta_s"] is None
    assert events[1]["stage"] == "prior" and events[1]["elapsed_s"] >= events[0]["elapsed_s"]
    assert events[-1]["done"] == 5 and events[-1]["eta_s"] is not None
