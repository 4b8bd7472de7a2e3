"""Compare Pix2Pix, CycleGAN, UNIT, the look-up baseline and the recommended configuration
on the phantom: train on the left hand, evaluate on the right, write an HTML report.

The budgets make the same comparison fit a CPU in minutes (``tiny``, ``cpu``) or run at the
paper's scale on a GPU (``paper``: full phantom, 15 epochs at lr 2e-4, ngf 64).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES
from ..training.presets import PIX2PIX_IMPROVED, RECOMMENDED


PAPER_PIX2PIX = {"model": "pix2pix", "network": {}, "context": 1, "planes": PLANES, "synthesis_plane": "axial"}

#: name -> how it is built; "lookup" and "feature_regression" are fitted, the others trained with T1ToT2Lib.training.train.
MODELS = {
    "Pix2Pix (paper)": PAPER_PIX2PIX,
    "CycleGAN": {"model": "cyclegan", "network": {}, "context": 1, "planes": PLANES, "synthesis_plane": "axial"},
    "UNIT": {"model": "unit", "network": {}, "context": 1, "planes": PLANES, "synthesis_plane": "axial"},
    "Pix2Pix (2.5-D, resize, instance)": PIX2PIX_IMPROVED,
    "look-up baseline": {"model": "lookup", "synthesis_plane": "axial"},
    "feature-regression baseline": {"model": "feature_regression", "synthesis_plane": "axial"},
    "recommended": RECOMMENDED,
}
BASELINE_NAME, RECOMMENDED_NAME = "Pix2Pix (paper)", "recommended"
#: The row every comparison shows first: the phantom's noise-free T2 scored against the acquired one.
ORACLE_NAME = "oracle (noise-free T2)"


#: Training budgets: phantom size, epochs, step cap per epoch and network sizes ("all" applies to
#: every architecture, the others to one).  The U-Net depth is the paper's log2(slice size) at
#: full size (9); the small phantom's slices (at most 196 pixels) take 6 to keep padding small.
BUDGETS = {
    "tiny": {"size": "small", "epochs": 1, "max_steps_per_epoch": 2, "lr": 2e-4, "bins": 64,
             "network": {"all": {"ngf": 4, "ndf": 4}, "pix2pix": {"depth": 4}, "cyclegan": {"n_blocks": 1}, "refiner": {"n_layers": 2},
                         "unit": {"n_blocks": 1}},
             "occlusion_widths": [1, 5, 17, 65, 257]},
    "cpu": {"size": "small", "epochs": 15, "max_steps_per_epoch": None, "lr": 2e-4, "bins": 256,
            "network": {"all": {"ngf": 16, "ndf": 16}, "pix2pix": {"depth": 6}, "cyclegan": {"n_blocks": 5}, "refiner": {"ngf": 32},
                        "unit": {"n_blocks": 4}},
            "occlusion_widths": None},
    "paper": {"size": "full", "epochs": 15, "max_steps_per_epoch": None, "lr": 2e-4, "bins": 256,
              "network": {"all": {"ngf": 64, "ndf": 64}, "pix2pix": {"depth": 9}, "cyclegan": {"n_blocks": 5}, "refiner": {"ngf": 64},
                          "unit": {"n_blocks": 4}},
              "occlusion_widths": None},
}


def network_overrides(budget: dict, spec: dict) -> dict:
    """The budget's network sizes for ``spec``'s architecture, then the spec's own options."""
    sizes = budget["network"]
    return {**sizes.get("all", {}), **sizes.get(spec["model"], {}), **spec.get("network", {})}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def _train_one(name, spec, budget, left, work, device, seed, emit):
    """Train (or fit) one model on the left hand; return (model path, seconds)."""
    from .analysis import save_feature_baseline, save_lookup_model
    from ..training.train import TrainConfig, train

    path = work / "models" / f"{_slug(name)}.safetensors"
    started = time.perf_counter()
    if spec["model"] == "lookup":
        save_lookup_model(path, left["t1"], left["t2"], bins=budget["bins"], mask=left["labels"].array > 0)
    elif spec["model"] == "feature_regression":
        save_feature_baseline(path, left["t1"], left["t2"], seed=seed)  # the hand and a rim of air, as the refiner's trees
    else:
        # GANs train for the budget's epochs at its rate; the refiner keeps its own schedule (its
        # epochs are scaled with the budget's so "tiny" stays tiny).
        own = spec.get("training")
        schedule = {"epochs": budget["epochs"], "epochs_decay": 0, "lr": budget["lr"], "betas": (0.5, 0.999),
                    "batch_size": 1, "augment": False}
        if own:
            scale = budget["epochs"] / BUDGETS["cpu"]["epochs"]
            schedule = {**own, "epochs": max(1, round(own["epochs"] * scale)), "epochs_decay": round(own["epochs_decay"] * scale)}
        config = TrainConfig(
            t1=left["t1"], t2=left["t2"], out=path, model=spec["model"],
            network=network_overrides(budget, spec), planes=tuple(spec.get("planes", PLANES)),
            context=spec.get("context", 1), device=device, seed=seed, **schedule,
            max_steps_per_epoch=budget["max_steps_per_epoch"], checkpoint_dir=work / "checkpoints" / _slug(name),
            loss_csv=work / "losses" / f"{_slug(name)}.csv",
        )
        train(config, progress=lambda event: emit({"model": name, **event}) if event.get("event") == "epoch" else None)
    return path, time.perf_counter() - started


def run_comparison(out_dir, budget="cpu", size=None, epochs=None, models=None, device="auto", seed=0,
                   overwrite=False, embed_images=False, progress=None, max_steps=None) -> dict:
    """Run the whole comparison into ``out_dir`` (written under a temporary name, then renamed).

    Returns a summary dict (also written as ``summary.json``): per-model metrics, timings,
    the report path and whether the recommended configuration beat the paper's Pix2Pix.
    """
    from . import report
    from ..core import metrics
    from ..core.atomic import atomic_directory
    from ..phantom.render import landmarks, make_phantom

    settings, names = _settings(budget, size, epochs, max_steps, models)
    emit = progress or (lambda event: None)
    out_dir = Path(out_dir)
    started = time.perf_counter()

    with atomic_directory(out_dir, overwrite=overwrite) as work:
        emit({"event": "phantom", "size": settings["size"]})
        vols = make_phantom(size=settings["size"], seed=seed)
        marks = landmarks(settings["size"], seed)
        (work / "landmarks.json").write_text(json.dumps(marks, indent=2))
        mask = metrics.foreground_mask(vols["right_labels"])
        results, synthetic, timings, model_paths = _train_and_synthesize(names, settings, vols, mask, work, device, seed,
                                                                        emit)
        figures, occlusion = _figures(work / "figures", vols, marks, mask, results, synthetic, model_paths, settings,
                                      names)
        metrics.write_csv([row for name, r in results.items() for row in metrics.csv_rows(r, label=name)],
                          work / "metrics.csv")
        verdict = _verdict(results)
        wall = time.perf_counter() - started
        summary = {
            "budget": budget, "settings": settings, "models": names, "metrics": results, "timings": timings,
            "occlusion": occlusion, "verdict": verdict, "wall_s": round(wall, 1),
            "machine": _machine(device),
        }
        metrics.write_json(summary, work / "summary.json")
        report_settings = {
            "data": f"phantom ({settings['size']}), trained on the left hand, scored on the right (labels > 0, dilated 2 voxels)",
            "budget": f"{budget}: {settings['epochs']} epoch(s), lr {settings['lr']}, network overrides {settings['network']}, "
                      f"max steps/epoch {settings['max_steps_per_epoch']}",
            "recommended": json.dumps(RECOMMENDED),
            **{f"time, {n}": f"train {t['train_s']} s, synthesize {t['synthesize_s']} s" for n, t in timings.items()},
            "wall time": f"{wall:.0f} s",
            "machine": summary["machine"],
        }
        notes = [verdict["text"]] if verdict else []
        report.write_report(work, results, figures, settings=report_settings, recommended=RECOMMENDED_NAME,
                            baseline=BASELINE_NAME, notes=notes, embed_images=embed_images,
                            title=f"T1ToT2 comparison on the phantom (budget {budget})")
    summary["report"] = str(out_dir / "index.html")
    return summary


def _settings(budget, size, epochs, max_steps, models):
    """The budget's settings with the caller's overrides, and the models to compare (checked)."""
    if budget not in BUDGETS:
        raise T1ToT2Error(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
    settings = dict(BUDGETS[budget])
    if size:
        settings["size"] = size
    if epochs:
        settings["epochs"] = int(epochs)
    if max_steps:
        settings["max_steps_per_epoch"] = int(max_steps)
    names = list(MODELS) if not models else list(models)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise T1ToT2Error(f"unknown model(s) {', '.join(unknown)}: choose among {', '.join(MODELS)}")
    return settings, names


def _train_and_synthesize(names, settings, vols, mask, work: Path, device, seed, emit):
    """Each model trained on the left hand and synthesized (through the synthesis pipeline) on the right."""
    from ..core import metrics
    from ..inference.synthesize import synthesize_volume
    from ..io.files import write_volume

    left = {"t1": vols["left_t1"], "t2": vols["left_t2"], "labels": vols["left_labels"]}
    t1, t2 = vols["right_t1"], vols["right_t2"]
    results, synthetic, timings, model_paths = {}, {}, {}, {}
    # The ceiling: what a perfect synthesis (the noise-free render) scores, by the same code as the models.
    results[ORACLE_NAME] = metrics.evaluate_volumes(vols["right_t2_clean"], t2, mask=mask)
    for name in names:
        spec = MODELS[name]
        emit({"event": "train", "model": name})
        path, train_s = _train_one(name, spec, settings, left, work, device, seed, emit)
        synth_started = time.perf_counter()
        volume = synthesize_volume(path, t1, plane=spec.get("synthesis_plane", "axial"), device=device)
        synth_s = time.perf_counter() - synth_started
        write_volume(volume, work / "volumes" / f"{_slug(name)}_synthetic_t2.nii.gz")
        results[name] = metrics.evaluate_volumes(volume, t2, mask=mask)
        synthetic[name], model_paths[name] = volume, path
        timings[name] = {"train_s": round(train_s, 2), "synthesize_s": round(synth_s, 2)}
        emit({"event": "evaluated", "model": name, "psnr": results[name]["overall"]["psnr"]["mean"], **timings[name]})
    return results, synthetic, timings, model_paths


def _figures(figures_dir: Path, vols, marks, mask, results, synthetic, model_paths, settings, names):
    """The report's figures (fig. 8 panel, profiles, joint histograms, occlusion, grid energy, rendering)."""
    from . import analysis

    t1, t2 = vols["right_t1"], vols["right_t2"]
    figures = [("Figure 8 style: right hand, central axial slice — T1, acquired T2, each model's SYNTHETIC T2 "
                "and |synthetic − acquired|", figure8_panel(t1, t2, synthetic, figures_dir / "figure8.png"))]
    polyline = analysis.landmark_points(marks, "right", "thumb_metacarpal_profile")
    profile_volumes = {"T1 VIBE": t1, "acquired T2": t2, **{f"synthetic T2 ({n})": v for n, v in synthetic.items()}}
    distances, profiles = analysis.line_profile(profile_volumes, polyline)
    figures.append(("Line profiles across the thumb metacarpal (normalised intensity)",
                    analysis.write_profiles(distances, profiles, figures_dir, title="Profile across the thumb metacarpal "
                                            "(synthetic T2 dashed)")["png"]))
    pairs = {"acquired T1 vs T2": (t1, t2), **{f"T1 vs SYNTHETIC T2 ({n})": (t1, v) for n, v in synthetic.items()}}
    figures.append(("Joint T1–T2 histograms: acquired pair and each model's synthetic pair",
                    analysis.write_joint_histograms(pairs, figures_dir, bins=96, mask=mask)["png"]))
    points = {k: np.asarray(v, float) for k, v in analysis.landmark_entry(marks, "right", "occlusion_points").items()}
    occlusion = {}
    for name in [n for n in (BASELINE_NAME, RECOMMENDED_NAME) if n in synthetic]:
        spec = MODELS[name]
        plane = "axial" if spec.get("synthesis_plane") == "fuse" else spec.get("synthesis_plane", "axial")
        occlusion[name] = analysis.occlusion_study(model_paths[name], t1, t2, points, plane=plane,
                                                   widths=settings["occlusion_widths"])
        written = analysis.write_occlusion(occlusion[name], figures_dir, stem=f"occlusion_{_slug(name)}")
        figures.append((f"Occlusion study, {name}: SYNTHETIC T2 at each point vs visible T1 window width "
                        "(acquired T2 dashed)", written["png"]))
    figures.append(("Grid-artefact energy E_p of the residual and its mean 8×8 pattern (axial)",
                    grid_energy_figure({n: r for n, r in results.items() if n in synthetic}, synthetic, t2, mask,
                                       figures_dir / "grid_energy.png")))
    render_name = RECOMMENDED_NAME if RECOMMENDED_NAME in synthetic else names[-1]
    figures.append((f"The stacked SYNTHETIC T2 volume ({render_name}), false colour",
                    analysis.render_volume(synthetic[render_name], figures_dir / "render.png",
                                           title=f"SYNTHETIC T2 — {render_name}")))
    return figures, occlusion


def _verdict(results: dict) -> dict | None:
    if BASELINE_NAME not in results or RECOMMENDED_NAME not in results:
        return None
    rec, base = results[RECOMMENDED_NAME], results[BASELINE_NAME]
    gain = rec["overall"]["psnr"]["mean"] - base["overall"]["psnr"]["mean"]
    e_rec, e_base = rec["grid_energy"]["2"], base["grid_energy"]["2"]
    psnr_ok, grid_ok = gain >= 1.0, e_rec <= 0.1 * e_base
    text = (f"Recommended vs paper Pix2Pix: PSNR {gain:+.2f} dB ({'meets' if psnr_ok else 'misses'} the +1 dB target); "
            f"E_2 {e_rec:.4f} vs {e_base:.4f} ({'meets' if grid_ok else 'misses'} the ≤ 1/10 target).")
    return {"psnr_gain_db": gain, "e2_recommended": e_rec, "e2_paper": e_base, "psnr_target_met": psnr_ok,
            "grid_target_met": grid_ok, "text": text}


def _machine(device) -> str:
    import os

    import torch

    return (f"{platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__} with {torch.get_num_threads()} "
            f"thread(s), device {device}, CUDA {'available' if torch.cuda.is_available() else 'not available'}")


def figure8_panel(t1, t2, synthetic: dict, path) -> Path:
    """T1, acquired T2 and every model's synthetic T2 (top), |synthetic − acquired| below (the paper's fig. 8)."""
    from .analysis import central_slice, new_figure, save_figure

    n = 2 + len(synthetic)
    fig = new_figure(2.6 * n, 5.4)
    axes = fig.subplots(2, n, squeeze=False)
    vmax_t2 = float(np.percentile(t2.array, 99.5)) or 1.0
    vmax_t1 = float(np.percentile(t1.array, 99.5)) or 1.0
    top = [("T1 VIBE", t1, vmax_t1), ("acquired T2 SPACE", t2, vmax_t2)]
    top += [(f"SYNTHETIC T2\n{name}", v, vmax_t2) for name, v in synthetic.items()]
    for ax, (title, volume, vmax) in zip(axes[0], top):
        ax.imshow(central_slice(volume), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=8)
    shown = None
    for ax, (name, volume) in zip(axes[1, 2:], synthetic.items()):
        difference = np.abs(volume.slices("axial") - t2.slices("axial"))
        shown = ax.imshow(central_slice(difference), cmap="inferno", vmin=0, vmax=vmax_t2 / 2)
        ax.set_title(f"|synthetic − acquired|\n{name}", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    if shown is not None:
        fig.colorbar(shown, ax=list(axes[1, 2:]), shrink=0.7)
    fig.suptitle("Right hand (unseen in training), central axial slice")
    return save_figure(fig, path)


def grid_energy_figure(results: dict, synthetic: dict, t2, mask, path) -> Path:
    """Bars of E_2, E_4, E_8 per model (log scale) and each model's mean 8×8 axial residual pattern."""
    from .analysis import new_figure, save_figure
    from ..core.metrics import GRID_PERIODS

    names = list(results)
    fig = new_figure(max(7.0, 2.2 * len(names) + 4), 3.8)
    grid = fig.add_gridspec(1, len(names) + 2)
    bars = fig.add_subplot(grid[0, :2])
    width = 0.8 / len(GRID_PERIODS)
    for k, p in enumerate(GRID_PERIODS):
        values = [max(results[n]["grid_energy"][str(p)], 1e-8) for n in names]
        bars.bar(np.arange(len(names)) + k * width, values, width, label=f"E_{p}")
    bars.set_yscale("log")
    bars.set_xticks(np.arange(len(names)) + width, names, rotation=30, ha="right", fontsize=7)
    bars.set_ylabel("share of residual variance")
    bars.legend(fontsize=7)
    bars.set_title("grid-artefact energy (worst plane)", fontsize=9)
    axis = t2.plane_axis("axial")
    for k, name in enumerate(names):
        residual = np.moveaxis(synthetic[name].array - t2.array, axis, 0).astype(np.float64)
        m = np.moveaxis(mask, axis, 0)
        pattern = np.array([[residual[:, a::8, b::8][m[:, a::8, b::8]].mean() for b in range(8)] for a in range(8)])
        ax = fig.add_subplot(grid[0, k + 2])
        limit = float(np.abs(pattern - pattern.mean()).max()) or 1.0
        ax.imshow(pattern - pattern.mean(), cmap="coolwarm", vmin=-limit, vmax=limit)
        ax.set_title(f"{name}\n8×8 pattern ±{limit:.3g}", fontsize=7)
        ax.set_axis_off()
    fig.suptitle("Checkerboard check: residual (SYNTHETIC − acquired T2) by pixel phase")
    return save_figure(fig, path)


