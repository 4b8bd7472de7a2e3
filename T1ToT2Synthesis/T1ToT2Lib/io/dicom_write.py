"""DICOM export of synthetic T2 series.

:func:`export_dicom_series` writes one classic MR Image Storage instance per K slice, flagged as synthetic
everywhere DICOM allows it, with the patient, study and frame of reference of a reference T1 series when one
is given and a new anonymous patient/study otherwise.  :func:`write_dicom_series` is the lower-level writer it
uses (also handy to make test series).

DICOM works in LPS; :class:`Volume` in RAS: x and y are negated at the boundary.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_directory
from ..core.errors import T1ToT2Error
from ..core.volume import Volume
from .dicom_read import _LPS_RAS, MR_IMAGE_STORAGE, read_dicom_series

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

    outdir = Path(outdir)
    for required in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not tags.get(required):
            raise T1ToT2Error(f"write_dicom_series needs tags['{required}']: generate one with pydicom.uid.generate_uid()")
    series = _SeriesLayout.of(volume)
    if outdir.exists() and not overwrite and not (outdir.is_dir() and not any(outdir.iterdir())):
        raise T1ToT2Error(
            f"'{outdir}' already exists and may hold a series: choose another output folder or pass --overwrite (overwrite=True)"
        )
    paths = []
    with atomic_directory(outdir, overwrite=True) as tmp:
        for k in range(volume.array.shape[0]):
            ds = _slice_header(tags, k, series.date, series.time)
            _image_description(ds, synthetic, derivation_description)
            sources = _source_items(volume, reference, k, series.centre_ij) if synthetic else []
            if sources:
                ds.SourceImageSequence = sources
            _image_plane(ds, series, k)
            _image_pixels(ds, series, k)
            name = f"{file_prefix}{k + 1:05d}.dcm"
            pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            paths.append(outdir / name)
    return paths


class _SeriesLayout:
    """What every slice of one exported series shares: geometry, stored pixels and rescale, display window, time."""

    @classmethod
    def of(cls, volume: Volume) -> "_SeriesLayout":
        layout = cls()
        layout.row_dir, layout.col_dir, layout.pixel_spacing, layout.k_step, layout.origin = _slice_frame(volume)
        layout.stored, layout.slope, layout.intercept = quantise(volume.array)
        values = volume.array.astype(np.float64)
        low, high = np.percentile(values, [1, 99])
        if high <= low:
            low, high = float(values.min()), float(values.max()) + max(1.0, abs(float(values.max()))) * 1e-3
        layout.low, layout.high = float(low), float(high)
        layout.k_spacing = float(volume.spacing[2])
        now = datetime.datetime.now()
        layout.date, layout.time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
        _, rows, columns = volume.array.shape
        layout.rows, layout.columns = rows, columns
        layout.centre_ij = ((columns - 1) / 2.0, (rows - 1) / 2.0)
        return layout


def _slice_header(tags: dict, k: int, date: str, time: str):
    """The SOP, patient, study and series attributes of slice ``k`` (type 2 ones present, empty when unknown)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

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
    return ds


def _image_description(ds, synthetic: bool, derivation_description: str) -> None:
    """General Image / MR Image: what the pixels are (synthetic flags, no acquisition parameters)."""
    from .. import __version__

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


def _image_plane(ds, series: _SeriesLayout, k: int) -> None:
    """Image Plane: the exact geometry of slice ``k``."""
    position = series.origin + k * series.k_step
    ds.ImageOrientationPatient = _ds_list(np.r_[series.row_dir, series.col_dir])
    ds.ImagePositionPatient = _ds_list(position, digits=6)
    ds.PixelSpacing = _ds_list(series.pixel_spacing)
    ds.SliceThickness = _ds_list([series.k_spacing])[0]
    ds.SpacingBetweenSlices = _ds_list([series.k_spacing])[0]
    ds.SliceLocation = _ds_list([position @ np.cross(series.row_dir, series.col_dir)], digits=6)[0]


def _image_pixels(ds, series: _SeriesLayout, k: int) -> None:
    """Image Pixel, rescale, display window and the file meta of slice ``k``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    pixels = series.stored[k]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = series.rows, series.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.RescaleIntercept = _ds_list([series.intercept], digits=12)[0]
    ds.RescaleSlope = _ds_list([series.slope], digits=12)[0]
    ds.RescaleType = "US"
    ds.WindowCenter = _ds_list([(series.low + series.high) / 2])[0]
    ds.WindowWidth = _ds_list([max(series.high - series.low, 1e-3)])[0]
    ds.WindowCenterWidthExplanation = "1st to 99th percentile"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


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


