"""The model file: one ``.safetensors`` file with the generator's weights and string metadata.

Metadata keys (all strings; JSON where structured):

``format`` ("t1tot2-model"), ``format_version``, ``config`` (network config),
``planes``, ``in_channels``, ``intensity`` (T1 percentile and the T2 scale
seen in training: outputs times ``t2_scale`` are in T2 units), ``training``,
``validation_metrics``, ``t1tot2_version``, ``created``, ``synthetic_notice``.

Loading never unpickles: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .atomic import atomic_path, json_default
from .errors import T1ToT2Error

FORMAT = "t1tot2-model"
FORMAT_VERSION = 1
SYNTHETIC_NOTICE = "outputs are synthetic images, not acquired; not for diagnosis"
REQUIRED_KEYS = ("format", "format_version", "config", "planes", "in_channels", "intensity")
_JSON_KEYS = ("config", "intensity", "training", "validation_metrics")


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


def _open_header(path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise T1ToT2Error(f"model file '{path}' does not exist: check the path or train one with 't1tot2 train'")
    if path.is_dir():
        raise T1ToT2Error(f"'{path}' is a folder, not a model file: pass the .safetensors file inside it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - any parse failure means "not a safetensors file"
        raise T1ToT2Error(
            f"'{path.name}' is not a safetensors file (pickled .pt/.pth checkpoints are refused because loading them can run code): "
            "use a .safetensors model written by 't1tot2 train'"
        ) from None


def read_metadata(path) -> dict:
    """The model file's metadata, JSON fields decoded, without loading any weights."""
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
    meta["in_channels"] = int(meta["in_channels"])
    return meta


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


def load_model(path, device="cpu") -> LoadedModel:
    """Build the generator from the file's config and load its weights (no unpickling)."""
    import torch
    from safetensors.torch import load_file

    from . import networks

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
    )


def model_summary(path) -> str:
    """One line describing a model file, for CLI listings and the Slicer module."""
    meta = read_metadata(path)
    config = meta["config"]
    return (
        f"{Path(path).name}: {config.get('arch')} ngf={config.get('ngf')} planes={','.join(meta['planes'])} "
        f"in_channels={meta['in_channels']} trained {meta.get('created', '?')} (T1ToT2 {meta.get('t1tot2_version', '?')})"
    )
