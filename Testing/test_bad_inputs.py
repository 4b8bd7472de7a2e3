"""Every bad input a user can give the command line, in one table.

Each row builds the bad input in a fresh folder, runs ``t1tot2 ...`` in-process
(``T1ToT2Lib.cli.main``) and checks what a user sees and what is left on disk:

* exit code 2 (usage and input errors), one line on stderr, no traceback;
* the message's key words: what is wrong and what to do;
* the exact exception class the command raised (re-run through the parsed
  command's function; argparse refusals are ``SystemExit``);
* nothing written: no output under its final name and no ``.partial`` file in
  the output folder.

The rows are listed in ``CASES``; ``test_the_table_is_large_enough`` keeps it at
30 or more.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from T1ToT2Lib.cli import build_parser, main, run
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import write_volume

SHAPE = (6, 26, 28)  # (k, j, i): small, anisotropic, axial slices large enough for the paper's PatchGAN
MARKER_NAME = "PWNED"


def structured(shape=SHAPE, seed=0, offset=0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(k**2 + j**2 + i**2)
    return (offset + 100.0 * (r < 0.8) + 20.0 * (r < 0.4) + rng.normal(0, 2, shape)).astype(np.float32)


def volume(array=None, spacing=(0.9, 1.1, 2.0), origin=(3.0, -4.0, 5.0)) -> Volume:
    return Volume.from_geometry(structured() if array is None else array, spacing=spacing, origin=origin)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Good inputs the bad cases are made from: a T1/T2 pair and a look-up model."""
    from T1ToT2Lib.research.analysis import save_lookup_model

    root = tmp_path_factory.mktemp("assets")
    t1 = volume()
    t2 = t1.with_array(np.abs(200.0 - structured(seed=1)))
    write_volume(t1, root / "t1.nii.gz")
    write_volume(t2, root / "t2.nii.gz")
    save_lookup_model(root / "lookup.safetensors", t1, t2, bins=32)
    _onnx_model(root)
    return root


def _onnx_model(root):
    """A small random Pix2Pix exported to ONNX: the good model of the ONNX engine's rows."""
    pytest.importorskip("onnxruntime")
    import torch

    from T1ToT2Lib import networks
    from T1ToT2Lib.inference.onnx_engine import export_onnx
    from T1ToT2Lib.networks.modelfile import save_model

    torch.manual_seed(0)
    config = networks.default_config("pix2pix", ngf=4, ndf=4, depth=2)
    path = save_model(root / "pix2pix.safetensors", networks.build_generator(config).state_dict(), {
        "config": config, "planes": ["axial"], "in_channels": 1, "intensity": {"t1_percentile": 99.5, "t2_scale": 200.0}})
    export_onnx(path, root / "pix2pix.onnx")


# --------------------------------------------------------------------------- helpers that make bad files
def sitk_write(array, path, is_vector=False, pixel=None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if pixel is not None:
        image = sitk.Cast(image, pixel)
    sitk.WriteImage(image, str(path))
    return path


def nrrd_header_only(path, sizes, data_file="small.raw"):
    """A NRRD whose header claims ``sizes`` (i, j, k) voxels, with a detached data file of a few bytes."""
    (path.parent / data_file).write_bytes(b"\0" * 64)
    path.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(s) for s in sizes)}\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n"
        f"endian: little\nencoding: raw\ndata file: {data_file}\n"
    )
    return path


def model_variant(assets, path, *, config=None, meta=None, tensors=None):
    """The look-up model with some metadata or tensors replaced (written with safetensors directly)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = assets / "lookup.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
    state = load_file(str(source))
    if config is not None:
        cfg = json.loads(header["config"])
        cfg.update(config)
        header["config"] = json.dumps(cfg)
    header.update(meta or {})
    if tensors is not None:
        state = tensors(state)
    save_file(state, str(path), metadata=header)
    return path


def dicom_series(folder, shape=(5, 6, 7), series_description="T1", tags=None):
    from pydicom.uid import generate_uid

    from T1ToT2Lib.io.dicom_write import write_dicom_series

    vol = Volume.from_geometry(structured(shape) + 50.0, spacing=(0.8, 0.8, 1.5), origin=(1.0, 2.0, 3.0))
    base = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), FrameOfReferenceUID=generate_uid(),
                SeriesDescription=series_description, PatientPosition="FFS", BodyPartExamined="HAND")
    base.update(tags or {})
    return write_dicom_series(vol, folder, base, synthetic=False)


def pickle_payload(marker) -> bytes:
    """A pickle that, when loaded, creates ``marker`` (via ``pathlib.Path.touch``)."""
    return pickle.dumps(_Touch(str(marker)), protocol=2)


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# --------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    build: object  # (assets, tmp) -> argv list; may create files under tmp
    words: tuple  # key words the one-line message must contain (case-insensitive)
    error: type = T1ToT2Error
    outputs: tuple = ("out.nii.gz",)  # names under tmp that must not exist afterwards
    marker: bool = False  # a payload marker must not appear
    extra: dict = field(default_factory=dict)


def synth(model, t1, *options):
    """A ``t1tot2 synthesize`` row; with the good model it also runs on the ONNX engine (its exported pix2pix)."""
    def build(a, t, engine="torch"):
        path = model(a, t) if engine == "torch" else a / "pix2pix.onnx"
        return ["synthesize", str(path), str(t1(a, t)), str(t / "out.nii.gz"), "--device", "cpu",
                "--engine", engine, "--progress", "none", *options]
    build.both_engines = model is good_model
    return build


def good_model(a, t):
    return a / "lookup.safetensors"


def good_t1(a, t):
    return a / "t1.nii.gz"


def file_from(fn):
    """A builder for an input made by ``fn(tmp) -> path``."""
    return lambda a, t: fn(t)


def train_args(t1=good_t1, t2=lambda a, t: a / "t2.nii.gz", *options):
    return lambda a, t: ["train", "--t1", str(t1(a, t)), "--t2", str(t2(a, t)), "--out", str(t / "model.safetensors"),
                         "--model", "pix2pix", "--preset", "paper", "--ngf", "4", "--ndf", "4", "--planes", "axial",
                         "--epochs", "1", "--max-steps-per-epoch", "1", "--device", "cpu", "--progress", "none",
                         *options]


TRAIN_OUT = ("model.safetensors", "model.checkpoints")


def write_text(name, text):
    def make(t):
        (t / name).write_text(text)
        return t / name
    return make


def write_bytes(name, data):
    def make(t):
        (t / name).write_bytes(data)
        return t / name
    return make


def array_file(name, array, **kw):
    return lambda t: sitk_write(array, t / name, **kw)


def vol_file(name, array, spacing=(0.9, 1.1, 2.0)):
    return lambda t: write_volume(volume(np.asarray(array, dtype=np.float32), spacing=spacing), t / name) and t / name


def float64_overflow(t):
    """float64 voxels beyond float32's range (they would become Inf): written raw so nothing clips them."""
    array = structured().astype(np.float64)
    array[2, 3, 4] = 1e300
    return sitk_write(array, t / "huge.nrrd")


def with_nan(t):
    array = structured()
    array[1, 2, 3] = np.nan
    return sitk_write(array, t / "nan.nrrd")


def with_inf(t):
    array = structured()
    array[4, 5, 6] = -np.inf
    return sitk_write(array, t / "inf.nrrd")


def truncated_model(a, t):
    data = (a / "lookup.safetensors").read_bytes()
    (t / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return t / "cut.safetensors"


def header_lies(a, t):
    """A safetensors header whose one tensor claims 2^40 floats: refused from the header, before allocating."""
    header = json.dumps({"__metadata__": {"format": "t1tot2-model"},
                         "edges": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}}).encode()
    (t / "lies.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return t / "lies.safetensors"


def torch_pickle_renamed(a, t):
    import torch

    torch.save({"weights": _Touch(str(t / MARKER_NAME))}, t / "evil.safetensors", _use_new_zipfile_serialization=True)
    return t / "evil.safetensors"


def raw_pickle(a, t):
    (t / "evil.safetensors").write_bytes(pickle_payload(t / MARKER_NAME))
    return t / "evil.safetensors"


def raw_pickle_pt(a, t):
    (t / "evil.pt").write_bytes(pickle_payload(t / MARKER_NAME))
    return t / "evil.pt"


def dicom_mixed_series(t):
    dicom_series(t / "dcm" / "a", series_description="T1 A")
    dicom_series(t / "dcm" / "b", series_description="T1 B")
    return t / "dcm"


def dicom_missing_slice(t):
    paths = dicom_series(t / "dcm", shape=(6, 6, 7))
    paths[3].unlink()
    return t / "dcm"


def dicom_mixed_orientation(t):
    import pydicom

    paths = dicom_series(t / "dcm")
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(paths[2])
    return t / "dcm"


def dicom_single_slice(t):
    dicom_series(t / "dcm", shape=(1, 6, 7))
    return t / "dcm"


def dicom_hostile_description(t):
    """Tag values that look like paths and shell: they must never become file names or commands."""
    dicom_series(t / "dcm" / "a", series_description="../../../tmp/x; touch PWNED")
    dicom_series(t / "dcm" / "b", series_description="$(touch PWNED)")
    return t / "dcm"


def under_a_file(name):
    def make(a, t):
        (t / "plain_file").write_text("I am a file, not a folder")
        return t / "plain_file" / name
    return make


CASES = [
    # ---- the T1 file
    Case("missing-file", synth(good_model, lambda a, t: t / "nope.nii.gz"), ("does not exist", "path")),
    Case("dangling-symlink", synth(good_model, file_from(lambda t: (t / "link.nii.gz").symlink_to(t / "gone.nii.gz") or t / "link.nii.gz")), ("does not exist",)),
    Case("unsupported-extension", synth(good_model, file_from(write_text("t1.png", "png?"))), ("not a supported volume file", ".nii.gz")),
    Case("text-named-nifti", synth(good_model, file_from(write_text("t1.nii.gz", "this is not an image"))), ("cannot read", "valid image")),
    Case("truncated-gzip-nifti", synth(good_model, file_from(lambda t: (t / "cut.nii.gz").write_bytes(gzip.compress(b"\x5c\x01\0\0" + b"\0" * 100)) and t / "cut.nii.gz")), ("cannot read",)),
    Case("empty-file", synth(good_model, file_from(write_bytes("empty.nrrd", b""))), ("cannot read",)),
    Case("2d-image", synth(good_model, file_from(array_file("flat.nrrd", structured()[0]))), ("3-D", "2-D")),
    Case("4d-image", synth(good_model, file_from(array_file("time.nii", np.stack([structured()] * 2)))), ("3-D", "4-D")),
    Case("multi-component", synth(good_model, file_from(array_file("rgb.nrrd", np.stack([structured()] * 3, axis=-1), is_vector=True))), ("3 components", "grey-scale")),
    Case("complex-voxels", synth(good_model, file_from(array_file("complex.nii", structured().astype(np.complex64)))), ("complex", "magnitude")),
    Case("float64-overflow", synth(good_model, file_from(float64_overflow)), ("float32", "range")),
    Case("nan-voxels", synth(good_model, file_from(with_nan)), ("1 NaN voxel", "replace")),
    Case("inf-voxels", synth(good_model, file_from(with_inf)), ("1 infinite voxel", "replace")),
    Case("all-zero", synth(good_model, file_from(vol_file("zero.nii.gz", np.zeros(SHAPE)))), ("all zeros",)),
    Case("constant", synth(good_model, file_from(vol_file("flat.nii.gz", np.full(SHAPE, 7.0)))), ("constant", "7")),
    Case("too-small", synth(good_model, file_from(vol_file("tiny.nii.gz", structured((6, 2, 28))))), ("too small", "at least")),
    Case("absurdly-large", synth(good_model, file_from(lambda t: nrrd_header_only(t / "huge.nrrd", (60000, 60000, 60000)))), ("GiB", "memory")),
    Case("zero-size-dimension", synth(good_model, file_from(lambda t: nrrd_header_only(t / "none.nrrd", (0, 5, 5)))), ("cannot read",)),
    # ---- the plane, batch and device
    Case("unknown-plane", synth(good_model, good_t1, "--plane", "oblique"), ("invalid choice", "oblique"), error=SystemExit),
    Case("batch-zero", synth(good_model, good_t1, "--batch", "0"), ("batch size", "at least 1")),
    Case("batch-negative", synth(good_model, good_t1, "--batch", "-3"), ("batch size", "at least 1")),
    Case("cuda-without-gpu", synth(good_model, good_t1, "--device", "cuda"), ("CUDA", "--device cpu")),
    # ---- the model file
    Case("model-missing", synth(lambda a, t: t / "none.safetensors", good_t1), ("does not exist", "t1tot2 train")),
    Case("model-truncated", synth(truncated_model, good_t1), ("not a safetensors file",)),
    Case("model-other-format", synth(lambda a, t: a / "t1.nii.gz", good_t1), ("not a safetensors file",)),
    Case("model-raw-pickle", synth(raw_pickle, good_t1), ("not a safetensors file", "pickle"), marker=True),
    Case("model-raw-pickle-pt", synth(raw_pickle_pt, good_t1), ("not a safetensors file", "pickle"), marker=True),
    Case("model-torch-save-renamed", synth(torch_pickle_renamed, good_t1), ("not a safetensors file", "pickle"), marker=True),
    Case("model-not-t1tot2", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"format": "something-else"}), good_t1), ("not a T1ToT2 model",)),
    Case("model-unknown-arch", synth(lambda a, t: model_variant(a, t / "m.safetensors", config={"arch": "transformer9000"}), good_t1), ("architecture", "transformer9000")),
    Case("model-newer-version", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"format_version": "99"}), good_t1), ("version 99", "upgrade")),
    Case("model-config-not-object", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"config": "[1, 2]"}), good_t1), ("config", "re-export")),
    Case("model-bad-planes", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"planes": "axial,diagonal"}), good_t1), ("planes", "diagonal")),
    Case("model-bad-in-channels", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"in_channels": "many"}), good_t1), ("in_channels", "many")),
    Case("model-bad-intensity", synth(lambda a, t: model_variant(a, t / "m.safetensors", meta={"intensity": json.dumps({"t2_scale": -1})}), good_t1), ("t2_scale", "re-export")),
    Case("model-tensors-mismatch", synth(lambda a, t: model_variant(a, t / "m.safetensors", tensors=lambda s: {**s, "table": s["table"][:5]}), good_t1), ("do not fit", "re-export")),
    Case("model-absurd-tensor", synth(header_lies, good_t1), ("not a safetensors file",)),
    # ---- outputs
    Case("output-under-a-file", lambda a, t: ["synthesize", str(good_model(a, t)), str(good_t1(a, t)), str(under_a_file("out.nii.gz")(a, t)), "--device", "cpu", "--engine", "torch", "--progress", "none"],
         ("not a folder",), outputs=()),
    Case("output-bad-extension", lambda a, t: ["synthesize", str(good_model(a, t)), str(good_t1(a, t)), str(t / "out.png"), "--device", "cpu", "--engine", "torch", "--progress", "none"],
         ("cannot write", ".nii.gz"), outputs=("out.png",)),
    Case("export-dicom-existing-folder", lambda a, t: (t / "series").mkdir() or (t / "series" / "keep.txt").write_text("x") and ["export-dicom", str(good_t1(a, t)), str(t / "series")],
         ("already exists", "--overwrite"), outputs=()),
    Case("export-onnx-existing-file", lambda a, t: (t / "m.onnx").write_text("old") and ["export-onnx", str(good_model(a, t)), str(t / "m.onnx")],
         ("already exists", "--overwrite"), outputs=()),
    # ---- DICOM folders
    Case("dicom-mixed-series", synth(good_model, file_from(dicom_mixed_series)), ("series", "--series-uid")),
    Case("dicom-missing-slice", synth(good_model, file_from(dicom_missing_slice)), ("missing",)),
    Case("dicom-mixed-orientations", synth(good_model, file_from(dicom_mixed_orientation)), ("mixes orientations",)),
    Case("dicom-single-slice", synth(good_model, file_from(dicom_single_slice)), ("too small", "1 ")),
    Case("dicom-no-dicom", synth(good_model, file_from(lambda t: (t / "d").mkdir() or (t / "d" / "x.txt").write_text("x") and t / "d")), ("no DICOM",)),
    Case("dicom-hostile-tags", synth(good_model, file_from(dicom_hostile_description)), ("series", "--series-uid"), marker=True),
    # ---- training
    Case("train-epochs-zero", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--epochs", "0"), ("epochs", "at least 1"), outputs=TRAIN_OUT),
    Case("train-epochs-negative", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--epochs", "-2"), ("epochs", "at least 1"), outputs=TRAIN_OUT),
    Case("train-lr-zero", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--lr", "0"), ("--lr", "positive"), outputs=TRAIN_OUT),
    Case("train-lr-negative", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--lr", "-0.1"), ("--lr", "positive"), outputs=TRAIN_OUT),
    Case("train-lr-nan", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--lr", "nan"), ("--lr", "positive"), outputs=TRAIN_OUT),
    Case("train-batch-zero", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--batch-size", "0"), ("--batch-size", "at least 1"), outputs=TRAIN_OUT),
    Case("train-batch-negative", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--batch-size", "-4"), ("--batch-size", "at least 1"), outputs=TRAIN_OUT),
    Case("train-steps-zero", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--max-steps-per-epoch", "0"), ("steps", "at least 1"), outputs=TRAIN_OUT),
    Case("train-different-size", train_args(good_t1, file_from(vol_file("t2.nii.gz", structured((6, 26, 26))))), ("grid", "--align"), outputs=TRAIN_OUT),
    Case("train-different-geometry", train_args(good_t1, file_from(vol_file("t2.nii.gz", structured(), spacing=(1.0, 1.1, 2.0)))), ("grid", "--align"), outputs=TRAIN_OUT),
    Case("train-unknown-plane", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--planes", "axial,oblique"), ("unknown plane", "oblique"), outputs=TRAIN_OUT),
    Case("train-cuda-without-gpu", train_args(good_t1, lambda a, t: a / "t2.nii.gz", "--device", "cuda"), ("CUDA", "--device cpu"), outputs=TRAIN_OUT),
    Case("train-nan-t2", train_args(good_t1, file_from(with_nan)), ("NaN",), outputs=TRAIN_OUT),
    Case("train-constant-t2", train_args(good_t1, file_from(vol_file("flat.nii.gz", np.full(SHAPE, 3.0)))), ("constant",), outputs=TRAIN_OUT),
    Case("train-model-out-extension", lambda a, t: [x if x != str(t / "model.safetensors") else str(t / "model.pt") for x in train_args()(a, t)],
         ("must end in .safetensors",), outputs=("model.pt", "model.checkpoints")),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".partial" in p.name)


@pytest.fixture(autouse=True)
def _no_cuda(monkeypatch):
    """The CUDA rows must see no GPU even on a machine that has one."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        import onnxruntime
    except ImportError:
        return
    available = [p for p in onnxruntime.get_available_providers() if p != "CUDAExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)


#: Every row, and again on the ONNX engine each synthesize row whose model is the good one.
ENGINE_CASES = [(case, engine) for case in CASES
                for engine in (("torch", "onnx") if getattr(case.build, "both_engines", False) else ("torch",))]


@pytest.mark.parametrize("case, engine", ENGINE_CASES,
                         ids=[c.id if e == "torch" else f"{c.id}-onnx" for c, e in ENGINE_CASES])
def test_bad_input(case, engine, assets, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a payload's relative path would land here
    argv = case.build(assets, tmp_path) if engine == "torch" else case.build(assets, tmp_path, engine=engine)
    before = {p for p in tmp_path.rglob("*")}
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusals
        code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert "Traceback" not in captured.err + captured.out
    lines = [line for line in err.splitlines() if line.strip()]
    if case.error is SystemExit:
        assert lines[-1].startswith("t1tot2 ") and "error:" in lines[-1]
        message = lines[-1]
    else:
        assert len(lines) == 1, err
        message = lines[0]
        assert message.startswith(f"t1tot2 {argv[0]}: error: "), message
    for word in case.words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    for name in case.outputs:
        assert not (tmp_path / name).exists(), f"{name} was written"
    assert leftovers(tmp_path) == []
    assert not (tmp_path / MARKER_NAME).exists() and not Path(MARKER_NAME).exists()
    assert {p for p in tmp_path.rglob("*")} <= before | {tmp_path / "plain_file"}, "something new was written"

    # The exact class the command raised, through the same parsed command.
    args = build_parser().parse_args(argv) if case.error is not SystemExit else None
    if args is not None:
        with pytest.raises(case.error):
            run(args)
        assert not (tmp_path / MARKER_NAME).exists()


# --------------------------------------------------------------------------- untrusted model files
@pytest.mark.parametrize("kind", ["raw-pickle", "torch-save-renamed"])
def test_a_pickle_payload_model_is_refused_and_never_runs(kind, assets, tmp_path, capsys, monkeypatch):
    from T1ToT2Lib.networks.modelfile import load_model, read_metadata

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / MARKER_NAME
    # The payload is live: unpickling it (what torch.load / pickle.load would do) writes the marker.
    pickle.loads(pickle_payload(marker))
    assert marker.exists()
    marker.unlink()

    evil = raw_pickle(assets, tmp_path) if kind == "raw-pickle" else torch_pickle_renamed(assets, tmp_path)
    for loader in (read_metadata, load_model):
        with pytest.raises(T1ToT2Error, match="not a safetensors file"):
            loader(evil)
    code = main(["synthesize", str(evil), str(assets / "t1.nii.gz"), str(tmp_path / "out.nii.gz"), "--engine", "torch",
                 "--device", "cpu", "--progress", "none"])
    assert code == 2 and "pickle" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.nii.gz").exists()


def test_dicom_tag_values_never_become_paths(assets, tmp_path):
    """A hostile SeriesDescription/PatientName in the reference series ends up as tag text only."""
    import pydicom

    from T1ToT2Lib.io.dicom_write import export_dicom_series
    from T1ToT2Lib.io.files import read_volume

    hostile = "../../" + MARKER_NAME + "; $(touch " + MARKER_NAME + ") `id`"
    dicom_series(tmp_path / "ref", series_description=hostile, tags={"PatientName": hostile[:60], "PatientID": "../x"})
    out = tmp_path / "export"
    paths = export_dicom_series(read_volume(assets / "t1.nii.gz"), out, reference=tmp_path / "ref", series_description=hostile)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in paths) and all(p.parent == out for p in paths)
    assert all(name.startswith("SYNT2_") and name.endswith(".dcm") and name[6:-4].isdigit() for name in names)
    assert not list(tmp_path.rglob(MARKER_NAME)) and not Path(MARKER_NAME).exists()
    assert "touch" in str(pydicom.dcmread(paths[0]).SeriesDescription)  # kept as text, nothing ran


# --------------------------------------------------------------------------- write failures and file modes
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_write_failures_during_an_atomic_write_are_one_line(err, assets, tmp_path, capsys, monkeypatch):
    """The OS refuses the final rename (disk full, permission, read-only): one line, exit 2, no temporary file."""
    import T1ToT2Lib.core.atomic as atomic

    real_replace = os.replace

    def failing_replace(src, dst, *a, **kw):
        if str(dst).endswith("out.nii.gz"):
            raise OSError(err, os.strerror(err), str(dst))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    code = main(["synthesize", str(assets / "lookup.safetensors"), str(assets / "t1.nii.gz"), str(tmp_path / "out.nii.gz"),
                 "--engine", "torch", "--device", "cpu", "--progress", "none"])
    err_text = capsys.readouterr().err
    lines = err_text.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err_text, err_text
    expected = {errno.ENOSPC: "disk is full", errno.EACCES: "permission denied", errno.EROFS: "read-only"}[err]
    assert lines[0].startswith("t1tot2 synthesize: error: cannot write") and expected in lines[0]
    assert not (tmp_path / "out.nii.gz").exists() and leftovers(tmp_path) == []


def test_image_writer_failure_mid_file_is_one_line_and_leaves_nothing(assets, tmp_path, capsys, monkeypatch):
    """SimpleITK reports a full disk as a RuntimeError after writing part of the file."""
    import shutil
    from collections import namedtuple

    import SimpleITK as sitk

    def half_write(image, name, *a, **kw):
        Path(name).write_bytes(b"\0" * 100)
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: ...\nITK ERROR: couldn't write")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    code = main(["synthesize", str(assets / "lookup.safetensors"), str(assets / "t1.nii.gz"), str(tmp_path / "out.nii.gz"),
                 "--engine", "torch", "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "disk is full" in err and "GiB" in err, err
    assert not (tmp_path / "out.nii.gz").exists() and leftovers(tmp_path) == []


def test_outputs_and_model_files_get_ordinary_modes(assets, tmp_path):
    """Not mkstemp's 0600: a model or volume written for a group must be readable by it (umask 022 -> 0644)."""
    from T1ToT2Lib.research.analysis import save_lookup_model
    from T1ToT2Lib.io.files import read_volume

    old = os.umask(0o022)
    try:
        t1 = read_volume(assets / "t1.nii.gz")
        model = save_lookup_model(tmp_path / "m.safetensors", t1, t1.with_array(t1.array * 2), bins=16)
        assert main(["synthesize", str(model), str(assets / "t1.nii.gz"), str(tmp_path / "out.nii.gz"),
                     "--engine", "torch", "--device", "cpu", "--progress", "none"]) == 0
        volume_out = write_volume(t1, tmp_path / "v.nrrd")
    finally:
        os.umask(old)
    for path in (model, tmp_path / "out.nii.gz", volume_out):
        assert (path.stat().st_mode & 0o777) == 0o644, (path, oct(path.stat().st_mode))
