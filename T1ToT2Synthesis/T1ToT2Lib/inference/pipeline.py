"""One synthesis pipeline for every engine (after MONAI's ``SliceInferer``: a splitter, a predictor, a merger).

prepare (input and memory checks; the N4 / voxel-size preprocessing the model file records)
→ normalise by the T1's foreground scale → the trees' prior (refiner and feature models)
→ slices per plane (2.5-D stacks, the prior's slices, edge padding to the network's multiple)
→ a :class:`Predictor` (PyTorch: :class:`~.predict_torch.TorchPredictor`; ONNX Runtime:
:class:`~.onnx_engine.OnnxPredictor`) → crop back and add into the output → fuse the planes
→ error map → back onto the T1's exact grid, with notes in ``meta["notes"]``.

Everything but the predictor is shared, so every check, the error map, the out-of-memory fallback
(the whole network stage again on the CPU), the progress events (:mod:`T1ToT2Lib.core.progress`) and
the notes apply to both engines.  An option an engine cannot honour is refused by its predictor's
``for_model`` in one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core import sequence
from ..core.errors import T1ToT2Error
from ..core.progress import StageProgress
from ..core.volume import PLANES, Volume, check_image, check_memory
from .slices import Crop, foreground_scale, padded_size

PLANE_MODES = (*PLANES, "fuse")


class SynthesisCancelled(T1ToT2Error):
    """Raised when the cancel event is set; nothing was written."""


class Predictor(Protocol):
    """What the pipeline needs of an engine: a batch buffer it fills in place, and a forward pass over it."""

    engine: str  # "torch" or "onnx"
    where: str  # the device or execution provider, for notes

    def allocate(self, batch: int, channels: int, height: int, width: int) -> np.ndarray:
        """An (batch, channels, height, width) float32 array the pipeline fills before each :meth:`predict`."""

    def predict(self, n: int) -> np.ndarray:
        """The network's (n, height, width) output for the first ``n`` entries of the buffer."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is an accelerator running out of memory (never true on the CPU)."""

    def on_cpu(self) -> "Predictor":
        """The same model on the CPU."""


def synthetic_description(model_name: str) -> str:
    """The label a synthetic volume carries in file metadata (NIfTI descrip holds 80 characters)."""
    return f"SYNTHETIC T2 by T1ToT2 {model_name}"[:79]


# --- engine choice -------------------------------------------------------------------------------
def is_onnx(model) -> bool:
    """Whether ``model`` (a path, a LoadedModel or an OnnxModel) runs on ONNX Runtime."""
    if isinstance(model, (str, Path)):
        return Path(model).suffix.lower() == ".onnx"
    from .onnx_engine import OnnxModel

    return isinstance(model, OnnxModel)


def load_any(model):
    """A LoadedModel (torch) or an OnnxModel (ONNX Runtime) for a path or an already loaded model."""
    if not isinstance(model, (str, Path)):
        return model
    if is_onnx(model):
        from .onnx_engine import load_onnx_model

        return load_onnx_model(model)
    from ..networks.modelfile import load_model

    return load_model(model, device="cpu")


def make_predictor(model, device="auto", precision: str = "fp32", batch_norm: str = "slice") -> Predictor:
    """The predictor for ``model``'s engine; options it cannot honour are refused here, before any work."""
    if is_onnx(model):
        from .onnx_engine import OnnxPredictor

        return OnnxPredictor.for_model(model, device, precision, batch_norm)
    from .predict_torch import TorchPredictor

    return TorchPredictor.for_model(model, device, precision, batch_norm)


# --- checks --------------------------------------------------------------------------------------
def check_request(t1, plane: str, batch_size) -> None:
    if plane not in PLANE_MODES:
        raise T1ToT2Error(f"unknown plane {plane!r}: use one of {', '.join(PLANE_MODES)}")
    if int(batch_size) < 1:
        raise T1ToT2Error(f"batch size {batch_size} must be at least 1")
    if not isinstance(t1, Volume):
        raise T1ToT2Error("synthesis needs a Volume: read files with T1ToT2Lib.io.files.read_volume")
    check_image(t1, "the T1")  # too small, NaN/Inf, all zero or constant: refused in one line
    check_work_memory(t1)


def check_work_memory(t1: Volume) -> None:
    # The normalised copy, the prior, the sum of the planes' predictions (and their squares), the result.
    check_memory(float(t1.array.size) * 4 * 6, f"synthesising a {'x'.join(map(str, t1.shape))} volume")


def _note(notes: list, text: str) -> None:
    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


# --- the pipeline --------------------------------------------------------------------------------
def synthesize(model, t1: Volume, predictor: Predictor, plane: str = "axial", batch_size: int = 8, progress=None,
               cancel_event=None, uncertainty: bool = False):
    """The synthetic T2 of ``t1`` on exactly ``t1``'s grid, or ``(synthetic, error_map)`` with ``uncertainty``.

    ``model`` is a LoadedModel or an OnnxModel (the fields read are the same), ``predictor`` its engine
    (:func:`make_predictor`).  ``progress`` receives the stages' events ("prepare", "prior", "slices").
    """
    from .preprocess import prepare_input

    check_request(t1, plane, batch_size)
    acquired_with, learnt = sequence.of(t1), sequence.trained(getattr(model, "metadata", {}))
    contrast = sequence.mismatch(acquired_with, learnt) or sequence.unchecked(acquired_with, learnt)
    if contrast is not None:
        print(f"note: {contrast}", file=sys.stderr)
    with StageProgress(progress, "prepare", 1) as stage:
        prepared = prepare_input(t1, model)  # what the model file says it was trained with: N4, voxel size
        stage.update(1)
    work = t1 if prepared is None else prepared.volume
    if prepared is not None:
        check_work_memory(work)
    if prepared is not None and prepared.resampled and getattr(model, "prior", None) is not None:
        results = _synthesize_across_voxel_sizes(model, prepared, predictor, plane, batch_size, progress, cancel_event,
                                                 uncertainty)
        results = [prepared.restore(v) for v in results]
        return _finished(results, uncertainty, contrast)
    planes = PLANES if plane == "fuse" else (plane,)
    normalised = work.array / np.float32(foreground_scale(work.array, model.t1_percentile))
    prior, prior_error = predict_prior(model, normalised, uncertainty, progress)
    notes = list(work.meta.get("notes") or [])
    out, squares = predict_planes(model, predictor, work, normalised, planes, int(batch_size), progress, cancel_event,
                                  prior, uncertainty and prior_error is None, notes)
    if len(planes) > 1:
        out /= np.float32(len(planes))
    spread = planes_spread(out, squares, len(planes)) if uncertainty and prior_error is None else None
    del squares
    results = [_synthetic(work, out, model, plane, predictor, notes)]  # ``out`` becomes the synthetic (in place)
    if uncertainty:
        results.append(error_map(work, spread, prior_error, model))
    if prepared is not None:
        results = [prepared.restore(v) for v in results]
    return _finished(results, uncertainty, contrast)


def _finished(results: list, uncertainty: bool, contrast: str | None):
    """What :func:`synthesize` returns; a T1 of another contrast than the model's, or of one it cannot check, is noted
    on every output."""
    for volume in results:
        volume.meta.pop(sequence.META_KEY, None)  # the T1's sequence, not these images'
        if contrast is not None:
            volume.meta["notes"] = [contrast, *(volume.meta.get("notes") or [])]
    return tuple(results) if uncertainty else results[0]


def _synthetic(grid: Volume, normalised_t2: np.ndarray, model, plane: str, predictor: Predictor, notes: list) -> Volume:
    """The synthetic volume, made in place from ``normalised_t2`` (a float32 array the caller gives up): a volume-sized
    temporary less at the peak of memory."""
    normalised_t2 *= np.float32(model.t2_scale)
    np.maximum(normalised_t2, 0.0, out=normalised_t2)
    synthetic = grid.with_array(normalised_t2, synthetic=True, model=model.name,
                                plane=plane, description=synthetic_description(model.name), engine=predictor.engine)
    if notes:
        synthetic.meta["notes"] = notes
    return synthetic


def _synthesize_across_voxel_sizes(model, prepared, predictor: Predictor, plane: str, batch_size: int, progress,
                                   cancel_event, uncertainty: bool) -> list:
    """A model with trees on a T1 of another voxel size: the trees run on the T1's own grid, their features zoomed to
    the lengths in mm they were trained at (resampling the T1 would blur or alias the texture they read, and
    resampling their result back would blur every fine structure); the network, which learnt at its voxel size, runs
    on the resampled T1 and its *correction* of the prior goes back onto the trees' grid (the caller restores the T1's
    grid when the trees ran on the one an interpolated T1 was acquired at)."""
    from .preprocess import feature_zoom, model_preprocessing, onto_grid

    native, work = prepared.native, prepared.volume
    grid = native  # the trees' grid: the T1's own, or the one it was acquired at when it came interpolated
    planes = PLANES if plane == "fuse" else (plane,)
    zoom = feature_zoom(model_preprocessing(model.metadata)["voxel_mm"], native)
    normalised = native.array / np.float32(foreground_scale(native.array, model.t1_percentile))
    prior, prior_error = predict_prior(model, normalised, uncertainty, progress, zoom=zoom)
    del normalised
    prior_work = onto_grid(native.with_array(prior), work).array
    normalised_work = work.array / np.float32(foreground_scale(work.array, model.t1_percentile))
    notes = list(work.meta.get("notes") or [])
    out, squares = predict_planes(model, predictor, work, normalised_work, planes, int(batch_size), progress, cancel_event,
                                  prior_work, uncertainty and prior_error is None, notes)
    out /= np.float32(len(planes))
    spread = None
    if uncertainty and prior_error is None:
        spread = onto_grid(work.with_array(planes_spread(out, squares, len(planes))), grid).array
    out -= prior_work
    refined = prior + onto_grid(work.with_array(out), grid).array  # the network's correction, on the T1 grid
    results = [_synthetic(grid, refined, model, plane, predictor, notes)]
    if uncertainty:
        results.append(error_map(grid, spread, prior_error, model))
    return results


def predict_prior(model, normalised: np.ndarray, uncertainty: bool, progress, zoom=None):
    """The feature-regression prior (and its predicted error) of a refiner or feature model, else (None, None).

    ``zoom``: the model's training voxel size over this volume's, per array axis (features at the trained mm)."""
    prior = getattr(model, "prior", None)
    if prior is None:
        return None, None
    message = "feature regression (3-D multi-scale T1 features, boosted trees)"
    with StageProgress(progress, "prior", normalised.shape[0], message=message) as stage:
        tick = lambda done, total: stage.update(done * stage.total // max(total, 1))  # noqa: E731
        zoomed = {} if zoom is None else {"zoom": zoom}
        if uncertainty and prior.error_trees is not None:
            return prior.predict_volume(normalised, with_error=True, progress=tick, **zoomed)
        return prior.predict_volume(normalised, progress=tick, **zoomed), None


def predict_planes(model, predictor: Predictor, work: Volume, normalised, planes, batch_size: int, progress,
                   cancel_event, prior, with_squares: bool, notes: list):
    """The sum over ``planes`` of the network's predictions (and of their squares when ``with_squares``).

    An accelerator out of memory makes the whole stage run again on the CPU, with a note."""
    total = sum(work.shape[work.plane_axis(p)] for p in planes)
    while True:
        out = np.zeros(work.shape, dtype=np.float32)
        squares = np.zeros(work.shape, dtype=np.float32) if with_squares else None
        try:
            with StageProgress(progress, "slices", total) as stage:
                for p in planes:
                    predict_plane(predictor, normalised, work.plane_axis(p), model.in_channels, model.multiple, batch_size,
                                  out, stage.advance, cancel_event, prior, squares)
            return out, squares
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if not predictor.is_out_of_memory(exc):
                raise
        _note(notes, f"{predictor.where} ran out of memory; the network ran again on the CPU (slower): use a smaller "
                     "--batch to stay on the accelerator")
        predictor = predictor.on_cpu()


def predict_plane(predictor: Predictor, normalised: np.ndarray, axis: int, in_channels: int, multiple: int,
                  batch_size: int, out: np.ndarray, tick, cancel_event=None, prior: np.ndarray | None = None,
                  out_squares: np.ndarray | None = None) -> None:
    """Predict every slice along ``axis`` and add it into ``out`` (same shape as ``normalised``).

    With a ``prior`` volume its slices follow the T1's as channels; ``out_squares`` collects the
    squared predictions (for the spread between planes).  ``tick(n)`` follows each batch of n slices.
    """
    slices = np.moveaxis(normalised, axis, 0)
    sources = [slices] if prior is None else [slices, np.moveaxis(prior, axis, 0)]
    target = np.moveaxis(out, axis, 0)  # a view: writing it writes ``out``
    target_squares = None if out_squares is None else np.moveaxis(out_squares, axis, 0)
    h, w = slices.shape[1:]
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    crop = Crop((hp - h) // 2, (wp - w) // 2, h, w)  # centred, as pad_to_multiple
    # One padded input buffer for the whole plane, filled in place per batch: no per-batch allocations.
    buffer = predictor.allocate(min(batch_size, slices.shape[0]), in_channels * len(sources), hp, wp)
    for start in range(0, slices.shape[0], batch_size):
        if cancel_event is not None and cancel_event.is_set():
            raise SynthesisCancelled("synthesis cancelled; nothing was written")
        indices = np.arange(start, min(start + batch_size, slices.shape[0]))
        _fill(buffer[:len(indices)], sources, indices, in_channels, crop)
        predicted = crop.apply(predictor.predict(len(indices)))
        target[indices] += predicted
        if target_squares is not None:
            target_squares[indices] += predicted * predicted
        tick(len(indices))


def _fill(view: np.ndarray, sources, indices, in_channels: int, crop: Crop) -> None:
    """= network_input (neighbours beyond the ends repeat the end slice) then pad_to_multiple (edge), in place."""
    rows, cols = slice(crop.top, crop.top + crop.height), slice(crop.left, crop.left + crop.width)
    half = in_channels // 2
    count = sources[0].shape[0]
    neighbour = np.clip(indices[:, None] + np.arange(-half, half + 1)[None, :], 0, count - 1)
    for s, source in enumerate(sources):
        for i in range(len(indices)):
            for k in range(in_channels):
                view[i, s * in_channels + k, rows, cols] = source[neighbour[i, k]]
    _pad_edges(view, crop)


def _pad_edges(view: np.ndarray, crop: Crop) -> None:
    """Edge padding around the crop, in place, as pad_to_multiple: rows first, then whole columns."""
    h, w = crop.height, crop.width
    cols = slice(crop.left, crop.left + w)
    hp, wp = view.shape[-2:]
    if hp != h:
        view[..., :crop.top, cols] = view[..., crop.top:crop.top + 1, cols]
        view[..., crop.top + h:, cols] = view[..., crop.top + h - 1:crop.top + h, cols]
    if wp != w:
        view[..., :crop.left] = view[..., crop.left:crop.left + 1]
        view[..., crop.left + w:] = view[..., crop.left + w - 1:crop.left + w]


def predict_stack(predictor: Predictor, stack: np.ndarray, multiple: int, batch_size: int = 8) -> np.ndarray:
    """The network's normalised (n, h, w) output for ready-made normalised inputs (n, channels, h, w), e.g. the
    occlusion study's windows, padded and cropped exactly as :func:`predict_plane` does."""
    n, channels, h, w = stack.shape
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    crop = Crop((hp - h) // 2, (wp - w) // 2, h, w)
    buffer = predictor.allocate(min(batch_size, n), channels, hp, wp)
    out = np.empty((n, h, w), np.float32)
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        buffer[:m, :, crop.top:crop.top + h, crop.left:crop.left + w] = stack[start:start + m]
        _pad_edges(buffer[:m], crop)
        out[start:start + m] = crop.apply(predictor.predict(m))
    return out


# --- error map -----------------------------------------------------------------------------------
def planes_spread(total: np.ndarray, squares: np.ndarray, n_planes: int) -> np.ndarray:
    """Standard deviation of the planes' predictions from their mean (``total`` already divided) and squares."""
    if n_planes < 2:
        return np.zeros_like(total)
    return np.sqrt(np.maximum(squares / np.float32(n_planes) - total * total, 0.0))


def error_map(t1: Volume, spread: np.ndarray | None, predicted_error: np.ndarray | None, model) -> Volume:
    """How far each synthetic voxel can be trusted: an expected absolute error in T2 units.

    Models with a feature-regression prior (the refiner, the feature baseline): the typical error
    their error trees predict from the local T1 features and the prior's estimate, learnt from the
    training hand's residuals (large at edges, partial volume, thin shells, bright tissue).  Other
    models: the spread (standard deviation) of the three planes' predictions (zero for one plane).
    The map's worth (its rank correlation with the real error on the phantom) is measured in the README.
    """
    estimate = (spread if predicted_error is None else predicted_error) * np.float32(model.t2_scale)
    return t1.with_array(estimate.astype(np.float32), synthetic=True, model=model.name,
                         description=f"ERROR MAP of a SYNTHETIC T2 by T1ToT2 {model.name}"[:79])
