"""``t1tot2 analyze``: its arguments, checked and handed to the library."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.volume import PLANES
from ..research.analysis import (
    _read,
    landmark_entry,
    landmark_points,
    line_profile,
    occlusion_study,
    parse_points,
    render_volume,
    save_feature_baseline,
    save_lookup_model,
    write_difference,
    write_joint_histograms,
    write_occlusion,
    write_profiles,
)


# --- command line ------------------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser("analyze", help="the paper's analyses: difference maps, profiles, histograms, look-up baseline, occlusion, rendering")
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    d = sub.add_parser("difference", help="|synthetic − acquired| as NIfTI (same geometry) and a PNG")
    d.add_argument("generated")
    d.add_argument("actual")
    d.add_argument("-o", "--out", required=True, help="output folder")
    d.add_argument("--plane", default="axial", choices=PLANES)
    d.set_defaults(func=_run_difference)

    pr = sub.add_parser("profile", help="line profiles of several volumes along a polyline in RAS mm")
    pr.add_argument("volumes", nargs="+", metavar="NAME=VOLUME", help="e.g. T1=t1.nii.gz 'synthetic T2=syn.nii.gz'")
    where = pr.add_mutually_exclusive_group(required=True)
    where.add_argument("--points", help='"r,a,s;r,a,s;..." in millimetres')
    where.add_argument("--landmarks", help="landmarks JSON (as written by `t1tot2 phantom`)")
    pr.add_argument("--side", default="right", help="landmarks side (default right)")
    pr.add_argument("--landmark", default="thumb_metacarpal_profile", help="landmark polyline name")
    pr.add_argument("--step", type=float, help="sampling step in mm (default half the smallest spacing)")
    pr.add_argument("--raw", action="store_true", help="plot raw intensities instead of normalised ones")
    pr.add_argument("-o", "--out", required=True, help="output folder")
    pr.set_defaults(func=_run_profile)

    h = sub.add_parser("histogram", help="joint T1-vs-T2 histograms of acquired (and synthetic) pairs")
    h.add_argument("t1")
    h.add_argument("t2", help="acquired T2")
    h.add_argument("--generated", help="synthetic T2 to histogram against the same T1")
    h.add_argument("--mask", metavar="LABELS", help="label map: use labels > 0 only")
    h.add_argument("--bins", type=int, default=128)
    h.add_argument("-o", "--out", required=True, help="output folder")
    h.set_defaults(func=_run_histogram)

    lk = sub.add_parser("lookup", help="fit the one-to-one look-up baseline and save it as a model file")
    lk.add_argument("t1")
    lk.add_argument("t2")
    lk.add_argument("model", help="output .safetensors")
    lk.add_argument("--mask", metavar="LABELS", help="label map: fit on labels > 0 only")
    lk.add_argument("--bins", type=int, default=256)
    lk.set_defaults(func=_run_lookup)

    fb = sub.add_parser("feature-baseline", help="fit the feature-regression baseline (boosted trees on local T1 features) as a model file")
    fb.add_argument("t1")
    fb.add_argument("t2")
    fb.add_argument("model", help="output .safetensors")
    fb.add_argument("--mask", metavar="LABELS", help="label map: fit on labels > 0 only (default: the dilated foreground)")
    fb.add_argument("--seed", type=int, default=0)
    fb.add_argument("--auto-context", action="store_true",
                    help="add a second stage of trees that also reads features of the first stage's T2 estimate "
                         "(25.8 against 24.8 dB on the phantom's right hand; about twice the fitting time)")
    fb.set_defaults(func=_run_feature_baseline)

    oc = sub.add_parser("occlusion", help="predicted T2 at points vs the width of the visible T1 window")
    oc.add_argument("model")
    oc.add_argument("t1")
    oc.add_argument("t2", help="acquired T2 (the dashed reference)")
    where = oc.add_mutually_exclusive_group(required=True)
    where.add_argument("--points", help='"r,a,s;r,a,s;..." in millimetres')
    where.add_argument("--landmarks", help="landmarks JSON with <side>/occlusion_points")
    oc.add_argument("--side", default="right")
    oc.add_argument("--plane", default="axial", choices=PLANES)
    oc.add_argument("--widths", help="comma-separated widths in pixels (default 1 .. whole slice)")
    oc.add_argument("-o", "--out", required=True, help="output folder")
    oc.set_defaults(func=_run_occlusion)

    rb = sub.add_parser("robustness", help="score a model over phantom variants (seeds, voxel sizes, noise, pose, sequence) against each oracle")
    rb.add_argument("model", help="model file (.safetensors)")
    rb.add_argument("-o", "--out", required=True, help="output folder (robustness.json, .txt, .png)")
    rb.add_argument("--resolutions", default="0.6,1.0,1.5", help="voxel sizes of the resolution rows in mm (default 0.6,1.0,1.5)")
    rb.add_argument("--seeds", default="1,2", help="other phantom subjects (default 1,2)")
    rb.add_argument("--only", help="comma-separated variant names to run (default all)")
    rb.add_argument("--retrain", action="store_true", help="also train the recommended recipe on each variant's left hand and score it (slow)")
    rb.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    rb.set_defaults(func=_run_robustness)

    r = sub.add_parser("render", help="false-colour rendering of a synthetic volume (orthogonal slices + MIP)")
    r.add_argument("volume")
    r.add_argument("-o", "--out", required=True, help="output PNG")
    r.set_defaults(func=_run_render)


def _run_difference(args):
    paths = write_difference(_read(args.generated), _read(args.actual), args.out, plane=args.plane)
    print(f"wrote {paths['nifti']} and {paths['png']}")
    return 0


def _run_profile(args):
    volumes = {}
    for item in args.volumes:
        name, sep, path = item.rpartition("=")
        volumes[name if sep else Path(path).name.split(".")[0]] = _read(path)
    points = parse_points(args.points) if args.points else landmark_points(args.landmarks, args.side, args.landmark)
    distances, profiles = line_profile(volumes, points, step_mm=args.step)
    paths = write_profiles(distances, profiles, args.out, normalise=not args.raw)
    print(f"sampled {len(distances)} points over {distances[-1]:.1f} mm; wrote {paths['csv']} and {paths['png']}")
    return 0


def _run_histogram(args):
    t1 = _read(args.t1)
    pairs = {"acquired T1 vs T2": (t1, _read(args.t2))}
    if args.generated:
        pairs["T1 vs SYNTHETIC T2"] = (t1, _read(args.generated))
    mask = _read(args.mask) if args.mask else None
    paths = write_joint_histograms(pairs, args.out, bins=args.bins, mask=mask)
    print(f"wrote {paths['png']} and {paths['npz']}")
    return 0


def _run_lookup(args):
    mask = _read(args.mask) if args.mask else None
    path = save_lookup_model(args.model, _read(args.t1), _read(args.t2), bins=args.bins, mask=mask)
    print(f"wrote the look-up baseline model {path}")
    return 0


def _run_feature_baseline(args):
    t1, t2 = _read(args.t1), _read(args.t2)
    mask = _read(args.mask) if args.mask else None
    path = save_feature_baseline(args.model, t1, t2, mask=mask, seed=args.seed, auto_context=args.auto_context)
    print(f"wrote the feature-regression {'model with its auto-context stage' if args.auto_context else 'baseline'} to {path}")
    return 0


def _run_occlusion(args):
    if args.points:
        points = parse_points(args.points) if ";" in args.points else np.atleast_2d([float(v) for v in args.points.split(",")])
    else:
        points = {k: np.asarray(v, float) for k, v in landmark_entry(args.landmarks, args.side, "occlusion_points").items()}
    widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    result = occlusion_study(args.model, _read(args.t1), _read(args.t2), points, plane=args.plane, widths=widths)
    paths = write_occlusion(result, args.out)
    for name, entry in result["points"].items():
        conv = entry["converged_width_px"]
        print(f"{name}: full-context {entry['full_context']:.4g}, acquired {entry['acquired']:.4g}, "
              f"within 5% from {conv} px ({entry['converged_width_mm']:.1f} mm)" if conv else f"{name}: never within 5%")
    print(f"wrote {paths['png']}")
    return 0


def _run_render(args):
    volume = _read(args.volume)
    path = render_volume(volume, args.out)
    print(f"wrote {path}")
    return 0


def _run_robustness(args):
    from ..core.errors import T1ToT2Error
    from ..research.robustness import one_line, robustness_matrix, table, write_robustness

    try:
        resolutions = [float(v) for v in args.resolutions.split(",") if v.strip()]
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise T1ToT2Error("--resolutions takes numbers (mm) and --seeds integers, comma-separated") from None
    if any(not 0.2 <= v <= 5.0 for v in resolutions):
        raise T1ToT2Error(f"--resolutions {args.resolutions!r}: use voxel sizes from 0.2 to 5 mm")
    only = [v.strip() for v in args.only.split(",")] if args.only else None
    progress = lambda row: print(f"  {row['variant']}: {row['model']['psnr']:.2f} dB (oracle {row['oracle']['psnr']:.2f})", flush=True)  # noqa: E731
    result = robustness_matrix(args.model, resolutions=resolutions, seeds=seeds, device=args.device, retrain=args.retrain,
                               work_dir=args.out, only=only, progress=progress)
    paths = write_robustness(result, args.out)
    print(table(result))
    print(one_line(result))
    print(f"wrote {paths['json']}, {paths['table']} and {paths['figure']}")
    return 0
