"""The model file: one ``.safetensors`` file with the generator's weights and string metadata.

Metadata keys (all strings; JSON where structured):

``format`` ("t1tot2-model"), ``format_version``, ``config`` (network config),
``planes``, ``in_channels``, ``intensity`` (T1 percentile and the T2 scale
seen in training: outputs times ``t2_scale`` are in T2 units), ``training``,
``validation_metrics``, ``t1tot2_version``, ``created``, ``synthetic_notice``,
and for models with a feature-regression stage ``prior`` (feature list and tree
summary; the trees themselves are the ``prior.*`` tensors).

Loading never unpickles: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core.atomic import atomic_path, json_default
from ..core.errors import T1ToT2Error

FORMAT = "t1tot2-model"
FORMAT_VERSION = 1
SYNTHETIC_NOTICE = "outputs are synthetic images, not acquired; not for diagnosis"
REQUIRED_KEYS = ("format", "format_version", "config", "planes", "in_channels", "intensity")
_JSON_KEYS = ("config", "intensity", "training", "validation_metrics", "prior", "preprocessing", "correction")
#: Tensors under this prefix belong to the model's feature-regression prior, not to the generator.
PRIOR_PREFIX = "prior."


def _as_string(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return json.dumps(value, sort_keys=True, default=json_default)


def save_model(path, generator_state_dict, metadata: dict) -> Path:
    """Write the generator weights and ``metadata`` to ``path`` atomically.

    ``metadata`` needs at least ``config``, ``planes``, ``in_channels`` and
    ``intensity``; format, version, creation time and the synthetic notice are added.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise T1ToT2Error(f"model file '{path.name}' must end in .safetensors: rename the output")
    missing = [k for k in ("config", "planes", "in_channels", "intensity") if k not in metadata]
    if missing:
        raise T1ToT2Error(f"model metadata lacks {', '.join(missing)}: pass them to save_model")
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "t1tot2_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "synthetic_notice": SYNTHETIC_NOTICE,
        "training": "{}",
        "validation_metrics": "{}",
    }
    header.update({key: _as_string(value) for key, value in metadata.items() if value is not None})
    header["format"], header["format_version"] = FORMAT, str(FORMAT_VERSION)
    # safetensors refuses shared or non-contiguous storage; the weights are small enough to copy.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in generator_state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


#: Bounds checked from the safetensors header before any tensor is allocated.
MAX_HEADER_BYTES = 16 * 2**20
MAX_MODEL_BYTES = 4 * 2**30  # the paper's CycleGAN/UNIT generators are a few hundred MB
MAX_TENSORS = 100_000
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_NOT_SAFETENSORS = ("is not a safetensors file (pickled .pt/.pth checkpoints are refused because loading them can run code): "
                    "use a .safetensors model written by 't1tot2 train'")


def _not_safetensors(path: Path, why: str = "") -> T1ToT2Error:
    return T1ToT2Error(f"'{path.name}' {_NOT_SAFETENSORS}" if not why else
                       f"'{path.name}' {_NOT_SAFETENSORS.split(' (')[0]} ({why}): use a .safetensors model written by 't1tot2 train'")


def read_safetensors_header(path) -> dict:
    """The raw safetensors header of ``path``, checked byte by byte without any unpickling or tensor allocation.

    The file must start with an 8-byte little-endian header length and a JSON object whose tensors have a
    known dtype, a shape of non-negative integers and data offsets that exactly cover ``prod(shape)`` items
    inside the file; the whole file is bounded by :data:`MAX_MODEL_BYTES`.  Anything else (a pickle, a zip
    written by ``torch.save``, a truncated download, a header that lies) is refused in one line.
    """
    import struct

    path = Path(path)
    if not path.exists():
        raise T1ToT2Error(f"model file '{path}' does not exist: check the path or train one with 't1tot2 train'")
    if path.is_dir():
        raise T1ToT2Error(f"'{path}' is a folder, not a model file: pass the .safetensors file inside it")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise T1ToT2Error(f"'{path.name}' is {size / 2**30:.1f} GiB, more than the {MAX_MODEL_BYTES / 2**30:.0f} GiB a T1ToT2 model can be: check the file")
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _not_safetensors(path)
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(MAX_HEADER_BYTES, size - 8):
            raise _not_safetensors(path)
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_safetensors(path) from None
    if not isinstance(header, dict) or len(header) > MAX_TENSORS + 1:
        raise _not_safetensors(path)
    data_size = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _not_safetensors(path, "its metadata is not a map of strings")
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
            raise _not_safetensors(path, f"tensor {name!r} has no known dtype")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(n, int) for n in offsets)):
            raise _not_safetensors(path, f"tensor {name!r} has a malformed shape or offsets")
        items = 1
        for n in shape:
            items *= n
        begin, end = offsets
        if not 0 <= begin <= end <= data_size or end - begin != items * _DTYPE_BYTES[entry["dtype"]]:
            raise _not_safetensors(path, f"tensor {name!r} of shape {shape} does not fit the file; it is truncated or damaged")
    return header


def _open_header(path) -> dict:
    path = Path(path)
    header = read_safetensors_header(path)  # refuses pickles, truncation and absurd sizes before safetensors allocates
    return dict(header.get("__metadata__") or {})


def _schema_error(name: str, key: str, problem: str) -> T1ToT2Error:
    return T1ToT2Error(f"'{name}' has invalid {key} metadata ({problem}): the file is damaged or not from T1ToT2, re-export it")


def _positive_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def validate_metadata(meta: dict, name: str) -> dict:
    """Check the decoded metadata against the model file schema; raises a one-line :class:`T1ToT2Error`."""
    from ..core.volume import PLANES

    config = meta["config"]
    if not isinstance(config, dict):
        raise _schema_error(name, "config", f"a JSON object is needed, got {type(config).__name__}")
    arch = config.get("arch")
    if not isinstance(arch, str) or not arch:
        raise _schema_error(name, "config", "no architecture name 'arch'")
    if not all(isinstance(k, str) for k in config):
        raise _schema_error(name, "config", "keys must be strings")
    planes = meta["planes"]
    unknown = [p for p in planes if p not in PLANES]
    if not planes or unknown:
        raise _schema_error(name, "planes", f"unknown plane(s) {', '.join(map(repr, unknown)) or 'none given'}; expected {', '.join(PLANES)}")
    try:
        in_channels = int(str(meta["in_channels"]).strip())
    except ValueError:
        raise _schema_error(name, "in_channels", f"{meta['in_channels']!r} is not a whole number") from None
    if not 1 <= in_channels <= 64:
        raise _schema_error(name, "in_channels", f"{in_channels} is outside 1..64")
    meta["in_channels"] = in_channels
    intensity = meta["intensity"]
    if not isinstance(intensity, dict):
        raise _schema_error(name, "intensity", "a JSON object is needed")
    for key in ("t2_scale", "t1_percentile"):
        if key in intensity and not _positive_number(intensity[key]):
            raise _schema_error(name, "intensity", f"{key} must be a positive finite number, got {intensity[key]!r}")
    if "t1_percentile" in intensity and intensity["t1_percentile"] > 100:
        raise _schema_error(name, "intensity", f"t1_percentile {intensity['t1_percentile']} is above 100")
    for key in ("training", "validation_metrics", "prior"):
        if key in meta and not isinstance(meta[key], dict):
            raise _schema_error(name, key, "a JSON object is needed")
    return meta


def read_metadata(path) -> dict:
    """The model file's metadata, JSON fields decoded and checked against the schema, without loading any weights."""
    header = _open_header(path)
    name = Path(path).name
    if header.get("format") != FORMAT:
        raise T1ToT2Error(f"'{name}' is a safetensors file but not a T1ToT2 model (no format '{FORMAT}'): use a model written by 't1tot2 train'")
    try:
        version = int(header.get("format_version", ""))
    except ValueError:
        raise T1ToT2Error(f"'{name}' has an unreadable format_version {header.get('format_version')!r}: re-export the model") from None
    if version > FORMAT_VERSION:
        raise T1ToT2Error(
            f"'{name}' uses model format version {version}, newer than this T1ToT2 ({__version__}) reads "
            f"(version {FORMAT_VERSION}): upgrade T1ToT2"
        )
    if version < 1:
        raise T1ToT2Error(f"'{name}' has format_version {version}; T1ToT2 model versions start at 1: re-export the model")
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        raise T1ToT2Error(f"'{name}' lacks metadata {', '.join(missing)}: the file is damaged or incomplete, re-export it")
    meta = dict(header)
    for key in _JSON_KEYS:
        if key in meta:
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                raise T1ToT2Error(f"'{name}' has malformed {key} metadata: the file is damaged, re-export it") from None
    meta["planes"] = [p for p in meta["planes"].split(",") if p]
    return validate_metadata(meta, name)


@dataclass
class LoadedModel:
    generator: object  # torch.nn.Module in eval mode
    config: dict
    metadata: dict
    planes: list
    in_channels: int
    t2_scale: float
    t1_percentile: float
    path: Path | None = None
    multiple: int = 1
    name: str = field(default="")
    prior: object = None  # T1ToT2Lib.networks.feature_regression.FeatureRegressor, for refiner and feature_regression models


def load_model(path, device="cpu") -> LoadedModel:
    """Build the generator from the file's config and load its weights (no unpickling)."""
    import torch
    from safetensors.torch import load_file

    from .. import networks

    if isinstance(path, LoadedModel):
        return path
    meta = read_metadata(path)
    config = meta["config"]
    try:
        generator = networks.build_generator(config)
    except T1ToT2Error:
        raise
    except Exception as exc:  # noqa: BLE001
        raise T1ToT2Error(f"cannot build the network described in '{Path(path).name}' ({exc}): the file may come from another T1ToT2 version") from None
    state = load_file(str(path), device="cpu")
    prior_tensors = {k[len(PRIOR_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(PRIOR_PREFIX)}
    prior = None
    if networks.uses_prior(config) or prior_tensors:
        from .feature_regression import FeatureRegressor

        if "prior" not in meta or not prior_tensors:
            raise T1ToT2Error(f"'{Path(path).name}' needs a feature-regression prior but carries none: the file is damaged, re-export it")
        prior = FeatureRegressor.from_tensors({f"prior.{k}": v for k, v in prior_tensors.items()}, meta["prior"])
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise T1ToT2Error(f"weights in '{Path(path).name}' do not fit its network config ({first}): the file is damaged, re-export it") from None
    generator.to(torch.device(device)).eval()
    intensity = meta["intensity"]
    return LoadedModel(
        generator=generator,
        config=config,
        metadata=meta,
        planes=meta["planes"],
        in_channels=meta["in_channels"],
        t2_scale=float(intensity.get("t2_scale", 1.0)),
        t1_percentile=float(intensity.get("t1_percentile", 99.5)),
        path=Path(path),
        multiple=int(networks.required_multiple(config)),
        name=f"{config.get('arch', 'model')} ({Path(path).name})",
        prior=prior,
    )


def model_summary(path) -> str:
    """One line describing a model file, for CLI listings and the Slicer module."""
    meta = read_metadata(path)
    config = meta["config"]
    return (
        f"{Path(path).name}: {config.get('arch')} ngf={config.get('ngf')} planes={','.join(meta['planes'])} "
        f"in_channels={meta['in_channels']} trained {meta.get('created', '?')} (T1ToT2 {meta.get('t1tot2_version', '?')})"
    )
