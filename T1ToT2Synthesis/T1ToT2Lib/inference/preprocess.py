"""Preprocessing a model was trained with, recorded in its file and repeated at synthesis.

* **Voxel size.** A network learns structures of a given size in voxels.  The
  model file records the training T1's voxel size (metadata key
  ``preprocessing``: ``{"voxel_mm": [i, j, k], "n4": bool}``; older files fall
  back to ``training.t1.spacing_mm``).  A T1 of another spacing is resampled
  to the training spacing (same origin and direction, SimpleITK linear) for the
  network, and the prediction is resampled back onto the T1's exact grid.  A
  difference above :data:`LARGE_DIFFERENCE` is reported as a note.
* **Bias field.** Optional N4 correction (SimpleITK) of training pairs and
  synthesis inputs; a model trained on corrected images gets corrected inputs.

Notes go to ``volume.meta["notes"]`` and stderr.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import Volume, volume_from_sitk, volume_to_sitk

#: Relative voxel-size difference above which synthesis warns that the model sees unfamiliar scales.
LARGE_DIFFERENCE = 0.30
#: Relative difference below which no resampling is done (header rounding).
SAME_SPACING = 0.01
_PREPARED = "prepared_for_model"


def _note(volume: Volume, text: str) -> None:
    volume.meta.setdefault("notes", []).append(text)
    print(f"note: {text}", file=sys.stderr)


# --- N4 -------------------------------------------------------------------------------------
def n4_correct(volume: Volume, shrink: int = 2, iterations=(50, 50, 30)) -> Volume:
    """``volume`` divided by its N4-estimated bias field (SimpleITK), on the same grid.

    The field is fitted on a ``shrink``-times smaller image inside an Otsu foreground mask and evaluated at full
    resolution, so a small phantom takes seconds.
    """
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    if float(volume.array.max()) <= float(volume.array.min()):
        raise T1ToT2Error("N4 bias correction needs a non-constant image: check the input volume")
    shifted = sitk.Cast(image, sitk.sitkFloat32) - float(min(0.0, volume.array.min())) + 1e-3  # N4 needs positive values
    mask = sitk.OtsuThreshold(shifted, 0, 1)
    factors = [max(1, min(int(shrink), n // 8)) for n in shifted.GetSize()]
    small, small_mask = sitk.Shrink(shifted, factors), sitk.Shrink(mask, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(i) for i in iterations])
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(shifted)
    field = sitk.GetArrayFromImage(sitk.Exp(log_field)).astype(np.float32)
    out = volume.with_array(volume.array / field)
    out.meta["n4"] = True
    return out


# --- what the model file records ---------------------------------------------------------------
def preprocessing_record(t1: Volume) -> dict:
    """The ``preprocessing`` metadata of a model trained on ``t1`` (as train passes it)."""
    return {"voxel_mm": [round(float(s), 6) for s in t1.spacing], "n4": bool(t1.meta.get("n4", False))}


def model_preprocessing(metadata: dict) -> dict:
    """The model's preprocessing record; old files give their training T1 spacing and no N4."""
    record = metadata.get("preprocessing")
    if isinstance(record, str):
        record = json.loads(record)
    record = dict(record or {})
    if "voxel_mm" not in record:
        training = metadata.get("training") or {}
        if isinstance(training, str):
            training = json.loads(training)
        spacing = (training.get("t1") or {}).get("spacing_mm")
        record["voxel_mm"] = spacing
    record.setdefault("n4", False)
    return record


# --- resolution --------------------------------------------------------------------------------
def resample_to_spacing(volume: Volume, spacing, interpolator: str = "linear") -> Volume:
    """``volume`` on a grid of ``spacing`` (i, j, k mm) with the same origin, direction and extent (SimpleITK).

    ``interpolator``: ``"linear"``, or ``"sinc"`` (Lanczos windowed sinc, clipped at 0): an MR image is
    sampled in k-space, so sinc interpolation is its natural one, and it keeps the edges and the noise
    texture that linear interpolation smooths away (what a network's input needs, see :func:`prepare_input`).
    """
    import SimpleITK as sitk

    methods = {"linear": sitk.sitkLinear, "sinc": sitk.sitkLanczosWindowedSinc}
    spacing = np.asarray(spacing, dtype=np.float64)
    extent = (np.asarray(volume.shape[::-1]) - 1) * volume.spacing
    size = [int(n) for n in np.floor(extent / spacing + 1e-6).astype(int) + 1]
    target = Volume.from_geometry(np.zeros(size[::-1], np.float32), spacing, volume.origin, volume.direction)
    reference = volume_to_sitk(target)
    image = sitk.Resample(volume_to_sitk(volume), reference, sitk.Transform(), methods[interpolator], 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    if interpolator == "sinc":
        np.maximum(array, 0.0, out=array)  # a magnitude image: no negative ringing
    return target.with_array(array)


def onto_grid(volume: Volume, reference: Volume) -> Volume:
    """``volume`` resampled onto ``reference``'s exact grid (SimpleITK linear), keeping ``volume``'s meta."""
    import SimpleITK as sitk

    image = sitk.Resample(volume_to_sitk(volume), volume_to_sitk(reference), sitk.Transform(), sitk.sitkLinear, 0.0,
                          sitk.sitkFloat32)
    out = reference.with_array(sitk.GetArrayFromImage(image))
    out.meta = {k: (list(v) if isinstance(v, list) else v) for k, v in volume.meta.items()}
    return out


@dataclass
class Prepared:
    volume: Volume  # what the network sees
    original: Volume  # the T1 as given: the output's grid
    native: Volume | None = None  # the T1 after N4 on its own grid, when ``volume`` was resampled

    @property
    def resampled(self) -> bool:
        return self.native is not None

    def restore(self, synthetic: Volume) -> Volume:
        if synthetic.same_geometry(self.original, tol=0):
            return synthetic
        return onto_grid(synthetic, self.original)  # the synthetic's meta already carries the notes


def feature_zoom(model_voxel_mm, volume: Volume) -> np.ndarray | None:
    """The model's training voxel over ``volume``'s, per array axis (k, j, i): the trees' feature zoom (None, no zoom,
    when ``model_voxel_mm`` is None)."""
    if model_voxel_mm is None:
        return None
    return (np.asarray(model_voxel_mm, dtype=np.float64) / volume.spacing)[::-1].copy()


def prepare_input(t1: Volume, loaded) -> Prepared | None:
    """The T1 as the model was trained (N4, voxel size), or None when it needs nothing."""
    if t1.meta.get(_PREPARED):
        return None
    record = model_preprocessing(getattr(loaded, "metadata", {}) or {})
    work = t1
    changed, native = False, None
    if record.get("n4") and not t1.meta.get("n4"):
        work = n4_correct(work)
        changed = True
    voxel = record.get("voxel_mm")
    if voxel:
        voxel = np.asarray(voxel, dtype=np.float64)
        ratio = t1.spacing / voxel
        if np.any(np.abs(ratio - 1.0) > SAME_SPACING):
            native = work
            # Windowed sinc, not linear: on the phantom a T1 at 1 mm came back 1.6 dB below native with it,
            # 3.9 dB with linear interpolation, whose smoothing the texture features read as another tissue.
            work = resample_to_spacing(work, voxel, interpolator="sinc")
            changed = True
            _note(work, _voxel_note(t1, voxel, ratio, getattr(loaded, "prior", None) is not None))
    if not changed:
        return None
    work.meta[_PREPARED] = True
    return Prepared(work, t1, native)


def _voxel_note(t1: Volume, voxel, ratio, has_prior: bool) -> str:
    text = f"T1 voxel size {np.round(t1.spacing, 3).tolist()} mm differs from the model's training voxel size {np.round(voxel, 3).tolist()} mm: "
    if has_prior:
        text += ("the trees ran on the T1's own grid with their features at the trained lengths in mm; the network's "
                 "correction was made at the training voxel size and added back on the T1 grid")
    else:
        text += "resampled for the network and back onto the T1 grid"
    worst = float(np.max(np.abs(ratio - 1.0)))
    if worst > LARGE_DIFFERENCE:
        text += f" (a {worst:.0%} difference: the model sees anatomy at scales it was not trained on)"
    return text
