"""``t1tot2 serve``: its arguments, checked and handed to the browser front end (:mod:`T1ToT2Lib.web`)."""

from __future__ import annotations

import os

from ..core.errors import T1ToT2Error
from ..web import default_model
from ..web.safety import DEFAULT_UPLOAD_LIMIT


def parse_size(text: str) -> int:
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
    p.add_argument("--upload-limit", type=parse_size, default=DEFAULT_UPLOAD_LIMIT, metavar="SIZE",
                   help="largest upload, e.g. 512M (default) or 2G")
    p.add_argument("--max-sessions", type=int, default=4, help="browser sessions at once (default 4)")
    p.add_argument("--idle-timeout", type=float, default=600.0, metavar="S",
                   help="end a session this many seconds after its page was closed (default 600)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ..web.launcher import serve

    if args.data and not os.path.isdir(args.data):
        raise T1ToT2Error(f"--data '{args.data}' is not a folder: give the folder of volumes the page may open")
    model = args.model or default_model()
    if model is not None and not os.path.isfile(model):
        raise T1ToT2Error(f"--model '{model}' is not a file: give a .safetensors or .onnx model file")
    if args.upload_limit <= 0 or args.max_sessions <= 0:
        raise T1ToT2Error("--upload-limit and --max-sessions must be positive")
    return serve(host=args.host, port=args.port, data_dir=args.data, model_path=model, upload_limit=args.upload_limit,
                 max_sessions=args.max_sessions, idle_timeout=args.idle_timeout, device=args.device)
