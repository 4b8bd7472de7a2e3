"""Intensity normalisation and the 2-D / 2.5-D slice data set that training reads.

MRI has no absolute intensity scale, so each volume is divided by a robust
statistic of its own foreground (:func:`foreground_scale`).  Slices are taken
along the array axis of each requested anatomical plane (resolved from the
direction matrix by :meth:`Volume.plane_axis`), optionally with neighbouring
slices as extra channels ("2.5D", edge-replicated at the ends), and padded to
the network's required multiple.  All slices of one plane share a shape, so
batches are formed per plane and only their order is mixed across planes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume

DEFAULT_PERCENTILE = 99.5


#: Voxels per chunk of the histogram Otsu's threshold is found on.
_HISTOGRAM_CHUNK = 1 << 22


def _finite_values(array: np.ndarray) -> np.ndarray:
    """``array`` as float32, without its NaN/Inf voxels (a copy only when there are some)."""
    values = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(values)
    return values if finite.all() else values[finite]


def _otsu_histogram(values: np.ndarray, nbins: int = 256) -> tuple:
    """(counts, bin centres) of ``values`` as scikit-image's ``histogram(..., source_range="image")`` makes them for
    a float image, counted chunk by chunk: the same numbers without a volume-sized temporary."""
    flat = values.reshape(-1)
    lo, hi = flat.min(), flat.max()
    counts = np.zeros(nbins, np.int64)
    for start in range(0, flat.size, _HISTOGRAM_CHUNK):
        counts += np.histogram(flat[start:start + _HISTOGRAM_CHUNK], bins=nbins, range=(lo, hi))[0]
    edges = np.histogram_bin_edges(flat[:1], bins=nbins, range=(lo, hi))
    return counts, (edges[:-1] + edges[1:]) / 2.0


def foreground_threshold(array: np.ndarray) -> float:
    """Otsu threshold separating the object from the (dark, noisy) background (scikit-image's, on a histogram
    counted in chunks: equal to ``threshold_otsu(values)``)."""
    from skimage.filters import threshold_otsu

    values = _finite_values(array)
    if values.size == 0 or values.max() <= values.min():
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(hist=_otsu_histogram(values)))


def foreground_scale(array: np.ndarray, percentile: float = DEFAULT_PERCENTILE, threshold: float | None = None) -> float:
    """The ``percentile`` of the foreground intensities: divide by it to bring a volume to ~[0, 1].

    The foreground is everything above the Otsu threshold (``threshold``, when the caller has it already), so the
    background's extent does not change the scale.  Never returns 0 (or a non-finite value).
    """
    if not 0.0 < percentile <= 100.0:
        raise T1ToT2Error(f"intensity percentile {percentile} is outside (0, 100]: use e.g. 99.5")
    values = _finite_values(array)
    if values.size == 0:
        raise T1ToT2Error("the volume has no finite voxels: check the input image")
    if threshold is None:
        threshold = foreground_threshold(values)
    foreground = values[values > threshold]  # a copy: the percentile may reorder it in place
    if foreground.size == 0:
        foreground = values.copy()
    scale = float(np.percentile(foreground, percentile, overwrite_input=True))
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.max(np.abs(values)))
    if not np.isfinite(scale) or scale <= 0:
        raise T1ToT2Error("the volume is all zeros (no foreground to normalise): check the input image")
    return scale


def check_context(context: int) -> int:
    """``context`` is the number of slices fed as channels: 1 (plain 2-D), 3, 5..."""
    context = int(context)
    if context < 1 or context % 2 == 0:
        raise T1ToT2Error(f"context {context} must be an odd number of slices (1, 3, 5...): the centre slice plus neighbours on each side")
    return context


def context_stack(slices: np.ndarray, indices, context: int) -> np.ndarray:
    """(n, context, h, w): slices ``indices`` of the (N, h, w) stack with their neighbours as channels.

    Neighbours beyond the first or last slice repeat the end slice.
    """
    half = check_context(context) // 2
    indices = np.asarray(indices, dtype=np.int64)
    offsets = np.arange(-half, half + 1)
    neighbour = np.clip(indices[:, None] + offsets[None, :], 0, slices.shape[0] - 1)
    return slices[neighbour]


def network_input(slices: np.ndarray, indices, context: int, prior_slices: np.ndarray | None = None) -> np.ndarray:
    """(n, context, h, w) T1 input of slices ``indices`` (:func:`context_stack`), followed, for a model with a
    feature-regression prior, by the same slices of the prior: (n, 2·context, h, w)."""
    stack = context_stack(slices, indices, context)
    if prior_slices is None:
        return stack
    return np.concatenate([stack, context_stack(prior_slices, indices, context)], axis=1)


@dataclass(frozen=True)
class Crop:
    """Where the original (h, w) slice lies inside its padded copy."""

    top: int
    left: int
    height: int
    width: int

    def apply(self, padded: np.ndarray) -> np.ndarray:
        return padded[..., self.top:self.top + self.height, self.left:self.left + self.width]


def padded_size(size: int, multiple: int) -> int:
    return -(-int(size) // int(multiple)) * int(multiple)


def pad_to_multiple(batch: np.ndarray, multiple: int, mode: str = "edge"):
    """Pad the last two axes of ``batch`` up to a multiple of ``multiple``, centred. Returns (padded, Crop).

    Edge padding keeps the border statistics (zero padding would add an
    artificial dark frame to slices cut through the object).
    """
    h, w = batch.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    top, left = ph // 2, pw // 2
    crop = Crop(top, left, h, w)
    if ph == 0 and pw == 0:
        return batch, crop
    pad = [(0, 0)] * (batch.ndim - 2) + [(top, ph - top), (left, pw - left)]
    return np.pad(batch, pad, mode=mode), crop


