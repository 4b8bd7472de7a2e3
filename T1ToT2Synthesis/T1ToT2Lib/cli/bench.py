"""``t1tot2 bench``: its arguments, checked and handed to the library."""

from __future__ import annotations

import sys

from ..core.atomic import write_json
from ..research.bench import (
    PRESETS,
    format_table,
    run_benchmarks,
)


def _run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip()) if args.precision else None
    progress = None if args.quiet else (lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    result = run_benchmarks(args.preset, args.device, precisions, train=not args.no_train, volume=not args.no_volume,
                            progress=progress, threads=args.threads, product=not args.no_product, work=args.work,
                            product_size=args.product_size, product_cnn_steps=args.product_cnn_steps)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


def register_cli(subparsers):
    p = subparsers.add_parser("bench", help="machine ceilings, synthesis and training speed against a naive loop, memory; table and JSON")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="smoke: seconds (CI); quick: 256 only; full (= paper): 256 and 512, under 15 min on 2 cores")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--precision", default="", help="comma-separated fp32,bf16,fp16 (default: fp32,bf16, and fp16 on CUDA)")
    p.add_argument("--no-train", action="store_true", help="skip the training steps")
    p.add_argument("--no-volume", action="store_true", help="skip the whole-volume memory run")
    p.add_argument("--no-product", action="store_true", help="skip training and synthesising the recommended model on the phantom hand")
    p.add_argument("--product-size", choices=("small", "full"),
                   help="phantom for the product cases: full = the paper's 0.6 mm hand (default; smoke preset: small)")
    p.add_argument("--product-cnn-steps", type=int, help="train the product's CNN for 1 epoch of N steps only (trees in full): "
                   "a shorter bench whose synthesis still costs what the product's does")
    p.add_argument("--work", default="bench_work", help="folder for the cached phantom and the product runs' files (default bench_work)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", default="bench.json", help="where to write the results (default bench.json)")
    p.set_defaults(func=_run)
