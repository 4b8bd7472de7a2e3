"""The paper's analyses: difference maps, line profiles, joint histograms and the look-up
baseline, the occlusion-window study and a rendering of the stacked synthetic volume.

Every analysis returns its data (arrays, Volumes, dicts) and has a writer that saves
the data (CSV / NIfTI / JSON) and a PNG figure.  Figures are drawn with matplotlib's
object API on an Agg canvas (no pyplot state, no display needed); images that a
model generated are titled "synthetic".
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..core import sequence
from ..core.atomic import atomic_path
from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume

#: A value within this fraction of the full-context prediction counts as converged (occlusion study).
OCCLUSION_TOLERANCE = 0.05
SYNTHETIC_CMAP = "magma"


# --- figures ------------------------------------------------------------------
def new_figure(width=6.0, height=4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig, path) -> Path:
    """Write a PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _write_csv(path, header, rows) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def _require_same_grid(a: Volume, b: Volume, a_name: str, b_name: str):
    if not a.same_geometry(b, tol=1e-4):
        raise T1ToT2Error(
            f"{a_name} (shape {tuple(a.shape)}, spacing {np.round(a.spacing, 4).tolist()}) and {b_name} "
            f"(shape {tuple(b.shape)}, spacing {np.round(b.spacing, 4).tolist()}) are on different grids: "
            "resample one onto the other first"
        )


def central_slice(volume: Volume | np.ndarray, plane="axial", index=None) -> np.ndarray:
    """The middle (or ``index``-th) slice of ``plane``, rows flipped so anterior/superior is up."""
    stack = volume.slices(plane) if isinstance(volume, Volume) else np.asarray(volume)
    index = stack.shape[0] // 2 if index is None else index
    return np.flipud(stack[index])


def pixel_aspect(volume: Volume, plane: str) -> float:
    """Height/width of one pixel of ``plane`` slices, so that images show true proportions."""
    axis = volume.plane_axis(plane)
    row_axis, col_axis = [a for a in range(3) if a != axis]
    spacing_kji = volume.spacing[::-1]
    return float(spacing_kji[row_axis] / spacing_kji[col_axis])


# --- difference maps -----------------------------------------------------------
def difference_map(generated: Volume, actual: Volume) -> Volume:
    """|G - I| as a Volume with the inputs' exact geometry (the paper's figures 8 and 9)."""
    _require_same_grid(generated, actual, "the synthetic T2", "the acquired T2")
    diff = np.abs(generated.array.astype(np.float64) - actual.array.astype(np.float64))
    return actual.with_array(diff, description="|synthetic T2 - acquired T2| (derived from a SYNTHETIC image)", synthetic=True)


def write_difference(generated: Volume, actual: Volume, out_dir, plane="axial") -> dict:
    """Write ``difference.nii.gz`` and ``difference.png`` (central slice); return their paths."""
    from ..io.files import write_volume

    out_dir = Path(out_dir)
    diff = difference_map(generated, actual)
    nifti = write_volume(diff, out_dir / "difference.nii.gz")
    fig = new_figure(10, 3.6)
    axes = fig.subplots(1, 3)
    vmax = float(np.percentile(actual.array, 99.5)) or 1.0
    for ax, image, title, kw in (
        (axes[0], actual, "acquired T2", {"cmap": "gray", "vmin": 0, "vmax": vmax}),
        (axes[1], generated, "SYNTHETIC T2", {"cmap": "gray", "vmin": 0, "vmax": vmax}),
        (axes[2], diff, "|synthetic − acquired|", {"cmap": "inferno", "vmin": 0, "vmax": vmax / 2}),
    ):
        shown = ax.imshow(central_slice(image, plane), **kw)
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    fig.suptitle(f"Difference map, central {plane} slice (synthetic T2 vs acquired T2)")
    png = save_figure(fig, out_dir / "difference.png")
    return {"nifti": nifti, "png": png}


# --- line profiles ---------------------------------------------------------------
def write_error_map(synthetic: Volume, error_map: Volume, real_error: np.ndarray | None, out_dir, plane="axial") -> Path:
    """Central slice of the synthetic T2, its error map (the synthesis's own estimate) and, when known, the real error."""
    out_dir = Path(out_dir)
    panels = [("SYNTHETIC T2", central_slice(synthetic, plane), "gray"),
              ("error map (estimated)", central_slice(error_map, plane), "magma")]
    if real_error is not None:
        panels.append(("|synthetic − acquired| (real)", central_slice(synthetic.with_array(real_error), plane), "magma"))
    fig = new_figure(3.2 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    aspect = pixel_aspect(synthetic, plane)
    for ax, (title, image, cmap) in zip(axes, panels):
        vmax = float(np.percentile(image, 99.5)) or 1.0
        shown = ax.imshow(image, cmap=cmap, vmin=0, vmax=vmax, aspect=aspect)
        fig.colorbar(shown, ax=ax, shrink=0.7)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    return save_figure(fig, out_dir / "error_map.png")


def parse_points(text: str) -> np.ndarray:
    """``"r,a,s;r,a,s;..."`` (RAS millimetres) to an (n, 3) array."""
    try:
        points = np.array([[float(v) for v in chunk.split(",")] for chunk in text.split(";") if chunk.strip()])
    except ValueError:
        raise T1ToT2Error(f"cannot read points {text!r}: write them as \"r,a,s;r,a,s\" in millimetres") from None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
        raise T1ToT2Error(f"points {text!r} must be at least two RAS triples: write them as \"r,a,s;r,a,s\"")
    return points


def polyline_samples(points_ras, step_mm: float):
    """Points every ``step_mm`` (or less) along a polyline, and their arc length from the first point."""
    points = np.asarray(points_ras, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 2:
        raise T1ToT2Error("a profile needs at least two RAS points (r, a, s): give the line's start and end")
    if step_mm <= 0:
        raise T1ToT2Error(f"profile step {step_mm} mm must be positive")
    samples, distances, travelled = [points[:1]], [np.zeros(1)], 0.0
    for a, b in zip(points[:-1], points[1:]):
        length = float(np.linalg.norm(b - a))
        if length == 0:
            continue
        n = max(1, math.ceil(length / step_mm))
        t = np.arange(1, n + 1) / n
        samples.append(a + t[:, None] * (b - a))
        distances.append(travelled + t * length)
        travelled += length
    if travelled == 0:
        raise T1ToT2Error("the profile's points all coincide: give two distinct points")
    return np.concatenate(samples), np.concatenate(distances)


def sample_volume(volume: Volume, points_ras) -> np.ndarray:
    """Trilinear values of ``volume`` at RAS points (NaN outside the volume)."""
    from scipy.ndimage import map_coordinates

    ijk = volume.ras_to_ijk(points_ras)
    coords = ijk[:, ::-1].T  # array order (k, j, i)
    shape = np.array(volume.shape)[:, None]
    # Half a voxel of tolerance past the outer centres: sampled by clamping, as a slice viewer shows it.
    inside = np.all((coords >= -0.5) & (coords <= shape - 0.5), axis=0)
    values = map_coordinates(volume.array.astype(np.float64), coords, order=1, mode="nearest")
    return np.where(inside, values, np.nan)


def line_profile(volumes: dict, points_ras, step_mm=None):
    """Sample several volumes along a polyline given in RAS millimetres.

    Returns ``(distances_mm, {name: values})``.  The default step is half the smallest
    voxel spacing among the volumes, so no voxel is skipped; the values are linear
    interpolations at continuous IJK positions (``Volume.ras_to_ijk``).
    """
    if not volumes:
        raise T1ToT2Error("no volumes to profile: pass at least one")
    if step_mm is None:
        step_mm = 0.5 * min(float(v.spacing.min()) for v in volumes.values())
    points, distances = polyline_samples(points_ras, step_mm)
    return distances, {name: sample_volume(v, points) for name, v in volumes.items()}


def normalise_profile(values) -> np.ndarray:
    """Divide by the profile's largest value (the paper plots normalised intensity)."""
    values = np.asarray(values, dtype=np.float64)
    peak = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
    return values / peak if peak > 0 else values


def write_profiles(distances, profiles: dict, out_dir, normalise=True, title="Line profile", stem="profile") -> dict:
    """Write ``<stem>.csv`` (distance and every profile, raw) and ``<stem>.png``."""
    out_dir = Path(out_dir)
    names = list(profiles)
    rows = [[f"{d:.4f}"] + [f"{profiles[n][k]:.6g}" for n in names] for k, d in enumerate(distances)]
    csv_path = _write_csv(out_dir / f"{stem}.csv", ["distance_mm"] + names, rows)
    fig = new_figure(7, 4)
    ax = fig.subplots()
    for name in names:
        values = normalise_profile(profiles[name]) if normalise else profiles[name]
        ax.plot(distances, values, label=name, linestyle="--" if "synthetic" in name.lower() else "-")
    ax.set_xlabel("distance along the line (mm)")
    ax.set_ylabel("normalised intensity" if normalise else "intensity")
    ax.set_title(title)
    ax.legend()
    png = save_figure(fig, out_dir / f"{stem}.png")
    return {"csv": csv_path, "png": png}


def landmark_points(landmarks, side="right", name="thumb_metacarpal_profile") -> np.ndarray:
    """Profile points from a landmarks dict or JSON file (``{side: {name: [[r,a,s], ...]}}``)."""
    return np.asarray(landmark_entry(landmarks, side, name), dtype=np.float64)


def landmark_entry(landmarks, side, name):
    """``landmarks[side][name]`` from a dict or a JSON file, with a clear error when missing."""
    if not isinstance(landmarks, dict):
        path = Path(landmarks)
        if not path.exists():
            raise T1ToT2Error(f"landmarks file '{path}' does not exist: write it with `t1tot2 phantom` or pass --points")
        try:
            landmarks = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise T1ToT2Error(f"landmarks file '{path}' is not valid JSON ({exc.msg}): regenerate it") from None
    if isinstance(landmarks, dict) and side not in landmarks and isinstance(landmarks.get("landmarks"), dict):
        landmarks = landmarks["landmarks"]  # the whole landmarks.json that `t1tot2 phantom` writes
    try:
        return landmarks[side][name]
    except (KeyError, TypeError):
        raise T1ToT2Error(f"the landmarks have no '{side}' / '{name}' entry: use a side among {sorted(landmarks)}") from None


# --- joint histograms and the look-up baseline -------------------------------------
def normalised_pair(t1: Volume, t2: Volume, mask=None):
    """Foreground-normalised T1 and T2 values (as the networks see them) inside ``mask``; and both scales."""
    from ..inference.slices import foreground_scale

    _require_same_grid(t1, t2, "the T1", "the T2")
    t1_scale = float(foreground_scale(t1.array))
    t2_scale = float(foreground_scale(t2.array))
    if t1_scale <= 0 or t2_scale <= 0:
        raise T1ToT2Error("the T1 or T2 volume has no positive foreground to normalise by: check the inputs")
    m = np.ones(t1.shape, bool) if mask is None else np.asarray(mask.array > 0 if isinstance(mask, Volume) else mask, bool)
    return t1.array[m] / t1_scale, t2.array[m] / t2_scale, t1_scale, t2_scale


def joint_histogram(t1_values, t2_values, bins=256, t1_max=None, t2_max=None):
    """2-D histogram of (T1, T2) values over [0, max]; returns (counts[t1_bin, t2_bin], t1_edges, t2_edges)."""
    t1_values = np.asarray(t1_values, dtype=np.float64).ravel()
    t2_values = np.asarray(t2_values, dtype=np.float64).ravel()
    t1_max = float(np.percentile(t1_values, 99.9)) * 1.05 if t1_max is None else float(t1_max)
    t2_max = float(np.percentile(t2_values, 99.9)) * 1.05 if t2_max is None else float(t2_max)
    t1_edges = np.linspace(0.0, max(t1_max, 1e-6), bins + 1)
    t2_edges = np.linspace(0.0, max(t2_max, 1e-6), bins + 1)
    # Values beyond the range are counted in the last bin rather than dropped.
    counts, _, _ = np.histogram2d(
        np.clip(t1_values, 0, t1_edges[-1]), np.clip(t2_values, 0, t2_edges[-1]), bins=(t1_edges, t2_edges)
    )
    return counts, t1_edges, t2_edges


def fit_lookup(t1: Volume, t2: Volume, bins=256, mask=None):
    """Fit the one-to-one look-up baseline: the most probable T2 for each T1 bin.

    On foreground-normalised intensities, the joint histogram's most populated T2 cell in
    each T1 bin gives one knot: (mean T1, mean T2) of the voxels in that cell, so a
    one-to-one mapping is reproduced exactly at the T1 values present.  Empty T1 bins get
    a knot at the bin centre, filled by linear interpolation between their neighbours.
    Returns ``(config, state_dict, t2_scale)`` for :func:`T1ToT2Lib.networks.modelfile.save_model`.
    """
    import torch

    t1n, t2n, t1_scale, t2_scale = normalised_pair(t1, t2, mask)
    if t1n.size == 0:
        raise T1ToT2Error("the mask selects no voxels: pass a label map whose foreground is labelled > 0")
    counts, t1_edges, t2_edges = joint_histogram(t1n, t2n, bins=bins)
    t1_bin = np.clip(np.digitize(t1n, t1_edges) - 1, 0, bins - 1)
    t2_bin = np.clip(np.digitize(t2n, t2_edges) - 1, 0, bins - 1)
    best = counts.argmax(axis=1)
    filled = counts.max(axis=1) > 0
    in_best = t2_bin == best[t1_bin]
    cell_count = np.bincount(t1_bin[in_best], minlength=bins)
    knots = 0.5 * (t1_edges[:-1] + t1_edges[1:])
    table = np.zeros(bins)
    knots[filled] = np.bincount(t1_bin[in_best], weights=t1n[in_best], minlength=bins)[filled] / cell_count[filled]
    table[filled] = np.bincount(t1_bin[in_best], weights=t2n[in_best], minlength=bins)[filled] / cell_count[filled]
    table[~filled] = np.interp(knots[~filled], knots[filled], table[filled])
    config = {"arch": "lookup", "bins": int(bins), "t1_max": float(t1_edges[-1]), "in_channels": 1}
    state = {
        "edges": torch.tensor(t1_edges, dtype=torch.float32),
        "knots": torch.tensor(knots, dtype=torch.float32),
        "table": torch.tensor(table, dtype=torch.float32),
    }
    return config, state, t2_scale


def save_lookup_model(path, t1: Volume, t2: Volume, bins=256, mask=None, plane="axial", extra_metadata=None) -> Path:
    """Fit the look-up baseline and save it as a model file that ``synthesize`` and ``evaluate`` accept."""
    from ..networks.modelfile import save_model

    config, state, t2_scale = fit_lookup(t1, t2, bins=bins, mask=mask)
    from ..inference.slices import DEFAULT_PERCENTILE

    n_fitted = int(np.count_nonzero(mask.array > 0 if isinstance(mask, Volume) else mask)) if mask is not None else int(t1.array.size)
    metadata = {
        "config": config,
        "planes": [plane],
        "in_channels": 1,
        "intensity": {"t1_percentile": DEFAULT_PERCENTILE, "t2_percentile": DEFAULT_PERCENTILE, "t2_scale": t2_scale},
        "training": {
            "method": "one-to-one look-up: most probable T2 per T1 bin of the joint histogram (no network, no epochs)",
            "epochs": 0,
            "shape": list(t1.shape),
            "spacing_mm": [float(s) for s in t1.spacing],
            "voxels_fitted": n_fitted,
            "t1_sequences": sequence.recorded([t1]),
        },
    }
    metadata.update(extra_metadata or {})
    return Path(save_model(path, state, metadata))


def save_feature_baseline(path, t1: Volume, t2: Volume, mask=None, seed: int = 0, extra_metadata=None,
                          regressor=None, auto_context: bool = False) -> Path:
    """Fit the feature-regression baseline (boosted trees on multi-scale T1 features) and save it as a model file.

    ``synthesize``, ``evaluate``, ``compare`` and the demo run it like any model; its trees are
    tensors in the safetensors file (see :mod:`T1ToT2Lib.networks.feature_regression`).  ``regressor``: trees
    already fitted on this pair (a refiner's prior, fitted the same way) are saved instead of refitting.
    ``auto_context``: fit the second, auto-context stage as well (see :func:`T1ToT2Lib.networks.feature_regression.fit_feature_regressor`).
    The volumes are normalised as the refiner's are (:func:`T1ToT2Lib.training.presets.normalisation_percentile`): its
    trees can be saved alone.
    """
    import time

    from ..training.data import check_paired
    from ..training.prior import pair_scales
    from ..training.presets import normalisation_percentile
    from ..networks.feature_regression import fit_feature_regressor
    from ..networks.modelfile import save_model

    check_paired(t1, t2)
    started = time.perf_counter()
    percentile = normalisation_percentile("refiner")
    t1_scale, t2_scale, objects = pair_scales(t1, t2, percentile)
    mask = objects if mask is None else np.asarray(mask.array > 0 if isinstance(mask, Volume) else mask, bool)
    if regressor is None:
        regressor, _ = fit_feature_regressor(t1.array / np.float32(t1_scale), t2.array / np.float32(t2_scale), mask, seed=seed,
                                             fit={"context_stage": bool(auto_context)})
    metadata = {
        "config": {"arch": "feature_regression", "in_channels": 1},
        "planes": ["axial"],
        "in_channels": 1,
        "intensity": {"t1_percentile": percentile, "t2_percentile": percentile, "t2_scale": t2_scale,
                      "training_t1_scale": t1_scale},
        "prior": regressor.metadata(),
        "training": {
            "method": "gradient-boosted trees (scikit-learn HistGradientBoostingRegressor, squared error) on multi-scale 3-D T1 features"
                      + (", then an auto-context stage that also reads features of the first stage's T2 estimate"
                         if regressor.context_trees is not None else ""),
            "fit": regressor.fit, "epochs": 0, "seed": int(seed),
            "shape": list(t1.shape), "spacing_mm": [float(s) for s in t1.spacing],
            "voxels_in_mask": int(mask.sum()), "seconds": round(time.perf_counter() - started, 1),
            "t1_sequences": sequence.recorded([t1]),
        },
    }
    metadata.update(extra_metadata or {})
    return Path(save_model(path, regressor.to_tensors("prior"), metadata))


def write_joint_histograms(pairs: dict, out_dir, bins=128, mask=None, stem="joint_histogram") -> dict:
    """One log-count T1-vs-T2 histogram per named (T1, T2) pair, side by side; also the counts as .npz."""
    out_dir = Path(out_dir)
    fig = new_figure(4.2 * len(pairs), 4)
    axes = np.atleast_1d(fig.subplots(1, len(pairs)))
    arrays = {}
    for ax, (name, (t1, t2)) in zip(axes, pairs.items()):
        t1n, t2n, _, _ = normalised_pair(t1, t2, mask)
        counts, t1_edges, t2_edges = joint_histogram(t1n, t2n, bins=bins, t1_max=1.5, t2_max=1.5)
        arrays[f"{name}_counts"] = counts
        arrays["t1_edges"], arrays["t2_edges"] = t1_edges, t2_edges
        ax.imshow(np.log10(1 + counts.T), origin="lower", extent=(0, t1_edges[-1], 0, t2_edges[-1]), aspect="auto", cmap="viridis")
        ax.set_xlabel("T1 VIBE (normalised)")
        ax.set_ylabel("T2 SPACE (normalised)")
        ax.set_title(name)
    fig.suptitle("Joint T1–T2 histograms (log10(1 + count))")
    png = save_figure(fig, out_dir / f"{stem}.png")
    npz = out_dir / f"{stem}.npz"
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return {"png": png, "npz": npz}


# --- rendering -------------------------------------------------------------------
def render_volume(volume: Volume, path, title="SYNTHETIC T2", cmap=SYNTHETIC_CMAP) -> Path:
    """Three orthogonal central slices and a maximum-intensity projection, false colour (fig. 14)."""
    vmax = float(np.percentile(volume.array, 99.5)) or 1.0
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 4)
    for ax, plane in zip(axes, PLANES):
        ax.imshow(central_slice(volume, plane), cmap=cmap, vmin=0, vmax=vmax, aspect=pixel_aspect(volume, plane))
        ax.set_title(f"{plane} (central slice)")
        ax.set_axis_off()
    mip = np.flipud(volume.slices("coronal").max(axis=0))
    shown = axes[3].imshow(mip, cmap=cmap, vmin=0, vmax=vmax, aspect=pixel_aspect(volume, "coronal"))
    axes[3].set_title("maximum-intensity projection (coronal)")
    axes[3].set_axis_off()
    fig.colorbar(shown, ax=axes[3], shrink=0.8)
    fig.suptitle(title if "SYNTHETIC" in title.upper() else f"SYNTHETIC {title}")
    return save_figure(fig, path)


# --- occlusion-window study ------------------------------------------------------------
def default_widths(height: int, width: int) -> list:
    """Odd window widths from 1 pixel up to one that covers the whole slice from any point."""
    widths, w = [], 1
    limit = 2 * max(height, width) + 1
    while w < limit:
        widths.append(w)
        w = w + 2 if w < 9 else int(2 * round(w * 1.4 / 2) + 1)
    widths.append(limit)
    return widths


def _point_pixel(volume: Volume, point_ras, axis: int):
    """(slice index, row, column) of the voxel nearest ``point_ras`` for slices along array ``axis``."""
    kji = np.rint(volume.ras_to_ijk(point_ras)[0][::-1]).astype(int)
    if np.any(kji < 0) or np.any(kji >= np.array(volume.shape)):
        raise T1ToT2Error(f"occlusion point {np.round(point_ras, 2).tolist()} (RAS mm) lies outside the T1 volume: pick a point inside it")
    in_plane = [int(kji[a]) for a in range(3) if a != axis]
    return int(kji[axis]), in_plane[0], in_plane[1]


def _occluded_priors(prior, slices: np.ndarray, index: int, windows, context: int) -> np.ndarray:
    """The feature-regression prior's context slices when only each window is visible (last row: no occlusion).

    The prior reads 3-D features, so the window is a column through every slice of a slab around
    ``index`` (wide enough for the largest filter); everything outside it is zero, as in the 2-D input.
    """
    from ..inference.slices import context_stack
    from ..networks.features import margin

    reach = margin(prior.spec) + context
    k0, k1 = max(0, index - reach), min(len(slices), index + reach + 1)
    slab = slices[k0:k1]
    out = []
    for window in [*windows, None]:
        visible = slab
        if window is not None:
            r0, r1, c0, c1 = window
            visible = np.zeros_like(slab)
            visible[:, r0:r1, c0:c1] = slab[:, r0:r1, c0:c1]
        predicted = prior.predict_volume(visible)
        out.append(context_stack(predicted, [index - k0], context)[0])
    return np.stack(out).astype(np.float32)


def occlusion_study(model, t1: Volume, t2: Volume, points_ras, plane="axial", widths=None, device="auto") -> dict:
    """Predicted T2 at each point when the T1 slice is cut down to a w x w window around it (fig. 13).

    ``model`` is a model file path (``.safetensors`` or ``.onnx``) or a loaded model; ``points_ras`` a dict
    name -> (r, a, s) or a list of points.  The network runs as synthesis runs it (the synthesis pipeline's
    preprocessing, predictor and padding: batch norm over each slice's own statistics, the model's N4 and voxel
    size, with the acquired T2 resampled onto that grid too).  The T1 is normalised as for synthesis, then
    everything outside the window is set to zero in every input channel; a model with a feature-regression
    prior sees it computed from the same occluded T1 (see :func:`_occluded_priors`).
    The result holds, per point, the prediction for each width, the full-context prediction,
    the acquired T2 value and ``converged_width_px`` / ``_mm``: the smallest width from which
    on every prediction stays within 5% of the full-context value (5% of the T2 scale when
    that value is near zero: the tolerance never drops below 0.25% of the T2 scale, so that
    near-black tissue such as cortical bone does not demand an exact match).
    """
    from ..inference.pipeline import load_any, make_predictor, predict_stack
    from ..inference.preprocess import onto_grid, prepare_input
    from ..inference.slices import context_stack, foreground_scale

    _require_same_grid(t1, t2, "the T1", "the acquired T2")
    model = load_any(model)
    predictor = make_predictor(model, device)
    prepared = prepare_input(t1, model)
    if prepared is not None:
        t1, t2 = prepared.volume, onto_grid(t2, prepared.volume)
    if not isinstance(points_ras, dict):
        points_ras = {f"point {n + 1}": p for n, p in enumerate(np.atleast_2d(points_ras))}
    axis = t1.plane_axis(plane)
    spacing_kji = t1.spacing[::-1]
    pixel_mm = float(np.mean([spacing_kji[a] for a in range(3) if a != axis]))
    t1_scale = foreground_scale(t1.array, getattr(model, "t1_percentile", 99.5))
    slices = np.moveaxis(t1.array, axis, 0) / np.float32(t1_scale)
    t2_slices = np.moveaxis(t2.array, axis, 0)
    h, w = slices.shape[1:]
    widths = sorted({int(x) for x in (widths or default_widths(h, w))})
    if widths[0] < 1:
        raise T1ToT2Error(f"occlusion widths must be at least 1 pixel, got {widths[0]}")
    result = {"plane": plane, "widths_px": widths, "widths_mm": [x * pixel_mm for x in widths], "pixel_mm": pixel_mm,
              "t2_scale": float(model.t2_scale), "tolerance": OCCLUSION_TOLERANCE, "points": {}}
    prior = getattr(model, "prior", None)
    for name, point in points_ras.items():
        index, row, col = _point_pixel(t1, point, axis)
        full = context_stack(slices, [index], model.in_channels)[0]
        batch = np.zeros((len(widths) + 1,) + full.shape, np.float32)
        batch[-1] = full
        windows = []
        for n, width in enumerate(widths):
            half = width // 2
            r0, r1 = max(0, row - half), min(h, row + width - half)
            c0, c1 = max(0, col - half), min(w, col + width - half)
            batch[n, :, r0:r1, c0:c1] = full[:, r0:r1, c0:c1]
            windows.append((r0, r1, c0, c1))
        if prior is not None:
            batch = np.concatenate([batch, _occluded_priors(prior, slices, index, windows, model.in_channels)], axis=1)
        predicted = predict_stack(predictor, batch, model.multiple)[:, row, col] * float(model.t2_scale)
        full_value, values = float(predicted[-1]), predicted[:-1]
        tolerance = OCCLUSION_TOLERANCE * max(abs(full_value), OCCLUSION_TOLERANCE * float(model.t2_scale))
        outside = np.flatnonzero(np.abs(values - full_value) > tolerance)
        first = 0 if outside.size == 0 else int(outside[-1]) + 1
        converged = widths[first] if first < len(widths) else None
        result["points"][name] = {
            "ras": [float(v) for v in point],
            "predicted": [float(v) for v in values],
            "full_context": full_value,
            "acquired": float(t2_slices[index, row, col]),
            "converged_width_px": converged,
            "converged_width_mm": None if converged is None else converged * pixel_mm,
        }
    return result


def write_occlusion(result: dict, out_dir, stem="occlusion") -> dict:
    """``<stem>.json``, ``<stem>.csv`` (width, prediction per point) and ``<stem>.png``."""
    out_dir = Path(out_dir)
    names = list(result["points"])
    rows = [[w, f"{wm:.3f}"] + [f"{result['points'][n]['predicted'][k]:.6g}" for n in names]
            for k, (w, wm) in enumerate(zip(result["widths_px"], result["widths_mm"]))]
    csv_path = _write_csv(out_dir / f"{stem}.csv", ["width_px", "width_mm"] + names, rows)
    with atomic_path(out_dir / f"{stem}.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
    fig = new_figure(4.2 * len(names), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    pixel_mm = result["pixel_mm"]
    for ax, name in zip(axes, names):
        entry = result["points"][name]
        ax.semilogx(result["widths_px"], entry["predicted"], "o-", ms=3, label="synthetic T2 (windowed T1)")
        ax.axhline(entry["acquired"], color="k", linestyle="--", label="acquired T2")
        ax.axhline(entry["full_context"], color="tab:orange", linestyle=":", label="synthetic T2, full slice")
        if entry["converged_width_px"]:
            ax.axvline(entry["converged_width_px"], color="tab:green", alpha=0.5, label="within 5% from here")
        ax.set_xlabel("window width (pixels)")
        ax.set_ylabel("T2 at the point")
        top = ax.secondary_xaxis("top", functions=(lambda x: x * pixel_mm, lambda x: x / pixel_mm))
        top.set_xlabel("window width (mm)")
        ax.set_title(name)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Occlusion study ({result['plane']}): synthetic T2 prediction vs window width")
    png = save_figure(fig, out_dir / f"{stem}.png")
    return {"csv": csv_path, "json": out_dir / f"{stem}.json", "png": png}


def _read(path):
    from ..io.files import read_volume

    return read_volume(path)


