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
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"),
                   help="PyTorch: auto = CUDA, then MPS, then the CPU; ONNX Runtime: auto = its CUDA, DirectML or CoreML "
                        "provider when built in, else the CPU (cuda and mps are refused where the provider is absent)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default); bf16/fp16 run under torch.autocast (the ONNX engine runs fp32 only)")
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
    """Both engines: the model (``--engine``, :func:`resolve_engine`) is read first, so a bad model file fails
    before the T1 is read; every option reaches the pipeline, and one an engine cannot honour is refused there."""
    from ..inference.onnx_engine import resolve_engine
    from ..inference.pipeline import load_any

    engine, model_path = resolve_engine(getattr(args, "engine", "auto"), args.model)
    started = time.time()
    model = load_any(model_path)
    progress, close = _progress_emitter(args.progress)
    plane = default_plane(model) if args.plane == "auto" else args.plane
    notes = []
    try:
        path = synthesize_file(model, args.t1, args.out, series_uid=args.series_uid, plane=plane, device=args.device,
                               precision=args.precision, batch_size=args.batch, progress=progress,
                               batch_norm=args.batch_norm, uncertainty_path=args.uncertainty, notes=notes)
    except T1ToT2Error as exc:
        if args.progress == "json":
            _emit_json({"event": "error", "message": str(exc)})
        raise
    finally:
        close()
    if args.progress == "json":
        # The notes (also on stderr as "note: ...") travel with the result, for the Slicer panel's status line.
        _emit_json({"event": "done", "output": str(path), "engine": engine, "seconds": round(time.time() - started, 2),
                    "notes": [str(n) for n in notes]})
    else:
        print(f"synthetic T2 written to {path} ({'ONNX Runtime' if engine == 'onnx' else 'PyTorch'}, "
              f"{time.time() - started:.1f} s)", file=sys.stderr)
        if args.uncertainty:
            print(f"its error map written to {args.uncertainty}", file=sys.stderr)
    return 0


def _emit_json(event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _progress_emitter(kind: str):
    """(callback, close) for --progress: JSON lines, a tqdm bar per stage on stderr, or nothing."""
    if kind == "json":
        return _emit_json, lambda: None
    if kind == "none":
        return None, lambda: None
    bars = {}

    def emit_bar(event):
        from tqdm import tqdm

        stage = event.get("stage")
        if stage is None or "total" not in event:
            return
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            unit = "slice" if stage in ("slices", "prior") else "step"
            bars[stage] = tqdm(total=event["total"], unit=unit, desc=stage, file=sys.stderr)
        bars[stage].n = event["done"]
        bars[stage].refresh()

    return emit_bar, lambda: [bar.close() for bar in bars.values()]
