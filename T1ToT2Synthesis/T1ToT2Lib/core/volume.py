"""The volume value type: a float32 array in (k, j, i) order plus its IJK-to-RAS matrix.

Everything downstream takes and returns :class:`Volume`; nothing guesses
geometry.  Files are read and written with SimpleITK (which works in LPS);
the conversion to Slicer's RAS happens here and only here.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import T1ToT2Error


PLANES = ("axial", "coronal", "sagittal")
#: Normal of each anatomical plane in RAS.
PLANE_NORMALS_RAS = {
    "sagittal": np.array([1.0, 0.0, 0.0]),
    "coronal": np.array([0.0, 1.0, 0.0]),
    "axial": np.array([0.0, 0.0, 1.0]),
}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A scalar volume: ``array[k, j, i]`` (float32) and ``ijk_to_ras`` (4x4, float64).

    ``meta`` carries optional provenance (e.g. the DICOM tags of the series it
    was read from) that writers may use; it never affects geometry.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if np.iscomplexobj(self.array):
            raise T1ToT2Error("the image has complex voxels: pass the magnitude image (e.g. |z|), not the complex data")
        self.array = np.asarray(self.array, dtype=np.float32)
        if self.array.ndim != 3:
            raise T1ToT2Error(f"a volume must be 3-D, got an array of shape {self.array.shape}: pass one 3-D scalar image")
        m = np.asarray(self.ijk_to_ras, dtype=np.float64)
        if m.shape != (4, 4):
            raise T1ToT2Error(f"ijk_to_ras must be a 4x4 matrix, got shape {m.shape}")
        if abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise T1ToT2Error("the volume's IJK-to-RAS matrix is singular: check its spacing and direction")
        self.ijk_to_ras = m

    # --- construction -------------------------------------------------
    @classmethod
    def from_geometry(cls, array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None, meta=None):
        """Build from spacing (i, j, k), RAS origin and a 3x3 RAS direction whose columns are the I, J, K axes."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = direction @ np.diag(np.asarray(spacing, dtype=np.float64))
        m[:3, 3] = origin
        return cls(array, m, dict(meta or {}))

    def with_array(self, array, **meta) -> "Volume":
        """A new volume with this one's exact geometry and another array of the same shape."""
        array = np.asarray(array, dtype=np.float32)
        if array.shape != self.array.shape:
            raise T1ToT2Error(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy(), {**self.meta, **meta})

    # --- geometry -----------------------------------------------------
    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along I, J, K in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel (0, 0, 0)'s centre."""
        return self.ijk_to_ras[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 RAS direction cosines; column c is the unit direction of IJK axis c."""
        return self.ijk_to_ras[:3, :3] / self.spacing

    @property
    def shape(self):
        return self.array.shape

    def same_geometry(self, other: "Volume", tol: float = 1e-6) -> bool:
        return self.array.shape == other.array.shape and np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tol, rtol=0)

    def ras_to_ijk(self, points_ras) -> np.ndarray:
        """Continuous (i, j, k) indices of RAS points, shape (n, 3)."""
        p = np.atleast_2d(np.asarray(points_ras, dtype=np.float64))
        inv = np.linalg.inv(self.ijk_to_ras)
        return (p @ inv[:3, :3].T) + inv[:3, 3]

    def ijk_to_ras_points(self, ijk) -> np.ndarray:
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    # --- planes -------------------------------------------------------
    def plane_axis(self, plane: str) -> int:
        """The array axis (0 = k, 1 = j, 2 = i) to iterate to get ``plane`` slices.

        Resolved from the direction matrix: the three IJK axes are matched to
        the three anatomical normals by the permutation with the largest total
        alignment, so oblique volumes get a consistent, one-to-one answer.
        """
        return plane_axes(self.direction)[_check_plane(plane)]

    def slices(self, plane: str) -> np.ndarray:
        """A (n, h, w) view of the array as ``plane`` slices."""
        return np.moveaxis(self.array, self.plane_axis(plane), 0)


def _check_plane(plane: str) -> str:
    if plane not in PLANES:
        raise T1ToT2Error(f"unknown plane {plane!r}: use one of {', '.join(PLANES)}")
    return plane


def plane_axes(direction: np.ndarray) -> dict:
    """Map each plane name to the array axis whose IJK direction best matches its normal."""
    direction = np.asarray(direction, dtype=np.float64)
    names = list(PLANE_NORMALS_RAS)
    align = np.array([[abs(PLANE_NORMALS_RAS[n] @ direction[:, c]) for c in range(3)] for n in names])
    best = max(itertools.permutations(range(3)), key=lambda perm: sum(align[r, perm[r]] for r in range(3)))
    # IJK axis c is array axis 2 - c, because arrays are stored (k, j, i).
    return {names[r]: 2 - best[r] for r in range(3)}


def from_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :meth:`Volume.slices`: put the slice axis back at ``axis``."""
    return np.moveaxis(slices, 0, axis)


def volume_from_sitk(image) -> Volume:
    """Convert a 3-D SimpleITK image (LPS) to a :class:`Volume` (RAS).

    Refused in one line: other dimensions, several components, complex voxels,
    non-finite voxels and values that do not fit float32.
    """
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise T1ToT2Error(
            f"expected a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components: pass one grey-scale volume"
        )
    if "complex" in image.GetPixelIDTypeAsString().lower():
        raise T1ToT2Error("the image has complex voxels: pass the magnitude image (e.g. |z|), not the complex data")
    raw = sitk.GetArrayViewFromImage(image)
    check_finite(raw, "the image")
    array = raw.astype(np.float32)
    m = np.eye(4)
    m[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return Volume(array, _LPS_TO_RAS @ m)


# --- validation -----------------------------------------------------------
#: Fewest voxels along any axis of a volume that is synthesised or trained on: a slice of 1 or 2 voxels is a line.
MIN_VOXELS_PER_AXIS = 3
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_finite(array: np.ndarray, what: str = "the image") -> None:
    """Refuse NaN, infinite voxels and values beyond float32 (they would become infinite), in one line."""
    array = np.asarray(array)
    if array.dtype.kind not in "fc":
        if array.dtype.kind in "iu" and array.size and max(abs(float(array.max())), abs(float(array.min()))) > _FLOAT32_MAX:
            raise T1ToT2Error(f"{what} has integer values beyond the float32 range: rescale it before use")
        return
    nan = int(np.count_nonzero(np.isnan(array)))
    if nan:
        raise T1ToT2Error(f"{what} has {nan} NaN voxel{'s' if nan != 1 else ''}: replace them (e.g. by 0) or fix the reconstruction")
    inf = int(np.count_nonzero(np.isinf(array)))
    if inf:
        raise T1ToT2Error(f"{what} has {inf} infinite voxel{'s' if inf != 1 else ''}: replace them or fix the reconstruction")
    if array.dtype.itemsize > 4 and array.size:
        peak = float(np.max(np.abs(array)))
        if peak > _FLOAT32_MAX:
            raise T1ToT2Error(f"{what} has values up to {peak:.3g}, beyond the float32 range (3.4e38): rescale it before use")


def check_image(volume: "Volume", what: str = "the volume", min_size: int = MIN_VOXELS_PER_AXIS) -> "Volume":
    """Refuse, in one line, a volume no synthesis or training can use: too small, non-finite, all zero or constant."""
    if not isinstance(volume, Volume):
        raise T1ToT2Error(f"{what} must be a Volume: read files with T1ToT2Lib.io.files.read_volume")
    shape = tuple(int(n) for n in volume.shape)
    if min(shape) < min_size:
        raise T1ToT2Error(
            f"{what} is too small ({'x'.join(map(str, shape))} voxels): it needs at least {min_size} voxels along every "
            f"axis; a single slice or a line is not a volume, pass the whole series"
        )
    check_finite(volume.array, what)
    low, high = float(volume.array.min()), float(volume.array.max())
    if low == high == 0.0:
        raise T1ToT2Error(f"{what} is all zeros: check that the right image (and DICOM series) was given")
    if low == high:
        raise T1ToT2Error(f"{what} is constant (every voxel is {low:g}): it carries no contrast, pass a real image")
    return volume


def _itemsize(pixel_id) -> int:
    """Bytes per component of a SimpleITK pixel type (8 when unsure)."""
    import SimpleITK as sitk

    try:
        return max(4, sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).itemsize)
    except Exception:  # noqa: BLE001 - only an estimate
        return 8


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def check_memory(nbytes: float, what: str) -> None:
    """Refuse work that needs more memory than is available, before allocating it, with the needed figure."""
    import psutil

    available = psutil.virtual_memory().available
    if nbytes > available:
        raise T1ToT2Error(
            f"{what} needs about {_gib(nbytes)} of memory but only {_gib(available)} is available: "
            f"crop or downsample the volume, or use a machine with more memory"
        )


def volume_to_sitk(volume: Volume):
    """Convert a :class:`Volume` to a float32 SimpleITK image with the same geometry (LPS)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    lps = _LPS_TO_RAS @ volume.ijk_to_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(d) for d in (lps[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(o) for o in lps[:3, 3]))
    return image


