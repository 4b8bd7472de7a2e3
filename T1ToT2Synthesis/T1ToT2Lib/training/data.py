"""Training batches: paired T1/T2 slices (2.5-D stacks), object patches, input checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume
from ..inference.slices import (
    DEFAULT_PERCENTILE,
    check_context,
    foreground_scale,
    foreground_threshold,
    network_input,
    pad_to_multiple,
)


def rank_share(batches: list, rank: int, world_size: int) -> list:
    """This process's equal share of an epoch's batches under DDP (every rank takes as many steps)."""
    if world_size <= 1:
        return batches
    per_rank = len(batches) // world_size
    if per_rank == 0:
        raise T1ToT2Error(f"only {len(batches)} batches for {world_size} processes: use fewer processes or a smaller batch")
    return batches[rank::world_size][:per_rank]


@dataclass(frozen=True)
class Batch:
    plane: str
    indices: tuple  # slice indices along the plane's array axis
    pair: int = 0  # which pair of a PairsDataset


class SliceDataset:
    """Paired T1/T2 slices of one or more planes, normalised, with context and padding.

    ``t1`` and ``t2`` must share their grid (shape and geometry).  Intensities
    are divided by ``t1_scale`` / ``t2_scale`` (default: each volume's own
    :func:`foreground_scale`).  Slices where neither volume has foreground are
    skipped.  :meth:`epoch_batches` gives the shuffled per-plane batches of an
    epoch; :meth:`arrays` turns one into network-ready arrays.
    """

    def __init__(
        self,
        t1: Volume,
        t2: Volume,
        planes=PLANES,
        context: int = 1,
        multiple: int = 1,
        t1_scale: float | None = None,
        t2_scale: float | None = None,
        percentile: float = DEFAULT_PERCENTILE,
        skip_empty: bool = True,
        augment: bool = False,
        prior: np.ndarray | None = None,
        patch: int | None = None,
    ):
        check_paired(t1, t2)
        self.planes = tuple(check_planes(planes))
        self.context = check_context(context)
        self.multiple = int(multiple)
        self.augment = augment
        if patch is not None and int(patch) < 4:
            raise T1ToT2Error(f"patch size {patch} is too small: use at least 4 pixels (or whole slices)")
        self.patch = None if patch is None else int(patch)
        self.t1_scale = float(t1_scale) if t1_scale else foreground_scale(t1.array, percentile)
        self.t2_scale = float(t2_scale) if t2_scale else foreground_scale(t2.array, percentile)
        self.t1 = t1.array / np.float32(self.t1_scale)
        self.t2 = t2.array / np.float32(self.t2_scale)
        # A prior (the feature regression's normalised T2 prediction) is fed as extra channels after the T1's.
        self.prior = None if prior is None else np.asarray(prior, dtype=np.float32)
        if self.prior is not None and self.prior.shape != t1.shape:
            raise T1ToT2Error(f"prior shape {self.prior.shape} differs from the T1 shape {t1.shape}")
        self.axes = {plane: t1.plane_axis(plane) for plane in self.planes}
        self.shape = t1.shape

        foreground = (t1.array > foreground_threshold(t1.array)) | (t2.array > foreground_threshold(t2.array))
        self.slice_indices = {}
        for plane, axis in self.axes.items():
            other = tuple(a for a in range(3) if a != axis)
            keep = foreground.any(axis=other) if skip_empty else np.ones(self.shape[axis], bool)
            self.slice_indices[plane] = np.flatnonzero(keep)
        if sum(len(v) for v in self.slice_indices.values()) == 0:
            raise T1ToT2Error("no slice of the training volumes has any foreground: check that T1 and T2 contain the object")

    def __len__(self) -> int:
        return sum(len(v) for v in self.slice_indices.values())

    def slice_shape(self, plane: str) -> tuple:
        axis = self.axes[plane]
        return tuple(s for a, s in enumerate(self.shape) if a != axis)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list:
        """The shuffled batches of ``epoch``; a pure function of its arguments (so resuming repeats it).

        With ``world_size`` > 1 each rank takes every world_size-th batch, all
        ranks the same number, so distributed steps stay in lock-step.
        """
        if batch_size < 1:
            raise T1ToT2Error(f"batch size {batch_size} must be at least 1")
        rng = np.random.default_rng([int(seed), int(epoch)])
        batches = []
        for plane in self.planes:
            order = rng.permutation(self.slice_indices[plane])
            batches += [Batch(plane, tuple(int(i) for i in order[s:s + batch_size])) for s in range(0, len(order), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return rank_share(batches, rank, world_size)

    def _patches(self, a, b, rng):
        return _object_patches(a, b, self.patch, rng, level=0.05)

    def arrays(self, batch: Batch, rng: np.random.Generator | None = None):
        """(real_a, real_b) float32 arrays, shapes (n, context, H, W) (2·context with a prior) and (n, 1, H, W), padded."""
        axis = self.axes[batch.plane]
        t1_slices = np.moveaxis(self.t1, axis, 0)
        t2_slices = np.moveaxis(self.t2, axis, 0)
        idx = np.asarray(batch.indices)
        a = network_input(t1_slices, idx, self.context, None if self.prior is None else np.moveaxis(self.prior, axis, 0))
        b = t2_slices[idx][:, None]
        if self.patch and rng is not None:
            a, b = self._patches(a, b, rng)
        if self.augment and rng is not None:
            if rng.random() < 0.5:
                a, b = a[..., ::-1], b[..., ::-1]
            if rng.random() < 0.5:
                a, b = a[..., ::-1, :], b[..., ::-1, :]
        a, _ = pad_to_multiple(np.ascontiguousarray(a, dtype=np.float32), self.multiple)
        b, _ = pad_to_multiple(np.ascontiguousarray(b, dtype=np.float32), self.multiple)
        return a, b


class PairsDataset:
    """Several :class:`SliceDataset` (one per training pair, each on its own grid) as one: an epoch's batches
    are every pair's batches, shuffled together; a batch holds slices of one pair.

    ``t1_scale`` / ``t2_scale`` (what the model file records) are the medians of the pairs' scales."""

    def __init__(self, datasets: list):
        if not datasets:
            raise T1ToT2Error("no training pair given")
        self.datasets = list(datasets)
        self.t1_scale = float(np.median([d.t1_scale for d in self.datasets]))
        self.t2_scale = float(np.median([d.t2_scale for d in self.datasets]))

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list:
        """As :meth:`SliceDataset.epoch_batches`, over all pairs; a pure function of its arguments."""
        from dataclasses import replace

        batches = []
        for n, dataset in enumerate(self.datasets):
            batches += [replace(b, pair=n) for b in dataset.epoch_batches(batch_size, int(seed) + 7919 * n, epoch)]
        rng = np.random.default_rng([int(seed), int(epoch), len(self.datasets)])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return rank_share(batches, rank, world_size)

    def arrays(self, batch: Batch, rng: np.random.Generator | None = None):
        return self.datasets[batch.pair].arrays(batch, rng)


def _object_patches(a: np.ndarray, b: np.ndarray, size: int, rng: np.random.Generator, level: float):
    """One random ``size``-square crop per sample, centred on a pixel of the object (T2 or T1 above ``level``)."""
    n, _, h, w = a.shape
    ph, pw = min(size, h), min(size, w)
    out_a = np.empty((n, a.shape[1], ph, pw), np.float32)
    out_b = np.empty((n, 1, ph, pw), np.float32)
    for s in range(n):
        inside = np.flatnonzero(((b[s, 0] > level) | (a[s, a.shape[1] // 2] > level)).ravel())
        centre = rng.choice(inside) if inside.size else rng.integers(h * w)
        top = int(np.clip(centre // w - ph // 2, 0, h - ph))
        left = int(np.clip(centre % w - pw // 2, 0, w - pw))
        out_a[s] = a[s, :, top:top + ph, left:left + pw]
        out_b[s] = b[s, :, top:top + ph, left:left + pw]
    return out_a, out_b


def check_planes(planes) -> list:
    if isinstance(planes, str):
        planes = [p.strip() for p in planes.split(",") if p.strip()]
    planes = list(planes)
    if not planes:
        raise T1ToT2Error("no plane given: use axial, coronal and/or sagittal")
    for plane in planes:
        if plane not in PLANES:
            raise T1ToT2Error(f"unknown plane {plane!r}: use one or more of {', '.join(PLANES)} (comma-separated)")
    return list(dict.fromkeys(planes))


def check_paired(t1: Volume, t2: Volume, what=("T1", "T2")) -> None:
    """T1 and T2 must be voxel-aligned: same shape and geometry."""
    if t1.shape != t2.shape:
        raise T1ToT2Error(
            f"{what[0]} shape {t1.shape} differs from {what[1]} shape {t2.shape}: add --align to register and resample {what[1]} "
            f"onto the {what[0]} grid (or run 't1tot2 align' first)"
        )
    if not t1.same_geometry(t2, tol=1e-4):
        raise T1ToT2Error(
            f"{what[0]} and {what[1]} have the same shape but different geometry (spacing/origin/direction): "
            f"add --align to register and resample {what[1]} onto the {what[0]} grid (or run 't1tot2 align' first)"
        )
