"""Synthesis without PyTorch: export a model file to ONNX, run it with ONNX Runtime.

``t1tot2 export-onnx MODEL.safetensors OUT.onnx`` writes the generator as it
runs at synthesis time (eval mode, batch-norm layers over each slice's own
statistics) with dynamic batch, height and width axes, and carries the model
file's metadata along (architecture, planes, input channels, intensity scales,
training summary, the synthetic-image notice) in the ONNX metadata.
``t1tot2 synthesize OUT.onnx T1 T2 --engine onnx`` (or ``auto``, which picks
ONNX Runtime for an ``.onnx`` file, or when torch is absent and an exported
``.onnx`` sits beside the ``.safetensors``) then runs the same pipeline as the
torch engine (:mod:`T1ToT2Lib.inference.pipeline`) with an :class:`OnnxPredictor`:
``--device`` picks the execution providers, fp32 only.
Nothing here imports torch except :func:`export_onnx`.

ONNX Runtime is a small install (CPU, CUDA or DirectML providers), which is why
the Slicer module can synthesize without the 2 GB PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path, json_default
from ..core.errors import T1ToT2Error

#: ONNX opset the exporter targets (ONNX Runtime 1.16 and later run it).
OPSET = 17
#: metadata_props keys in the exported file.
FORMAT_KEY, FORMAT = "t1tot2_format", "t1tot2-onnx"
METADATA_KEY = "t1tot2_metadata"
#: The feature-regression trees of a refiner, as base64 arrays (the trees are data; nothing is unpickled).
PRIOR_KEY = "t1tot2_prior_arrays"
ENGINES = ("auto", "torch", "onnx")


@dataclass
class OnnxModel:
    """An exported model ready for ONNX Runtime; the same fields synthesis reads from a LoadedModel."""

    session: object
    config: dict
    metadata: dict
    planes: list
    in_channels: int
    t2_scale: float
    t1_percentile: float
    multiple: int
    path: Path | None = None
    name: str = field(default="")
    prior: object = None  # the feature-regression stage of a refiner: numpy and scikit-learn, no torch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(n, in_channels, h, w) float32 -> (n, h, w)."""
        inputs = {self.session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run(None, inputs)[0][:, 0]


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def torch_available() -> bool:
    """Whether torch can be imported (a broken or blocked install counts as absent)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --- export --------------------------------------------------------------------------------------
def export_onnx(model_path, out_path, opset: int = OPSET, batch_norm: str = "slice") -> Path:
    """Write the model file's generator as ``out_path`` (.onnx) with its metadata; returns the path."""
    import torch

    from ..networks import FITTED, uses_prior
    from ..networks.modelfile import load_model
    from .predict_torch import inference_generator

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise T1ToT2Error(f"cannot write '{out_path.name}': an ONNX model file must end in .onnx")
    loaded = load_model(model_path, device="cpu")
    if loaded.config.get("arch") in FITTED and not uses_prior(loaded.config):  # a table: nothing to trace
        raise T1ToT2Error("the look-up baseline is a table, not a network: synthesize it with the torch engine")
    generator = inference_generator(loaded.generator, batch_norm)
    side = max(loaded.multiple, 16)
    channels = loaded.in_channels * (2 if loaded.prior is not None else 1)  # a refiner also reads the prior's slices
    example = torch.zeros(1, channels, side, side * 2)
    axes = {0: "batch", 2: "height", 3: "width"}
    metadata = dict(loaded.metadata)
    metadata["onnx"] = {"multiple": int(loaded.multiple), "opset": int(opset), "batch_norm": batch_norm,
                        "source": Path(model_path).name}
    with atomic_path(out_path) as tmp:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes about shape checks that are constant for a traced graph
            torch.onnx.export(generator, (example,), str(tmp), dynamo=False, opset_version=int(opset),
                              input_names=["t1"], output_names=["t2"], dynamic_axes={"t1": axes, "t2": axes})
        import onnx

        proto = onnx.load(str(tmp))
        props = [(FORMAT_KEY, FORMAT), (METADATA_KEY, json.dumps(metadata, default=json_default))]
        if loaded.prior is not None:
            props.append((PRIOR_KEY, _encode_arrays(loaded.prior.to_tensors("prior"))))
        for key, value in props:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.doc_string = "SYNTHETIC T2 generator exported by T1ToT2: images it makes are not for diagnosis"
        onnx.save(proto, str(tmp))
    return out_path


# --- load and run --------------------------------------------------------------------------------
def default_providers() -> list:
    """ONNX Runtime providers, fastest first: CUDA, DirectML, CoreML when built in, always the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
    return [p for p in preferred if p in available] + ["CPUExecutionProvider"]


def _encode_arrays(tensors: dict) -> str:
    import base64

    return json.dumps({name: {"dtype": str(t.numpy().dtype), "data": base64.b64encode(t.numpy().tobytes()).decode("ascii")}
                       for name, t in tensors.items()})


def _decode_arrays(text: str) -> dict:
    import base64

    allowed = {"float64", "int64", "uint8", "float32", "int32"}
    try:
        entries = json.loads(text)
        if not all(entry["dtype"] in allowed for entry in entries.values()):
            raise ValueError("unexpected dtype")
        return {name: np.frombuffer(base64.b64decode(entry["data"]), dtype=entry["dtype"]).copy()
                for name, entry in entries.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise T1ToT2Error("the ONNX model's tree arrays are damaged: export it again") from None


def load_onnx_model(path, providers=None) -> OnnxModel:
    """An exported ``.onnx`` model with its T1ToT2 metadata, in an ONNX Runtime session."""
    path = Path(path)
    if not path.is_file():
        raise T1ToT2Error(f"ONNX model '{path}' does not exist: export one with 't1tot2 export-onnx MODEL OUT.onnx'")
    if not onnxruntime_available():
        raise T1ToT2Error("ONNX Runtime is not installed: pip install onnxruntime (or use --engine torch)")
    session = _session(path, providers or default_providers())
    props = session.get_modelmeta().custom_metadata_map
    if props.get(FORMAT_KEY) != FORMAT or METADATA_KEY not in props:
        raise T1ToT2Error(f"'{path.name}' is an ONNX model but not one exported by T1ToT2: use 't1tot2 export-onnx'")
    meta = json.loads(props[METADATA_KEY])
    config = meta["config"]
    intensity = meta.get("intensity", {})
    prior = None
    if meta.get("prior"):
        from ..networks.feature_regression import FeatureRegressor

        if PRIOR_KEY not in props:
            raise T1ToT2Error(f"'{path.name}' needs its feature-regression trees but carries none: export it again")
        prior = FeatureRegressor.from_tensors(_decode_arrays(props[PRIOR_KEY]), meta["prior"])
    return OnnxModel(
        session=session, config=config, metadata=meta, planes=list(meta.get("planes") or []),
        in_channels=int(meta["in_channels"]), t2_scale=float(intensity.get("t2_scale", 1.0)),
        t1_percentile=float(intensity.get("t1_percentile", 99.5)), multiple=int(meta["onnx"]["multiple"]),
        path=path, name=f"{config.get('arch', 'model')} ({path.name})", prior=prior)


class OnnxPredictor:
    """The ONNX Runtime predictor of the synthesis pipeline: an :class:`OnnxModel`'s session on the execution
    providers that ``--device`` names (see :func:`providers_for_device`), float32 only."""

    engine = "onnx"

    def __init__(self, model: OnnxModel, providers: list):
        self.model = model
        self.session = model.session
        if list(self.session.get_providers()) != list(providers):
            self.session = _session(model.path, providers)
        self._buffer = None

    @classmethod
    def for_model(cls, model: OnnxModel, device="auto", precision: str = "fp32", batch_norm: str = "slice") -> "OnnxPredictor":
        from ..core.devices import check_precision

        if check_precision(precision) not in ("fp32", "auto"):
            raise T1ToT2Error(f"the ONNX engine runs in fp32 only, not {precision}: use --precision fp32, or --engine torch "
                              "with the .safetensors model")
        exported = str(model.metadata.get("onnx", {}).get("batch_norm", "slice"))
        if batch_norm != exported:
            raise T1ToT2Error(f"'{model.path.name if model.path else 'the ONNX model'}' was exported with batch-norm "
                              f"'{exported}', not '{batch_norm}': use --batch-norm {exported}, or --engine torch")
        requested = providers_for_device(device)
        predictor = cls(model, requested)
        if requested[0] != "CPUExecutionProvider" and str(device) != "auto" and requested[0] not in predictor.session.get_providers():
            raise T1ToT2Error(f"ONNX Runtime could not start {requested[0]} for --device {device} (driver or libraries "
                              "missing): use --device cpu (or auto)")
        return predictor

    @property
    def where(self) -> str:
        return str(self.session.get_providers()[0])

    def allocate(self, batch: int, channels: int, height: int, width: int) -> np.ndarray:
        self._buffer = np.empty((batch, channels, height, width), dtype=np.float32)
        return self._buffer

    def predict(self, n: int) -> np.ndarray:
        inputs = {self.session.get_inputs()[0].name: self._buffer[:n]}
        return self.session.run(None, inputs)[0][:, 0]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        on_cpu = self.session.get_providers()[0] == "CPUExecutionProvider"
        return not on_cpu and ("out of memory" in text or "failed to allocate memory" in text)

    def on_cpu(self) -> "OnnxPredictor":
        return OnnxPredictor(self.model, ["CPUExecutionProvider"])


def providers_for_device(device="auto") -> list:
    """ONNX Runtime execution providers for ``--device``: auto = :func:`default_providers`; cpu = the CPU; cuda[:N] =
    CUDA (device N); mps = CoreML.  A device whose provider this ONNX Runtime lacks is refused in one line, as the
    torch engine refuses a GPU it cannot see."""
    import onnxruntime as ort

    from ..core.devices import DEVICES

    name = str(device or "auto").lower()
    base, _, index = name.partition(":")
    if base not in DEVICES:
        raise T1ToT2Error(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    if base == "auto":
        return default_providers()
    if base == "cpu":
        return ["CPUExecutionProvider"]
    provider = {"cuda": "CUDAExecutionProvider", "mps": "CoreMLExecutionProvider"}[base]
    if provider not in ort.get_available_providers():
        hint = "pip install onnxruntime-gpu" if base == "cuda" else "an ONNX Runtime built with CoreML (macOS)"
        label = "CUDA" if base == "cuda" else "MPS (CoreML)"
        raise T1ToT2Error(f"{label} was requested but this ONNX Runtime has no {provider} ({hint}): use --device cpu (or auto)")
    if base == "cuda" and index:
        return [(provider, {"device_id": int(index)}), "CPUExecutionProvider"]
    return [provider, "CPUExecutionProvider"]


def _session(path, providers):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise T1ToT2Error(f"'{Path(path).name}' is not a readable ONNX model ({first}): export it again") from None


# --- engine choice for `t1tot2 synthesize` -------------------------------------------------------
def resolve_engine(engine: str, model_path) -> tuple:
    """("torch"|"onnx", model path to use) for ``--engine`` and the MODEL argument; one-line errors otherwise.

    auto: an ``.onnx`` file runs on ONNX Runtime; a ``.safetensors`` file runs on torch when torch imports,
    else on the ``.onnx`` exported beside it (same name, ``.onnx`` suffix) when there is one.
    """
    if engine not in ENGINES:
        raise T1ToT2Error(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    path = Path(model_path)
    is_onnx = path.suffix.lower() == ".onnx"
    sibling = path.with_suffix(".onnx")
    if engine == "torch":
        if is_onnx:
            raise T1ToT2Error(f"'{path.name}' is an ONNX model: run it with --engine onnx (or auto)")
        return "torch", path
    if engine == "onnx":
        if is_onnx:
            return "onnx", path
        if sibling.is_file():
            return "onnx", sibling
        raise T1ToT2Error(f"no ONNX model for '{path.name}': export one with 't1tot2 export-onnx {path.name} {sibling.name}'")
    if is_onnx:
        return "onnx", path
    if torch_available():
        return "torch", path
    if sibling.is_file():
        return "onnx", sibling
    raise T1ToT2Error(f"PyTorch is not installed and '{sibling.name}' does not exist: install torch, or export the "
                      f"model once with 't1tot2 export-onnx {path.name} {sibling.name}' where torch is installed")


