"""Reading and writing volumes as NIfTI, NRRD, MHA or a DICOM series, with exact geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..core.errors import T1ToT2Error
from ..core.volume import (
    Volume,
    _gib,
    _itemsize,
    check_memory,
    volume_from_sitk,
    volume_to_sitk,
)

#: File extensions :func:`write_volume` and :func:`read_volume` handle (single-file formats only,
#: so that an atomic rename publishes the whole volume).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")


# --- files ----------------------------------------------------------------
def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in VOLUME_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a NIfTI/NRRD/MHA file, or a folder holding a DICOM series."""
    path = Path(path)
    if not path.exists():
        raise T1ToT2Error(f"'{path}' does not exist: check the path")
    if path.is_dir():
        from .dicom_read import read_dicom_series

        return read_dicom_series(path, series_uid=series_uid)
    if not _extension(path):
        raise T1ToT2Error(
            f"'{path.name}' is not a supported volume file: use {', '.join(VOLUME_EXTENSIONS)} or a DICOM folder"
        )
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()  # the header only: refuse what would not fit before allocating it
        size = reader.GetSize()
        if size and min(size) < 1:
            raise RuntimeError(f"the header gives a size of {'x'.join(map(str, size))} voxels")
        if len(size) == 3:
            voxels = float(np.prod([float(n) for n in size])) * reader.GetNumberOfComponents()
            # The file's pixels plus their float32 copy.
            itemsize = _itemsize(reader.GetPixelID())
            check_memory(voxels * (itemsize + 4), f"reading '{path.name}' ({'x'.join(map(str, size))} voxels)")
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise T1ToT2Error(f"cannot read '{path}' ({first}): is it a valid image file?") from None
    volume = volume_from_sitk(image)
    volume.meta["source_path"] = str(path)
    _read_sidecar(path, volume)
    return volume


def sidecar_path(path: Path) -> Path | None:
    """The BIDS sidecar of an image file: the same name with ``.json`` for its extension (dcm2niix writes one); None
    for a name without one of :data:`VOLUME_EXTENSIONS`."""
    path = Path(path)
    ext = _extension(path)
    return path.with_name(path.name[: -len(ext)] + ".json") if ext else None


def write_sidecar(path: str | os.PathLike, acquired_with: dict, **fields) -> Path:
    """The BIDS sidecar of the image file ``path``, giving its sequence parameters (and ``fields``), written atomically."""
    import json

    from ..core import sequence

    sidecar = sidecar_path(Path(path))
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps({**sequence.to_bids(acquired_with), **fields}, indent=2, sort_keys=True) + "\n")
    return sidecar


def sidecar_sequence(path: str | os.PathLike) -> dict | None:
    """The sequence parameters in the BIDS sidecar beside the image file ``path``; None without one (or without all
    three parameters).  A sidecar that cannot be read raises OSError, UnicodeDecodeError or ValueError."""
    import json

    from ..core import sequence

    sidecar = sidecar_path(Path(path))
    if sidecar is None or not sidecar.is_file():
        return None
    return sequence.from_bids(json.loads(sidecar.read_text(encoding="utf-8")))


def _read_sidecar(path: Path, volume: Volume) -> None:
    """The sequence parameters of a BIDS sidecar beside ``path``, into ``volume.meta``; a sidecar that cannot be read
    leaves them unknown, with a note."""
    from ..core import sequence

    sidecar = sidecar_path(path)
    try:
        acquired_with = sidecar_sequence(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        volume.meta.setdefault("notes", []).append(f"its sidecar '{sidecar.name}' could not be read ({exc.__class__.__name__}): "
                                                   "its sequence parameters are unknown")
        return
    if acquired_with is not None:
        volume.meta[sequence.META_KEY] = acquired_with


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write atomically (temporary name, then rename) with the volume's exact geometry."""
    path = Path(path)
    if not _extension(path):
        raise T1ToT2Error(f"cannot write '{path.name}': use one of {', '.join(VOLUME_EXTENSIONS)}")

    image = volume_to_sitk(volume)
    description = volume.meta.get("description")
    if volume.meta.get("synthetic") and not description:
        description = "SYNTHETIC image made by T1ToT2, not acquired"
    if description:
        image.SetMetaData("ITK_FileNotes", str(description)[:79])  # NIfTI descrip (80 bytes), NRRD/MHA note
    return write_image(image, path, compress)


def write_image(image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically; a failed write (disk full, permission) is a one-line :class:`T1ToT2Error`.

    SimpleITK reports every write failure as a ``RuntimeError`` with a multi-line ITK trace; the
    temporary file is removed and the user is told which file failed and what to check.
    """
    import shutil

    import SimpleITK as sitk

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
    except RuntimeError:
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = None
        need = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
        if free is not None and free < need + 2**20:
            raise T1ToT2Error(f"cannot write '{path}': the disk is full ({_gib(free)} free, about {_gib(need)} needed): free some space or write elsewhere") from None
        raise T1ToT2Error(f"cannot write '{path}': the image writer failed: check free disk space and that the folder is writable") from None
    return path
