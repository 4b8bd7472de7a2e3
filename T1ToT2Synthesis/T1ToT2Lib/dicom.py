"""DICOM import (a folder holding one or more series) and export of synthetic T2 series.

Import: :func:`read_dicom_series` picks one series, sorts its slices along the
slice normal, applies rescale slope/intercept, builds the IJK-to-RAS matrix
from ImagePositionPatient / ImageOrientationPatient / PixelSpacing and keeps
the tags an exporter needs in ``volume.meta["dicom"]``.  Anything it cannot
turn into one regular 3-D grid (mixed orientations, missing slices, uneven
spacing, tilted stacks) is refused with a one-line :class:`T1ToT2Error`.

Export: :func:`export_dicom_series` writes one classic MR Image Storage
instance per K slice, flagged as synthetic everywhere DICOM allows it, with
the patient, study and frame of reference of a reference T1 series when one
is given and a new anonymous patient/study otherwise.  :func:`write_dicom_series`
is the lower-level writer it uses (also handy to make test series).

DICOM works in LPS; :class:`Volume` in RAS: x and y are negated at the boundary.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .errors import T1ToT2Error
from .volume import Volume

_LPS_RAS = np.array([-1.0, -1.0, 1.0])

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Single-frame image SOP classes the reader accepts (MR first: it is what the models are trained on).
IMAGE_SOP_CLASSES = {MR_IMAGE_STORAGE: "MR", CT_IMAGE_STORAGE: "CT"}
_MULTIFRAME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
}
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Series- and study-level tags kept in ``volume.meta["dicom"]`` (what an exporter copies or refers to).
REFERENCE_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
    "ReferringPhysicianName", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID",
    "BodyPartExamined", "Laterality", "PatientPosition", "Manufacturer", "ManufacturerModelName",
    "InstitutionName", "MagneticFieldStrength", "SpecificCharacterSet",
)
#: Tags copied from the reference T1 into an exported series (patient, study, frame of reference).
_COPIED_FROM_REFERENCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
    "ReferringPhysicianName", "FrameOfReferenceUID", "PositionReferenceIndicator",
    "BodyPartExamined", "Laterality", "PatientPosition",
)
#: (code value, scheme, meaning) from CID 7202 "Source Image Purposes of Reference".
_PURPOSE_SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
ANONYMOUS_PATIENT_NAME = "ANONYMOUS^SYNTHETIC"
_STORED_RANGE = 65000  # unsigned levels used by scaled data (headroom below 65535 absorbs DS rounding)


# =========================================================================
# Import
# =========================================================================
def _scan_folder(folder: Path) -> dict:
    """Headers of every DICOM file under ``folder``, grouped by SeriesInstanceUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list] = {}
    # Hidden entries are skipped: they include the temporary folders of unfinished exports.
    files = (p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in sorted(files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError):
            continue  # not a DICOM file (README, thumbnails...)
        sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if sop_class == _DICOMDIR_SOP_CLASS or "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    return series


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def _describe(uid: str, items) -> str:
    ds = items[0][1]
    description = str(ds.get("SeriesDescription", "") or "no description")
    return f"{uid} ({ds.get('Modality', '?')}, '{description}', {len(items)} files)"


def list_dicom_series(folder) -> list[dict]:
    """One dict per series under ``folder``: uid, description, modality, sop_class, files (count)."""
    folder = Path(folder)
    result = []
    for uid, items in _scan_folder(folder).items():
        ds = items[0][1]
        result.append({
            "uid": uid,
            "description": str(ds.get("SeriesDescription", "")),
            "modality": str(ds.get("Modality", "")),
            "sop_class": str(ds.get("SOPClassUID", "")),
            "files": len(items),
        })
    return result


def _choose_series(folder: Path, series: dict, series_uid: str | None):
    if not series:
        raise T1ToT2Error(f"no DICOM image files found in '{folder}': pass a folder that holds one DICOM series")
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_describe(u, it) for u, it in series.items())
            raise T1ToT2Error(f"series {series_uid} is not in '{folder}': choose one of {listing}")
        return series[series_uid]

    def sop_classes(items):
        return {str(ds.get("SOPClassUID", "")) for _, ds in items}

    images = {u: it for u, it in series.items() if sop_classes(it) & set(IMAGE_SOP_CLASSES)}
    mr = {u: it for u, it in images.items() if MR_IMAGE_STORAGE in sop_classes(it)}
    candidates = mr or images
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if not candidates:
        # Only non-image (or multi-frame) objects: the per-series check names what they are.
        return next(iter(series.values()))
    listing = "; ".join(_describe(u, it) for u, it in candidates.items())
    raise T1ToT2Error(f"'{folder}' holds {len(candidates)} image series: name one by SeriesInstanceUID (--series-uid): {listing}")


def _check_image_objects(items, folder: Path):
    for path, ds in items:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class in _MULTIFRAME_SOP_CLASSES:
            raise T1ToT2Error(
                f"'{path.name}' is a multi-frame {_MULTIFRAME_SOP_CLASSES[sop_class]} object: "
                "convert it to classic single-frame slices (e.g. dcmtk/dicom3tools) and pass that folder"
            )
        if sop_class not in IMAGE_SOP_CLASSES:
            raise T1ToT2Error(
                f"'{path.name}' in '{folder}' is a {_sop_class_name(sop_class)} object, not an MR image: "
                "pass a folder holding an MR (or CT) image series"
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or ds.get("PhotometricInterpretation", "MONOCHROME2") not in (
            "MONOCHROME1", "MONOCHROME2"
        ):
            raise T1ToT2Error(f"'{path.name}' is a colour image ({ds.get('PhotometricInterpretation')}): pass a grey-scale MR series")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise T1ToT2Error(f"'{path.name}' holds several frames: pass a series of single-frame slices")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if ds.get(keyword) in (None, ""):
                raise T1ToT2Error(f"'{path.name}' has no {keyword}: the series lacks the geometry needed to build a volume")


def _json_value(value):
    """Turn a pydicom element value into plain JSON-able data (IS -> int, DS -> float, names/UIDs -> str)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import DSdecimal, DSfloat, IS

    if isinstance(value, (MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, (DSfloat, DSdecimal, float)):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def _geometry(items, folder: Path):
    """Sort slices along their normal and return (sorted items, 4x4 IJK-to-LPS)."""
    first = items[0][1]
    row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    spacing_rc = [float(v) for v in first.PixelSpacing]
    shape = (int(first.Rows), int(first.Columns))
    for path, ds in items[1:]:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(iop, np.r_[row_dir, col_dir], atol=1e-4):
            raise T1ToT2Error(
                f"'{path.name}' has a different ImageOrientationPatient from '{items[0][0].name}': "
                "the series mixes orientations (e.g. a localiser); pass a folder or series with one orientation"
            )
        if (int(ds.Rows), int(ds.Columns)) != shape or not np.allclose([float(v) for v in ds.PixelSpacing], spacing_rc, atol=1e-5):
            raise T1ToT2Error(f"'{path.name}' has a different size or PixelSpacing from the rest: pass a series of identical slices")
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    items = [items[i] for i in order]
    positions, along = positions[order], along[order]

    if len(items) > 1:
        steps = np.diff(along)
        step = float(np.median(steps))
        if np.min(steps) < 1e-3 * max(step, 1e-3):
            k = int(np.argmin(steps))
            raise T1ToT2Error(
                f"'{items[k][0].name}' and '{items[k + 1][0].name}' lie at the same position: the series holds several "
                "images per slice (echoes, phases or time points); split it and pass one"
            )
        step = float(np.min(steps))
        uneven = np.abs(steps - step) > 0.01 * step
        if np.any(uneven):
            k = int(np.argmax(uneven))
            ratio = steps[k] / step
            if abs(ratio - round(ratio)) < 0.01 * round(ratio):
                raise T1ToT2Error(
                    f"{int(round(ratio)) - 1} slice(s) missing between '{items[k][0].name}' and '{items[k + 1][0].name}' "
                    f"(gap {steps[k]:.4g} mm, spacing {step:.4g} mm): copy the complete series"
                )
            raise T1ToT2Error(
                f"uneven slice spacing ({step:.4g} mm to {float(np.max(steps)):.4g} mm) in '{folder}': "
                "resample the series to a regular grid first"
            )
        step_vector = (positions[-1] - positions[0]) / (len(items) - 1)
        lateral = step_vector - (step_vector @ normal) * normal
        if np.linalg.norm(lateral) > 0.01 * step:
            raise T1ToT2Error(
                f"the slices of '{folder}' are offset sideways from one slice to the next (gantry tilt or shear): "
                "resample the series to an orthogonal grid first"
            )
    else:
        step = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)

    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row_dir * spacing_rc[1]  # I runs along a row: column spacing
    ijk_to_lps[:3, 1] = col_dir * spacing_rc[0]  # J runs down a column: row spacing
    ijk_to_lps[:3, 2] = normal * step
    ijk_to_lps[:3, 3] = positions[0]
    return items, ijk_to_lps


def read_dicom_series(folder, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` (and its sub-folders) into a :class:`Volume`.

    ``series_uid`` picks the series; without it the folder's only MR image
    series is used (or its only CT series when there is no MR).
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise T1ToT2Error(f"'{folder}' is not a folder: pass the folder that holds the DICOM series")
    items = _choose_series(folder, _scan_folder(folder), series_uid)
    _check_image_objects(items, folder)
    items, ijk_to_lps = _geometry(items, folder)

    slices = []
    for path, _ in items:
        ds = pydicom.dcmread(path)
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises several types for unsupported encodings
            raise T1ToT2Error(
                f"cannot decode the pixel data of '{path.name}' ({exc.__class__.__name__}): "
                "decompress the series (e.g. dcmdjpeg) or install the pydicom pixel handler it needs"
            ) from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
    array = np.stack(slices)

    header = items[0][1]
    tags = {kw: _json_value(header.get(kw)) for kw in REFERENCE_TAGS if header.get(kw) not in (None, "")}
    tags["instances"] = [
        {
            "SOPClassUID": str(ds.SOPClassUID),
            "SOPInstanceUID": str(ds.SOPInstanceUID),
            "ImagePositionPatient": [float(v) for v in ds.ImagePositionPatient],
            "file": path.name,
        }
        for path, ds in items
    ]
    volume = Volume(array, np.diag(np.r_[_LPS_RAS, 1.0]) @ ijk_to_lps)
    volume.meta["dicom"] = tags
    volume.meta["source_path"] = str(folder)
    return volume


# =========================================================================
# Export
# =========================================================================
def _ds_number(value: float) -> float:
    """``value`` as it survives a DICOM decimal string (16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return float(format_number_as_ds(float(value)))


def quantise(array: np.ndarray):
    """Return (stored uint16/int16 array, slope, intercept) for one whole series.

    Integer data that fits 16 bits is stored as is (slope 1, intercept 0);
    anything else is mapped linearly onto unsigned 16 bits, so that
    ``stored * slope + intercept`` is within half a step (``slope``) of the input.
    """
    array = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise T1ToT2Error("the volume holds NaN or infinite values: replace them before DICOM export")
    lo, hi = float(array.min()), float(array.max())
    if np.array_equal(array, np.round(array)):
        if lo >= 0 and hi <= 65535:
            return array.astype(np.uint16), 1.0, 0.0
        if lo >= -32768 and hi <= 32767:
            return array.astype(np.int16), 1.0, 0.0
    intercept = _ds_number(lo)
    slope = _ds_number((hi - lo) / _STORED_RANGE) if hi > lo else 1.0
    if slope <= 0:  # a range so small the decimal string rounds it to zero
        slope = _ds_number(max(abs(lo), 1.0) * 1e-9)
    stored = np.clip(np.rint((array - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _slice_frame(volume: Volume):
    """LPS row direction, column direction, pixel spacing [row, column], K step vector and origin."""
    lps = np.diag(np.r_[_LPS_RAS, 1.0]) @ volume.ijk_to_ras
    spacing = volume.spacing
    row_dir, col_dir, k_dir = (lps[:3, c] / spacing[c] for c in range(3))
    if abs(row_dir @ col_dir) > 1e-4:
        raise T1ToT2Error(
            "the volume's I and J axes are not perpendicular (sheared grid): resample it to an orthogonal grid before DICOM export"
        )
    if abs(abs(k_dir @ np.cross(row_dir, col_dir)) - 1.0) > 1e-4:
        raise T1ToT2Error(
            "the volume's K axis is not perpendicular to its slices (sheared grid): resample it to an orthogonal grid before DICOM export"
        )
    return row_dir, col_dir, [float(spacing[1]), float(spacing[0])], lps[:3, 2], lps[:3, 3]


def _ds_list(values, digits=10):
    from pydicom.valuerep import format_number_as_ds

    out = []
    for v in values:
        v = round(float(v), digits)
        out.append(format_number_as_ds(0.0 if v == 0 else v))
    return out


def _code_item(value, scheme, meaning):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _source_items(volume: Volume, reference: dict | None, k: int, centre_ij):
    """SourceImageSequence items for output slice ``k``: the reference slice at the same place."""
    from pydicom.dataset import Dataset

    if not reference or not reference.get("instances") or "ijk_to_ras" not in reference:
        return []
    centre_ras = volume.ijk_to_ras_points([[centre_ij[0], centre_ij[1], k]])[0]
    ref_ras_to_ijk = np.linalg.inv(np.asarray(reference["ijk_to_ras"]))
    ref_k = float((ref_ras_to_ijk[:3, :3] @ centre_ras + ref_ras_to_ijk[:3, 3])[2])
    instances = reference["instances"]
    nearest = int(round(ref_k))
    if not (-0.5 <= ref_k <= len(instances) - 0.5):
        return []
    instance = instances[min(max(nearest, 0), len(instances) - 1)]
    item = Dataset()
    item.ReferencedSOPClassUID = instance["SOPClassUID"]
    item.ReferencedSOPInstanceUID = instance["SOPInstanceUID"]
    item.PurposeOfReferenceCodeSequence = [_code_item(*_PURPOSE_SOURCE_FOR_PROCESSING)]
    return [item]


def write_dicom_series(
    volume: Volume,
    outdir,
    tags: dict,
    *,
    synthetic: bool = True,
    derivation_description: str = "",
    reference: dict | None = None,
    overwrite: bool = False,
    file_prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` as classic MR Image Storage slices (one per K index) into a new folder ``outdir``.

    ``tags`` (DICOM keyword -> value) gives the patient, study and series
    attributes shared by all slices (at least StudyInstanceUID,
    SeriesInstanceUID, FrameOfReferenceUID).  ``synthetic`` marks the images
    DERIVED/SECONDARY/OTHER/SYNTHETIC with a DerivationDescription; ``reference`` is a
    ``meta["dicom"]`` dict (plus ``ijk_to_ras``) of the series the images were
    derived from, referenced per slice in SourceImageSequence.  The folder
    appears under its final name only when every file is written.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from . import __version__

    outdir = Path(outdir)
    for required in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not tags.get(required):
            raise T1ToT2Error(f"write_dicom_series needs tags['{required}']: generate one with pydicom.uid.generate_uid()")
    row_dir, col_dir, pixel_spacing, k_step, origin = _slice_frame(volume)
    stored, slope, intercept = quantise(volume.array)
    values = volume.array.astype(np.float64)
    low, high = np.percentile(values, [1, 99])
    if high <= low:
        low, high = float(values.min()), float(values.max()) + max(1.0, abs(float(values.max()))) * 1e-3
    k_spacing = float(volume.spacing[2])
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    n_k, rows, columns = volume.array.shape
    centre_ij = ((columns - 1) / 2.0, (rows - 1) / 2.0)

    if outdir.exists() and not overwrite and not (outdir.is_dir() and not any(outdir.iterdir())):
        raise T1ToT2Error(
            f"'{outdir}' already exists and may hold a series: choose another output folder or pass --overwrite (overwrite=True)"
        )
    paths = []
    with atomic_directory(outdir, overwrite=True) as tmp:
        for k in range(n_k):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            for keyword, value in tags.items():
                setattr(ds, keyword, value)
            ds.Modality = "MR"
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                            "ReferringPhysicianName", "StudyID", "AccessionNumber", "PositionReferenceIndicator",
                            "Laterality"):  # hands are paired: Laterality must be present, empty when unknown
                if keyword not in ds:
                    setattr(ds, keyword, "")
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.setdefault("PatientPosition", "HFS")
            ds.setdefault("BodyPartExamined", "HAND")
            ds.setdefault("Manufacturer", "T1ToT2")
            ds.InstanceNumber = k + 1

            # General Image / MR Image: what the pixels are.
            if synthetic:
                ds.ImageType = ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]
                ds.DerivationDescription = derivation_description[:1024]
                ds.ImageComments = "SYNTHETIC image computed by T1ToT2, not acquired: not for diagnosis"
                ds.SoftwareVersions = f"T1ToT2 {__version__}"
            else:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.BurnedInAnnotation = "NO"
            ds.LossyImageCompression = "00"
            ds.ScanningSequence = "RM"  # research mode: no acquisition sequence produced these pixels
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = ""  # not acquired: no real timing to report
            ds.EchoTime = ""
            ds.EchoTrainLength = ""

            sources = _source_items(volume, reference, k, centre_ij) if synthetic else []
            if sources:
                ds.SourceImageSequence = sources

            # Image Plane: exact geometry of slice k.
            position = origin + k * k_step
            ds.ImageOrientationPatient = _ds_list(np.r_[row_dir, col_dir])
            ds.ImagePositionPatient = _ds_list(position, digits=6)
            ds.PixelSpacing = _ds_list(pixel_spacing)
            ds.SliceThickness = _ds_list([k_spacing])[0]
            ds.SpacingBetweenSlices = _ds_list([k_spacing])[0]
            ds.SliceLocation = _ds_list([position @ np.cross(row_dir, col_dir)], digits=6)[0]

            # Image Pixel, rescale and display window.
            pixels = stored[k]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, columns
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            ds.RescaleIntercept = _ds_list([intercept], digits=12)[0]
            ds.RescaleSlope = _ds_list([slope], digits=12)[0]
            ds.RescaleType = "US"
            ds.WindowCenter = _ds_list([(low + high) / 2])[0]
            ds.WindowWidth = _ds_list([max(high - low, 1e-3)])[0]
            ds.WindowCenterWidthExplanation = "1st to 99th percentile"

            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            name = f"{file_prefix}{k + 1:05d}.dcm"
            pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            paths.append(outdir / name)
    return paths


def _reference_meta(reference) -> dict | None:
    if reference is None:
        return None
    if isinstance(reference, Volume):
        ref_volume = reference
        if "dicom" not in ref_volume.meta:
            raise T1ToT2Error("the reference volume was not read from DICOM: pass the T1 DICOM folder as the reference")
    elif isinstance(reference, (str, os.PathLike)):
        ref_volume = read_dicom_series(reference)
    else:
        raise T1ToT2Error(f"reference must be a DICOM folder or a Volume read from DICOM, got {type(reference).__name__}")
    meta = dict(ref_volume.meta["dicom"])
    meta["ijk_to_ras"] = ref_volume.ijk_to_ras.tolist()
    return meta


def _clip_lo(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def export_dicom_series(
    volume: Volume,
    outdir,
    reference=None,
    series_description: str | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Export a synthetic T2 ``volume`` as a new MR series in ``outdir``; return the file paths in K order.

    ``reference`` (a DICOM folder, or a Volume read from one) is the T1 series
    it was computed from: the export joins its patient, study and frame of
    reference and names it as the source.  Without it the series gets a new
    anonymous patient (ANONYMOUS^SYNTHETIC) and study; the volume's own
    ``meta`` is never used for patient data.
    """
    from pydicom.uid import generate_uid

    ref = _reference_meta(reference)
    model = (model_name or "unspecified model").strip()
    label = f"SYNTHETIC T2 (T1ToT2 {model}) - not acquired"
    if series_description:
        description = series_description if "SYNTHETIC" in series_description.upper() else f"SYNTHETIC {series_description}"
        description = _clip_lo(description)
    elif len(label) <= 64:
        description = label
    else:  # SeriesDescription is at most 64 characters: shorten the model name, keep the label
        description = f"SYNTHETIC T2 (T1ToT2 {_clip_lo(model, 64 - len(label) + len(model))}) - not acquired"

    tags: dict = {}
    if ref:
        for keyword in _COPIED_FROM_REFERENCE:
            if ref.get(keyword) not in (None, ""):
                tags[keyword] = ref[keyword]
        tags.setdefault("FrameOfReferenceUID", generate_uid())
        tags["SeriesNumber"] = int(ref.get("SeriesNumber") or 0) + 1000
        source_text = f"from T1 series {ref.get('SeriesInstanceUID', '?')} ('{ref.get('SeriesDescription', '')}')"
        ref_series = {"SeriesInstanceUID": ref.get("SeriesInstanceUID", "")}
    else:
        uid = generate_uid()
        tags.update(
            PatientName=ANONYMOUS_PATIENT_NAME,
            PatientID="T1TOT2-" + uid.rsplit(".", 1)[-1][-12:],
            PatientBirthDate="",
            PatientSex="",
            PatientIdentityRemoved="YES",
            DeidentificationMethod="T1ToT2: synthetic, no patient",
            StudyInstanceUID=generate_uid(),
            StudyID="T1TOT2",
            StudyDate=datetime.date.today().strftime("%Y%m%d"),
            StudyTime=datetime.datetime.now().strftime("%H%M%S"),
            StudyDescription="T1ToT2 synthetic images",
            FrameOfReferenceUID=generate_uid(),
            SeriesNumber=1,
        )
        source_text = "from a T1 volume without DICOM reference"
        ref_series = None
    tags["SeriesInstanceUID"] = generate_uid()
    tags["SeriesDescription"] = description
    tags["ManufacturerModelName"] = "T1ToT2"
    if ref_series and ref_series["SeriesInstanceUID"]:
        from pydicom.dataset import Dataset

        # Common Instance Reference module: the source series and its instances (same study).
        item = Dataset()
        item.SeriesInstanceUID = ref_series["SeriesInstanceUID"]
        instances = []
        for instance in ref.get("instances", []):
            referenced = Dataset()
            referenced.ReferencedSOPClassUID = instance["SOPClassUID"]
            referenced.ReferencedSOPInstanceUID = instance["SOPInstanceUID"]
            instances.append(referenced)
        item.ReferencedInstanceSequence = instances
        tags["ReferencedSeriesSequence"] = [item]
    derivation = f"SYNTHETIC T2-weighted image computed by T1ToT2 with model {model} {source_text}; not acquired"
    return write_dicom_series(
        volume, outdir, tags, synthetic=True, derivation_description=derivation, reference=ref, overwrite=overwrite,
        file_prefix="SYNT2_",
    )


# =========================================================================
# Command line
# =========================================================================
def _run_export(args) -> int:
    from .volume import read_volume

    volume = read_volume(args.volume, series_uid=args.series_uid)
    paths = export_dicom_series(
        volume, args.outdir, reference=args.reference, series_description=args.series_description,
        model_name=args.model_name, overwrite=args.overwrite,
    )
    print(f"wrote {len(paths)} synthetic MR slices to {args.outdir}")
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-dicom",
        help="write a synthetic T2 volume as a DICOM MR series",
        description="Write VOLUME as a new DICOM MR series (one file per K slice) in OUTDIR, labelled as synthetic.",
    )
    parser.add_argument("volume", metavar="VOLUME", help="synthetic T2 volume (NIfTI/NRRD/MHA file or DICOM folder)")
    parser.add_argument("outdir", metavar="OUTDIR", help="new folder for the series")
    parser.add_argument("--reference", metavar="T1_DICOM_DIR",
                        help="the T1 series the volume was computed from: the export joins its patient and study")
    parser.add_argument("--series-description", help="SeriesDescription (SYNTHETIC is prefixed if missing)")
    parser.add_argument("--model-name", help="model named in the series and derivation descriptions")
    parser.add_argument("--series-uid", help="SeriesInstanceUID to read when VOLUME is a folder with several series")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    parser.set_defaults(func=_run_export)
