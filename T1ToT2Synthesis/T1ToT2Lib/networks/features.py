"""Multi-scale local features of a normalised T1 volume (3-D context at the cost of a few filters).

Each voxel gets its intensity plus, at several scales, the Gaussian-smoothed value, the gradient
magnitude and the Laplacian, the extreme eigen-like second derivatives along the array axes, the
local standard deviation, and the local minimum and maximum over cubes of several sizes.  Two
kinds of feature average the T1's noise without blurring across an edge: Gaussians along one array
axis at a time (a long bone, tendon or skin surface lying along an axis is averaged along itself),
and the median over a small cube.  On the phantom they took the trees from 23.6 to 24.8 dB: the
T1's noise, amplified about elevenfold at a fat-cortex edge, is what limits the synthesis.  These
are the features of the random-forest / boosted-tree line of MR synthesis (the paper's ref. [62]):
they let a per-voxel regressor tell fat (dark on VIBE, bright on SPACE, next to skin) from cortical
bone (dark on both, a shell around marrow), and they are the first stage of the recommended
``refiner`` network.  All filters are :mod:`scipy.ndimage`'s; scales are in voxels.

Large volumes are filtered in slabs along the first array axis, each filter given only the margin it
reads, so memory stays bounded (features of a 512x512x491 volume would need ~17 GB at once) and the
small filters do not pay for the largest one's margin.

Scales are in voxels of the volume a model was trained on; ``zoom`` (that voxel size over this volume's, per axis)
makes them the same lengths in mm on a volume of another voxel size, so a model runs on the T1's own grid.
"""

from __future__ import annotations

import os

import numpy as np

from ..core.errors import T1ToT2Error

#: The default feature set: 40 features per voxel.
DEFAULT_SPEC = {
    "gaussian_scales": [0.7, 1.0, 2.0, 4.0, 8.0],
    "extreme_sizes": [3, 5, 9, 15],
    "texture_scales": [1.0, 2.0, 4.0],
    "line_scales": [1.0, 2.0],
    "median_sizes": [3],
}
#: Keys that model files written before they existed lack: such files used none of these features.
_LATER_KEYS = ("line_scales", "median_sizes")
#: Bytes of features per slab (bounded memory at any volume size), and the fewest slices in a slab.
_SLAB_BYTES, _MIN_SLAB = 256 * 2**20, 4


def check_spec(spec: dict | None) -> dict:
    spec = dict(DEFAULT_SPEC if spec is None else spec)
    for key in _LATER_KEYS:
        spec.setdefault(key, [])
    for key in DEFAULT_SPEC:
        values = spec.get(key)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and 0 < v <= 64 for v in values):
            raise T1ToT2Error(f"feature spec {key}={values!r} is not a list of scales in (0, 64]: the model file is damaged, re-export it")
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise T1ToT2Error(f"unknown feature spec key(s) {', '.join(unknown)}: the model file comes from a newer T1ToT2")
    return spec


def feature_names(spec: dict | None = None) -> list[str]:
    spec = check_spec(spec)
    names = ["intensity"]
    for s in spec["gaussian_scales"]:
        names += [f"gaussian_{s}", f"gradient_{s}", f"laplacian_{s}"]
    for w in spec["extreme_sizes"]:
        names += [f"minimum_{w}", f"maximum_{w}"]
    for s in spec["texture_scales"]:
        names += [f"std_{s}", f"hessian_max_{s}", f"hessian_min_{s}"]
    for s in spec["line_scales"]:
        names += [f"line_{s}_axis{axis}" for axis in range(3)]
    names += [f"median_{w}" for w in spec["median_sizes"]]
    return names


def margin(spec: dict | None = None, zoom=None) -> int:
    """Voxels of context the largest filter reads on each side (Gaussians truncated at 4 sigma)."""
    spec = check_spec(spec)
    zoomed = _zoom(zoom)
    z = 1.0 if zoomed is None else float(np.max(zoomed))
    scales = spec["gaussian_scales"] + spec["texture_scales"] + spec["line_scales"]
    return int(np.ceil(4 * max(scales) * z)) + _odd(max(spec["extreme_sizes"] + spec["median_sizes"]) * z) // 2 + 1


def _zoom(zoom) -> np.ndarray | None:
    """``zoom`` as three factors (k, j, i), or None when it changes nothing (the scales are the spec's, in voxels).

    A zoom of ``model voxel / this volume's voxel`` per axis makes every scale the same length in mm as the spec's
    scale at the model's training voxel size, and every derivative a derivative per training voxel."""
    if zoom is None:
        return None
    z = np.broadcast_to(np.asarray(zoom, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(z) & (z > 0)):
        raise T1ToT2Error(f"feature zoom {zoom!r} must be three positive factors")
    return None if np.all(np.abs(z - 1.0) < 1e-6) else z


def zoomed_window(size: int, zoom=None):
    """A cube of ``size`` voxels at the training voxel size, in this volume's voxels per axis (see :func:`_zoom`)."""
    z = _zoom(zoom)
    return int(size) if z is None else tuple(_odd(size * f) for f in z)


def _odd(size: float) -> int:
    """The odd window (voxels) nearest ``size``, at least 1."""
    return max(1, 2 * int(round((float(size) - 1.0) / 2.0)) + 1)


def _reach(sigma: float) -> int:
    """Voxels a Gaussian of ``sigma`` reads on each side (scipy.ndimage truncates at 4 sigma)."""
    return int(4.0 * float(sigma) + 0.5)


def _derivatives(x: np.ndarray, sigma, z: np.ndarray, order: int) -> list:
    """Gaussian derivatives of ``order`` along each axis, per model voxel (times ``z`` to that order)."""
    from scipy import ndimage

    return [ndimage.gaussian_filter(x, sigma, order=[order if a == b else 0 for b in range(3)]) * np.float32(z[a] ** order)
            for a in range(3)]


def _texture(x: np.ndarray, sigma, z: np.ndarray) -> list:
    from scipy import ndimage

    mean = ndimage.gaussian_filter(x, sigma)
    std = np.sqrt(np.maximum(ndimage.gaussian_filter(x * x, sigma) - mean * mean, 0.0))
    second = _derivatives(x, sigma, z, 2)
    return [std, np.maximum.reduce(second), np.minimum.reduce(second)]


def _tasks(spec: dict, zoom=None) -> list:
    """``(reach, function)`` per group of features, in :func:`feature_names` order: ``function`` maps a
    block of slices to its list of feature arrays, ``reach`` is how many slices it reads on each side
    along the first axis, so each filter is given only the margin it needs.  Every scale is times the zoom per axis
    (see :func:`_zoom`); without a zoom the windows are the spec's own sizes."""
    from scipy import ndimage

    zoomed = _zoom(zoom)
    z = np.ones(3) if zoomed is None else zoomed

    def sig(s):
        return tuple(float(s) * z)

    def window(w):
        return (int(w),) * 3 if zoomed is None else tuple(_odd(w * f) for f in z)

    tasks = [(0, lambda x: [x])]
    for s in spec["gaussian_scales"]:
        tasks += [(_reach(s * z[0]), lambda x, s=s: [ndimage.gaussian_filter(x, sig(s))]),
                  (_reach(s * z[0]), lambda x, s=s: [np.sqrt(sum(d * d for d in _derivatives(x, sig(s), z, 1)))]),
                  (_reach(s * z[0]), lambda x, s=s: [sum(_derivatives(x, sig(s), z, 2))])]
    for w in spec["extreme_sizes"]:
        tasks += [(window(w)[0] // 2, lambda x, w=w: [ndimage.minimum_filter(x, window(w))]),
                  (window(w)[0] // 2, lambda x, w=w: [ndimage.maximum_filter(x, window(w))])]
    tasks += [(_reach(s * z[0]), lambda x, s=s: _texture(x, sig(s), z)) for s in spec["texture_scales"]]
    for s in spec["line_scales"]:
        tasks += [(_reach(s * z[0]) if axis == 0 else 0,
                   lambda x, sigma=tuple(s * z[a] if a == axis else 0.0 for a in range(3)): [ndimage.gaussian_filter(x, sigma)])
                  for axis in range(3)]
    tasks += [(window(w)[0] // 2, lambda x, w=w: [ndimage.median_filter(x, window(w))]) for w in spec["median_sizes"]]
    return tasks


def feature_arrays(x: np.ndarray, spec: dict, k0: int, k1: int, progress=None, zoom=None) -> list:
    """The features of slices ``k0..k1`` of ``x``: one contiguous float32 (k1-k0, j, i) array per feature name.

    Each filter runs on those slices plus its own reach ("reflect" at the true volume ends, scipy's
    default; real neighbours inside), in parallel threads (scipy.ndimage releases the GIL), largest
    first.  ``progress(fraction)`` is called in this thread as filters finish.  ``zoom`` (k, j, i): see :func:`_zoom`.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    n = x.shape[0]
    tasks = _tasks(check_spec(spec), zoom)

    def run(task):
        reach, function = task
        lo, hi = max(0, k0 - reach), min(n, k1 + reach)
        return [np.ascontiguousarray(a[k0 - lo: k1 - lo], dtype=np.float32) for a in function(x[lo:hi])]

    results = [None] * len(tasks)
    order = sorted(range(len(tasks)), key=lambda t: -tasks[t][0])
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = {pool.submit(run, tasks[t]): t for t in order}
        for finished, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            if progress is not None:
                progress(finished / len(tasks))
    return [array for group in results for array in group]


def slab_size(shape, spec: dict | None = None) -> int:
    """Slices per slab: the slab's features take about :data:`_SLAB_BYTES`."""
    per_slice = int(np.prod(shape[1:])) * len(feature_names(spec)) * 4
    return int(max(_MIN_SLAB, min(shape[0], _SLAB_BYTES // max(1, per_slice))))


def feature_rows(normalised: np.ndarray, spec: dict | None, indices: np.ndarray, zoom=None) -> np.ndarray:
    """Feature rows (len(indices), n_features) of the voxels at sorted flat ``indices``: slab by slab, slabs
    without any of them skipped, so sampling voxels never holds the whole volume's features."""
    spec = check_spec(spec)
    x = np.asarray(normalised, dtype=np.float32)
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices), len(feature_names(spec))), np.float32)
    plane, slab = int(np.prod(x.shape[1:])), slab_size(x.shape, spec)
    for k0 in range(0, x.shape[0], slab):
        k1 = min(x.shape[0], k0 + slab)
        lo, hi = np.searchsorted(indices, [k0 * plane, k1 * plane])
        if lo == hi:
            continue
        local = indices[lo:hi] - k0 * plane
        for f, array in enumerate(feature_arrays(x, spec, k0, k1, zoom=zoom)):
            out[lo:hi, f] = array.ravel()[local]
    return out


def feature_slabs(normalised: np.ndarray, spec: dict | None = None, slab: int | None = None, zoom=None):
    """Yield ``(k0, k1, features)``: features (k1-k0, j, i, n_features) of slices k0..k1 of the volume."""
    spec = check_spec(spec)
    x = np.asarray(normalised, dtype=np.float32)
    if x.ndim != 3:
        raise T1ToT2Error(f"features need a 3-D volume, got {x.ndim} dimensions")
    slab = slab_size(x.shape, spec) if slab is None else int(slab)
    for k0 in range(0, x.shape[0], slab):
        k1 = min(x.shape[0], k0 + slab)
        yield k0, k1, np.stack(feature_arrays(x, spec, k0, k1, zoom=zoom), axis=-1)


def feature_volume(normalised: np.ndarray, spec: dict | None = None, zoom=None) -> np.ndarray:
    """All features at once, (k, j, i, n_features): for training-sized volumes only."""
    x = np.asarray(normalised, dtype=np.float32)
    spec = check_spec(spec)
    out = np.empty(x.shape + (len(feature_names(spec)),), np.float32)
    for k0, k1, block in feature_slabs(x, spec, zoom=zoom):
        out[k0:k1] = block
    return out
