"""``t1tot2 align``: its arguments, checked and handed to the library."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import T1ToT2Error
from ..io.files import read_volume, write_volume
from ..training.align import (
    align,
    write_transform,
)


# --- command line ----------------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser(
        "align",
        help="register a T2 to its T1 (rigid or affine, mutual information) and resample it onto the T1 grid",
        description="Register MOVING (the T2) to FIXED (the T1) with SimpleITK (Mattes mutual information, three "
                    "resolution levels) and write the T2 resampled onto the T1's exact grid. Prints mutual information "
                    "before and after and the transform.",
    )
    p.add_argument("--fixed", required=True, help="T1 volume (NIfTI/NRRD/MHA file or DICOM folder): the grid of the output")
    p.add_argument("--moving", required=True, help="T2 volume to move onto the T1")
    p.add_argument("--out", required=True, help="aligned T2 (.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--transform", metavar="OUT.tfm", help="also write the ITK transform (T1 -> T2 points, LPS; Slicer reads it)")
    p.add_argument("--affine", action="store_true", help="after the rigid stage, refine with a 12-parameter affine transform")
    p.add_argument("--fixed-series-uid", help="SeriesInstanceUID when --fixed is a DICOM folder with several series")
    p.add_argument("--moving-series-uid", help="SeriesInstanceUID when --moving is a DICOM folder with several series")
    p.add_argument("--json", metavar="FILE", help="write the registration report as JSON")
    p.set_defaults(func=run_align)


def run_align(args) -> int:
    from ..core.atomic import write_json
    from ..io.files import _extension

    out = Path(args.out)
    if not _extension(out):
        raise T1ToT2Error(f"cannot write '{out.name}': use .nii.gz, .nii, .nrrd or .mha for --out")
    if args.transform and not str(args.transform).lower().endswith((".tfm", ".txt", ".h5", ".hdf5", ".mat")):
        raise T1ToT2Error(f"cannot write transform '{Path(args.transform).name}': use .tfm, .txt, .h5 or .mat")
    fixed = read_volume(args.fixed, series_uid=args.fixed_series_uid)
    moving = read_volume(args.moving, series_uid=args.moving_series_uid)
    result = align(fixed, moving, affine=args.affine)
    write_volume(result.volume, out)
    if args.transform:
        write_transform(result.transform, args.transform)
    if args.json:
        write_json(result.report(), args.json)
    print(result.summary())
    if args.affine:
        print("matrix (RAS): " + "; ".join(" ".join(f"{v:+.5f}" for v in row) for row in result.matrix_ras))
    print(f"aligned T2 written to {out}" + (f", transform to {args.transform}" if args.transform else ""))
    return 0
