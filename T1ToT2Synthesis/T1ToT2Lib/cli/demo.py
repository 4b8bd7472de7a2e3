"""``t1tot2 demo``: its arguments, checked and handed to the library."""

from __future__ import annotations

from ..research.demo import run_demo


def register_cli(subparsers):
    p = subparsers.add_parser("demo", help="phantom → train → synthesize → evaluate → report → DICOM, in minutes on a CPU")
    p.add_argument("out", metavar="OUTDIR", help="output folder (replaced if it holds an earlier demo)")
    p.add_argument("--epochs", type=int, help="constant-rate epochs of the network, and as many decaying ones (default: the recommended schedule)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--size", choices=["small", "full"], default="small", help="phantom size (full: the paper's 0.6 mm grid; use a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: run_demo(args.out, args.epochs, args.device, args.size, args.seed) and 0)
