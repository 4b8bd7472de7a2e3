"""Image-quality metrics as Grant-Jacob et al. (2021) define them, and grid-artefact energy.

* NRMSE = RMSE(G, I) / (max I - min I), I the acquired image, G the generated one;
* PSNR = 10 log10(peak^2 / MSE(G, I)), the peak being the largest value in either image;
* SSIM with C1 = (0.01 L)^2, C2 = (0.03 L)^2, L the data range (by default the range of
  both images together), the same sliding window as ``skimage.metrics.structural_similarity``;
* E_p, the share of the residual's variance that is a p x p periodic pattern (the
  checkerboard that transposed convolutions leave behind).

Volumes are scored per 2-D slice in each plane, then summarised as mean and standard
deviation per plane (the paper's Table 2) and over all planes' slices (Table 1).

The slice metrics are written here rather than looped over skimage because a whole
stack of slices is scored with one vectorised filter pass (skimage scores one slice
per call); the test suite checks they agree with skimage to 1e-6.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .atomic import atomic_path, write_json  # noqa: F401  (write_json is part of this module's API)
from .errors import T1ToT2Error
from .volume import PLANES, Volume

GRID_PERIODS = (2, 4, 8)
METRICS = ("nrmse", "psnr", "ssim")
#: Slices scored per filter pass; bounds memory for 512^3 volumes (about 10 float64 stacks).
_CHUNK = 16
_K1, _K2 = 0.01, 0.03
_GAUSS_SIGMA, _GAUSS_TRUNCATE = 1.5, 3.5


# --- single images ----------------------------------------------------------
def _pair(g, i):
    g = np.asarray(g, dtype=np.float64)
    i = np.asarray(i, dtype=np.float64)
    if g.shape != i.shape:
        raise T1ToT2Error(f"generated image shape {g.shape} differs from the acquired image's {i.shape}: compare images on the same grid")
    return g, i


def nrmse(g, i) -> float:
    """RMSE between generated ``g`` and acquired ``i``, divided by the acquired image's range."""
    g, i = _pair(g, i)
    spread = float(i.max() - i.min())
    if spread == 0:
        raise T1ToT2Error("the acquired image is constant, so NRMSE (RMSE / range) is undefined: score a non-empty image")
    return math.sqrt(float(np.mean((g - i) ** 2))) / spread


def psnr(g, i) -> float:
    """10 log10(peak^2 / MSE) with the peak the largest value in either image (inf when identical)."""
    g, i = _pair(g, i)
    mse = float(np.mean((g - i) ** 2))
    peak = float(max(g.max(), i.max()))
    if mse == 0:
        return math.inf
    if peak <= 0:
        raise T1ToT2Error(f"PSNR needs a positive peak but the largest value in both images is {peak:g}: score magnitude images (>= 0)")
    return 10.0 * math.log10(peak * peak / mse)


def _window(win_size: int, gaussian: bool):
    """(filter function for an (n, h, w) stack, window size used for cropping, covariance factor)."""
    from scipy import ndimage

    if gaussian:
        radius = int(_GAUSS_TRUNCATE * _GAUSS_SIGMA + 0.5)
        size = 2 * radius + 1

        def smooth(x):
            return ndimage.gaussian_filter(x, sigma=(0, _GAUSS_SIGMA, _GAUSS_SIGMA), truncate=_GAUSS_TRUNCATE, mode="reflect")

        return smooth, size, 1.0  # Wang et al.: population covariance with Gaussian weights
    if win_size < 3 or win_size % 2 == 0:
        raise T1ToT2Error(f"SSIM window size {win_size} is invalid: use an odd number of at least 3")

    def smooth(x):
        return ndimage.uniform_filter(x, size=(1, win_size, win_size), mode="reflect")

    n = win_size * win_size
    return smooth, win_size, n / (n - 1.0)


def _ssim_maps(g, i, data_range, win_size=7, gaussian=False):
    """SSIM maps of an (n, h, w) stack; ``data_range`` has one value per slice. Returns (maps, crop)."""
    smooth, size, cov_norm = _window(win_size, gaussian)
    if min(g.shape[1:]) < size:
        raise T1ToT2Error(f"slices of {g.shape[1]}x{g.shape[2]} pixels are smaller than the {size}-pixel SSIM window: use a smaller window")
    L = np.asarray(data_range, dtype=np.float64).reshape(-1, 1, 1)
    c1, c2 = (_K1 * L) ** 2, (_K2 * L) ** 2
    ug, ui = smooth(g), smooth(i)
    vg = cov_norm * (smooth(g * g) - ug * ug)
    vi = cov_norm * (smooth(i * i) - ui * ui)
    vgi = cov_norm * (smooth(g * i) - ug * ui)
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = ((2 * ug * ui + c1) * (2 * vgi + c2)) / ((ug * ug + ui * ui + c1) * (vg + vi + c2))
    return maps, (size - 1) // 2


def ssim(g, i, data_range=None, win_size=7, gaussian=False) -> float:
    """Mean SSIM of two 2-D images (or the mean over a stack's slices).

    ``data_range`` L defaults to max(g, i) - min(g, i).  ``gaussian=True`` uses the
    11-tap Gaussian window (sigma 1.5) and population covariance of Wang et al. 2004,
    i.e. skimage's ``gaussian_weights=True, use_sample_covariance=False``.
    """
    g, i = _pair(g, i)
    if g.ndim not in (2, 3):
        raise T1ToT2Error(f"SSIM takes 2-D images (or a stack of them), got {g.ndim}-D: pass slices")
    stack_g, stack_i = np.atleast_3d(g.T).T, np.atleast_3d(i.T).T
    if data_range is None:
        data_range = float(max(g.max(), i.max()) - min(g.min(), i.min()))
    if data_range <= 0:
        return 1.0 if np.array_equal(g, i) else 0.0
    maps, pad = _ssim_maps(stack_g, stack_i, np.full(len(stack_g), data_range), win_size, gaussian)
    return float(maps[:, pad : maps.shape[1] - pad, pad : maps.shape[2] - pad].mean(dtype=np.float64))


# --- grid artefacts ---------------------------------------------------------
def grid_energy(residual, p: int, mask=None) -> float:
    """Share of the residual's variance carried by its p x p periodic pattern (in [0, 1]).

    The residual's pixels are split into p*p phase classes by (row mod p, column mod p)
    over the last two axes; a 3-D residual is treated as a stack of slices, pooling each
    class over all slices.  The pattern is the p x p array of class means; E_p is its
    variance divided by the residual's variance.  Anything whose class means agree
    (a constant offset, a sinusoid whose period is a multiple of 2p spanning whole
    periods) scores 0; a p-periodic checkerboard scores close to 1.
    """
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim not in (2, 3):
        raise T1ToT2Error(f"grid energy takes a 2-D or 3-D residual, got {r.ndim}-D")
    if p < 2 or min(r.shape[-2:]) < p:
        raise T1ToT2Error(f"grid period {p} must be at least 2 and fit in the {r.shape[-2]}x{r.shape[-1]} slice")
    m = np.ones(r.shape, dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), r.shape)
    values = r[m]
    if values.size < 2 or float(values.var()) == 0.0:
        return 0.0
    pattern = np.empty((p, p))
    for a in range(p):
        for b in range(p):
            cls = r[..., a::p, b::p][m[..., a::p, b::p]]
            pattern[a, b] = cls.mean() if cls.size else np.nan
    return float(np.nanvar(pattern) / values.var())


# --- volumes ------------------------------------------------------------------
def foreground_mask(labels: Volume | np.ndarray, dilate: int = 2) -> np.ndarray:
    """Labels > 0, dilated by ``dilate`` voxels (so edges and partial-volume rims count)."""
    from scipy import ndimage

    array = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    mask = array > 0
    if dilate > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=dilate)
    return mask


def _check_geometry(generated: Volume, actual: Volume, what="generated"):
    if not generated.same_geometry(actual, tol=1e-4):
        raise T1ToT2Error(
            f"the {what} volume's grid (shape {tuple(generated.shape)}, spacing {np.round(generated.spacing, 4).tolist()}, "
            f"origin {np.round(generated.origin, 3).tolist()}) differs from the acquired T2's (shape {tuple(actual.shape)}, "
            f"spacing {np.round(actual.spacing, 4).tolist()}, origin {np.round(actual.origin, 3).tolist()}): "
            "add --align to register and resample the acquired T2 onto it, or synthesize from the T1 that matches the acquired T2"
        )


def _summary(values):
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(finite.mean()), "std": float(finite.std())}


def slice_metrics(g_stack, i_stack, m_stack=None, win_size=7, gaussian=False):
    """NRMSE, PSNR and SSIM of each slice of two (n, h, w) stacks, inside an optional mask.

    Returns (dict metric -> array over kept slices, indices of kept slices, number skipped).
    A slice is skipped when the acquired image is empty (all zero, or nothing in the mask)
    or constant, since NRMSE is undefined there.
    """
    n = g_stack.shape[0]
    out = {k: [] for k in METRICS}
    kept = []
    for start in range(0, n, _CHUNK):
        g = np.asarray(g_stack[start : start + _CHUNK], dtype=np.float64)
        i = np.asarray(i_stack[start : start + _CHUNK], dtype=np.float64)
        m = np.ones(g.shape, bool) if m_stack is None else np.asarray(m_stack[start : start + _CHUNK], dtype=bool)
        has = m.any(axis=(1, 2))
        big = np.where(m, i, -np.inf).max(axis=(1, 2))
        small = np.where(m, i, np.inf).min(axis=(1, 2))
        gbig = np.where(m, g, -np.inf).max(axis=(1, 2))
        gsmall = np.where(m, g, np.inf).min(axis=(1, 2))
        nonzero = np.where(m, i != 0, False).any(axis=(1, 2))
        keep = has & nonzero & (big > small)
        if not keep.any():
            continue
        g, i, m = g[keep], i[keep], m[keep]
        big, small, gbig, gsmall = big[keep], small[keep], gbig[keep], gsmall[keep]
        count = m.sum(axis=(1, 2))
        mse = np.where(m, (g - i) ** 2, 0.0).sum(axis=(1, 2)) / count
        out["nrmse"].append(np.sqrt(mse) / (big - small))
        peak = np.maximum(big, gbig)
        with np.errstate(divide="ignore"):
            out["psnr"].append(np.where(mse > 0, 10.0 * np.log10(peak**2 / np.maximum(mse, 1e-300)), np.inf))
        data_range = np.maximum(big, gbig) - np.minimum(small, gsmall)
        maps, pad = _ssim_maps(g, i, data_range, win_size, gaussian)
        inner = np.zeros(m.shape, bool)
        inner[:, pad : m.shape[1] - pad, pad : m.shape[2] - pad] = True
        region = m & inner
        # A mask that lies only in the border strip falls back to the whole mask.
        region = np.where(region.any(axis=(1, 2))[:, None, None], region, m)
        out["ssim"].append(np.where(region, maps, 0.0).sum(axis=(1, 2)) / region.sum(axis=(1, 2)))
        kept.append(np.flatnonzero(keep) + start)
    result = {k: (np.concatenate(v) if v else np.empty(0)) for k, v in out.items()}
    kept = np.concatenate(kept) if kept else np.empty(0, dtype=int)
    return result, kept, n - kept.size


def evaluate_volumes(generated: Volume, actual: Volume, mask=None, planes=PLANES, win_size=7, gaussian=False) -> dict:
    """Score a generated T2 against the acquired T2, slice by slice in each plane.

    ``mask`` (a boolean array or a label Volume on the same grid; labels > 0 are used as
    given) restricts every metric to the foreground.  Returns::

        {"per_plane": {plane: {"nrmse": {"mean", "std"}, "psnr": ..., "ssim": ...,
                               "n_slices", "n_skipped", "grid_energy": {"2", "4", "8"}}},
         "overall": {"nrmse": ..., "psnr": ..., "ssim": ..., "n_slices"},
         "grid_energy": {"2": E_2, "4": E_4, "8": E_8},   # worst plane
         "notes": [...]}
    """
    _check_geometry(generated, actual)
    if mask is not None:
        if isinstance(mask, Volume):
            _check_geometry(mask, actual, what="mask")
            mask = mask.array > 0
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != actual.shape:
            raise T1ToT2Error(f"mask shape {mask.shape} differs from the volumes' {actual.shape}: pass a mask on the same grid")
        if not mask.any():
            raise T1ToT2Error("the mask is empty: pass a label map whose foreground is labelled > 0")
    residual = generated.array.astype(np.float64) - actual.array.astype(np.float64)
    per_plane, pooled, notes = {}, {k: [] for k in METRICS}, []
    for plane in planes:
        axis = actual.plane_axis(plane)
        g_stack = np.moveaxis(generated.array, axis, 0)
        i_stack = np.moveaxis(actual.array, axis, 0)
        m_stack = None if mask is None else np.moveaxis(mask, axis, 0)
        plane_win, plane_gauss = win_size, gaussian
        smallest = min(g_stack.shape[1:])
        if smallest < (11 if gaussian else win_size):
            plane_win, plane_gauss = max(3, smallest - 1 + smallest % 2), False
            notes.append(f"{plane}: slices of {g_stack.shape[1]}x{g_stack.shape[2]} are smaller than the SSIM window; used a {plane_win}x{plane_win} uniform window")
        values, kept, skipped = slice_metrics(g_stack, i_stack, m_stack, plane_win, plane_gauss)
        r_stack = np.moveaxis(residual, axis, 0)
        entry = {k: _summary(values[k]) for k in METRICS}
        entry["n_slices"] = int(kept.size)
        entry["n_skipped"] = int(skipped)
        too_coarse = [p for p in GRID_PERIODS if p > smallest]
        if too_coarse:
            notes.append(f"{plane}: slices of {g_stack.shape[1]}x{g_stack.shape[2]} are too small for E_{too_coarse[0]}"
                         f"{' and up' if len(too_coarse) > 1 else ''}; reported as nan")
        entry["grid_energy"] = {str(p): float("nan") if p in too_coarse else grid_energy(r_stack, p, m_stack)
                                for p in GRID_PERIODS}
        per_plane[plane] = entry
        for k in METRICS:
            pooled[k].append(values[k])
        if skipped:
            notes.append(f"{plane}: skipped {skipped} empty or constant slice(s) of the acquired volume")
    overall = {k: _summary(np.concatenate(pooled[k]) if pooled[k] else []) for k in METRICS}
    overall["n_slices"] = int(sum(per_plane[p]["n_slices"] for p in per_plane))
    if overall["n_slices"] == 0:
        raise T1ToT2Error("every slice of the acquired volume is empty in the scored region: check the acquired T2 and the mask")
    worst = {str(p): max((per_plane[pl]["grid_energy"][str(p)] for pl in per_plane
                          if not math.isnan(per_plane[pl]["grid_energy"][str(p)])), default=float("nan"))
             for p in GRID_PERIODS}
    return {"per_plane": per_plane, "overall": overall, "grid_energy": worst, "masked": mask is not None, "notes": notes}


def tissue_table(generated: Volume, actual: Volume, labels, names: dict | None = None) -> list[dict]:
    """Per tissue label: voxels, mean acquired, mean synthetic, mean signed and absolute error, relative error.

    ``labels`` is a label Volume (or integer array) on the same grid; ``names`` maps label value -> name
    (default: the volume's ``meta["labels"]`` as the phantom writes it, else "label N").  Label 0
    (background) is left out.  Shows which tissues a model confuses (fat vs cortex is the paper's hard case).
    """
    _check_geometry(generated, actual)
    if isinstance(labels, Volume):
        _check_geometry(labels, actual, what="label map")
        if names is None and isinstance(labels.meta.get("labels"), dict):
            names = {int(v): k for k, v in labels.meta["labels"].items()}
        labels = labels.array
    labels = np.rint(np.asarray(labels)).astype(np.int64)
    if labels.shape != actual.shape:
        raise T1ToT2Error(f"label map shape {labels.shape} differs from the volumes' {actual.shape}: pass labels on the same grid")
    names = names or {}
    g, i = generated.array.astype(np.float64), actual.array.astype(np.float64)
    rows = []
    for value in np.unique(labels):
        if value == 0:
            continue
        inside = labels == value
        acquired, synthetic = float(i[inside].mean()), float(g[inside].mean())
        rows.append({
            "label": int(value), "tissue": names.get(int(value), f"label {int(value)}"), "voxels": int(inside.sum()),
            "acquired_mean": acquired, "synthetic_mean": synthetic,
            "mean_error": synthetic - acquired, "mean_abs_error": float(np.abs(g[inside] - i[inside]).mean()),
            "relative_error": (synthetic - acquired) / acquired if acquired else float("nan"),
        })
    if not rows:
        raise T1ToT2Error("the label map has no label above 0: pass a tissue label map")
    return rows


def format_tissue_table(rows: list[dict]) -> str:
    header = f"{'tissue':<18} {'voxels':>7} {'acquired':>9} {'synthetic':>9} {'mean err':>9} {'|err|':>8} {'rel.':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['tissue']:<18} {r['voxels']:>7} {r['acquired_mean']:>9.1f} {r['synthetic_mean']:>9.1f} "
                     f"{r['mean_error']:>+9.1f} {r['mean_abs_error']:>8.1f} {100 * r['relative_error']:>+6.1f}%")
    return "\n".join(lines)


# --- output -----------------------------------------------------------------
def _fmt(stat, digits):
    if stat["mean"] is None:
        return "n/a"
    if math.isinf(stat["mean"]):
        return "inf"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_table(result: dict) -> str:
    """A plain-text table: one row per plane and one for all planes (mean ± std over slices)."""
    header = f"{'scope':<10} {'slices':>6}  {'NRMSE':>17}  {'PSNR (dB)':>15}  {'SSIM':>15}  {'E_2':>7} {'E_4':>7} {'E_8':>7}"
    lines = [header, "-" * len(header)]
    rows = list(result["per_plane"].items()) + [("all", {**result["overall"], "grid_energy": result["grid_energy"]})]
    for name, e in rows:
        ge = e["grid_energy"]
        lines.append(
            f"{name:<10} {e['n_slices']:>6}  {_fmt(e['nrmse'], 4):>17}  {_fmt(e['psnr'], 2):>15}  {_fmt(e['ssim'], 4):>15}  "
            f"{ge['2']:>7.4f} {ge['4']:>7.4f} {ge['8']:>7.4f}"
        )
    lines.extend(result.get("notes", []))
    return "\n".join(lines)


def csv_rows(result: dict, label: str | None = None):
    """Rows (dicts) for a CSV: one per plane and one for all planes."""
    rows = []
    items = list(result["per_plane"].items()) + [("all", {**result["overall"], "grid_energy": result["grid_energy"]})]
    for name, e in items:
        row = {"model": label} if label is not None else {}
        row.update({"scope": name, "n_slices": e["n_slices"]})
        for k in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"] = e[k]["mean"], e[k]["std"]
        for p in GRID_PERIODS:
            row[f"E_{p}"] = e["grid_energy"][str(p)]
        rows.append(row)
    return rows


def write_csv(rows, path) -> Path:
    rows = list(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


