"""``t1tot2 demo OUTDIR``: the whole journey on the phantom in a few minutes on a CPU.

phantom → train the recommended network on the left hand → synthesize the right hand (with its
error map) → evaluate against its acquired T2, beside the oracle (the phantom's noise-free T2), the
one-to-one look-up and the feature-regression baselines, per plane and per tissue → figures and an
HTML report → the synthetic T2 as a DICOM series.  Everything is written into a temporary
folder and renamed to OUTDIR at the end, so an interrupted demo leaves no half-made OUTDIR.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..core.errors import T1ToT2Error

#: The demo trains the recommended configuration (T1ToT2Lib.training.presets.RECOMMENDED: two-stage feature-regression
#: prior; its dilated residual CNN only with ``--epochs``, for one hand gives no held-out hand to judge it); only the
#: CNN's width is stated here, for the model card.
DEMO_TRAINING = {"network": {"ngf": 32}}
MARKER = "demo_summary.json"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_outdir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise T1ToT2Error(f"'{out}' exists and is not an earlier demo output: choose a new or empty folder")


def run_demo(out_dir, epochs: int | None = None, device: str = "auto", size: str = "small", seed: int = 0) -> dict:
    from ..core import metrics
    from ..core.atomic import atomic_directory
    from ..inference.synthesize import synthesize_volume, write_synthetic_volume
    from ..io.dicom_write import export_dicom_series
    from ..io.files import write_volume
    from ..training.presets import RECOMMENDED
    from .bench import matmul_gflops

    out = Path(out_dir)
    _check_outdir(out)
    started = time.perf_counter()
    rate = matmul_gflops()
    _say(f"this machine multiplies float32 matrices at {rate:.0f} GFLOP/s (times below scale with it)")
    steps = {}

    def step(name):
        steps[name] = round(time.perf_counter() - started, 1)

    with atomic_directory(out, overwrite=True) as work:
        data = _phantom(work, size, seed)
        step("phantom")
        model_path, config, schedule = _train(work, data, epochs, device, seed)
        step("train")

        _say(f"[3/6] synthesizing the right hand's T2 and its error map (plane mode {RECOMMENDED['synthesis_plane']})")
        synthetic, error_map = synthesize_volume(model_path, data["right_t1"], plane=RECOMMENDED["synthesis_plane"],
                                                 device=device, uncertainty=True)
        write_synthetic_volume(synthetic, work / "right_synthetic_t2.nii.gz")
        write_volume(error_map, work / "right_synthetic_t2_error_map.nii.gz")
        step("synthesize")

        results, tissues, trust = _evaluate(work, data, model_path, synthetic, error_map, device, seed)
        step("evaluate")
        robustness = _robustness_line(work, model_path, device, size)
        step("robustness")

        _say("[5/6] figures and report")
        settings = {"data": f"phantom ({size}, seed {seed}): trained on the left hand, scored on the right",
                    "model": "recommended: two-stage feature-regression prior" + (
                        f" + residual CNN {json.dumps(config.network)}, context {RECOMMENDED['context']}, "
                        f"{schedule['epochs'] + schedule['epochs_decay']} epochs, lr {schedule['lr']}"
                        if schedule["correction"] == "train" else ", no CNN stage (no held-out hand to judge it)"),
                    "oracle": "the phantom's noise-free T2 scored by the same code: the ceiling any synthesis can reach",
                    "machine": f"float32 matrix multiply {rate:.0f} GFLOP/s",
                    "times (s, cumulative)": json.dumps(steps)}
        report_path = _figures_and_report(work, data, synthetic, error_map, results, tissues, trust, settings)
        step("report")

        _say("[6/6] exporting the synthetic T2 as a DICOM series")
        dicom_files = export_dicom_series(synthetic, work / "dicom_synthetic_t2", model_name="T1ToT2 demo model (phantom)")
        step("dicom")

        summary = {
            "metrics_overall": {name: {k: r["overall"][k]["mean"] for k in ("nrmse", "psnr", "ssim")} for name, r in results.items()},
            "grid_energy_e2": {name: r["grid_energy"]["2"] for name, r in results.items()},
            "error_map_spearman": trust,
            "matmul_gflops_fp32": round(rate, 1),
            "times_s": steps,
            "wall_s": round(time.perf_counter() - started, 1),
            "files": {"model": "model.safetensors", "synthetic_t2": "right_synthetic_t2.nii.gz",
                      "error_map": "right_synthetic_t2_error_map.nii.gz", "report": "index.html",
                      "dicom": f"dicom_synthetic_t2 ({len(dicom_files)} files)", "phantom": "phantom/"},
            "report": report_path.name,
            "robustness": robustness,
        }
        metrics.write_json(summary, work / MARKER)
    _print_summary(out, results, tissues, trust, summary, rate)
    return summary


def _phantom(work: Path, size: str, seed: int) -> dict:
    from ..core import metrics
    from ..io.files import read_volume
    from ..phantom.render import landmarks, write_phantom

    _say(f"[1/6] phantom ({size}, seed {seed}): both hands, T1 VIBE, T2 SPACE (acquired and noise-free) and labels")
    files = write_phantom(work / "phantom", size=size, seed=seed)
    data = {name: read_volume(files[name]) for name in ("left_t1", "left_t2", "right_t1", "right_t2", "right_labels")}
    data.update(files=files, marks=landmarks(size, seed), mask=metrics.foreground_mask(data["right_labels"]))
    return data


def _train(work: Path, data: dict, epochs, device, seed: int):
    from ..training.presets import RECOMMENDED
    from ..training.train import BarProgress, TrainConfig, train

    schedule = dict(RECOMMENDED["training"])
    if epochs:
        schedule.update(epochs=int(epochs), epochs_decay=int(epochs), correction="train")
        n_epochs = schedule["epochs"] + schedule["epochs_decay"]
        _say(f"[2/6] training the recommended network on the left hand: two-stage feature-regression prior, then "
             f"{n_epochs} epochs of the residual CNN on all three planes")
    else:
        _say("[2/6] training the recommended network on the left hand: two-stage feature-regression prior (the residual "
             "CNN needs a held-out hand to judge it: --epochs N trains it anyway)")
    model_path = work / "model.safetensors"
    config = TrainConfig(
        t1=data["left_t1"], t2=data["left_t2"], out=model_path, model=RECOMMENDED["model"],
        network={**RECOMMENDED["network"], **DEMO_TRAINING["network"]}, planes=tuple(RECOMMENDED["planes"]),
        context=RECOMMENDED["context"], **schedule,
        seed=seed, device=device, checkpoint_dir=work / "checkpoints", loss_csv=work / "losses.csv",
    )
    train(config, progress=BarProgress())
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return model_path, config, schedule


def _evaluate(work: Path, data: dict, model_path, synthetic, error_map, device, seed: int):
    """Metrics of the recommended model, the oracle and both baselines, per tissue, and the error map's worth."""
    from scipy.stats import spearmanr

    from ..core import metrics
    from ..inference.synthesize import synthesize_volume
    from ..io.files import read_volume
    from ..inference.preprocess import model_preprocessing
    from ..networks.modelfile import load_model
    from ..phantom.render import TISSUES
    from . import analysis
    from .compare import ORACLE_NAME

    _say("[4/6] evaluating against the right hand's acquired T2, beside the oracle and the two baselines")
    files, right_t1, right_t2, mask = data["files"], data["right_t1"], data["right_t2"], data["mask"]
    left_fit_mask = read_volume(files["left_labels"]).array > 0
    lookup_path = analysis.save_lookup_model(work / "lookup_baseline.safetensors", data["left_t1"], data["left_t2"],
                                             mask=left_fit_mask)
    # The recommended model's trees on their own (both stages): fitted on the left hand and its rim of air.
    # They learnt T1s prepared as the model's were (N4): the baseline's file repeats the model's preprocessing record.
    model = load_model(model_path)
    trees_path = analysis.save_feature_baseline(work / "feature_baseline.safetensors", data["left_t1"], data["left_t2"],
                                                seed=seed, regressor=model.prior,
                                                extra_metadata={"preprocessing": model_preprocessing(model.metadata)})
    oracle = read_volume(files["right_t2_clean"])
    candidates = {
        ORACLE_NAME: oracle,
        "recommended": synthetic,
        "feature-regression baseline": synthesize_volume(trees_path, right_t1, plane="axial", device=device),
        "look-up baseline": synthesize_volume(lookup_path, right_t1, plane="axial", device=device),
    }
    results = {name: metrics.evaluate_volumes(v, right_t2, mask=mask) for name, v in candidates.items()}
    tissue_names = {value: name for name, value in TISSUES.items()}
    tissues = {name: metrics.tissue_table(v, right_t2, data["right_labels"], names=tissue_names)
               for name, v in candidates.items() if name != ORACLE_NAME}
    true_error = np.abs(synthetic.array - oracle.array)
    trust = float(spearmanr(error_map.array[mask], true_error[mask]).statistic)
    metrics.write_json({"metrics": results, "tissues": tissues, "error_map_spearman": trust}, work / "metrics.json")
    metrics.write_csv([row for name, r in results.items() for row in metrics.csv_rows(r, label=name)],
                      work / "metrics.csv")
    metrics.write_csv([{"model": name, **row} for name, rows in tissues.items() for row in rows], work / "tissues.csv")
    return results, tissues, trust


def _figures_and_report(work: Path, data: dict, synthetic, error_map, results, tissues, trust, settings) -> Path:
    from . import analysis, report

    right_t1, right_t2, mask = data["right_t1"], data["right_t2"], data["mask"]
    figures_dir = work / "figures"
    difference = analysis.write_difference(synthetic, right_t2, figures_dir)
    uncertainty = analysis.write_error_map(synthetic, error_map, np.abs(synthetic.array - right_t2.array), figures_dir)
    polyline = analysis.landmark_points(data["marks"], "right", "thumb_metacarpal_profile")
    distances, profiles = analysis.line_profile(
        {"T1 VIBE": right_t1, "acquired T2": right_t2, "synthetic T2": synthetic}, polyline)
    profile = analysis.write_profiles(distances, profiles, figures_dir, title="Profile across the thumb metacarpal")
    histograms = analysis.write_joint_histograms({"acquired T1 vs T2": (right_t1, right_t2),
                                                  "T1 vs SYNTHETIC T2": (right_t1, synthetic)}, figures_dir,
                                                 bins=96, mask=mask)
    render = analysis.render_volume(synthetic, figures_dir / "render.png", title="SYNTHETIC T2 — right hand")
    figures = [
        ("|synthetic − acquired T2|, central axial slice", difference["png"]),
        (f"Error map (how far the synthesis can be trusted) beside the real error; rank correlation with "
         f"|synthetic − noise-free T2| inside the hand: {trust:.2f}", uncertainty),
        ("Line profiles across the thumb metacarpal (normalised)", profile["png"]),
        ("Joint T1–T2 histograms: acquired pair and synthetic pair", histograms["png"]),
        ("The stacked SYNTHETIC T2 volume, false colour", render),
    ]
    return report.write_report(work, results, figures, title="T1ToT2 demo: synthetic T2 of the phantom's right hand",
                               settings=settings, recommended="recommended", baseline="feature-regression baseline",
                               tissues=tissues)


#: The one robustness row the demo scores (``t1tot2 analyze robustness`` runs the whole matrix): the demo's own grid
#: and anatomy with 1.5 times the noise, against that acquisition's oracle.
DEMO_ROBUSTNESS_VARIANT = "noise x1.5"


def _robustness_line(work: Path, model_path, device, size: str) -> str:
    from ..phantom.render import Acquisition
    from .robustness import one_line, robustness_matrix, write_robustness

    _say(f"[4/6] robustness: the model on the phantom with another acquisition ({DEMO_ROBUSTNESS_VARIANT})")
    result = robustness_matrix(model_path, base=Acquisition.preset(size), device=device, only=[DEMO_ROBUSTNESS_VARIANT])
    write_robustness(result, work / "robustness")
    return one_line(result)


def _print_summary(out: Path, results, tissues, trust, summary, rate) -> None:
    from ..core import metrics

    print("\nT1ToT2 demo — right hand (never seen in training), metrics over all planes:")
    for name, r in results.items():
        print(f"\n== {name} ==\n{metrics.format_table(r)}")
    print(f"\n== per tissue, recommended ==\n{metrics.format_tissue_table(tissues['recommended'])}")
    if summary.get("robustness"):
        print(f"\n{summary['robustness']} (all rows: t1tot2 analyze robustness MODEL)")
    print(f"\nerror map: Spearman rank correlation with |synthetic − noise-free T2| inside the hand = {trust:.3f}")
    print(f"\nwall time {summary['wall_s']} s at {rate:.0f} GFLOP/s (float32 matrix multiply on this machine); "
          f"outputs in {out}/ (open {out / 'index.html'})")
