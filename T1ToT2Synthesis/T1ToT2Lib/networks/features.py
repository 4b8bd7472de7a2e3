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

Large volumes are filtered in slabs along the first array axis with a margin wide enough for the
largest filter, so memory stays bounded (features of a 512x512x491 volume would need ~17 GB at once).
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
_SLAB = 48  # output slices per slab


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


def margin(spec: dict | None = None) -> int:
    """Voxels of context the largest filter reads on each side (Gaussians truncated at 4 sigma)."""
    spec = check_spec(spec)
    scales = spec["gaussian_scales"] + spec["texture_scales"] + spec["line_scales"]
    return int(np.ceil(4 * max(scales))) + max(spec["extreme_sizes"] + spec["median_sizes"]) // 2 + 1


def _texture(x: np.ndarray, s: float) -> list:
    from scipy import ndimage

    mean = ndimage.gaussian_filter(x, s)
    std = np.sqrt(np.maximum(ndimage.gaussian_filter(x * x, s) - mean * mean, 0.0))
    second = [ndimage.gaussian_filter(x, s, order=o) for o in ((2, 0, 0), (0, 2, 0), (0, 0, 2))]
    return [std, np.maximum.reduce(second), np.minimum.reduce(second)]


def _feature_stack(x: np.ndarray, spec: dict) -> np.ndarray:
    """The features of :func:`feature_names`, in that order; the filters run in parallel threads
    (scipy.ndimage releases the GIL), about twice as fast on two cores."""
    from concurrent.futures import ThreadPoolExecutor
    from scipy import ndimage

    tasks = [lambda: [x]]
    for s in spec["gaussian_scales"]:
        tasks += [lambda s=s: [ndimage.gaussian_filter(x, s)], lambda s=s: [ndimage.gaussian_gradient_magnitude(x, s)],
                  lambda s=s: [ndimage.gaussian_laplace(x, s)]]
    for w in spec["extreme_sizes"]:
        tasks += [lambda w=w: [ndimage.minimum_filter(x, int(w))], lambda w=w: [ndimage.maximum_filter(x, int(w))]]
    tasks += [lambda s=s: _texture(x, s) for s in spec["texture_scales"]]
    for s in spec["line_scales"]:
        tasks += [lambda s=s: [ndimage.gaussian_filter(x, sigma) for sigma in ((s, 0, 0), (0, s, 0), (0, 0, s))]]
    tasks += [lambda w=w: [ndimage.median_filter(x, int(w))] for w in spec["median_sizes"]]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        out = [array for group in pool.map(lambda task: task(), tasks) for array in group]
    return np.stack(out, axis=-1).astype(np.float32, copy=False)


def feature_slabs(normalised: np.ndarray, spec: dict | None = None, slab: int = _SLAB):
    """Yield ``(k0, k1, features)``: features (k1-k0, j, i, n_features) of slices k0..k1 of the volume."""
    spec = check_spec(spec)
    x = np.asarray(normalised, dtype=np.float32)
    if x.ndim != 3:
        raise T1ToT2Error(f"features need a 3-D volume, got {x.ndim} dimensions")
    pad = margin(spec)
    n = x.shape[0]
    for k0 in range(0, n, slab):
        k1 = min(n, k0 + slab)
        lo, hi = max(0, k0 - pad), min(n, k1 + pad)
        # "reflect" at the true volume ends (scipy's default), real neighbours inside.
        block = _feature_stack(x[lo:hi], spec)
        yield k0, k1, block[k0 - lo: k0 - lo + (k1 - k0)]


def feature_volume(normalised: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """All features at once, (k, j, i, n_features): for training-sized volumes only."""
    x = np.asarray(normalised, dtype=np.float32)
    spec = check_spec(spec)
    out = np.empty(x.shape + (len(feature_names(spec)),), np.float32)
    for k0, k1, block in feature_slabs(x, spec):
        out[k0:k1] = block
    return out
