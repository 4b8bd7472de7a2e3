"""Synthesising a T2 volume from a T1 volume with a trained model file: the library's entry points.

:func:`synthesize_volume` loads the model (PyTorch ``.safetensors`` or ONNX Runtime ``.onnx``), builds its
engine's predictor and runs :mod:`T1ToT2Lib.inference.pipeline`; :func:`synthesize_file` reads and writes
files atomically.  The result keeps the input's exact geometry and is marked synthetic.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume, volume_to_sitk
from ..io.files import read_volume, write_image
from .pipeline import (  # noqa: F401 - PLANE_MODES, SynthesisCancelled, error_map... are this module's API too
    PLANE_MODES,
    SynthesisCancelled,
    error_map,
    load_any,
    make_predictor,
    predict_plane,
    synthetic_description,
)
from .pipeline import synthesize as pipeline_synthesize
from .predict_torch import BATCH_NORM_MODES, inference_generator  # noqa: F401


def synthesize_volume(model, t1: Volume, plane: str = "axial", device="auto", precision: str = "fp32",
                      batch_size: int = 8, progress=None, cancel_event: threading.Event | None = None,
                      batch_norm: str = "slice", uncertainty: bool = False):
    """The synthetic T2 of ``t1`` on exactly ``t1``'s grid, through :mod:`~T1ToT2Lib.inference.pipeline`.

    With ``uncertainty`` it returns ``(synthetic, error_map)``: see :func:`~.pipeline.error_map`.

    ``model`` is a model file path (``.safetensors`` runs on PyTorch, ``.onnx`` on ONNX Runtime), a
    :class:`~T1ToT2Lib.networks.modelfile.LoadedModel` or an :class:`~.onnx_engine.OnnxModel`.
    ``plane`` "fuse" averages the axial, coronal and sagittal predictions.
    ``batch_norm``: see :func:`~.predict_torch.inference_generator`.
    ``progress`` receives the stages' events (:mod:`T1ToT2Lib.core.progress`), the network's as
    {"event": "slices", "done", "total", "eta_s", ...}.  An accelerator out of memory makes the network
    stage run again on the CPU.
    """
    loaded = load_any(model)
    predictor = make_predictor(loaded, device, precision, batch_norm)
    return pipeline_synthesize(loaded, t1, predictor, plane, int(batch_size), progress, cancel_event, uncertainty)


def _predict_plane(generator, normalised: np.ndarray, axis: int, in_channels: int, multiple: int,
                   device, precision: str, batch_size: int, out: np.ndarray, tick, cancel_event,
                   prior: np.ndarray | None = None, out_squares: np.ndarray | None = None) -> None:
    """The pipeline's plane loop for a bare generator (already in its synthesis form) on ``device``."""
    from .predict_torch import TorchPredictor

    predict_plane(TorchPredictor(generator, device, precision), normalised, axis, in_channels, multiple, int(batch_size),
                  out, tick, cancel_event, prior, out_squares)


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
    """Fuse the three planes for a network trained on all of them, else use the plane it learnt.
    A fitted model (a look-up table, the trees alone) maps voxels, not slices: one plane."""
    from ..networks import FITTED

    planes = list(model.planes or ["axial"])
    if model.config.get("arch") not in FITTED and set(planes) >= set(PLANES):
        return "fuse"
    return planes[0]


def synthesize_as_trained(model, t1: Volume, **kwargs) -> Volume:
    """:func:`synthesize_volume`, which repeats the model's recorded preprocessing (N4, voxel size) and puts the
    prediction back onto ``t1``'s exact grid (kept for its callers)."""
    return synthesize_volume(model, t1, **kwargs)
