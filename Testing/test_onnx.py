"""ONNX export and synthesis without PyTorch: same output as the torch engine, in a process where torch cannot load."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from T1ToT2Lib.inference import onnx_engine
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.io.files import read_volume, write_volume

from conftest import cropped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "Resources" / "demo_model.safetensors"
needs_demo_model = pytest.mark.skipif(not DEMO_MODEL.is_file(), reason="Resources/demo_model.safetensors is absent")

#: Runs the command line with torch made unimportable (as in a Slicer without the PyTorch extension).
NO_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        # 'import torch' raises ImportError and torch stays out of sys.modules, as on a machine without it.

        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"No module named {name!r} (blocked for this test)")
            return None

    sys.meta_path.insert(0, NoTorch())
    from T1ToT2Lib.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def cli(*args, block_torch=False, cwd=None):
    argv = [sys.executable, "-c", NO_TORCH, *map(str, args)] if block_torch else [
        sys.executable, "-m", "T1ToT2Lib.cli", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    """A crop of the phantom's right hand around the thumb (keeps the test to seconds)."""
    from T1ToT2Lib.phantom.render import make_phantom

    volumes = make_phantom("small", seed=0)
    t1 = volumes["right_t1"]
    k, j, i = (np.array(t1.shape) // 2)
    folder = tmp_path_factory.mktemp("onnx")
    path = write_volume(cropped(t1, k=slice(k - 20, k + 20), i=slice(i - 24, i + 24)), folder / "t1.nrrd")
    return folder, path


@needs_demo_model
def test_export_then_synthesize_without_torch_matches_torch(hand):
    folder, t1_path = hand
    onnx_path = folder / "demo.onnx"
    result = cli("export-onnx", DEMO_MODEL, onnx_path)
    assert result.returncode == 0, result.stderr
    assert onnx_path.is_file() and not list(folder.glob(".demo*"))  # written atomically

    # The metadata travelled: planes, channels, scales, the synthetic notice.
    from T1ToT2Lib.networks.modelfile import read_metadata

    model = onnx_engine.load_onnx_model(onnx_path)
    source = read_metadata(DEMO_MODEL)
    assert model.planes == source["planes"] and model.in_channels == source["in_channels"]
    assert model.t2_scale == pytest.approx(float(source["intensity"]["t2_scale"]))
    from T1ToT2Lib.networks import required_multiple

    assert model.config == source["config"] and model.multiple == required_multiple(source["config"])
    assert (model.prior is not None) == ("prior" in source)  # a refiner carries its trees inside the .onnx

    torch_out, onnx_out = folder / "torch.nrrd", folder / "onnx.nrrd"
    assert cli("synthesize", DEMO_MODEL, t1_path, torch_out, "--plane", "coronal", "--engine", "torch",
               "--progress", "none").returncode == 0
    result = cli("synthesize", onnx_path, t1_path, onnx_out, "--plane", "coronal", "--engine", "onnx",
                 "--progress", "json", block_torch=True)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done" and events[-1]["engine"] == "onnx"
    assert [e["done"] for e in events if e["event"] == "slices"][-1] == read_volume(t1_path).shape[1]
    reference, candidate = read_volume(torch_out), read_volume(onnx_out)
    assert candidate.same_geometry(read_volume(t1_path), tol=1e-6)
    relative_rms = np.sqrt(np.mean((candidate.array - reference.array) ** 2)) / np.sqrt(np.mean(reference.array ** 2))
    assert relative_rms < 1e-3, relative_rms
    assert reference.array.std() > 0


@needs_demo_model
def test_a_trained_cnn_stage_exports_and_leaves_the_air_to_the_trees_on_both_engines(hand):
    """The bundled model with a CNN stage that corrects (its head set to non-zero values): its ONNX export gives what
    torch gives, and where the trees' estimate is air, beyond a 2-voxel rim, both give the trees' estimate."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from scipy import ndimage

    from T1ToT2Lib.networks.refiner import FOREGROUND_LEVEL

    folder, t1_path = hand
    tensors = load_file(str(DEMO_MODEL))
    with safe_open(str(DEMO_MODEL), framework="pt") as handle:
        header = handle.metadata()
    (weight,) = [k for k in tensors if k.endswith("head.weight")]
    tensors[weight] = torch.randn(tensors[weight].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    tensors[weight.replace("weight", "bias")] = torch.full_like(tensors[weight.replace("weight", "bias")], 0.02)
    corrected = folder / "corrected.safetensors"
    save_file(tensors, str(corrected), metadata=header)
    assert cli("export-onnx", corrected, folder / "corrected.onnx").returncode == 0
    outputs = {}
    for name, model, engine in (("trees", DEMO_MODEL, "torch"), ("torch", corrected, "torch"),
                                ("onnx", folder / "corrected.onnx", "onnx")):
        result = cli("synthesize", model, t1_path, folder / f"{name}.nrrd", "--plane", "axial", "--engine", engine,
                     "--progress", "none")
        assert result.returncode == 0, result.stderr
        outputs[name] = read_volume(folder / f"{name}.nrrd").array
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], rtol=1e-4, atol=0.05)
    changed = np.abs(outputs["torch"] - outputs["trees"]) > 0.05
    assert changed.mean() > 0.2  # the correction is there
    level = FOREGROUND_LEVEL * float(json.loads(header["intensity"])["t2_scale"])  # in T2 units
    obj = ndimage.binary_dilation(outputs["trees"] > level, structure=np.ones((1, 5, 5), bool))  # axial slices
    assert (~obj).sum() > 1000 and not changed[~obj].any()


@needs_demo_model
def test_auto_engine_uses_the_exported_model_beside_the_file_when_torch_is_absent(hand):
    folder, t1_path = hand
    model = folder / "auto.safetensors"
    model.write_bytes(DEMO_MODEL.read_bytes())
    result = cli("synthesize", model, t1_path, folder / "x.nrrd", "--plane", "coronal", block_torch=True)
    assert result.returncode == 2 and "t1tot2 export-onnx auto.safetensors auto.onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # a one-line error, no traceback
    assert cli("export-onnx", model, folder / "auto.onnx").returncode == 0
    result = cli("synthesize", model, t1_path, folder / "auto_out.nrrd", "--plane", "fuse", "--progress", "json",
                 block_torch=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["engine"] == "onnx"


def test_engine_choice_and_its_errors(tmp_path):
    model = tmp_path / "m.safetensors"
    assert onnx_engine.resolve_engine("torch", model) == ("torch", model)
    assert onnx_engine.resolve_engine("auto", tmp_path / "m.onnx") == ("onnx", tmp_path / "m.onnx")
    with pytest.raises(T1ToT2Error, match="export-onnx m.safetensors m.onnx"):
        onnx_engine.resolve_engine("onnx", model)
    (tmp_path / "m.onnx").write_bytes(b"")
    assert onnx_engine.resolve_engine("onnx", model) == ("onnx", tmp_path / "m.onnx")
    with pytest.raises(T1ToT2Error, match="is an ONNX model: run it with --engine onnx"):
        onnx_engine.resolve_engine("torch", tmp_path / "m.onnx")
    with pytest.raises(T1ToT2Error, match="not a readable ONNX model"):
        onnx_engine.load_onnx_model(tmp_path / "m.onnx")
    result = cli("export-onnx", model, tmp_path / "out.txt")
    assert result.returncode == 2 and "an ONNX model file must end in .onnx" in result.stderr


BUNDLED_ONNX = ROOT / "Resources" / "demo_model.onnx"


@pytest.mark.skipif(not BUNDLED_ONNX.is_file(), reason="Resources/demo_model.onnx is absent")
def test_onnx_synthesis_reports_the_voxel_size_note_in_its_done_event(hand):
    """What the Slicer panel shows: a 1.5 mm T1 interpolated to 1 mm through the bundled 1.5 mm ONNX model, torch
    absent: the ONNX engine reads the interpolation as the torch one does (one pipeline) and says so."""
    from T1ToT2Lib.inference.preprocess import resample_to_spacing

    folder, t1_path = hand
    fine = resample_to_spacing(read_volume(t1_path), (1.0, 1.0, 1.0))
    fine_path = write_volume(fine, folder / "t1_1mm.nrrd")
    out = folder / "onnx_1mm.nrrd"
    result = cli("synthesize", BUNDLED_ONNX, fine_path, out, "--plane", "coronal", "--progress", "json", block_torch=True)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["engine"] == "onnx"
    # An NRRD carries no sequence parameters: that is said too, as the torch engine says it.
    (unchecked,) = [n for n in done["notes"] if "no sequence parameters" in n]
    assert f"note: {unchecked}" in result.stderr
    (note,) = [n for n in done["notes"] if n != unchecked]  # the trees ran on the acquired 1.5 mm: no other voxel note
    assert "looks interpolated from about [1.5, 1.5, 1.5] mm onto its [1.0, 1.0, 1.0] mm grid" in note
    assert f"note: {note}" in result.stderr
    assert read_volume(out).same_geometry(read_volume(fine_path), tol=1e-6)  # back on the 1 mm T1's own grid
