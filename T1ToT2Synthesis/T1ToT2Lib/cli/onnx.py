"""``t1tot2 onnx``: its arguments, checked and handed to the library."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import T1ToT2Error
from ..inference.onnx_engine import (
    OPSET,
    export_onnx,
    load_onnx_model,
    synthesize_volume_onnx,
    torch_available,
)


def run_synthesize_onnx(args, model_path) -> int:
    """``t1tot2 synthesize`` on ONNX Runtime (called by cli.synthesize.run_synthesize for the onnx engine)."""
    import sys
    import time

    from ..inference.synthesize import default_plane, write_synthetic_volume
    from ..io.files import read_volume

    started = time.time()
    model = load_onnx_model(model_path)  # fails early, before the T1 is read, on a bad model file

    def emit_json(event):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    progress = emit_json if args.progress == "json" else None
    plane = default_plane(model) if args.plane == "auto" else args.plane
    try:
        t1 = read_volume(args.t1, series_uid=getattr(args, "series_uid", None))
        volume = synthesize_volume_onnx(model, t1, plane=plane, batch_size=args.batch, progress=progress)
        path = write_synthetic_volume(volume, args.out)
    except T1ToT2Error as exc:
        if args.progress == "json":
            emit_json({"event": "error", "message": str(exc)})
        raise
    if args.progress == "json":
        emit_json({"event": "done", "output": str(path), "engine": "onnx", "seconds": round(time.time() - started, 2),
                   "notes": [str(n) for n in volume.meta.get("notes") or []]})
    else:
        print(f"wrote {path} (ONNX Runtime, {time.time() - started:.1f} s)")
    return 0


# --- command line ----------------------------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser("export-onnx", help="export a model file's generator to ONNX, for synthesis without PyTorch")
    p.add_argument("model", help="model file (.safetensors) written by 't1tot2 train'")
    p.add_argument("out", help="ONNX file to write (.onnx)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise T1ToT2Error(f"'{out}' already exists: choose another output or pass --overwrite")
    if not torch_available():
        raise T1ToT2Error("export-onnx needs PyTorch to read the model file: run it where torch is installed")
    path = export_onnx(args.model, out, opset=args.opset)
    print(f"wrote {path}")
    return 0
