"""``t1tot2 analyze robustness MODEL``: one model scored over a matrix of phantom acquisitions.

Each variant renders a phantom (another subject, another voxel size, noise level, pose or sequence), the
model synthesises its right hand, and the result is scored inside the hand against the acquired T2 beside
the variant's oracle (its noise-free T2, scored by the same code): the *gap* in dB says how far the model is
from what that acquisition allows.  Optionally a model trained on the variant's own left hand (the
recommended recipe, as the demo trains) is scored too: how much a dedicated model would gain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core.errors import T1ToT2Error

#: The variants: name -> (seed, what changes against the base acquisition).  ``{voxel}`` rows are made from
#: ``resolutions``; the base is the small preset (1.5 mm, seed 0: the demo's configuration).
NOISE_FACTORS = (0.5, 1.5)
RESOLUTIONS = (0.6, 1.0, 1.5)
OTHER_SEEDS = (1, 2)
OBLIQUE_POSE = (0.0, 20.0, 25.0)
#: Other protocols: a shorter VIBE (TR 9 ms, TE 3 ms, flip 12 degrees); a SPACE at TR 2500 ms, TE 100 ms.
OTHER_SEQUENCE = {"vibe": {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}, "space": {"TR": 2500.0, "TE": 100.0}}


def variants(base=None, resolutions=RESOLUTIONS, seeds=OTHER_SEEDS) -> list:
    """[(name, seed, Acquisition)] of the matrix; ``base`` (an Acquisition) is what every variant changes one thing of."""
    from dataclasses import replace

    from ..phantom.render import NOISE_SIGMA, Acquisition, posed

    base = base or Acquisition.preset("small")
    rows = [("demo configuration", 0, base)]
    rows += [(f"seed {s}", int(s), base) for s in seeds]
    rows += [(f"{v:g} mm", 0, replace(base, voxel_mm=(float(v),) * 3)) for v in resolutions if (float(v),) * 3 != base.voxel_mm]
    rows += [(f"noise x{f:g}", 0, replace(base, noise_sigma=base.noise_sigma * f if base.noise_sigma else NOISE_SIGMA * f))
             for f in NOISE_FACTORS]
    rows.append(("oblique pose", 0, posed(base, OBLIQUE_POSE)))
    # Another VIBE changes only the input; another SPACE changes the target itself (a T1-only model cannot know it).
    rows.append(("other VIBE", 0, replace(base, vibe={**base.vibe, **OTHER_SEQUENCE["vibe"]})))
    rows.append(("other SPACE", 0, replace(base, space={**base.space, **OTHER_SEQUENCE["space"]})))
    return rows


def _scores(candidate, acquired, mask) -> dict:
    from ..core import metrics

    result = metrics.evaluate_volumes(candidate, acquired, mask=mask)
    return {k: round(float(result["overall"][k]["mean"]), 4) for k in ("psnr", "ssim", "nrmse")}


def _retrained(vols, device, seed: int, work: Path):
    """A model trained on the variant's left hand with the recommended recipe, as the demo trains it."""
    from ..training.presets import RECOMMENDED
    from ..training.train import TrainConfig, train

    path = work / "variant_model.safetensors"
    config = TrainConfig(t1=vols["left_t1"], t2=vols["left_t2"], out=path, model=RECOMMENDED["model"],
                         network={**RECOMMENDED["network"], "ngf": 32}, planes=tuple(RECOMMENDED["planes"]),
                         context=RECOMMENDED["context"], **RECOMMENDED["training"], seed=seed, device=device,
                         checkpoint_dir=work / "checkpoints")
    train(config)
    return path


def score_variant(model, name: str, seed: int, acquisition, device="auto", retrain_dir=None) -> dict:
    """One row: the model and the oracle on the variant's right hand (and a model trained on its left hand)."""
    from ..core import metrics
    from ..inference.synthesize import default_plane, synthesize_volume
    from ..phantom.render import make_phantom

    tick = time.perf_counter()
    vols = make_phantom("small", seed=seed, acquisition=acquisition)
    acquired, mask = vols["right_t2"], metrics.foreground_mask(vols["right_labels"])
    synthetic = synthesize_volume(model, vols["right_t1"], plane=default_plane(model), device=device)
    row = {"variant": name, "seed": int(seed), "acquisition": acquisition.record(),
           "model": _scores(synthetic, acquired, mask), "oracle": _scores(vols["right_t2_clean"], acquired, mask)}
    row["gap_db"] = round(row["oracle"]["psnr"] - row["model"]["psnr"], 2)
    if retrain_dir is not None:
        work = Path(retrain_dir) / name.replace(" ", "_")
        work.mkdir(parents=True, exist_ok=True)
        own = synthesize_volume(_retrained(vols, device, seed, work), vols["right_t1"], plane="fuse", device=device)
        row["trained_on_variant"] = _scores(own, acquired, mask)
    row["seconds"] = round(time.perf_counter() - tick, 1)
    return row


def robustness_matrix(model, base=None, resolutions=RESOLUTIONS, seeds=OTHER_SEEDS, device="auto", retrain=False,
                      work_dir=None, only=None, progress=None) -> dict:
    """Every variant's row (see :func:`score_variant`); ``only``: names to keep."""
    from ..networks.modelfile import load_model

    loaded = load_model(model)
    chosen = variants(base, resolutions, seeds)
    if only:
        unknown = sorted(set(only) - {n for n, _, _ in chosen})
        if unknown:
            raise T1ToT2Error(f"unknown robustness variant(s) {', '.join(unknown)}: use {', '.join(n for n, _, _ in chosen)}")
        chosen = [v for v in chosen if v[0] in only]
    if retrain and work_dir is None:
        raise T1ToT2Error("training a model per variant needs a work folder")
    rows = []
    for name, seed, acquisition in chosen:
        rows.append(score_variant(loaded, name, seed, acquisition, device, Path(work_dir) / "retrained" if retrain else None))
        if progress:
            progress(rows[-1])
    return {"model": str(getattr(loaded, "path", model)), "rows": rows,
            "worst_gap_db": max(r["gap_db"] for r in rows)}


def table(result: dict) -> str:
    """The matrix as a text table (PSNR dB / SSIM inside the hand)."""
    header = f"{'variant':<20} {'voxel mm':<14} {'model dB':>8} {'SSIM':>6} {'oracle dB':>9} {'gap dB':>7}"
    extra = any("trained_on_variant" in r for r in result["rows"])
    lines = [header + (f" {'own dB':>7}" if extra else "")]
    for r in result["rows"]:
        voxel = "x".join(f"{v:g}" for v in r["acquisition"]["voxel_mm_RAS"])
        line = (f"{r['variant']:<20} {voxel:<14} {r['model']['psnr']:>8.2f} {r['model']['ssim']:>6.3f} "
                f"{r['oracle']['psnr']:>9.2f} {r['gap_db']:>7.2f}")
        if extra:
            line += f" {r['trained_on_variant']['psnr']:>7.2f}" if "trained_on_variant" in r else f" {'':>7}"
        lines.append(line)
    return "\n".join(lines)


def one_line(result: dict) -> str:
    """The summary the demo prints."""
    worst = max(result["rows"], key=lambda r: r["gap_db"])
    return (f"robustness: {len(result['rows'])} phantom variant(s), model {min(r['model']['psnr'] for r in result['rows']):.1f}-"
            f"{max(r['model']['psnr'] for r in result['rows']):.1f} dB, largest gap to the oracle {worst['gap_db']:.1f} dB "
            f"({worst['variant']})")


def write_robustness(result: dict, out_dir) -> dict:
    """robustness.json, robustness.txt (the table) and robustness.png (model, oracle and own model per variant)."""
    from ..core.atomic import atomic_path
    from ..core.metrics import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "robustness.json", "table": out / "robustness.txt", "figure": out / "robustness.png"}
    write_json(result, paths["json"])
    with atomic_path(paths["table"]) as tmp:
        tmp.write_text(table(result) + "\n")
    _figure(result, paths["figure"])
    return paths


def _figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.atomic import atomic_path

    rows = result["rows"]
    x = np.arange(len(rows))
    series = [("model", [r["model"]["psnr"] for r in rows]), ("oracle (noise-free T2)", [r["oracle"]["psnr"] for r in rows])]
    if any("trained_on_variant" in r for r in rows):
        series.append(("trained on the variant", [r.get("trained_on_variant", {}).get("psnr", np.nan) for r in rows]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 3.6))
    width = 0.8 / len(series)
    for n, (label, values) in enumerate(series):
        ax.bar(x + (n - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("PSNR inside the hand (dB)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def summary_json(result: dict) -> str:
    return json.dumps({r["variant"]: {"model_db": r["model"]["psnr"], "gap_db": r["gap_db"]} for r in result["rows"]})
