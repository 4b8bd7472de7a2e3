"""``t1tot2 export-dicom``: its arguments, checked and handed to the library."""

from __future__ import annotations

from ..io.dicom_write import (
    export_dicom_series,
)


# =========================================================================
# Command line
# =========================================================================
def _run_export(args) -> int:
    from ..io.files import read_volume

    volume = read_volume(args.volume, series_uid=args.series_uid)
    paths = export_dicom_series(
        volume, args.outdir, reference=args.reference, series_description=args.series_description,
        model_name=args.model_name, overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} synthetic MR slices to {args.outdir}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-dicom",
        help="write a synthetic T2 volume as a DICOM MR series",
        description="Write VOLUME as a new DICOM MR series (one file per K slice) in OUTDIR, labelled as synthetic.",
    )
    parser.add_argument("volume", metavar="VOLUME", help="synthetic T2 volume (NIfTI/NRRD/MHA file or DICOM folder)")
    parser.add_argument("outdir", metavar="OUTDIR", help="new folder for the series")
    parser.add_argument("--reference", metavar="T1_DICOM_DIR",
                        help="the T1 series the volume was computed from: the export joins its patient and study")
    parser.add_argument("--series-description", help="SeriesDescription (SYNTHETIC is prefixed if missing)")
    parser.add_argument("--model-name", help="model named in the series and derivation descriptions")
    parser.add_argument("--series-uid", help="SeriesInstanceUID to read when VOLUME is a folder with several series")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    parser.set_defaults(func=_run_export)
