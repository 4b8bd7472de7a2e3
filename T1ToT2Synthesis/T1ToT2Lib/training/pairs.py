"""Training on many T1/T2 pairs: a pairs.csv, rendered phantom subjects, one common voxel size, augmentation.

A model learns textures at one voxel size: every pair is resampled (windowed sinc, as synthesis resamples
an input of another spacing, :func:`T1ToT2Lib.inference.preprocess.prepare_input`) onto the common voxel
size, so pairs acquired at 0.6, 1.0 or 1.5 mm all teach the trees and the CNN what such an input looks like
on the model's grid.  Each pair keeps its own extent and geometry.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import Volume, check_image

#: Ranges :func:`augment_t1` draws from: intensity gamma, coil field amplitude, added Rician noise (fraction of
#: the T1's foreground scale) and Gaussian blur (voxels, a coarser acquisition).
AUGMENT_RANGES = {"gamma": (0.8, 1.25), "bias": (0.0, 0.2), "noise": (0.0, 0.02), "blur": (0.0, 0.7)}


def read_pairs_csv(path) -> list:
    """(t1, t2) paths of each row of a CSV with columns ``t1`` and ``t2`` (or the first two columns when there is
    no such header); relative paths are relative to the CSV's folder.  DICOM folders are allowed."""
    path = Path(path)
    if not path.is_file():
        raise T1ToT2Error(f"pairs file '{path}' does not exist: give a CSV with one T1,T2 pair per row")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["t1", "t2"]:
        rows = rows[1:]
    pairs = []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise T1ToT2Error(f"{path.name} row {n}: need two columns, T1 and T2")
        t1, t2 = (Path(c.strip()) for c in row[:2])
        pairs.append(tuple(p if p.is_absolute() else path.parent / p for p in (t1, t2)))
    if not pairs:
        raise T1ToT2Error(f"pairs file '{path}' lists no pair: one T1,T2 per row")
    return pairs


def phantom_pairs(subjects: int, seed: int = 0, randomize: bool = True, ranges: dict | None = None) -> list:
    """Both hands of ``subjects`` phantoms (seeds ``seed``..), rendered on the fly: [(t1, t2, t2_clean), ...].

    With ``randomize`` each subject has its own acquisition (:func:`~T1ToT2Lib.phantom.render.random_acquisition`,
    ``ranges`` overriding its ranges)."""
    from ..phantom.render import make_phantom, random_acquisition

    if int(subjects) < 1:
        raise T1ToT2Error(f"phantom subjects {subjects} must be at least 1")
    out = []
    for s in range(int(seed), int(seed) + int(subjects)):
        acquisition = random_acquisition(s, ranges) if randomize else None
        vols = make_phantom("small", seed=s, acquisition=acquisition)
        out += [(vols[f"{side}_t1"], vols[f"{side}_t2"], vols[f"{side}_t2_clean"]) for side in ("left", "right")]
    return out


def on_common_grid(pairs: list, voxel_mm=None) -> tuple:
    """Every pair resampled (windowed sinc, both volumes) to ``voxel_mm`` (i, j, k; default: the first T1's);
    returns (pairs, voxel).  Pairs already at that spacing are kept as they are."""
    from ..inference.preprocess import SAME_SPACING, resample_to_spacing

    voxel = np.asarray(pairs[0][0].spacing if voxel_mm is None else voxel_mm, dtype=np.float64)
    voxel = np.broadcast_to(voxel, (3,)).copy()
    out = []
    for pair in pairs:
        if np.all(np.abs(pair[0].spacing / voxel - 1.0) <= SAME_SPACING):
            out.append(tuple(pair))
            continue
        moved = [resample_to_spacing(v, voxel, interpolator="sinc") for v in pair]
        for v, original in zip(moved, pair):
            v.meta = {**original.meta, "resampled_from_mm": [round(float(s), 6) for s in original.spacing]}
        out.append(tuple(moved))
    return out, voxel


def augment_t1(t1: Volume, rng: np.random.Generator, ranges: dict | None = None) -> Volume:
    """Another acquisition of the same T1: intensity gamma, a smooth coil field, extra Rician noise and blur.

    Only the input changes: the target T2 stays the acquired one, so the model learns to ignore these effects."""
    from scipy import ndimage

    from ..inference.slices import foreground_scale
    from ..phantom.render import bias_field, rician

    r = {**AUGMENT_RANGES, **(ranges or {})}
    scale = foreground_scale(t1.array)
    x = np.clip(t1.array / np.float32(scale), 0.0, None)
    blur = float(rng.uniform(*r["blur"]))
    if blur > 0.05:
        x = ndimage.gaussian_filter(x, blur)
    x = x ** np.float32(rng.uniform(*r["gamma"]))
    x = x * bias_field(x.shape, rng, float(rng.uniform(*r["bias"])))
    x = rician(x.astype(np.float32), float(rng.uniform(*r["noise"])), rng)
    out = t1.with_array(x * np.float32(scale))
    out.meta["augmented"] = True
    return out


def checked_pairs(pairs: list, load) -> list:
    """Loaded, checked (T1, T2) volumes of each pair; ``load(path_or_volume, what)`` reads one."""
    from .data import check_paired

    out = []
    for n, pair in enumerate(pairs, start=1):
        what = ("T1", "T2") if len(pairs) == 1 else (f"pair {n} T1", f"pair {n} T2")
        t1 = check_image(load(pair[0], what[0]), f"the {what[0]}")
        t2 = check_image(load(pair[1], what[1]), f"the {what[1]}")
        check_paired(t1, t2, what=what)
        out.append((t1, t2))
    return out
