#!/usr/bin/env python
"""Train the bundled demo model (Resources/demo_model.safetensors) and write its model card.

    .venv/bin/python scripts/train_demo_model.py [--size small|full] [--epochs N] [--device auto]

The recipe is the recommended configuration (see T1ToT2Lib.training.presets.RECOMMENDED: the refiner, a
feature-regression prior corrected by a dilated residual CNN) on the phantom's left hand, scored on
its right hand, exactly as ``t1tot2 demo`` trains it.  On a GPU use ``--size full`` for the paper's
0.6 mm geometry; on a CPU the small phantom trains in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    from T1ToT2Lib.core import metrics
    from T1ToT2Lib.core.atomic import atomic_path
    from T1ToT2Lib.training.presets import RECOMMENDED
    from T1ToT2Lib.research.demo import DEMO_TRAINING
    from T1ToT2Lib.networks.modelfile import read_metadata
    from T1ToT2Lib.phantom.render import make_phantom
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--epochs", type=int, help="constant-rate epochs (default: the recommended schedule)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prior-stages", type=int, choices=(1, 2), help="tree stages (default: the recommended recipe's)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "demo_model.safetensors")
    parser.add_argument("--single", action="store_true", help="the demo's left hand only (as t1tot2 demo trains)")
    parser.add_argument("--card-only", action="store_true",
                        help="keep the model file at --out as it is: score it, export its ONNX and write its card")
    parser.add_argument("--no-robustness", action="store_true",
                        help="leave the robustness matrix (t1tot2 analyze robustness, several minutes) out of the card")
    args = parser.parse_args(argv)

    vols = make_phantom(args.size, seed=0)
    extra = {} if args.single or args.card_only else _other_acquisitions()
    network = {**RECOMMENDED["network"], **DEMO_TRAINING["network"]}
    schedule = dict(RECOMMENDED["training"])
    if args.epochs:
        schedule["epochs"] = schedule["epochs_decay"] = args.epochs
    if args.prior_stages:
        schedule["prior_stages"] = args.prior_stages
    if args.single:  # one hand gives no held-out hand to judge the CNN stage: train it as `t1tot2 demo --epochs` does
        schedule["correction"] = "train"
    if args.size == "full":
        network.update(ngf=64)
    if args.card_only and not args.out.is_file():
        parser.error(f"--card-only needs the model file {args.out}")
    if not args.card_only:
        _train(args, vols, network, schedule, extra)
    synthetic = synthesize_volume(args.out, vols["right_t1"], plane=RECOMMENDED["synthesis_plane"], device=args.device)
    result = metrics.evaluate_volumes(synthetic, vols["right_t2"], mask=metrics.foreground_mask(vols["right_labels"]))
    meta = read_metadata(args.out)
    size_mb = args.out.stat().st_size / 2**20

    rows = "\n".join(
        f"| {plane} | {r['nrmse']['mean']:.4f} ± {r['nrmse']['std']:.4f} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} "
        f"| {r['ssim']['mean']:.4f} ± {r['ssim']['std']:.4f} |"
        for plane, r in [*result["per_plane"].items(), ("all planes", result["overall"])]
    )
    card = f"""# T1ToT2 demo model

**Trained on a computer-generated hand phantom. Not for diagnosis. Its outputs are synthetic images.**

| | |
|---|---|
| file | `{args.out.name}` ({size_mb:.1f} MB, safetensors; metadata holds config, scales, training summary) |
| architecture | refiner: boosted trees (squared error) on {meta['prior']['n_features']} 3-D multi-scale T1 features ({meta['prior']['n_trees']} trees){_context_line(meta)} give a prior T2; a dilated residual CNN {json.dumps(meta['config'])} corrects it from a 2.5-D input of {RECOMMENDED['context']} T1 slices and the prior's |
| CNN stage | {_correction_line(meta)} |
| synthesis | plane mode `{RECOMMENDED['synthesis_plane']}` (axial, coronal and sagittal predictions averaged) |
| data | T1ToT2 phantom `{args.size}` (seed 0): left hand, all axial, coronal and sagittal slices; right hand held out{_data_line(not args.single)} |
| budget | {schedule['epochs']} epochs at Adam lr {schedule['lr']} then {schedule['epochs_decay']} decaying to 0, betas {tuple(schedule['betas'])}, batch {schedule['batch_size']}{', patches of ' + str(schedule['patch']) if schedule.get('patch') else ''}, flips, seed 0 |
| training time | {meta['training']['seconds'] / 60:.1f} min on {platform.machine()} ({meta['training']['device']}) |
| intensity | T1 divided by the {meta['intensity']['t1_percentile']:g}th percentile of its foreground (voxels above Otsu's threshold); output × T2 scale {meta['intensity'].get('t2_scale', 'n/a'):.4g} |
| bias field | {_n4_line(meta)} |

## Metrics on the held-out right hand (inside the dilated hand mask)

| plane | NRMSE | PSNR (dB) | SSIM |
|---|---|---|---|
{rows}

Grid-artefact energy of the residual: E_2 {result['grid_energy']['2']:.2e}, E_4 {result['grid_energy']['4']:.2e}, E_8 {result['grid_energy']['8']:.2e}.
{_robustness_section(args)}
## Limits

- The phantom is a simplified hand with idealised tissue properties (docs/phantom.md); real VIBE/SPACE scans
  differ in noise, bias, motion, anatomy and scanner. Expect this model to fail on real data: train on your own
  paired scans with the Training module or `t1tot2 train`.
- Regenerate with `.venv/bin/python scripts/train_demo_model.py`.
"""
    # Its ONNX export beside it, so the Slicer module synthesizes with ONNX Runtime and no PyTorch install.
    from T1ToT2Lib.inference.onnx_engine import export_onnx

    export_onnx(args.out, args.out.with_suffix(".onnx"))
    card_path = args.out.with_suffix(".md")
    with atomic_path(card_path) as tmp:
        tmp.write_text(card)
    print(card)
    return 0


#: Further phantom subjects the bundled model learns from besides the demo's left hand: (seed, voxel size in mm, what
#: else changes).  Their noise level and coil field are drawn from the seed; the held-out one decides whether the
#: CNN stage is kept.  The trees read each on its own grid, at the trained lengths in mm, so a 0.6 mm scan meets
#: a 0.6 mm acquisition's partial volume and noise texture it has seen.  The subjects in POSED lie turned against the
#: array axes (a pose drawn from the seed within POSE_RANGE_DEG), as a hand in a coil seldom lies square to it.
SUBJECTS = ((21, 1.0), (22, 0.6), (23, 1.5), (25, 1.5), (26, 1.0), (27, 1.5), (28, 1.5))
POSED = (27, 28)
POSE_RANGE_DEG = (10.0, 30.0, 30.0)
HELD_OUT = (24, 0.8)


def _n4_line(meta: dict) -> str:
    from T1ToT2Lib.inference.preprocess import model_preprocessing

    if model_preprocessing(meta)["n4"]:
        return "every T1 corrected by N4 (SimpleITK) before its features, in training and in synthesis; the T2 target as acquired"
    return "none (the T1 as acquired)"


def _robustness_section(args) -> str:
    """The card's robustness table: ``t1tot2 analyze robustness`` on the model just written (same code)."""
    if args.no_robustness:
        return ""
    from T1ToT2Lib.research.robustness import robustness_matrix, table

    result = robustness_matrix(args.out, device=args.device, progress=lambda row: print(f"  {row['variant']}: "
                                                                                      f"{row['model']['psnr']:.2f} dB"))
    return f"""
## Robustness (phantom variants, right hand, inside the hand, against each variant's noise-free T2)

```
{table(result)}
```
"""


def _train(args, vols, network: dict, schedule: dict, extra: dict) -> None:
    from T1ToT2Lib.training.presets import RECOMMENDED
    from T1ToT2Lib.training.train import BarProgress, TrainConfig, train

    with tempfile.TemporaryDirectory() as work:
        config = TrainConfig(
            t1=vols["left_t1"], t2=vols["left_t2"],
            out=args.out, model=RECOMMENDED["model"], network=network, planes=tuple(RECOMMENDED["planes"]),
            context=RECOMMENDED["context"], **schedule, seed=0, device=args.device,
            checkpoint_dir=Path(work) / "checkpoints", **extra,
        )
        train(config, progress=BarProgress())


def _context_line(meta: dict) -> str:
    context = meta["prior"].get("context")
    if not context:
        return ""
    return (f", then an auto-context stage ({context['n_trees']} trees) on those and {context['n_features'] - meta['prior']['n_features']} "
            f"features of the first stage's estimate")


def _correction_line(meta: dict) -> str:
    """What the gate decided, from the model file's own record."""
    record = meta.get("correction")
    if not record:
        return "trained and kept (no held-out pair judged it)"
    if not record.get("trained", True):
        return f"not trained: {record.get('reason', '')}"
    scores = lambda r: f"{r['psnr']:.2f} dB / SSIM {r['ssim']:.3f}"  # noqa: E731
    verdict = "kept" if record["kept"] else "not kept (head zeroed: the model is its trees)"
    return f"{verdict}: held-out pair {scores(record['refined'])} with it, {scores(record['prior'])} without"


def _data_line(several: bool) -> str:
    if not several:
        return ""
    def described(seed, voxel):
        pose = subject_acquisition(seed, voxel).pose_deg
        return f"seed {seed} at {voxel:g} mm" + (f" turned {', '.join(f'{a:.0f}' for a in pose)} degrees" if any(pose) else "")

    subjects = ", ".join(described(seed, voxel) for seed, voxel in SUBJECTS)
    return (f"; plus both hands of phantom subjects {subjects} (noise and coil field drawn from the seed), trees on "
            f"each one's own grid; CNN stage kept only if not worse than the trees on seed {HELD_OUT[0]}'s right hand "
            f"at {HELD_OUT[1]:g} mm")


def subject_acquisition(seed: int, voxel: float):
    """The small preset at ``voxel`` mm with the seed's noise level and coil field (and pose, for the POSED seeds)."""
    from dataclasses import replace

    from T1ToT2Lib.phantom.render import Acquisition, posed, random_acquisition

    drawn = random_acquisition(seed, {"pose_deg": POSE_RANGE_DEG})  # the range scales the pose draw only
    acquisition = replace(Acquisition.preset("small"), voxel_mm=(voxel,) * 3, noise_sigma=drawn.noise_sigma,
                          bias_amplitude=drawn.bias_amplitude)
    return posed(acquisition, drawn.pose_deg) if seed in POSED else acquisition


def _subject(seed: int, voxel: float) -> dict:
    from T1ToT2Lib.phantom.render import make_phantom, tissue_on_side_faces

    vols = make_phantom("small", seed=seed, acquisition=subject_acquisition(seed, voxel))
    for side in ("left", "right") if seed in POSED else ():
        if tissue_on_side_faces(vols[f"{side}_labels"].array):
            raise SystemExit(f"subject {seed}'s {side} hand is cut by its field of view: choose another seed or pose")
    return vols


def _other_acquisitions() -> dict:
    """TrainConfig fields: the subjects' left hands as further pairs, the held-out subject's right hand for the gate,
    and the CNN's steps per epoch kept near those of one pair."""
    pairs = []
    for seed, voxel in SUBJECTS:
        vols = _subject(seed, voxel)
        pairs += [(vols["left_t1"], vols["left_t2"]), (vols["right_t1"], vols["right_t2"])]
    held = _subject(*HELD_OUT)
    return {"pairs": tuple(pairs), "val_t1": held["right_t1"], "val_t2": held["right_t2"], "max_steps_per_epoch": 64}


if __name__ == "__main__":
    sys.exit(main())
