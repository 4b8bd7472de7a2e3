"""``t1tot2 evaluate``: its arguments, checked and handed to the library."""

from __future__ import annotations

from pathlib import Path

from ..core.atomic import atomic_path, write_json  # noqa: F401  (write_json is part of this module's API)
from ..core.errors import T1ToT2Error
from ..core.metrics import (
    _check_geometry,
    csv_rows,
    evaluate_volumes,
    foreground_mask,
    format_table,
    format_tissue_table,
    tissue_table,
    write_csv,
)
from ..core.volume import PLANES


# --- command line ---------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser(
        "evaluate",
        help="score a synthetic T2 against the acquired T2 (NRMSE, PSNR, SSIM per slice and plane; grid energy)",
        description="Score GENERATED against ACTUAL as Grant-Jacob et al. 2021 do: NRMSE, PSNR and SSIM per 2-D slice, "
        "mean ± std per plane and over all planes, plus the grid-artefact energies E_2, E_4, E_8 of the residual.",
    )
    p.add_argument("generated", help="synthetic T2 volume (NIfTI/NRRD/MHA or DICOM folder), or a .safetensors model with --t1")
    p.add_argument("actual", help="acquired T2 volume on the same grid")
    p.add_argument("--mask", metavar="LABELS", help="label map on the same grid: score only labels > 0 (dilated by --dilate voxels)")
    p.add_argument("--dilate", type=int, default=2, help="voxels to grow the --mask foreground by (default 2)")
    p.add_argument("--planes", default=",".join(PLANES), help="comma-separated planes to score (default all three)")
    p.add_argument("--gaussian", action="store_true", help="SSIM with the 11-tap Gaussian window instead of the 7x7 uniform one")
    p.add_argument("--t1", help="when GENERATED is a model file: the T1 to synthesize from (on ACTUAL's grid)")
    p.add_argument("--synthesis-plane", default="axial", help="when GENERATED is a model file: axial, coronal, sagittal or fuse")
    p.add_argument("--align", action="store_true",
                   help="register ACTUAL to the --t1 (or to GENERATED) and resample it onto GENERATED's grid when the grids differ")
    p.add_argument("--series-uid", help="SeriesInstanceUID of ACTUAL when it is a DICOM folder with several series")
    p.add_argument("--generated-series-uid", help="SeriesInstanceUID of GENERATED when it is a DICOM folder with several series")
    p.add_argument("--t1-series-uid", help="SeriesInstanceUID of --t1 when it is a DICOM folder with several series")
    p.add_argument("--labels", metavar="LABELS", help="tissue label map on the same grid: add a per-tissue table "
                   "(mean acquired, mean synthetic, error per label) to the output, JSON and CSV")
    p.add_argument("--json", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the per-plane table as CSV (and FILE's stem + _tissues.csv with --labels)")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from ..io.files import read_volume

    actual = read_volume(args.actual, series_uid=args.series_uid)
    t1 = read_volume(args.t1, series_uid=args.t1_series_uid) if args.t1 else None
    if str(args.generated).endswith(".safetensors"):
        if not args.t1:
            raise T1ToT2Error("GENERATED is a model file: pass the T1 to synthesize from with --t1")
        from ..inference.synthesize import synthesize_volume

        generated = synthesize_volume(args.generated, t1, plane=args.synthesis_plane)
    else:
        generated = read_volume(args.generated, series_uid=args.generated_series_uid)
    labels = read_volume(args.mask) if args.mask else None
    if args.align:  # the acquired T2 on its own grid is registered and resampled onto the synthetic's (T1ToT2Lib.training.align)
        from ..training.align import align_for_evaluation

        actual, labels = align_for_evaluation(generated, actual, labels, reference=t1)
    mask = None
    if args.mask:
        _check_geometry(labels, actual, what="mask")
        mask = foreground_mask(labels, dilate=args.dilate)
    planes = tuple(p.strip() for p in args.planes.split(",") if p.strip())
    for plane in planes:
        if plane not in PLANES:
            raise T1ToT2Error(f"unknown plane {plane!r} in --planes: use {', '.join(PLANES)}")
    result = evaluate_volumes(generated, actual, mask=mask, planes=planes, gaussian=args.gaussian)
    result["generated"], result["actual"] = str(args.generated), str(args.actual)
    result["generated_is_synthetic"] = True
    if args.labels:
        tissue_labels = read_volume(args.labels)
        _check_geometry(tissue_labels, actual, what="--labels map")
        result["tissues"] = tissue_table(generated, actual, tissue_labels)
    print(format_table(result))
    if result.get("tissues"):
        print("\n" + format_tissue_table(result["tissues"]))
    if args.json:
        write_json(result, args.json)
    if args.csv:
        write_csv(csv_rows(result), args.csv)
        if result.get("tissues"):
            csv_path = Path(args.csv)
            write_csv(result["tissues"], csv_path.with_name(csv_path.name.replace(".csv", "") + "_tissues.csv"))
    return 0
