"""The browser front end, ``t1tot2 serve``: trame-slicer pages over the library's Slicer layer.

* :mod:`.launcher` - the address users open; one session process per browser session, relayed by token.
* :mod:`.page` - one session's page (trame-slicer views, controls, upload and download routes).
* :mod:`.session` - one session's work without the page (scene, synthesis job, profile, metrics, exports).
* :mod:`.safety` - what is let in: data-folder confinement, upload limit, file recognition, DICOM zips.

This package ranks just below :mod:`T1ToT2Lib.cli`: it may import every other layer.
Only :func:`register_cli` is imported by the command line; trame and slicer-core are
imported when a server starts.
"""

from __future__ import annotations

import os

from .safety import DEFAULT_UPLOAD_LIMIT


def _size(text: str) -> int:
    """'512M', '2G', '800k' or a number of bytes."""
    text = str(text).strip().upper().removesuffix("B")
    factor = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in "KMG" else text
    return int(float(number) * factor)


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="a browser front end: synthesize, compare, profile, score and export in a web page",
        description="Serve T1ToT2 in a web browser (trame-slicer: Slicer's own slice and 3-D views). Each browser "
                    "session gets its own process, scene and working folder. Binds 127.0.0.1 unless --host says "
                    "otherwise; there are no accounts and no HTTPS, so serve a network only behind an "
                    "authenticating HTTPS proxy.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--data", metavar="DIR", help="folder whose volumes (NIfTI, NRRD, MHA, DICOM zips) the page may "
                   "open; nothing outside it is reachable")
    p.add_argument("--model", metavar="FILE", help="model file (.safetensors or .onnx); default: the bundled demo model")
    p.add_argument("--upload-limit", type=_size, default=DEFAULT_UPLOAD_LIMIT, metavar="SIZE",
                   help="largest upload, e.g. 512M (default) or 2G")
    p.add_argument("--max-sessions", type=int, default=4, help="browser sessions at once (default 4)")
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="S",
                   help="end a session this many seconds after its page was closed (default 600)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.set_defaults(func=_run)


def default_model():
    """The bundled demo model of a source checkout or a Slicer install, or None."""
    from pathlib import Path

    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "Resources" / "demo_model.safetensors",
                      here.parents[2] / "Resources" / "demo_model.safetensors"):
        if candidate.is_file():
            return candidate
    return None


def _run(args) -> int:
    from ..core.errors import T1ToT2Error
    from .launcher import serve

    if args.data and not os.path.isdir(args.data):
        raise T1ToT2Error(f"--data '{args.data}' is not a folder: give the folder of volumes the page may open")
    model = args.model or default_model()
    if model is not None and not os.path.isfile(model):
        raise T1ToT2Error(f"--model '{model}' is not a file: give a .safetensors or .onnx model file")
    if args.upload_limit <= 0 or args.max_sessions <= 0:
        raise T1ToT2Error("--upload-limit and --max-sessions must be positive")
    return serve(host=args.host, port=args.port, data_dir=args.data, model_path=model, upload_limit=args.upload_limit,
                 max_sessions=args.max_sessions, idle_timeout=args.idle_timeout, device=args.device)
