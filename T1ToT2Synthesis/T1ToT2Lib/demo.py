"""``t1tot2 demo OUTDIR``: the whole journey on the phantom in a few minutes on a CPU.

phantom → train the recommended Pix2Pix on the left hand → synthesize the right hand →
evaluate against its acquired T2 (and the one-to-one look-up baseline) → figures and an
HTML report → the synthetic T2 as a DICOM series.  Everything is written into a temporary
folder and renamed to OUTDIR at the end, so an interrupted demo leaves no half-made OUTDIR.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from .errors import T1ToT2Error

#: Budget of the demo on 2 CPU cores: the recommended configuration at the comparison's "cpu" size
#: (width 16, U-Net depth 6 so small-phantom slices pad to multiples of 64, not to 512).
DEMO_TRAINING = {"epochs": 15, "network": {"ngf": 16, "ndf": 16, "depth": 6}, "lr": 2e-4, "batch_size": 1}
MARKER = "demo_summary.json"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_outdir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise T1ToT2Error(f"'{out}' exists and is not an earlier demo output: choose a new or empty folder")


def run_demo(out_dir, epochs: int | None = None, device: str = "auto", size: str = "small", seed: int = 0) -> dict:
    from . import analysis, metrics, report
    from .atomic import atomic_directory
    from .compare import RECOMMENDED
    from .dicom import export_dicom_series
    from .phantom import landmarks, write_phantom
    from .synthesize import synthesize_volume, write_synthetic_volume
    from .train import BarProgress, TrainConfig, train
    from .volume import read_volume

    out = Path(out_dir)
    _check_outdir(out)
    started = time.perf_counter()
    steps = {}

    def step(name):
        steps[name] = round(time.perf_counter() - started, 1)

    with atomic_directory(out, overwrite=True) as work:
        _say(f"[1/6] phantom ({size}, seed {seed}): both hands, T1 VIBE, T2 SPACE and labels")
        files = write_phantom(work / "phantom", size=size, seed=seed)
        marks = landmarks(size, seed)
        left_t1, left_t2 = read_volume(files["left_t1"]), read_volume(files["left_t2"])
        right_t1, right_t2 = read_volume(files["right_t1"]), read_volume(files["right_t2"])
        mask = metrics.foreground_mask(read_volume(files["right_labels"]))
        step("phantom")

        n_epochs = int(epochs or DEMO_TRAINING["epochs"])
        _say(f"[2/6] training the recommended Pix2Pix on the left hand ({n_epochs} epochs, all three planes)")
        model_path = work / "model.safetensors"
        config = TrainConfig(
            t1=left_t1, t2=left_t2, out=model_path, model=RECOMMENDED["model"],
            network={**DEMO_TRAINING["network"], **RECOMMENDED["network"]}, planes=tuple(RECOMMENDED["planes"]),
            context=RECOMMENDED["context"], epochs=n_epochs, lr=DEMO_TRAINING["lr"], batch_size=DEMO_TRAINING["batch_size"],
            seed=seed, device=device, checkpoint_dir=work / "checkpoints", loss_csv=work / "losses.csv",
        )
        train(config, progress=BarProgress())
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        step("train")

        _say(f"[3/6] synthesizing the right hand's T2 (plane mode {RECOMMENDED['synthesis_plane']})")
        synthetic = synthesize_volume(model_path, right_t1, plane=RECOMMENDED["synthesis_plane"], device=device)
        write_synthetic_volume(synthetic, work / "right_synthetic_t2.nii.gz")
        step("synthesize")

        _say("[4/6] evaluating against the right hand's acquired T2, and the one-to-one look-up baseline")
        lookup_path = analysis.save_lookup_model(work / "lookup_baseline.safetensors", left_t1, left_t2,
                                                 mask=read_volume(files["left_labels"]).array > 0)
        lookup = synthesize_volume(lookup_path, right_t1, plane="axial", device=device)
        results = {"Pix2Pix (recommended)": metrics.evaluate_volumes(synthetic, right_t2, mask=mask),
                   "look-up baseline": metrics.evaluate_volumes(lookup, right_t2, mask=mask)}
        metrics.write_json(results, work / "metrics.json")
        metrics.write_csv([row for name, r in results.items() for row in metrics.csv_rows(r, label=name)],
                          work / "metrics.csv")
        step("evaluate")

        _say("[5/6] figures and report")
        figures_dir = work / "figures"
        difference = analysis.write_difference(synthetic, right_t2, figures_dir)
        polyline = analysis.landmark_points(marks, "right", "thumb_metacarpal_profile")
        distances, profiles = analysis.line_profile(
            {"T1 VIBE": right_t1, "acquired T2": right_t2, "synthetic T2": synthetic}, polyline)
        profile = analysis.write_profiles(distances, profiles, figures_dir, title="Profile across the thumb metacarpal")
        histograms = analysis.write_joint_histograms({"acquired T1 vs T2": (right_t1, right_t2),
                                                      "T1 vs SYNTHETIC T2": (right_t1, synthetic)}, figures_dir,
                                                     bins=96, mask=mask)
        render = analysis.render_volume(synthetic, figures_dir / "render.png", title="SYNTHETIC T2 — right hand")
        figures = [
            ("|synthetic − acquired T2|, central axial slice", difference["png"]),
            ("Line profiles across the thumb metacarpal (normalised)", profile["png"]),
            ("Joint T1–T2 histograms: acquired pair and synthetic pair", histograms["png"]),
            ("The stacked SYNTHETIC T2 volume, false colour", render),
        ]
        report_path = report.write_report(
            work, results, figures, title="T1ToT2 demo: synthetic T2 of the phantom's right hand",
            settings={"data": f"phantom ({size}, seed {seed}): trained on the left hand, scored on the right",
                      "model": f"recommended Pix2Pix {json.dumps(RECOMMENDED['network'])}, context {RECOMMENDED['context']}, "
                               f"ngf {DEMO_TRAINING['network']['ngf']}, {n_epochs} epochs, lr {DEMO_TRAINING['lr']}",
                      "times (s, cumulative)": json.dumps(steps)},
            recommended="Pix2Pix (recommended)", baseline="look-up baseline")
        step("report")

        _say("[6/6] exporting the synthetic T2 as a DICOM series")
        dicom_files = export_dicom_series(synthetic, work / "dicom_synthetic_t2", model_name="T1ToT2 demo model (phantom)")
        step("dicom")

        summary = {
            "metrics_overall": {name: {k: r["overall"][k]["mean"] for k in ("nrmse", "psnr", "ssim")} for name, r in results.items()},
            "grid_energy_e2": {name: r["grid_energy"]["2"] for name, r in results.items()},
            "times_s": steps,
            "wall_s": round(time.perf_counter() - started, 1),
            "files": {"model": "model.safetensors", "synthetic_t2": "right_synthetic_t2.nii.gz", "report": "index.html",
                      "dicom": f"dicom_synthetic_t2 ({len(dicom_files)} files)", "phantom": "phantom/"},
            "report": report_path.name,
        }
        metrics.write_json(summary, work / MARKER)
    print("\nT1ToT2 demo — right hand (never seen in training), metrics over all planes:")
    for name, r in results.items():
        print(f"\n== {name} ==\n{metrics.format_table(r)}")
    print(f"\nwall time {summary['wall_s']} s; outputs in {out}/ (open {out / 'index.html'})")
    return summary


def register_cli(subparsers):
    p = subparsers.add_parser("demo", help="phantom → train → synthesize → evaluate → report → DICOM, in minutes on a CPU")
    p.add_argument("out", metavar="OUTDIR", help="output folder (replaced if it holds an earlier demo)")
    p.add_argument("--epochs", type=int, help=f"training epochs (default {DEMO_TRAINING['epochs']})")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--size", choices=["small", "full"], default="small", help="phantom size (full: the paper's 0.6 mm grid; use a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda args: run_demo(args.out, args.epochs, args.device, args.size, args.seed) and 0)
