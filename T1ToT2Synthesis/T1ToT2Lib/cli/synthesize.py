"""``t1tot2 synthesize``: its arguments, checked and handed to the library."""

from __future__ import annotations

import json
import sys
import time

from ..core.errors import T1ToT2Error
from ..inference.synthesize import (
    BATCH_NORM_MODES,
    PLANE_MODES,
    default_plane,
    synthesize_file,
)


# --- command line ----------------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser("synthesize", help="make a synthetic T2 volume from a T1 volume with a model file")
    p.add_argument("model", help="model file (.safetensors) written by 't1tot2 train'")
    p.add_argument("t1", help="T1 volume (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("out", help="output volume (.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--plane", default="auto", choices=("auto", *PLANE_MODES),
                   help="slice plane, or 'fuse' to average all three; auto (default): fuse for a model trained on all "
                        "three planes, else the plane it was trained on")
    p.add_argument("--series-uid", help="SeriesInstanceUID of the T1 when T1 is a DICOM folder with several series")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--batch", type=int, default=8, help="slices per forward pass")
    p.add_argument("--batch-norm", default="slice", choices=BATCH_NORM_MODES,
                   help="batch-norm statistics: each slice's own (as the reference Pix2Pix test) or the running ones")
    p.add_argument("--uncertainty", metavar="OUT", help="also write the error map (expected |error| per voxel, T2 units) "
                   "to OUT (.nii.gz, .nrrd, .mha), on the T1's grid")
    p.add_argument("--progress", default="bar", choices=("bar", "json", "none"))
    p.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"),
                   help="auto (default): ONNX Runtime for an .onnx model or when torch is absent (using the .onnx "
                        "exported beside the model file), else PyTorch; see 't1tot2 export-onnx'")
    p.set_defaults(func=run_synthesize)


def run_synthesize(args) -> int:
    from ..inference.onnx_engine import resolve_engine
    from ..networks.modelfile import load_model
    from .onnx import run_synthesize_onnx

    engine, model_path = resolve_engine(getattr(args, "engine", "auto"), args.model)
    if engine == "onnx":
        return run_synthesize_onnx(args, model_path)
    started = time.time()
    model = load_model(args.model)  # fails early, before the T1 is read, on a bad model file
    bar = None

    def emit_json(event):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    def emit_bar(event):
        nonlocal bar
        from tqdm import tqdm

        if event.get("event") != "slices":
            return
        if bar is None:
            bar = tqdm(total=event["total"], unit="slice", desc="synthesize", file=sys.stderr)
        bar.n = event["done"]
        bar.refresh()

    progress = {"json": emit_json, "bar": emit_bar, "none": None}[args.progress]
    plane = default_plane(model) if args.plane == "auto" else args.plane
    notes = []
    try:
        path = synthesize_file(model, args.t1, args.out, series_uid=args.series_uid, plane=plane, device=args.device,
                               precision=args.precision, batch_size=args.batch, progress=progress,
                               batch_norm=args.batch_norm, uncertainty_path=args.uncertainty, notes=notes)
    except T1ToT2Error as exc:
        if args.progress == "json":
            emit_json({"event": "error", "message": str(exc)})
        raise
    finally:
        if bar is not None:
            bar.close()
    if args.progress == "json":
        # The notes (also on stderr as "note: ...") travel with the result, for the Slicer panel's status line.
        emit_json({"event": "done", "output": str(path), "seconds": round(time.time() - started, 2), "notes": notes})
    else:
        print(f"synthetic T2 written to {path}", file=sys.stderr)
        if args.uncertainty:
            print(f"its error map written to {args.uncertainty}", file=sys.stderr)
    return 0
