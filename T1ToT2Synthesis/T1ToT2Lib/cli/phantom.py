"""``t1tot2 phantom``: its arguments, checked and handed to the library."""

from __future__ import annotations

import time

from ..phantom.render import (
    SIZES,
    _check_size,
    grid_shape,
    write_phantom,
)


# --- command line ------------------------------------------------------------------------------
def register_cli(subparsers):
    parser = subparsers.add_parser(
        "phantom",
        help="simulate the hand phantom (T1 VIBE, T2 SPACE and tissue labels of both hands)",
        description="Write a procedural left and right hand: T1 VIBE, T2 SPACE and tissue labels (NIfTI) plus landmarks.json. All images are synthetic.",
    )
    parser.add_argument("outdir", help="folder to write the nine files into (T1, T2, noise-free T2 and labels of each hand, landmarks.json)")
    parser.add_argument("--size", default="small", help=f"voxel size preset: {', '.join(f'{k} ({v} mm)' for k, v in SIZES.items())} (default small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    parser.add_argument("--misregister", action="store_true", help="move each T2 by a small random rigid transform against its T1")
    parser.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    _check_size(args.size)
    start = time.perf_counter()
    paths = write_phantom(args.outdir, size=args.size, seed=args.seed, misregistration=args.misregister, progress=True)
    shape = grid_shape(args.size)
    print(f"synthetic hand phantom, size {args.size} ({SIZES[args.size]} mm, {shape[2]} x {shape[1]} x {shape[0]} voxels R x A x S), seed {args.seed}, {time.perf_counter() - start:.1f} s:")
    for path in paths.values():
        print(f"  {path}")
    return 0
