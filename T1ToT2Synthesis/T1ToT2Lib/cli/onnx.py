"""``t1tot2 export-onnx``: its arguments, checked and handed to the library."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import T1ToT2Error
from ..inference.onnx_engine import (
    OPSET,
    export_onnx,
    torch_available,
)


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
