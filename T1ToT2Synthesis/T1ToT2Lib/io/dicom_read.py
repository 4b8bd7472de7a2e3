"""DICOM import: a folder holding one or more series becomes one :class:`Volume`.

:func:`read_dicom_series` picks one series (classic single-frame
slices, or one enhanced multi-frame file; a DICOMDIR folder too), sorts its
slices along the slice normal, applies each slice's Real World Value Mapping or
rescale slope/intercept, builds the IJK-to-RAS matrix from ImagePositionPatient
/ ImageOrientationPatient / PixelSpacing and keeps the tags an exporter needs in
``volume.meta["dicom"]``.  Compressed pixel data is decoded by pydicom's pixel
plugins.  Slice-position jitter within 2% of the spacing is read with the mean
spacing; smooth variable spacing and gantry tilt are resampled onto a regular
orthogonal grid; both are noted in ``volume.meta["notes"]`` and on stderr.  What
cannot be one volume (mixed orientations, a localiser, missing or misplaced
slices, duplicated positions, colour) is refused with a one-line :class:`T1ToT2Error`.

DICOM works in LPS; :class:`Volume` in RAS: x and y are negated at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import sequence
from ..core.errors import T1ToT2Error
from ..core.volume import Volume

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
        if sop_class not in IMAGE_SOP_CLASSES and sop_class not in _MULTIFRAME_SOP_CLASSES:
            raise T1ToT2Error(
                f"'{path.name}' in '{folder}' is a {_sop_class_name(sop_class)} object, not an MR image: "
                "pass a folder holding an MR (or CT) image series"
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or ds.get("PhotometricInterpretation", "MONOCHROME2") not in (
            "MONOCHROME1", "MONOCHROME2"
        ):
            raise T1ToT2Error(f"'{path.name}' is a colour image ({ds.get('PhotometricInterpretation')}): pass a grey-scale MR series")
        if sop_class in IMAGE_SOP_CLASSES and int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise T1ToT2Error(f"'{path.name}' holds several frames in a single-frame image class: pass a series of single-frame slices")
    if len(items) > 1 and any(str(ds.get("SOPClassUID", "")) in _MULTIFRAME_SOP_CLASSES for _, ds in items):
        raise T1ToT2Error(
            f"the series in '{folder}' holds {len(items)} multi-frame files: pass one enhanced (multi-frame) file per series"
        )
    for path, ds in items:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type and len(items) > 1:
            shown = "\\".join(image_type)
            raise T1ToT2Error(
                f"'{path.name}' is a localiser (ImageType {shown}) mixed into the series: "
                "remove it from the folder or pass the imaging series by --series-uid"
            )


@dataclass
class _Frame:
    """One 2-D slice of a series: a classic file, or one frame of an enhanced multi-frame file."""

    name: str  # for messages: the file name (and frame number)
    path: Path
    frame: int | None  # index into a multi-frame file's pixel data; None for a single-frame file
    position: np.ndarray  # ImagePositionPatient (LPS)
    orientation: np.ndarray  # ImageOrientationPatient (6 values)
    spacing_rc: list  # PixelSpacing (row spacing, column spacing)
    shape: tuple  # (Rows, Columns)
    slope: float = 1.0
    intercept: float = 0.0
    value_mapping: str = "rescale"  # or "real world value mapping (units)"
    single_step: float = 1.0  # slice spacing to use when the series has one slice only (SpacingBetweenSlices or SliceThickness)


def _first(sequence_owner, keyword):
    """The first item of a sequence ``keyword`` in ``sequence_owner`` (a Dataset), or None."""
    if sequence_owner is None:
        return None
    sequence = sequence_owner.get(keyword)
    return sequence[0] if sequence else None


def _real_world_mapping(owner):
    """(slope, intercept, units) of the first linear Real World Value Mapping item in ``owner``, or None."""
    item = _first(owner, "RealWorldValueMappingSequence")
    if item is None or item.get("RealWorldValueSlope") in (None, ""):
        return None
    units = _first(item, "MeasurementUnitsCodeSequence")
    label = str(units.get("CodeMeaning", "") or units.get("CodeValue", "")) if units is not None else ""
    return float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept", 0) or 0), label or str(item.get("LUTLabel", ""))


def _value_map(owners, path_name):
    """(slope, intercept, description): Real World Value Mapping when present, else modality rescale, from the first owner that has it."""
    for owner in owners:
        rwv = _real_world_mapping(owner)
        if rwv is not None:
            return rwv[0], rwv[1], f"real world value mapping ({rwv[2] or 'no units'})"
    for owner in owners:
        if owner is not None and owner.get("RescaleSlope") not in (None, ""):
            return float(owner.RescaleSlope), float(owner.get("RescaleIntercept", 0) or 0), "rescale"
    return 1.0, 0.0, "rescale"


def _require(value, keyword, name):
    if value in (None, ""):
        raise T1ToT2Error(f"'{name}' has no {keyword}: the series lacks the geometry needed to build a volume")
    return value


def _frames(items) -> list:
    """The 2-D frames of a series: one per classic file, or every frame of one enhanced multi-frame file."""
    import pydicom

    frames = []
    for path, ds in items:
        if str(ds.get("SOPClassUID", "")) not in _MULTIFRAME_SOP_CLASSES:
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
                _require(ds.get(keyword), keyword, path.name)
            slope, intercept, how = _value_map([ds], path.name)
            frames.append(_Frame(path.name, path, None, np.array([float(v) for v in ds.ImagePositionPatient]),
                                 np.array([float(v) for v in ds.ImageOrientationPatient]), [float(v) for v in ds.PixelSpacing],
                                 (int(ds.Rows), int(ds.Columns)), slope, intercept, how,
                                 float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 1.0)))
            continue
        full = pydicom.dcmread(path, stop_before_pixels=True)  # the functional groups (not kept by the scan's header read)
        shared = _first(full, "SharedFunctionalGroupsSequence")
        per_frame = full.get("PerFrameFunctionalGroupsSequence") or []
        count = int(full.get("NumberOfFrames", 1) or 1)
        if len(per_frame) != count:
            raise T1ToT2Error(f"'{path.name}' lists {len(per_frame)} per-frame groups for {count} frames: the file is damaged, re-export it")
        for index, groups in enumerate(per_frame):
            name = f"{path.name} frame {index + 1}"

            def group(keyword, groups=groups):
                return _first(groups, keyword) or _first(shared, keyword)

            position = _require(getattr(group("PlanePositionSequence"), "ImagePositionPatient", None), "ImagePositionPatient", name)
            orientation = _require(getattr(group("PlaneOrientationSequence"), "ImageOrientationPatient", None), "ImageOrientationPatient", name)
            spacing = _require(getattr(group("PixelMeasuresSequence"), "PixelSpacing", None), "PixelSpacing", name)
            slope, intercept, how = _value_map([groups, shared, group("PixelValueTransformationSequence"), full], name)
            measures = group("PixelMeasuresSequence")
            thickness = float(measures.get("SpacingBetweenSlices", 0) or measures.get("SliceThickness", 0) or 1.0)
            frames.append(_Frame(name, path, index, np.array([float(v) for v in position]), np.array([float(v) for v in orientation]),
                                 [float(v) for v in spacing], (int(full.Rows), int(full.Columns)), slope, intercept, how, thickness))
    return frames


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


#: Slice positions may deviate from a regular grid by this fraction of the spacing and still be read as one
#: (header rounding: 6.96 to 7.07 mm steps for a nominal 7 mm); the mean spacing is used and a note says so.
JITTER_TOLERANCE = 0.02
#: Larger irregularity is resampled onto a regular grid when it is smooth: neighbouring steps differ by at most this
#: fraction of the spacing.  An abrupt change (a misplaced slice) is refused.
SMOOTH_TOLERANCE = 0.10


def _note(notes: list, text: str) -> None:
    import sys

    notes.append(text)
    print(f"note: {text}", file=sys.stderr)


def _geometry(frames, folder: Path, notes: list):
    """Sort frames along their normal; return (sorted frames, 4x4 IJK-to-LPS, resampling plan or None)."""
    first = frames[0]
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    for frame in frames[1:]:
        if not np.allclose(frame.orientation, first.orientation, atol=1e-4):
            raise T1ToT2Error(
                f"'{frame.name}' has a different ImageOrientationPatient from '{first.name}': "
                "the series mixes orientations (e.g. a localiser); pass a folder or series with one orientation"
            )
        if frame.shape != first.shape or not np.allclose(frame.spacing_rc, first.spacing_rc, atol=1e-5):
            raise T1ToT2Error(f"'{frame.name}' has a different size or PixelSpacing from the rest: pass a series of identical slices")
    normal = np.cross(row_dir, col_dir)
    positions = np.array([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions, along = positions[order], along[order]
    resample = None

    if len(frames) > 1:
        steps = np.diff(along)
        median = float(np.median(steps))
        if np.min(steps) < 1e-3 * max(median, 1e-3):
            k = int(np.argmin(steps))
            raise T1ToT2Error(
                f"'{frames[k].name}' and '{frames[k + 1].name}' lie at the same position: the series holds several "
                "images per slice (echoes, phases or time points); split it and pass one"
            )
        ratios = steps / median
        if np.any(ratios > 1.5):
            k = int(np.argmax(ratios))
            missing = max(int(round(ratios[k])) - 1, 1)
            raise T1ToT2Error(
                f"{missing} slice(s) missing between '{frames[k].name}' and '{frames[k + 1].name}' "
                f"(gap {steps[k]:.4g} mm, spacing {median:.4g} mm): copy the complete series"
            )
        step = float((along[-1] - along[0]) / (len(frames) - 1))
        deviation = np.abs(along - (along[0] + step * np.arange(len(frames))))
        lateral = positions - positions[0] - np.outer(along - along[0], normal)  # in-plane drift of each slice
        tilted = float(np.max(np.linalg.norm(lateral, axis=1))) > JITTER_TOLERANCE * step
        if float(np.max(deviation)) > JITTER_TOLERANCE * step or tilted:
            abrupt = float(np.max(np.abs(np.diff(steps)))) if len(steps) > 1 else 0.0
            if abrupt > SMOOTH_TOLERANCE * median or np.any(ratios < 0.5):
                raise T1ToT2Error(
                    f"uneven slice spacing ({float(np.min(steps)):.4g} mm to {float(np.max(steps)):.4g} mm, an abrupt change "
                    f"of {abrupt:.3g} mm) in '{folder}': a slice is missing or misplaced; copy the complete series"
                )
            what = []
            if float(np.max(deviation)) > JITTER_TOLERANCE * step:
                what.append(f"variable slice spacing ({float(np.min(steps)):.4g} to {float(np.max(steps)):.4g} mm)")
            if tilted:
                what.append("slices offset sideways (gantry tilt or shear)")
            _note(notes, f"{' and '.join(what)}: resampled onto a regular orthogonal grid of {step:.4g} mm slices")
            resample = (along - along[0], lateral)
        elif float(np.max(np.abs(steps - step))) > 1e-4 * step:
            _note(notes, f"slice positions jitter by up to {float(np.max(deviation)):.3g} mm (within {JITTER_TOLERANCE:.0%} "
                         f"of the spacing): read on a regular grid with the mean spacing {step:.6g} mm")
    else:
        step = first.single_step
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, 0] = row_dir * first.spacing_rc[1]  # I runs along a row: column spacing
    ijk_to_lps[:3, 1] = col_dir * first.spacing_rc[0]  # J runs down a column: row spacing
    ijk_to_lps[:3, 2] = normal * step
    ijk_to_lps[:3, 3] = positions[0]
    return frames, ijk_to_lps, resample


def _regularise(array: np.ndarray, along: np.ndarray, lateral: np.ndarray, ijk_to_lps: np.ndarray) -> np.ndarray:
    """Resample slices at positions ``along`` (mm from the first, with in-plane offsets ``lateral``) onto the regular grid.

    Each output voxel is looked up (linear interpolation, scipy.ndimage.map_coordinates) at its fractional slice
    index and at the in-plane position that slice's own offset gives it; outside the slices it is 0.
    """
    from scipy import ndimage

    n, rows, cols = array.shape
    step = float(np.linalg.norm(ijk_to_lps[:3, 2]))
    slice_index = np.interp(np.arange(n) * step, along, np.arange(n))  # fractional source slice of each output slice
    offset = np.stack([np.interp(slice_index, np.arange(n), lateral[:, c]) for c in range(3)], axis=1)
    row_dir = ijk_to_lps[:3, 0] / np.linalg.norm(ijk_to_lps[:3, 0])
    col_dir = ijk_to_lps[:3, 1] / np.linalg.norm(ijk_to_lps[:3, 1])
    di = -(offset @ row_dir) / np.linalg.norm(ijk_to_lps[:3, 0])  # the source slice sits ``offset`` away: look back
    dj = -(offset @ col_dir) / np.linalg.norm(ijk_to_lps[:3, 1])
    k, j, i = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    coords = np.stack([slice_index[k], j + dj[k], i + di[k]])
    return ndimage.map_coordinates(array, coords, order=1, mode="constant", cval=0.0).astype(np.float32)


def read_dicom_series(folder, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from ``folder`` (and its sub-folders, a DICOMDIR's too) into a :class:`Volume`.

    ``series_uid`` picks the series; without it the folder's only MR image
    series is used (or its only CT series when there is no MR).  Classic
    single-frame slices and enhanced multi-frame files are read; compressed
    pixel data is decoded by pydicom's pixel plugins (pylibjpeg, RLE).  What
    was adjusted (jitter, resampling, value mapping) is listed in ``meta["notes"]``.
    """
    import pydicom

    folder = Path(folder)
    if folder.is_file() and folder.name.upper() == "DICOMDIR":
        folder = folder.parent
    if not folder.is_dir():
        raise T1ToT2Error(f"'{folder}' is not a folder: pass the folder that holds the DICOM series")
    items = _choose_series(folder, _scan_folder(folder), series_uid)
    _check_image_objects(items, folder)
    notes: list = []
    frames, ijk_to_lps, resample = _geometry(_frames(items), folder, notes)

    decoded: dict = {}
    slices = []
    for frame in frames:
        if frame.path not in decoded:
            ds = pydicom.dcmread(frame.path)
            try:
                decoded[frame.path] = ds.pixel_array
            except Exception as exc:  # pydicom raises several types for unsupported encodings
                syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                name = getattr(syntax, "name", str(syntax))
                raise T1ToT2Error(
                    f"cannot decode the pixel data of '{frame.path.name}' ({name}; {exc.__class__.__name__}): "
                    "install the pydicom pixel plugins (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) or decompress it (dcmdjpeg)"
                ) from None
        pixels = decoded[frame.path]
        pixels = pixels if frame.frame is None else (pixels[frame.frame] if pixels.ndim == 3 else pixels)
        slices.append(pixels.astype(np.float32) * np.float32(frame.slope) + np.float32(frame.intercept))
    array = np.stack(slices)
    mappings = sorted({f.value_mapping for f in frames})
    if any(m != "rescale" for m in mappings):
        _note(notes, f"intensities from the {', '.join(m for m in mappings if m != 'rescale')}")
    if len({(f.slope, f.intercept) for f in frames}) > 1:
        notes.append("per-slice rescale values applied")
    if resample is not None:
        array = _regularise(array, resample[0], resample[1], ijk_to_lps)

    header = items[0][1]
    tags = {kw: _json_value(header.get(kw)) for kw in REFERENCE_TAGS if header.get(kw) not in (None, "")}
    if resample is None and all(f.frame is None for f in frames):
        headers = {path: ds for path, ds in items}
        tags["instances"] = [
            {
                "SOPClassUID": str(headers[f.path].SOPClassUID),
                "SOPInstanceUID": str(headers[f.path].SOPInstanceUID),
                "ImagePositionPatient": [float(v) for v in f.position],
                "file": f.path.name,
            }
            for f in frames
        ]
    else:  # one multi-frame file, or resampled slices: no one-to-one slice reference
        tags["instances"] = []
    volume = Volume(array, np.diag(np.r_[_LPS_RAS, 1.0]) @ ijk_to_lps)
    volume.meta["dicom"] = tags
    volume.meta["source_path"] = str(folder)
    acquired_with = sequence.from_dicom(header)
    if acquired_with is not None:
        volume.meta[sequence.META_KEY] = acquired_with
    if notes:
        volume.meta["notes"] = notes
    return volume
