"""``t1tot2 phantom``: its arguments, checked and handed to the library."""

from __future__ import annotations

import time

from ..core.errors import T1ToT2Error
from ..phantom.render import (
    SIZES,
    _check_size,
    resolve_acquisition,
    write_phantom,
    write_subjects,
)


# --- command line ------------------------------------------------------------------------------
def register_cli(subparsers):
    parser = subparsers.add_parser(
        "phantom",
        help="simulate the hand phantom (T1 VIBE, T2 SPACE and tissue labels of both hands)",
        description="Write a procedural left and right hand: T1 VIBE, T2 SPACE and tissue labels (NIfTI) plus landmarks.json. "
                    "All images are synthetic. The acquisition (voxel size, noise, coil field, sequence, field of view, pose) "
                    "is the --size preset's, randomized from the seed with --randomize, and any option below overrides it; "
                    "landmarks.json records it.",
    )
    parser.add_argument("outdir", help="folder to write the nine files into (T1, T2, noise-free T2 and labels of each hand, landmarks.json)")
    parser.add_argument("--size", default="small", help=f"voxel size preset: {', '.join(f'{k} ({v} mm)' for k, v in SIZES.items())} (default small)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes (default 0)")
    parser.add_argument("--misregister", action="store_true", help="move each T2 by a small random rigid transform against its T1")
    parser.add_argument("--randomize", action="store_true",
                        help="draw the acquisition from the seed: voxel 0.5-1.5 mm (thicker slices), noise x0.5-x2, coil field, "
                             "VIBE/SPACE TR, TE, flip, field of view and pose")
    parser.add_argument("--subjects", type=int, help="write N subjects (seeds SEED..SEED+N-1) into OUTDIR/subject_SEED and a pairs.csv for 't1tot2 train --pairs'")
    parser.add_argument("--voxel-mm", help="voxel size in mm: one value, or R,A,S")
    parser.add_argument("--noise", type=float, help="Rician noise sigma in intensity units (brightest tissue 1000; default 12)")
    parser.add_argument("--bias", type=float, help="coil field amplitude (multiplicative, about 1 +- this; default 0.15)")
    parser.add_argument("--vibe", help="T1 VIBE TR,TE,FLIP in ms, ms, degrees (default 13.5,6,10)")
    parser.add_argument("--space", help="T2 SPACE TR,TE in ms (default 1500,127)")
    parser.add_argument("--fov", help="field of view S,A,R in mm (default 294.6,45.6,133.8)")
    parser.add_argument("--pose", help="rotation of the hand about its x (radial), y (volar), z (distal) axes in degrees, e.g. 0,20,25")
    parser.set_defaults(func=_run_cli)


def _numbers(text, option: str, counts: tuple) -> list | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        raise T1ToT2Error(f"--{option} {text!r} needs {' or '.join(map(str, counts))} comma-separated numbers")
    return values


def acquisition_overrides(args) -> dict:
    """The Acquisition fields the options set explicitly (None: keep the preset's or the random draw's)."""
    vibe = _numbers(args.vibe, "vibe", (3,))
    space = _numbers(args.space, "space", (2,))
    voxel = _numbers(args.voxel_mm, "voxel-mm", (1, 3))
    return {
        "voxel_mm": None if voxel is None else (voxel * 3 if len(voxel) == 1 else voxel),
        "noise_sigma": args.noise, "bias_amplitude": args.bias,
        "vibe": None if vibe is None else dict(zip(("TR", "TE", "flip_deg"), vibe)),
        "space": None if space is None else dict(zip(("TR", "TE"), space)),
        "fov_mm": _numbers(args.fov, "fov", (3,)), "pose_deg": _numbers(args.pose, "pose", (3,)),
    }


def _run_cli(args) -> int:
    _check_size(args.size)
    overrides = acquisition_overrides(args)
    start = time.perf_counter()
    if args.subjects is not None:
        paths = write_subjects(args.outdir, args.subjects, args.size, args.seed, args.randomize, args.misregister, True, **overrides)
        print(f"{args.subjects} synthetic hand phantom subject(s), seeds {args.seed}..{args.seed + args.subjects - 1}, "
              f"{time.perf_counter() - start:.1f} s; pairs: {paths['pairs']}")
        return 0
    acquisition = resolve_acquisition(args.size, args.seed, args.randomize, None, **overrides)
    paths = write_phantom(args.outdir, size=args.size, seed=args.seed, misregistration=args.misregister, progress=True,
                          acquisition=acquisition)
    shape, voxel = acquisition.shape, "x".join(f"{v:g}" for v in acquisition.voxel_mm)
    print(f"synthetic hand phantom, size {args.size} ({voxel} mm, {shape[2]} x {shape[1]} x {shape[0]} voxels R x A x S), seed {args.seed}, {time.perf_counter() - start:.1f} s:")
    for path in paths.values():
        print(f"  {path}")
    return 0
