"""Preprocessing a model was trained with, recorded in its file and repeated at synthesis.

* **Voxel size.** A network learns structures of a given size in voxels.  The
  model file records the training T1's voxel size (metadata key
  ``preprocessing``: ``{"voxel_mm": [i, j, k], "n4": bool}``; older files fall
  back to ``training.t1.spacing_mm``).  A T1 of another spacing is resampled
  to the training spacing (same origin and direction, SimpleITK linear) for the
  network, and the prediction is resampled back onto the T1's exact grid.  A
  difference above :data:`LARGE_DIFFERENCE` is reported as a note.
* **Interpolation.** Scanners and converters often store a T1 on a finer grid than it was acquired on
  (zero-filled k-space, "interpolation" on the console, resampling).  The noise of such a volume is
  correlated between neighbours, which the trees' texture features read as anatomy.  The background's
  noise (white in an acquired image) tells it: its lag-1 correlation per axis gives the interpolation
  factor (:func:`acquired_spacing`), and a model with trees runs them on the T1 resampled back to the
  spacing it was acquired at.
* **Bias field.** Optional N4 correction (SimpleITK) of training pairs and
  synthesis inputs; a model trained on corrected images gets corrected inputs.

Notes go to ``volume.meta["notes"]`` and stderr.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import Volume, volume_from_sitk, volume_to_sitk

#: Relative voxel-size difference above which synthesis warns that the model sees unfamiliar scales.
LARGE_DIFFERENCE = 0.30
#: Relative difference below which no resampling is done (header rounding).
SAME_SPACING = 0.01
#: Interpolation factors below this are left alone: k-space filters and partial Fourier correlate the noise a little
#: in acquired images too, and so little interpolation costs the trees little.
INTERPOLATED_FACTOR = 1.2
#: An acquired spacing within this of the model's voxel size is taken as it (the estimate is good to about 10%).
SNAP_TO_MODEL = 0.1
#: Background voxels needed to estimate the noise's correlation (fewer: no estimate).
MIN_BACKGROUND_VOXELS = 5000
_PREPARED = "prepared_for_model"


def _note(volume: Volume, text: str) -> None:
    volume.meta.setdefault("notes", []).append(text)
    print(f"note: {text}", file=sys.stderr)


# --- N4 -------------------------------------------------------------------------------------
def n4_correct(volume: Volume, shrink: int = 2, iterations=(50, 50, 30)) -> Volume:
    """``volume`` divided by its N4-estimated bias field (SimpleITK), on the same grid and at the same mean level
    over its foreground.

    The field is fitted on a ``shrink``-times smaller image inside an Otsu foreground mask and evaluated at full
    resolution, so a small phantom takes seconds.  A volume already corrected (``meta["n4"]``) is returned as it is.
    """
    import SimpleITK as sitk

    if volume.meta.get("n4"):
        return volume
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
    # N4's field has no set level (its mean over the phantom hands measured: 0.87 to 0.95): made to average 1 over
    # the foreground, the corrected volume keeps the volume's intensity level, and a T2 target its scale.
    field /= np.float32(field[sitk.GetArrayViewFromImage(mask) > 0].mean())
    out = volume.with_array(volume.array / field)
    out.meta["n4"] = True
    return out


# --- what the model file records ---------------------------------------------------------------
def preprocessing_record(t1: Volume, trees_t1: Volume | None = None) -> dict:
    """The ``preprocessing`` metadata of a model trained on ``t1`` (as train passes it).  ``interpolated_from_mm``:
    the spacing the T1 its trees learnt on (``trees_t1``, else ``t1``) looks acquired at when it looks interpolated
    (:func:`acquired_spacing`), else None."""
    acquired = acquired_spacing(t1 if trees_t1 is None else trees_t1)
    return {"voxel_mm": [round(float(s), 6) for s in t1.spacing], "n4": bool(t1.meta.get("n4", False)),
            "interpolated_from_mm": None if acquired is None else [round(float(s), 4) for s in acquired]}


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
    record.setdefault("interpolated_from_mm", None)
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


# --- interpolation ---------------------------------------------------------------------------
#: Voxels the background's mask is found on (a volume with more is looked at every few voxels across each axis).
_MASK_VOXELS = 8_000_000


def background_noise_correlation(volume: Volume) -> np.ndarray | None:
    """Lag-1 correlation of the background's noise along each array axis (k, j, i), or None without enough background.

    The background is the air away from the object: voxels more than four voxels from anything brighter (after a
    one-voxel Gaussian) than a fifth of the Otsu threshold, which keeps dark tissue inside the object (cortical bone,
    tendon) out of it.  Acquired noise is white there (correlation about 0); interpolation correlates it.  A large
    volume is read along lines every ``step`` voxels across each axis, with the mask found on that coarse grid."""
    from scipy import ndimage

    from .slices import foreground_threshold

    x = np.asarray(volume.array, dtype=np.float32)
    if min(x.shape) < 3:
        return None
    step = max(1, int(round((x.size / _MASK_VOXELS) ** (1.0 / 3.0))))
    coarse = x[::step, ::step, ::step]
    near = ndimage.binary_dilation(ndimage.gaussian_filter(coarse, 1.0) > 0.2 * foreground_threshold(x),
                                   iterations=int(np.ceil(4 / step)))
    correlation = []
    for axis in range(3):
        across = tuple(slice(None) if a == axis else slice(None, None, step) for a in range(3))
        lines = x[across]
        masked = np.repeat(near, step, axis=axis)[tuple(slice(0, x.shape[axis]) if a == axis else slice(None) for a in range(3))]
        n = lines.shape[axis]
        ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        behind = tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(3))
        both = ~(masked[ahead] | masked[behind])
        if int(both.sum()) < MIN_BACKGROUND_VOXELS:
            return None
        p, q = lines[behind][both].astype(np.float64), lines[ahead][both].astype(np.float64)
        if p.std() == 0 or q.std() == 0:
            return None  # a zeroed (masked) background carries no noise to read
        correlation.append(float(np.corrcoef(p, q)[0, 1]))
    return np.asarray(correlation)


@lru_cache(maxsize=1)
def _interpolation_correlations() -> tuple:
    """(factors, lag-1 correlation of white noise interpolated by each factor): the calibration that turns a measured
    correlation into an interpolation factor.  The kernel is unknown: a console zero-fills k-space (sinc, the least
    correlation: ``sinc(1 / factor)``), a converter resamples linearly (the most; simulated here), so the calibration
    is their mean, within about 10% of the factor for either, and for Lanczos resampling between them."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(50_000)
    factors = np.linspace(1.0, 4.0, 61)
    linear = []
    for f in factors:
        y = np.interp(np.arange(0.0, noise.size - 1, 1.0 / f), np.arange(noise.size), noise)
        linear.append(float(np.corrcoef(y[:-1], y[1:])[0, 1]))
    correlations = 0.5 * (np.asarray(linear) + np.sinc(1.0 / factors))
    return factors, np.maximum.accumulate(correlations)


def interpolation_factors(correlation) -> np.ndarray:
    """Per axis, how many grid steps one acquired sample spans, from the noise's lag-1 ``correlation``."""
    factors, correlations = _interpolation_correlations()
    return np.interp(np.asarray(correlation, dtype=np.float64), correlations, factors)


def acquired_spacing(volume: Volume) -> np.ndarray | None:
    """The spacing (i, j, k mm) ``volume`` was acquired at when it looks interpolated onto its grid, else None."""
    correlation = background_noise_correlation(volume)
    if correlation is None:
        return None
    factors = interpolation_factors(correlation)[::-1]  # (k, j, i) -> (i, j, k)
    if not np.any(factors >= INTERPOLATED_FACTOR):
        return None
    return volume.spacing * np.where(factors >= INTERPOLATED_FACTOR, factors, 1.0)


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
    """The T1 as the model was trained (N4, voxel size), or None when it needs nothing.

    A model with trees gets, as ``native``, the T1 on the grid it was acquired at (its own, unless it looks
    interpolated: :func:`acquired_spacing`); ``volume`` is the T1 at the model's voxel size for the network.  A model
    trained on an interpolated T1 learnt that texture: its inputs are taken on their own grids."""
    if t1.meta.get(_PREPARED):
        return None
    record = model_preprocessing(getattr(loaded, "metadata", {}) or {})
    has_prior = getattr(loaded, "prior", None) is not None
    work, native, notes = t1, None, []
    if record.get("n4"):
        work = n4_correct(work)
    voxel = record.get("voxel_mm")
    if voxel:
        voxel = np.asarray(voxel, dtype=np.float64)
        grid = work
        acquired = acquired_spacing(work) if has_prior and not record["interpolated_from_mm"] else None
        if acquired is not None:
            acquired = np.where(np.abs(acquired / voxel - 1.0) <= SNAP_TO_MODEL, voxel, acquired)
            grid = resample_to_spacing(work, acquired, interpolator="sinc")
            notes.append(_interpolation_note(t1, acquired))
        if np.any(np.abs(grid.spacing / voxel - 1.0) > SAME_SPACING):
            native = grid
            # Windowed sinc, not linear: on the phantom a T1 at 1 mm came back 1.6 dB below native with it,
            # 3.9 dB with linear interpolation, whose smoothing the texture features read as another tissue.
            work = resample_to_spacing(work, voxel, interpolator="sinc")
            notes.append(_voxel_note(grid, voxel, has_prior, "T1" if acquired is None else "acquired"))
        else:
            work = grid
    if work is t1:
        return None
    for text in notes:
        _note(work, text)
    work.meta[_PREPARED] = True
    return Prepared(work, t1, native)


def _interpolation_note(t1: Volume, acquired) -> str:
    return (f"the T1 looks interpolated from about {np.round(acquired, 2).tolist()} mm onto its "
            f"{np.round(t1.spacing, 3).tolist()} mm grid (its background noise is correlated between neighbours): "
            "the trees ran on it resampled to that spacing, and the result was resampled back onto the T1's grid")


def _voxel_note(grid: Volume, voxel, has_prior: bool, which: str = "T1") -> str:
    ratio = grid.spacing / voxel
    text = f"{which} voxel size {np.round(grid.spacing, 3).tolist()} mm differs from the model's training voxel size {np.round(voxel, 3).tolist()} mm: "
    if has_prior:
        text += ("the trees ran on that grid with their features at the trained lengths in mm; the network's "
                 "correction was made at the training voxel size and added back onto it")
    else:
        text += "resampled for the network and back onto the T1 grid"
    worst = float(np.max(np.abs(ratio - 1.0)))
    if worst > LARGE_DIFFERENCE:
        text += f" (a {worst:.0%} difference: the model sees anatomy at scales it was not trained on)"
    return text
