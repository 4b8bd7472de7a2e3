"""Synthesising a T2 volume from a T1 volume with a trained model file.

The T1 is divided by its own foreground scale, cut into slices along the
chosen plane's array axis (2.5-D stacks when the model takes neighbours),
padded to the network's multiple and run in batches under
``torch.inference_mode``.  Each prediction is cropped back and written into a
preallocated output, mapped to T2 units with the model's training T2 scale.
The result keeps the input's exact geometry and is marked synthetic.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np

from .slices import Crop, foreground_scale, padded_size
from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume, check_image, check_memory, volume_to_sitk
from ..io.files import read_volume, write_image

PLANE_MODES = (*PLANES, "fuse")


class SynthesisCancelled(T1ToT2Error):
    """Raised when the cancel event is set; nothing was written."""


def _check_plane_mode(plane: str) -> str:
    if plane not in PLANE_MODES:
        raise T1ToT2Error(f"unknown plane {plane!r}: use one of {', '.join(PLANE_MODES)}")
    return plane


def synthetic_description(model_name: str) -> str:
    """The label a synthetic volume carries in file metadata (NIfTI descrip holds 80 characters)."""
    return f"SYNTHETIC T2 by T1ToT2 {model_name}"[:79]


BATCH_NORM_MODES = ("slice", "running")


def inference_generator(generator, batch_norm: str = "slice"):
    """The generator as synthesis runs it, in eval mode.

    With ``batch_norm="slice"`` every batch-norm layer normalises each slice by
    its own statistics (keeping the learned scale and shift), as the reference
    Pix2Pix does at test time with batch size 1.  Running statistics gathered
    from batches of one slice describe no slice well; using them ("running")
    gave a clearly worse L1 on the test phantom.  The given module is never
    modified: layers are swapped in a copy.
    """
    import copy

    from torch import nn

    if batch_norm not in BATCH_NORM_MODES:
        raise T1ToT2Error(f"unknown batch-norm mode {batch_norm!r}: use one of {', '.join(BATCH_NORM_MODES)}")
    if (batch_norm == "running" or getattr(generator, "uses_running_statistics", False)
            or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in generator.modules())):
        return generator.eval()
    per_slice = copy.deepcopy(generator).eval()
    _swap_batch_norm(per_slice)
    return per_slice


@functools.lru_cache(maxsize=None)
def _per_slice_batch_norm_class():
    """Defined on first use so that importing this module (the CLI does) does not import torch."""
    import torch.nn.functional as F
    from torch import nn

    class PerSliceBatchNorm(nn.Module):
        """A batch-norm layer's learned affine over each sample's own statistics (instance norm)."""

        def __init__(self, source):
            super().__init__()
            self.weight, self.bias, self.eps = source.weight, source.bias, source.eps

        def forward(self, x):
            return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)

    return PerSliceBatchNorm


def _swap_batch_norm(module) -> None:
    from torch import nn

    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _per_slice_batch_norm_class()(child))
        else:
            _swap_batch_norm(child)


def _predict_plane(generator, normalised: np.ndarray, axis: int, in_channels: int, multiple: int,
                   device, precision: str, batch_size: int, out: np.ndarray, tick, cancel_event,
                   prior: np.ndarray | None = None, out_squares: np.ndarray | None = None) -> None:
    """Predict every slice along ``axis`` and add it into ``out`` (same shape as ``normalised``).

    With a ``prior`` volume its slices follow the T1's as channels; ``out_squares`` collects the
    squared predictions (for the spread between planes).
    """
    import torch

    from ..core.devices import autocast_context

    slices = np.moveaxis(normalised, axis, 0)
    prior_slices = None if prior is None else np.moveaxis(prior, axis, 0)
    target = np.moveaxis(out, axis, 0)  # a view: writing it writes ``out``
    target_squares = None if out_squares is None else np.moveaxis(out_squares, axis, 0)
    # One padded input buffer for the whole plane (pinned for CUDA transfers), filled in place per
    # batch: no per-batch allocation of stacks and padded copies.  It is laid out channels-last,
    # which oneDNN's convolutions run faster on the CPU (same values).
    sources = [slices] if prior_slices is None else [slices, prior_slices]
    h, w = slices.shape[1:]
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    crop = Crop((hp - h) // 2, (wp - w) // 2, h, w)  # centred, as pad_to_multiple
    channels = in_channels * len(sources)
    pin = getattr(device, "type", str(device)) == "cuda"
    buffer = torch.empty((min(batch_size, slices.shape[0]), hp, wp, channels), dtype=torch.float32,
                         pin_memory=pin).permute(0, 3, 1, 2)  # NCHW shape, channels-last strides
    buffer_np = buffer.numpy()
    rows, cols = slice(crop.top, crop.top + h), slice(crop.left, crop.left + w)
    half = in_channels // 2
    for start in range(0, slices.shape[0], batch_size):
        if cancel_event is not None and cancel_event.is_set():
            raise SynthesisCancelled("synthesis cancelled; nothing was written")
        indices = np.arange(start, min(start + batch_size, slices.shape[0]))
        n = len(indices)
        # = context_stack (neighbours beyond the ends repeat the end slice), copied into the buffer
        neighbour = np.clip(indices[:, None] + np.arange(-half, half + 1)[None, :], 0, slices.shape[0] - 1)
        for s, source in enumerate(sources):
            for i in range(n):
                for k in range(in_channels):
                    buffer_np[i, s * in_channels + k, rows, cols] = source[neighbour[i, k]]
        view = buffer_np[:n]
        if hp != h:  # edge padding, as pad_to_multiple: rows first, then whole columns
            view[..., :crop.top, cols] = view[..., crop.top:crop.top + 1, cols]
            view[..., crop.top + h:, cols] = view[..., crop.top + h - 1:crop.top + h, cols]
        if wp != w:
            view[..., :crop.left] = view[..., crop.left:crop.left + 1]
            view[..., crop.left + w:] = view[..., crop.left + w - 1:crop.left + w]
        batch = buffer[:n].to(device, non_blocking=pin)
        with torch.inference_mode(), autocast_context(device, precision):
            predicted = generator(batch)
        predicted = crop.apply(predicted.float().cpu().numpy()[:, 0])
        target[indices] += predicted
        if target_squares is not None:
            target_squares[indices] += predicted * predicted
        tick(len(indices))


def synthesize_volume(model, t1: Volume, plane: str = "axial", device="auto", precision: str = "fp32",
                      batch_size: int = 8, progress=None, cancel_event: threading.Event | None = None,
                      batch_norm: str = "slice", uncertainty: bool = False):
    """The synthetic T2 of ``t1`` on exactly ``t1``'s grid.

    With ``uncertainty`` it returns ``(synthetic, error_map)``: see :func:`error_map`.

    ``model`` is a model file path or a :class:`~T1ToT2Lib.networks.modelfile.LoadedModel`.
    ``plane`` "fuse" averages the axial, coronal and sagittal predictions.
    ``batch_norm``: see :func:`inference_generator`.
    ``progress`` receives {"event": "slices", "done", "total"} dicts.  A CUDA
    out-of-memory error makes the whole volume run again on the CPU.
    """
    import torch

    from ..core.devices import effective_precision, resolve_device, run_with_oom_fallback
    from ..networks.modelfile import LoadedModel, load_model

    plane = _check_plane_mode(plane)
    if batch_norm not in BATCH_NORM_MODES:
        raise T1ToT2Error(f"unknown batch-norm mode {batch_norm!r}: use one of {', '.join(BATCH_NORM_MODES)}")
    if int(batch_size) < 1:
        raise T1ToT2Error(f"batch size {batch_size} must be at least 1")
    if not isinstance(t1, Volume):
        raise T1ToT2Error("synthesize_volume needs a Volume: read files with T1ToT2Lib.io.files.read_volume")
    check_image(t1, "the T1")  # too small, NaN/Inf, all zero or constant: refused in one line
    # The normalised copy, the sum of the planes' predictions (and their squares), the result: before any work.
    check_memory(float(t1.array.size) * 4 * 6, f"synthesising a {'x'.join(map(str, t1.shape))} volume")
    target_device = device if isinstance(device, torch.device) else resolve_device(device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    from .preprocess import prepare_input

    prepared = prepare_input(t1, loaded)  # what the model file says it was trained with: N4, voxel size
    if prepared is not None:
        result = synthesize_volume(loaded, prepared.volume, plane, target_device, precision, batch_size,
                                   progress, cancel_event, batch_norm, uncertainty)
        if uncertainty:
            return tuple(prepared.restore(v) for v in result)
        return prepared.restore(result)
    planes = PLANES if plane == "fuse" else (plane,)
    normalised = t1.array / np.float32(foreground_scale(t1.array, loaded.t1_percentile))
    prior, prior_error = None, None
    if loaded.prior is not None:
        emit_prior = progress or (lambda event: None)
        emit_prior({"event": "prior", "message": "feature regression (3-D multi-scale T1 features, boosted trees)"})
        if uncertainty and loaded.prior.error_trees is not None:
            prior, prior_error = loaded.prior.predict_volume(normalised, with_error=True)
        else:
            prior = loaded.prior.predict_volume(normalised)
    total = sum(t1.shape[t1.plane_axis(p)] for p in planes)
    emit = progress or (lambda event: None)

    def work(run_device):
        generator = inference_generator(loaded.generator.to(run_device), batch_norm)
        run_precision = effective_precision(run_device, precision)
        out = np.zeros(t1.shape, dtype=np.float32)
        squares = np.zeros(t1.shape, dtype=np.float32) if uncertainty and prior_error is None else None
        done = [0]

        def tick(n):
            done[0] += n
            emit({"event": "slices", "done": done[0], "total": total})

        for p in planes:
            _predict_plane(generator, normalised, t1.plane_axis(p), loaded.in_channels, loaded.multiple,
                           run_device, run_precision, int(batch_size), out, tick, cancel_event, prior, squares)
        return out, squares

    out, squares = run_with_oom_fallback(work, target_device)
    if len(planes) > 1:
        out /= np.float32(len(planes))
    synthetic = t1.with_array(
        np.maximum(out * np.float32(loaded.t2_scale), 0.0),
        synthetic=True,
        model=loaded.name,
        plane=plane,
        description=synthetic_description(loaded.name),
    )
    if not uncertainty:
        return synthetic
    spread = None
    if prior_error is None:
        spread = np.sqrt(np.maximum(squares / np.float32(len(planes)) - out * out, 0.0)) if len(planes) > 1 else np.zeros_like(out)
    return synthetic, error_map(t1, spread, prior_error, loaded)


def error_map(t1: Volume, spread: np.ndarray | None, predicted_error: np.ndarray | None, loaded) -> Volume:
    """How far each synthetic voxel can be trusted: an expected absolute error in T2 units.

    Models with a feature-regression prior (the refiner, the feature baseline): the typical error
    their error trees predict from the local T1 features and the prior's estimate, learnt from the
    training hand's residuals (large at edges, partial volume, thin shells, bright tissue).  Other
    models: the spread (standard deviation) of the three planes' predictions.  On the phantom's right
    hand the error trees alone ranked the refiner's real error at Spearman 0.55; adding the planes'
    spread and the network's correction in quadrature lowered that to 0.52.  The map's worth is
    measured in the README.
    """
    estimate = (spread if predicted_error is None else predicted_error) * np.float32(loaded.t2_scale)
    return t1.with_array(estimate.astype(np.float32), synthetic=True, model=loaded.name,
                         description=f"ERROR MAP of a SYNTHETIC T2 by T1ToT2 {loaded.name}"[:79])


def write_synthetic_volume(volume: Volume, path) -> Path:
    """Write atomically with the synthetic label in the file's metadata (NIfTI descrip, NRRD/MHA key)."""

    path = Path(path)
    check_output_name(path)
    image = volume_to_sitk(volume)
    description = volume.meta.get("description") or synthetic_description(str(volume.meta.get("model", "")))
    image.SetMetaData("descrip", description)
    image.SetMetaData("ITK_FileNotes", description)  # what ITK's NIfTI writer puts into the header's descrip field
    image.SetMetaData("T1ToT2_synthetic", "true")
    image.SetMetaData("T1ToT2_description", description)
    return write_image(image, path)  # atomic; a failed write (disk full, permission) is one line


def synthesize_file(model, t1_path, out_path, series_uid=None, uncertainty_path=None, notes=None, **kwargs) -> Path:
    """Read ``t1_path`` (file or DICOM folder; ``series_uid`` picks one series), synthesise, write ``out_path`` atomically.

    With ``uncertainty_path`` the error map (:func:`error_map`) is written there too, on the same grid.
    ``notes``, a list, receives the synthetic volume's ``meta["notes"]`` (reading the DICOM series, resampling to
    the model's voxel size...), which the file cannot hold.
    """
    if uncertainty_path is not None:
        check_output_name(uncertainty_path)
    check_output_name(out_path)
    t1 = read_volume(t1_path, series_uid=series_uid)
    if uncertainty_path is None:
        volume = synthesize_volume(model, t1, **kwargs)
    else:
        volume, errors = synthesize_volume(model, t1, uncertainty=True, **kwargs)
        write_synthetic_volume(errors, uncertainty_path)
    if notes is not None:
        notes.extend(volume.meta.get("notes") or [])
    return write_synthetic_volume(volume, out_path)


def check_output_name(path) -> None:
    name = Path(path).name.lower()
    if not name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
        raise T1ToT2Error(f"cannot write '{Path(path).name}': use .nii.gz, .nii, .nrrd or .mha")


def default_plane(model) -> str:
    """Fuse the three planes for a network trained on all of them, else use the plane it learnt."""
    planes = list(model.planes or ["axial"])
    if model.config.get("arch") != "lookup" and set(planes) >= set(PLANES):
        return "fuse"
    return planes[0]


def synthesize_as_trained(model, t1: Volume, **kwargs) -> Volume:
    """:func:`~T1ToT2Lib.inference.synthesize.synthesize_volume` after the model's recorded preprocessing (N4, voxel size),
    with the prediction put back onto ``t1``'s exact grid."""
    from ..networks.modelfile import LoadedModel, load_model
    from .preprocess import prepare_input

    loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    prepared = prepare_input(t1, loaded)
    if prepared is None:
        return synthesize_volume(loaded, t1, **kwargs)
    return prepared.restore(synthesize_volume(loaded, prepared.volume, **kwargs))
