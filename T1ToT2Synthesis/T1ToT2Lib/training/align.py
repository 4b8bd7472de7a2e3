"""Aligning a T2 to its T1: rigid (or affine) registration with SimpleITK, then resampling onto the T1 grid.

Real VIBE and SPACE series are acquired minutes apart with their own matrix,
field of view and often orientation, and the hand moves in between.  Training
and evaluation need voxel-aligned pairs, so the T2 ("moving") is registered to
the T1 ("fixed") and resampled onto the T1's exact grid.

Registration (all SimpleITK, nothing hand-written):

* start from the scanner's own coordinates (both series of a study share a
  frame of reference), the rotation centred on the fixed image's centre;
* Mattes mutual information (50 bins; T1 and T2 contrasts differ), sampled on
  a fixed random subset of voxels inside the fixed image's foreground so the
  result is repeatable and the air around the hand does not dominate;
* regular-step gradient descent over three resolution levels (shrink 4, 2, 1
  with Gaussian smoothing), parameters scaled from physical shifts;
* linear interpolation while optimising and for the final resampling.

The transform is ITK's: it maps points of the fixed (T1) image to the moving
(T2) image, in LPS, the convention of ``.tfm`` files that Slicer and ITK read.
Reports give rotation (degrees about R, A, S) and the displacement of the
fixed image's centre (mm, RAS), plus mutual information before and after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..core.errors import T1ToT2Error
from ..core.volume import Volume, volume_to_sitk
from ..io.files import read_volume

_LPS_RAS = np.diag([-1.0, -1.0, 1.0])

#: Registration defaults that recover the phantom's misregistration to about 0.1 mm and 0.1 degree.
DEFAULTS = {
    "bins": 50,
    "sampling": 0.1,  # fraction of the foreground voxels the metric samples at each level...
    "min_samples": 20000,  # ...but at least this many (all voxels of a small or shrunken image)
    "shrink": (4, 2, 1),
    "smooth_mm": (3.0, 1.5, 0.0),
    "iterations": 200,
    "seed": 0,
}

#: A registration that lowers the full-image mutual information is replaced by the scanner coordinates; by more than
#: this fraction (not interpolation noise around an already right pose), the note also asks the user to check the pair.
MI_TOLERANCE = 0.02


@dataclass
class AlignResult:
    """The moving volume on the fixed grid, the transform (ITK, fixed -> moving, LPS) and figures of merit."""

    volume: Volume
    transform: object  # SimpleITK.Transform
    kind: str  # "rigid" or "affine"
    mi_before: float
    mi_after: float
    rotation_deg_ras: list
    translation_mm_ras: list
    matrix_ras: list
    seconds: float
    stop: str = ""
    notes: list = field(default_factory=list)

    def report(self) -> dict:
        return {
            "kind": self.kind,
            "mutual_information_before": round(self.mi_before, 5),
            "mutual_information_after": round(self.mi_after, 5),
            "rotation_deg_ras": [round(v, 4) for v in self.rotation_deg_ras],
            "translation_mm_ras": [round(v, 4) for v in self.translation_mm_ras],
            "matrix_ras": [[round(v, 6) for v in row] for row in self.matrix_ras],
            "seconds": round(self.seconds, 2),
            "optimizer_stop": self.stop,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        return summary_text(self.kind, self.mi_before, self.mi_after, self.rotation_deg_ras, self.translation_mm_ras,
                            self.seconds, self.notes)


def summary_text(kind, mi_before, mi_after, rotation_deg_ras, translation_mm_ras, seconds, notes=()) -> str:
    """One line: mutual information before -> after, rotation about R/A/S and shift of the T1 centre, time taken,
    then the registration's notes."""
    r, t = rotation_deg_ras, translation_mm_ras
    return "; ".join([
        f"{kind} registration: mutual information {mi_before:.4f} -> {mi_after:.4f}",
        f"rotation (R, A, S) {r[0]:+.3f} {r[1]:+.3f} {r[2]:+.3f} deg",
        f"shift of the T1 centre (R, A, S) {t[0]:+.3f} {t[1]:+.3f} {t[2]:+.3f} mm",
        f"{seconds:.1f} s", *notes,
    ])


def report_summary(report: dict) -> str:
    """:func:`summary_text` of a report (:meth:`AlignResult.report`, as ``t1tot2 align --json`` writes it)."""
    try:
        return summary_text(report["kind"], report["mutual_information_before"], report["mutual_information_after"],
                            report["rotation_deg_ras"], report["translation_mm_ras"], report["seconds"],
                            report.get("notes", []))
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise T1ToT2Error(f"the registration report is incomplete ({exc!r} is missing or malformed): run the alignment again") from None


def _centre_lps(image) -> np.ndarray:
    size = np.asarray(image.GetSize(), dtype=np.float64)
    return np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))


def _foreground_mask(image):
    """Otsu foreground of ``image``, dilated a little, as a UInt8 mask (None when Otsu finds nothing)."""
    import SimpleITK as sitk

    mask = sitk.OtsuThreshold(image, 0, 1)
    if int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) < 64:
        return None
    return sitk.BinaryDilate(mask, [2, 2, 2])


def mutual_information(fixed, moving, transform=None, bins: int = DEFAULTS["bins"]) -> float:
    """Mattes mutual information (nats, larger is better) of ``moving`` seen through ``transform`` on every fixed voxel."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform if transform is not None else sitk.Euler3DTransform())
    try:
        return -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return float("nan")


def _check_overlap(fixed: Volume, moving: Volume) -> None:
    """Refuse pairs whose bounding boxes do not overlap in scanner space (different patients or frames)."""
    def box(v):
        corners = np.array([[i, j, k] for i in (0, v.shape[2] - 1) for j in (0, v.shape[1] - 1) for k in (0, v.shape[0] - 1)])
        pts = v.ijk_to_ras_points(corners)
        return pts.min(axis=0), pts.max(axis=0)

    (flo, fhi), (mlo, mhi) = box(fixed), box(moving)
    if np.any(np.minimum(fhi, mhi) < np.maximum(flo, mlo)):
        raise T1ToT2Error(
            "the T2 and T1 volumes do not overlap in scanner coordinates (different frames of reference?): "
            "pass a T1 and T2 of the same study, or move the T2 roughly onto the T1 first (e.g. in Slicer's Transforms module)"
        )


def _euler_xyz_deg(matrix: np.ndarray) -> list:
    """Rotation angles (degrees) about x, y, z of the rotation closest to ``matrix`` (extrinsic x then y then z)."""
    from scipy.spatial.transform import Rotation

    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    return [float(v) for v in Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)]


def transform_in_ras(transform, centre_lps) -> tuple:
    """(3x3 matrix, rotation degrees about R/A/S, displacement of ``centre_lps`` in RAS mm) of an ITK matrix-offset transform."""
    matrix_lps = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre_lps = np.asarray(centre_lps, dtype=np.float64)
    moved = np.asarray(transform.TransformPoint(tuple(float(v) for v in centre_lps)))
    matrix_ras = _LPS_RAS @ matrix_lps @ _LPS_RAS
    return matrix_ras, _euler_xyz_deg(matrix_ras), (_LPS_RAS @ (moved - centre_lps)).tolist()


def register(fixed: Volume, moving: Volume, affine: bool = False, *, bins: int = DEFAULTS["bins"],
             sampling: float = DEFAULTS["sampling"], iterations: int = DEFAULTS["iterations"], seed: int = DEFAULTS["seed"],
             threads: int | None = None):
    """Register ``moving`` to ``fixed``; returns (SimpleITK transform fixed -> moving, optimizer stop text, seconds)."""
    import SimpleITK as sitk

    if not isinstance(fixed, Volume) or not isinstance(moving, Volume):
        raise T1ToT2Error("register needs two Volumes: read files with T1ToT2Lib.io.files.read_volume")
    for what, v in (("T1 (fixed)", fixed), ("T2 (moving)", moving)):
        if min(v.shape) < 4:
            raise T1ToT2Error(f"the {what} volume has only {min(v.shape)} slice(s) along one axis: registration needs a 3-D volume of at least 4 slices each way")
        if not np.isfinite(v.array).all() or float(v.array.max()) <= float(v.array.min()):
            raise T1ToT2Error(f"the {what} volume is constant or holds NaN/inf values: pass a real image")
    _check_overlap(fixed, moving)
    if not 0.0 < float(sampling) <= 1.0:
        raise T1ToT2Error(f"sampling fraction {sampling} must be in (0, 1]")
    if int(seed) < 0:
        raise T1ToT2Error(f"registration seed {seed} is negative: use 0 or a positive integer")
    started = time.perf_counter()
    f_img, m_img = volume_to_sitk(fixed), volume_to_sitk(moving)
    centre = _centre_lps(f_img)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(float(c) for c in centre))
    rigid.SetComputeZYX(False)

    def method_for(initial):
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
        mask = _foreground_mask(f_img)
        if mask is not None:
            method.SetMetricFixedMask(mask)
        spacing = float(min(fixed.spacing))
        shrink = [s for s in DEFAULTS["shrink"] if min(fixed.shape) // s >= 4] or [1]
        smooth = [DEFAULTS["smooth_mm"][DEFAULTS["shrink"].index(s)] / spacing for s in shrink]
        # Each level samples a fraction of its (shrunken) foreground, but never fewer than min_samples voxels:
        # a few hundred samples of a small image let the optimiser wander by degrees.
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) if mask is not None else int(np.prod(fixed.shape))
        fractions = [min(1.0, max(float(sampling), DEFAULTS["min_samples"] / max(voxels / s ** 3, 1.0))) for s in shrink]
        method.SetMetricSamplingStrategy(method.RANDOM)
        # SimpleITK reads a seed of 0 as sitkWallClock (a new sample every run): shift by one so every seed repeats.
        method.SetMetricSamplingPercentagePerLevel(fractions, int(seed) + 1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-4, numberOfIterations=int(iterations), relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(shrink)
        method.SetSmoothingSigmasPerLevel(smooth)
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        method.SetInitialTransform(initial, inPlace=True)
        if threads:
            method.SetNumberOfThreads(int(threads))
        return method

    try:
        method = method_for(rigid)
        method.Execute(f_img, m_img)
        stop = method.GetOptimizerStopConditionDescription()
        transform = rigid
        if affine:
            full = sitk.AffineTransform(3)
            full.SetCenter(rigid.GetCenter())
            full.SetMatrix(rigid.GetMatrix())
            full.SetTranslation(rigid.GetTranslation())
            method = method_for(full)
            method.Execute(f_img, m_img)
            stop = method.GetOptimizerStopConditionDescription()
            transform = full
    except RuntimeError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        raise T1ToT2Error(
            f"registration failed ({lines[-1].strip() if lines else 'SimpleITK error'}): check that the T1 and T2 show the same "
            "anatomy and overlap in scanner coordinates"
        ) from None
    return transform, stop, time.perf_counter() - started


def resample_onto(moving: Volume, reference: Volume, transform=None, interpolation: str = "linear") -> Volume:
    """``moving`` seen through ``transform`` (ITK, reference -> moving) on ``reference``'s exact grid; 0 outside."""
    import SimpleITK as sitk

    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    image = sitk.Resample(
        volume_to_sitk(moving), volume_to_sitk(reference), transform if transform is not None else sitk.Transform(),
        interpolators[interpolation], 0.0, sitk.sitkFloat32,
    )
    # The reference's own matrix, not a round trip through SimpleITK's: the output grid is exactly the reference's.
    out = reference.with_array(sitk.GetArrayFromImage(image))
    out.meta = {k: v for k, v in moving.meta.items() if k != "dicom"}
    return out


def align(fixed: Volume, moving: Volume, affine: bool = False, **options) -> AlignResult:
    """Register ``moving`` (T2) to ``fixed`` (T1) and resample it onto the fixed grid."""
    transform, stop, seconds = register(fixed, moving, affine=affine, **options)
    f_img, m_img = volume_to_sitk(fixed), volume_to_sitk(moving)
    import SimpleITK as sitk

    centre = _centre_lps(f_img)
    before = mutual_information(f_img, m_img, sitk.Euler3DTransform())
    after = mutual_information(f_img, m_img, transform)
    notes = []
    if not after >= before:
        # The optimiser samples the metric, and its path depends on the thread count; on a pair whose scanner
        # coordinates are already right it can end a little off. Never hand back a pose worse than the one given.
        notes.append(f"registration did not improve the mutual information ({before:.4f} -> {after:.4f}): kept the "
                     "scanner coordinates" + ("" if after >= before * (1.0 - MI_TOLERANCE) else
                                              "; if the T2 is visibly off, check the series or align it by hand in Slicer"))
        kept = sitk.Euler3DTransform()
        kept.SetCenter(tuple(float(c) for c in centre))
        transform, after = kept, before
    matrix, angles, shift = transform_in_ras(transform, centre)
    aligned = resample_onto(moving, fixed, transform)
    aligned.meta["aligned_to"] = fixed.meta.get("source_path", "T1")
    result = AlignResult(aligned, transform, "affine" if affine else "rigid", before, after, angles, shift,
                         matrix.tolist(), seconds, stop, notes)
    aligned.meta["alignment"] = result.report()
    return result


def align_if_needed(fixed: Volume, moving: Volume, affine: bool = False, log=print, what=("T1", "T2")) -> Volume:
    """``moving`` itself when it already shares ``fixed``'s grid, else registered and resampled onto it (the report is logged)."""
    if fixed.same_geometry(moving, tol=1e-4):
        log(f"{what[1]} already shares the {what[0]} grid: no alignment needed")
        return moving
    result = align(fixed, moving, affine=affine)
    log(f"{what[1]} aligned to {what[0]}: {result.summary()}")
    return result.volume


def aligned_pair(t1, t2, affine: bool = False, t1_series_uid=None, t2_series_uid=None, log=None, what=("T1", "T2")):
    """(T1, T2 on the T1 grid) from paths or Volumes: what ``train --align`` and ``evaluate --align`` call."""
    import sys

    if log is None:
        def log(text):
            print(text, file=sys.stderr)

    t1 = t1 if isinstance(t1, Volume) else read_volume(t1, series_uid=t1_series_uid)
    t2 = t2 if isinstance(t2, Volume) else read_volume(t2, series_uid=t2_series_uid)
    return t1, align_if_needed(t1, t2, affine=affine, log=log, what=what)


def align_for_evaluation(generated: Volume, actual: Volume, labels: Volume | None = None, reference: Volume | None = None,
                         affine: bool = False, log=None):
    """(acquired T2, label map) on the synthetic T2's grid, for ``evaluate --align``.

    The acquired T2 is registered to ``reference`` (the T1 the synthetic T2 was made from, when known: registering to
    the synthetic image itself could hide a shift the model made) or else to ``generated``.  A label map on the
    acquired T2's grid follows it by the same transform (nearest neighbour); one already on the synthetic grid is
    kept as is.
    """
    import sys

    log = log or (lambda text: print(text, file=sys.stderr))
    fixed = reference if reference is not None else generated
    if actual.same_geometry(generated, tol=1e-4):
        log("the acquired T2 already shares the synthetic T2's grid: no alignment needed")
        return actual, labels
    if not fixed.same_geometry(generated, tol=1e-4):
        raise T1ToT2Error("the --t1 used to align must share the synthetic T2's grid: pass the T1 it was synthesized from")
    result = align(fixed, actual, affine=affine)
    log(f"acquired T2 aligned to the {'T1' if reference is not None else 'synthetic T2'}: {result.summary()}")
    if labels is not None and labels.same_geometry(actual, tol=1e-4):
        labels = resample_onto(labels, generated, result.transform, interpolation="nearest")
    return result.volume, labels


def write_transform(transform, path) -> Path:
    """Write an ITK transform file (``.tfm``/``.txt``/``.h5``/``.mat``) atomically."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.lower().endswith((".tfm", ".txt", ".h5", ".hdf5", ".mat")):
        raise T1ToT2Error(f"cannot write transform '{path.name}': use .tfm, .txt, .h5 or .mat")
    with atomic_path(path) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


