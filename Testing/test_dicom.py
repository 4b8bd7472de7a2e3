"""DICOM import and export (issue #5): validity, geometry round trips, reference patient/study, refusals, CLI."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from conftest import oblique_direction
from pydicom.uid import generate_uid

from T1ToT2Lib import T1ToT2Error
from T1ToT2Lib.cli import main
from T1ToT2Lib.io.dicom_read import list_dicom_series, read_dicom_series
from T1ToT2Lib.io.dicom_write import ANONYMOUS_PATIENT_NAME, export_dicom_series, write_dicom_series
from T1ToT2Lib.core.volume import Volume, volume_from_sitk
from T1ToT2Lib.io.files import write_volume

# Right-handed RAS directions whose K axis is the named plane's normal.
DIRECTIONS = {
    "axial": np.eye(3),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "sagittal": np.array([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]]),
    "oblique": oblique_direction(),
}
FAKE_PATIENT = {
    "PatientName": "Doe^Jane",
    "PatientID": "HOSP-0042",
    "PatientBirthDate": "19800101",
    "PatientSex": "F",
    "ReferringPhysicianName": "House^Gregory",
    "AccessionNumber": "ACC7777",
    "StudyID": "S12",
    "StudyDate": "20240102",
    "StudyTime": "101500",
    "InstitutionName": "Test Hospital",
}


def make_volume(orientation: str, rng, shape=(5, 6, 7), offset=100.0) -> Volume:
    """A small non-isotropic volume with a non-zero origin and smooth float intensities."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    array = offset + 40 * np.sin(i / 2.0) + 15 * j - 7 * k + rng.normal(0, 3, shape)
    direction = DIRECTIONS[orientation]
    assert np.isclose(np.linalg.det(direction), 1.0)
    return Volume.from_geometry(array, spacing=(0.55, 0.8, 1.7), origin=(12.5, -30.25, 41.0), direction=direction)


def quantisation_step(path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).RescaleSlope)


def dciodvfy_errors(path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def write_fake_t1(volume: Volume, folder, series_description="T1 VIBE WE") -> list:
    """An 'acquired' T1 series with a fake patient, through the lower-level writer."""
    tags = dict(
        FAKE_PATIENT,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        FrameOfReferenceUID=generate_uid(),
        SeriesNumber=7,
        SeriesDescription=series_description,
        BodyPartExamined="HAND",
        Laterality="L",
        PatientPosition="FFS",
    )
    return write_dicom_series(volume, folder, tags, synthetic=False)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and ":" in message, message
    return message


# --------------------------------------------------------------------------- validity
@pytest.mark.skipif(shutil.which("dciodvfy") is None or shutil.which("dcmdump") is None, reason="needs dicom3tools and dcmtk")
def test_every_exported_instance_passes_dciodvfy_and_dcmdump(tmp_path, rng):
    folders = []
    for orientation in ("axial", "oblique"):
        folders.append(export_dicom_series(make_volume(orientation, rng), tmp_path / orientation, model_name="pix2pix"))
    t1 = make_volume("coronal", rng, offset=-500.0)  # negative values: scaled storage with a negative intercept
    folders.append(write_fake_t1(t1, tmp_path / "t1"))
    folders.append(export_dicom_series(t1.with_array(t1.array * 0.01), tmp_path / "t2ref", reference=tmp_path / "t1"))
    integer = make_volume("sagittal", rng).with_array(np.round(make_volume("sagittal", rng).array) - 200)
    folders.append(export_dicom_series(integer, tmp_path / "int", model_name="cyclegan"))  # signed integers as is
    paths = [p for folder in folders for p in folder]
    assert len(paths) == 25
    for path in paths:
        assert dciodvfy_errors(path) == [], path
        dump = subprocess.run(["dcmdump", "-q", str(path)], capture_output=True, text=True)
        assert dump.returncode == 0 and "(0020,0037)" in dump.stdout, (path, dump.stderr)
    signed = pydicom.dcmread(folders[-1][0])
    assert signed.PixelRepresentation == 1 and float(signed.RescaleSlope) == 1.0


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("orientation", list(DIRECTIONS))
def test_round_trip_with_own_reader_and_simpleitk(tmp_path, rng, orientation):
    import SimpleITK as sitk

    volume = make_volume(orientation, rng)
    paths = export_dicom_series(volume, tmp_path / "series")
    assert [p.name for p in paths] == sorted(p.name for p in (tmp_path / "series").iterdir())
    assert len(paths) == volume.shape[0]
    step = quantisation_step(paths[0])
    assert 0 < step < np.ptp(volume.array) / 30000  # 16-bit resolution, not 8

    ours = read_dicom_series(tmp_path / "series")
    np.testing.assert_allclose(ours.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
    assert np.max(np.abs(ours.array - volume.array)) <= step

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    theirs = volume_from_sitk(reader.Execute())
    np.testing.assert_allclose(theirs.spacing, volume.spacing, atol=1e-4)
    np.testing.assert_allclose(theirs.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(theirs.direction, volume.direction, atol=1e-4)
    assert np.max(np.abs(theirs.array - volume.array)) <= step


def test_round_trip_through_slicer_volumes_logic(tmp_path, rng):
    pytest.importorskip("slicer")
    import slicer.util
    from slicer_scene import headless_scene
    from vtkmodules.vtkCommonMath import vtkMatrix4x4

    scene = headless_scene()
    volumes_logic = scene._t1tot2_logics[1]["Volumes"]
    for orientation in DIRECTIONS:
        volume = make_volume(orientation, rng)
        paths = export_dicom_series(volume, tmp_path / orientation)
        node = volumes_logic.AddArchetypeVolume(str(paths[2]), f"synthetic_{orientation}")
        assert node is not None, orientation
        matrix = vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(ijk_to_ras, volume.ijk_to_ras, atol=1e-4, err_msg=orientation)
        array = slicer.util.arrayFromVolume(node)
        assert array.shape == volume.shape, orientation
        assert np.max(np.abs(array - volume.array)) <= quantisation_step(paths[0]), orientation
    scene.Clear(True)


def test_integer_volume_is_stored_exactly_and_single_slices_keep_their_spacing(tmp_path, rng):
    volume = make_volume("axial", rng)
    volume = volume.with_array(np.round(volume.array * 10))
    export_dicom_series(volume, tmp_path / "s")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, volume.array)

    single = make_volume("oblique", rng, shape=(1, 4, 5))
    export_dicom_series(single, tmp_path / "one")
    np.testing.assert_allclose(read_dicom_series(tmp_path / "one").ijk_to_ras, single.ijk_to_ras, atol=1e-4)


def test_left_handed_volume_comes_back_as_the_same_physical_image(tmp_path, rng):
    """DICOM slices stack along row x column, so a K axis against that normal is read back reversed."""
    volume = make_volume("axial", rng)
    flipped_k = volume.ijk_to_ras @ np.diag([1.0, 1.0, -1.0, 1.0])
    left_handed = Volume(volume.array, flipped_k)
    export_dicom_series(left_handed, tmp_path / "s")
    read_back = read_dicom_series(tmp_path / "s")
    n = volume.shape[0]
    corners = np.array([[0, 0, 0], [6, 5, 0], [3, 2, 4]], dtype=float)
    mirrored = corners * [1, 1, -1] + [0, 0, n - 1]
    np.testing.assert_allclose(read_back.ijk_to_ras_points(mirrored), left_handed.ijk_to_ras_points(corners), atol=1e-4)
    assert np.max(np.abs(read_back.array[::-1] - left_handed.array)) <= quantisation_step(tmp_path / "s" / "SYNT2_00001.dcm")


# --------------------------------------------------------------------------- reference and labels
def test_export_with_reference_joins_patient_study_and_frame(tmp_path, rng):
    t1 = make_volume("oblique", rng)
    t1_paths = write_fake_t1(t1, tmp_path / "t1")
    t1_read = read_dicom_series(tmp_path / "t1")
    assert t1_read.meta["dicom"]["PatientName"] == "Doe^Jane"
    t2 = t1_read.with_array(500 - t1_read.array)

    for reference, name in ((tmp_path / "t1", "from_folder"), (t1_read, "from_volume")):
        paths = export_dicom_series(t2, tmp_path / name, reference=reference, model_name="pix2pix-hand-v1")
        ref = pydicom.dcmread(t1_paths[0])
        out = [pydicom.dcmread(p) for p in paths]
        for ds in out:
            for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID",
                            "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate", "Laterality"):
                assert ds[keyword].value == ref[keyword].value, keyword
            assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
            assert ds.SeriesNumber > ref.SeriesNumber
            assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.SeriesInstanceUID
        assert len({ds.SOPInstanceUID for ds in out} | {pydicom.dcmread(p).SOPInstanceUID for p in t1_paths}) == 10
        assert len({ds.SeriesInstanceUID for ds in out}) == 1
        # Same grid: output slice k was computed from reference slice k.
        for ds, t1_path in zip(out, t1_paths):
            source = ds.SourceImageSequence[0]
            assert source.ReferencedSOPInstanceUID == pydicom.dcmread(t1_path).SOPInstanceUID
            assert source.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        labelled = out[0]
        assert list(labelled.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in labelled.ImageType
        assert "SYNTHETIC" in labelled.SeriesDescription and "pix2pix-hand-v1" in labelled.SeriesDescription
        assert "pix2pix-hand-v1" in labelled.DerivationDescription and "not acquired" in labelled.DerivationDescription
        assert labelled.BurnedInAnnotation == "NO"
        read_back = read_dicom_series(tmp_path / name)
        np.testing.assert_allclose(read_back.ijk_to_ras, t1.ijk_to_ras, atol=1e-4)


def _string_values(ds) -> list[str]:
    values = []
    for element in ds.iterall():
        if element.VR in ("PN", "LO", "SH", "DA", "CS", "ST", "LT", "UT", "AS", "UI"):
            values.append(str(element.value))
    return values


def test_export_without_reference_is_anonymous_even_if_volume_came_from_a_patient(tmp_path, rng):
    write_fake_t1(make_volume("axial", rng), tmp_path / "t1")
    t1 = read_dicom_series(tmp_path / "t1")
    synthetic = t1.with_array(t1.array * 2)  # carries the patient's tags in meta["dicom"]
    assert synthetic.meta["dicom"]["PatientID"] == "HOSP-0042"
    paths = export_dicom_series(synthetic, tmp_path / "anon", series_description="my T2")
    t1_uids = {t1.meta["dicom"][k] for k in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID")}
    for path in paths:
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == ANONYMOUS_PATIENT_NAME
        assert ds.PatientID.startswith("T1TOT2-")
        assert ds.PatientBirthDate == "" and ds.PatientSex == "" and str(ds.ReferringPhysicianName) == ""
        assert ds.SeriesDescription == "SYNTHETIC my T2"
        values = _string_values(ds)
        for secret in list(FAKE_PATIENT.values()) + list(t1_uids):
            assert not any(secret == v or (len(secret) > 3 and secret in v) for v in values), secret
        assert "SourceImageSequence" not in ds and "ReferencedSeriesSequence" not in ds
    long_name = "pix2pix-" + "x" * 80
    other = pydicom.dcmread(export_dicom_series(synthetic, tmp_path / "anon2", model_name=long_name)[0])
    assert other.PatientID != pydicom.dcmread(paths[0]).PatientID
    assert len(other.SeriesDescription) <= 64 and other.SeriesDescription.startswith("SYNTHETIC T2 (T1ToT2 pix2pix-")
    assert other.SeriesDescription.endswith("not acquired") and long_name in other.DerivationDescription


# --------------------------------------------------------------------------- refusals
def test_import_refuses_a_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path)
    assert "no DICOM" in one_line_error(excinfo)


def test_import_refuses_missing_slice_uneven_spacing_and_mixed_orientation(tmp_path, rng):
    volume = make_volume("oblique", rng, shape=(6, 4, 5))
    paths = export_dicom_series(volume, tmp_path / "missing")
    paths[3].unlink()
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "missing")
    assert "1 slice(s) missing" in one_line_error(excinfo)

    paths = export_dicom_series(volume, tmp_path / "uneven")
    ds = pydicom.dcmread(paths[5])
    k_column = volume.ijk_to_ras[:3, 2] * np.array([-1, -1, 1])
    ds.ImagePositionPatient = [float(v) + 0.4 * float(d) for v, d in zip(ds.ImagePositionPatient, k_column)]
    ds.save_as(paths[5])
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "uneven")
    assert "uneven slice spacing" in one_line_error(excinfo)

    paths = export_dicom_series(volume, tmp_path / "mixed")
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(paths[2])
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "mixed")
    assert "mixes orientations" in one_line_error(excinfo)


def test_import_refuses_non_image_objects_and_picks_the_only_mr_series_beside_them(tmp_path, rng):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    report = Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    report.SOPInstanceUID = generate_uid()
    report.SeriesInstanceUID = generate_uid()
    report.StudyInstanceUID = generate_uid()
    report.Modality = "SR"
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path)
    message = one_line_error(excinfo)
    assert "Basic Text SR" in message and "not an MR image" in message

    volume = make_volume("sagittal", rng)
    export_dicom_series(volume, tmp_path / "mr")
    chosen = read_dicom_series(tmp_path)
    assert chosen.meta["dicom"]["Modality"] == "MR" and chosen.shape == volume.shape


def test_multi_series_folder_needs_the_series_named(tmp_path, rng, capsys):
    t1 = make_volume("axial", rng)
    write_fake_t1(t1, tmp_path / "both" / "t1", series_description="T1 VIBE left")
    t2_paths = export_dicom_series(t1.with_array(t1.array + 1000), tmp_path / "both" / "t2", reference=tmp_path / "both" / "t1")
    uids = {s["description"]: s["uid"] for s in list_dicom_series(tmp_path / "both")}
    assert len(uids) == 2
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "both")
    message = one_line_error(excinfo)
    for description, uid in uids.items():
        assert uid in message and description in message
    t2_uid = pydicom.dcmread(t2_paths[0]).SeriesInstanceUID
    chosen = read_dicom_series(tmp_path / "both", series_uid=t2_uid)
    assert chosen.meta["dicom"]["SeriesInstanceUID"] == t2_uid
    assert np.max(np.abs(chosen.array - (t1.array + 1000))) <= quantisation_step(t2_paths[0])
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "both", series_uid="1.2.3")
    assert "1.2.3" in one_line_error(excinfo)

    # The command line takes a DICOM folder as VOLUME and needs --series-uid just the same.
    assert main(["export-dicom", str(tmp_path / "both"), str(tmp_path / "cli")]) == 2
    assert "--series-uid" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    assert main(["export-dicom", str(tmp_path / "both"), str(tmp_path / "cli"), "--series-uid", uids["T1 VIBE left"]]) == 0
    assert len(list((tmp_path / "cli").iterdir())) == t1.shape[0]


def test_export_refuses_bad_volumes_and_leaves_nothing(tmp_path, rng, monkeypatch):
    volume = make_volume("axial", rng)
    bad = volume.with_array(np.where(volume.array > 120, np.nan, volume.array))
    with pytest.raises(T1ToT2Error) as excinfo:
        export_dicom_series(bad, tmp_path / "nan")
    assert "NaN" in one_line_error(excinfo)
    sheared = Volume(volume.array, volume.ijk_to_ras @ np.array([[1, 0, 0.3, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(T1ToT2Error) as excinfo:
        export_dicom_series(sheared, tmp_path / "sheared")
    assert "sheared" in one_line_error(excinfo)

    # A failure half-way through leaves neither a series nor a temporary folder behind.
    calls = []

    def failing_write(path, ds, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(path, ds, **kwargs)

    real_write = pydicom.dcmwrite
    monkeypatch.setattr(pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError):
        export_dicom_series(volume, tmp_path / "half")
    assert len(calls) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- command line
def test_cli_export_refuses_to_overwrite_without_flag(tmp_path, rng, capsys):
    volume = make_volume("coronal", rng)
    write_volume(volume, tmp_path / "vol.nii.gz")
    out = tmp_path / "dicom_out"
    assert main(["export-dicom", str(tmp_path / "vol.nii.gz"), str(out), "--model-name", "unit"]) == 0
    first = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert len(first) == volume.shape[0]
    assert "unit" in pydicom.dcmread(next(out.iterdir())).SeriesDescription
    capsys.readouterr()

    assert main(["export-dicom", str(tmp_path / "vol.nii.gz"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("t1tot2 export-dicom: error:") and "--overwrite" in err and err.count("\n") == 1
    assert {p.name: pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()} == first

    assert main(["export-dicom", str(tmp_path / "vol.nii.gz"), str(out), "--overwrite"]) == 0
    second = {p.name: pydicom.dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert second.keys() == first.keys() and not set(second.values()) & set(first.values())
    read_back = read_dicom_series(out)
    np.testing.assert_allclose(read_back.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)
    assert main(["export-dicom", str(tmp_path / "missing.nii.gz"), str(tmp_path / "x")]) == 2


# --------------------------------------------------------------------------- what scanners write (issue 9)
def _lps_k_step(volume: Volume) -> np.ndarray:
    return volume.ijk_to_ras[:3, 2] * np.array([-1, -1, 1])


def _move_slices(paths, offsets_lps) -> None:
    for path, offset in zip(paths, offsets_lps):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{float(v) + float(d):.6f}" for v, d in zip(ds.ImagePositionPatient, offset)]
        ds.save_as(path)


def _integer_volume(orientation="oblique", shape=(8, 6, 7), spacing=(0.55, 0.8, 7.0)):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    array = (100 + 10 * i + 3 * j + 20 * k).astype(np.float32)  # integers: stored exactly, compared exactly
    return Volume.from_geometry(array, spacing=spacing, origin=(12.5, -30.25, 41.0), direction=DIRECTIONS[orientation])


def test_jitter_within_2_percent_reads_with_the_mean_spacing_and_a_note(tmp_path, capsys):
    volume = _integer_volume()
    paths = write_fake_t1(volume, tmp_path / "s")
    jitter = np.array([0.0, 0.06, -0.04, 0.07, -0.05, 0.02, 0.0, 0.0])  # mm along the normal, up to 1% of 7 mm
    unit = _lps_k_step(volume) / 7.0
    _move_slices(paths, [j * unit for j in jitter])
    read = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(read.array, volume.array)
    np.testing.assert_allclose(read.ijk_to_ras, volume.ijk_to_ras, atol=1e-4)  # first and last slices unmoved: mean = 7 mm
    assert any("jitter" in n and "mean spacing" in n for n in read.meta["notes"])
    assert "note:" in capsys.readouterr().err


def test_smoothly_varying_spacing_is_resampled_onto_a_regular_grid(tmp_path):
    volume = _integer_volume(orientation="axial", spacing=(0.5, 0.5, 7.0))
    paths = write_fake_t1(volume, tmp_path / "s")
    k = np.arange(volume.shape[0])
    along = 7.0 * k + 0.25 * k * (k - 1)  # steps 7.0, 7.5, 8.0 ...: 0.5 mm (7%) changes, smooth
    _move_slices(paths, [np.array([0, 0, a - 7.0 * kk]) for kk, a in zip(k, along)])
    read = read_dicom_series(tmp_path / "s")
    step = along[-1] / (len(k) - 1)
    assert read.shape == volume.shape and read.spacing[2] == pytest.approx(step)
    assert any("variable slice spacing" in n for n in read.meta["notes"])
    # Stored values grow by 20 per slice: on the regular grid each slice holds the value at its own position.
    expected = 100 + 20 * np.interp(k * step, along, k)
    np.testing.assert_allclose(read.array[:, 2, 3] - 10 * 3 - 3 * 2, expected, atol=1e-3)


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    volume = _integer_volume(orientation="axial", shape=(6, 8, 10), spacing=(1.0, 1.0, 5.0))
    paths = write_fake_t1(volume, tmp_path / "s")
    # Each slice slides 1 mm (one voxel) further along +x LPS, i.e. along -I: a sheared stack.
    _move_slices(paths, [np.array([1.0 * kk, 0.0, 0.0]) for kk in range(6)])
    read = read_dicom_series(tmp_path / "s")
    assert any("gantry tilt" in n for n in read.meta["notes"])
    assert abs(read.direction[:, 2] @ read.direction[:, 0]) < 1e-9  # orthogonal output
    # Stored voxel i of slice k now lies at I = i - k, so output voxel i of slice k is stored voxel i + k; 0 beyond.
    for kk in range(1, 6):
        np.testing.assert_allclose(read.array[kk, :, : 10 - kk], volume.array[kk, :, kk:], atol=1e-4)
        assert np.all(read.array[kk, :, 10 - kk:] == 0)


@pytest.mark.parametrize("case", ["duplicate", "localiser", "colour", "abrupt"])
def test_refusals_of_what_cannot_be_one_volume(tmp_path, case):
    volume = _integer_volume(orientation="axial")
    paths = write_fake_t1(volume, tmp_path / "s")
    if case == "duplicate":
        ds = pydicom.dcmread(paths[3])
        ds.ImagePositionPatient = pydicom.dcmread(paths[2]).ImagePositionPatient
        ds.save_as(paths[3])
        expected = "same position"
    elif case == "localiser":
        ds = pydicom.dcmread(paths[0])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(paths[0])
        expected = "localiser"
    elif case == "colour":
        ds = pydicom.dcmread(paths[0])
        ds.PhotometricInterpretation, ds.SamplesPerPixel = "RGB", 3
        ds.save_as(paths[0])
        expected = "colour"
    else:  # one slice 30% out of place: not jitter, not smooth
        _move_slices(paths[4:5], [np.array([0, 0, 2.1])])
        expected = "uneven slice spacing"
    with pytest.raises(T1ToT2Error) as excinfo:
        read_dicom_series(tmp_path / "s")
    assert expected in one_line_error(excinfo)


def test_per_slice_rescale_and_real_world_value_mapping(tmp_path):
    from pydicom.dataset import Dataset

    volume = _integer_volume(orientation="coronal")
    volume = volume.with_array(volume.array - volume.array % 2)  # even values: exact at half value with slope 2
    paths = write_fake_t1(volume, tmp_path / "s")
    ds = pydicom.dcmread(paths[2])  # slice 2 stored at half the values with slope 2: same real values
    ds.PixelData = (ds.pixel_array // 2).astype(np.uint16).tobytes()
    ds.RescaleSlope = "2"
    ds.save_as(paths[2])
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, volume.array)

    for path in paths:  # a real world value map (e.g. Philips' floating-point scale) wins over the rescale
        ds = pydicom.dcmread(path)
        item, units = Dataset(), Dataset()
        units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "1", "UCUM", "no units"
        item.RealWorldValueSlope, item.RealWorldValueIntercept = 0.5, -3.0
        item.LUTLabel, item.LUTExplanation = "PHYS", "test"
        item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
        item.MeasurementUnitsCodeSequence = [units]
        ds.RealWorldValueMappingSequence = [item]
        ds.save_as(path)
    read = read_dicom_series(tmp_path / "s")
    raw = np.stack([pydicom.dcmread(p).pixel_array for p in sorted(paths)]).astype(np.float32)
    np.testing.assert_allclose(read.array, raw * 0.5 - 3.0)
    assert any("real world value mapping (no units)" in n for n in read.meta["notes"])


def write_enhanced_mr(volume: Volume, path) -> None:
    """One Enhanced MR Image Storage file holding ``volume`` (frames in reverse order, rescale per frame)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    lps = np.diag([-1.0, -1.0, 1.0]) @ volume.ijk_to_ras[:3]
    spacing = volume.spacing
    row, col = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.SeriesDescription = "MR", "Doe^Jane", "X", "T1 VIBE enhanced"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    n, rows, cols = volume.shape
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared, measures, orientation = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    measures.SliceThickness = f"{spacing[2]:.6f}"
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[row, col]]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, pixels = [], []
    for k in reversed(range(n)):
        group, position, transform = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in lps[:, 3] + k * lps[:, 2]]
        slope = 1.0 + (k % 2)  # odd frames stored at half value with slope 2
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = f"{slope:g}", "0", "US"
        group.PlanePositionSequence, group.PixelValueTransformationSequence = [position], [transform]
        frames.append(group)
        pixels.append(np.rint(volume.array[k] / slope).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(pixels).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_enhanced_multiframe_mr_reads_like_its_classic_equivalent(tmp_path):
    volume = _integer_volume(orientation="oblique")
    volume = volume.with_array(volume.array - volume.array % 2)  # even values: exact at half value with slope 2
    write_fake_t1(volume, tmp_path / "classic")
    write_enhanced_mr(volume, tmp_path / "enhanced" / "EMR.dcm")
    classic, enhanced = read_dicom_series(tmp_path / "classic"), read_dicom_series(tmp_path / "enhanced")
    np.testing.assert_allclose(enhanced.ijk_to_ras, classic.ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_array_equal(enhanced.array, volume.array)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_series_read_like_the_uncompressed_one(tmp_path, syntax):
    import pydicom.uid

    volume = _integer_volume(orientation="sagittal", shape=(4, 32, 40))  # OpenJPEG refuses images of a few pixels
    paths = write_fake_t1(volume, tmp_path / "s")
    plain = read_dicom_series(tmp_path / "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    read = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(read.array, plain.array)
    np.testing.assert_array_equal(read.ijk_to_ras, plain.ijk_to_ras)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_pydicoms_compressed_test_files_match_the_uncompressed_one(tmp_path, name):
    from pydicom.data import get_testdata_file

    for folder, source in (("plain", "MR_small.dcm"), ("compressed", name)):
        (tmp_path / folder).mkdir()
        shutil.copy(get_testdata_file(source), tmp_path / folder / source)
    plain, compressed = read_dicom_series(tmp_path / "plain"), read_dicom_series(tmp_path / "compressed")
    assert compressed.shape == plain.shape == (1, 64, 64)
    np.testing.assert_array_equal(compressed.ijk_to_ras, plain.ijk_to_ras)
    np.testing.assert_array_equal(compressed.array, plain.array)


def test_dicomdir_folder_reads_like_the_plain_folder(tmp_path):
    from pydicom.fileset import FileSet

    volume = _integer_volume(orientation="coronal")
    paths = write_fake_t1(volume, tmp_path / "plain")
    fileset = FileSet()
    for path in paths:
        fileset.add(pydicom.dcmread(path))
    fileset.write(tmp_path / "media")
    assert (tmp_path / "media" / "DICOMDIR").exists()
    for where in (tmp_path / "media", tmp_path / "media" / "DICOMDIR"):
        read = read_dicom_series(where)
        np.testing.assert_array_equal(read.array, volume.array)
        np.testing.assert_allclose(read.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)


def test_evaluate_series_uid_picks_the_acquired_series(tmp_path, capsys):
    volume = _integer_volume(orientation="axial")
    uid_a = pydicom.dcmread(write_fake_t1(volume, tmp_path / "study" / "a")[0]).SeriesInstanceUID
    write_fake_t1(volume.with_array(volume.array + 50), tmp_path / "study" / "b")
    write_volume(volume, tmp_path / "generated.nii.gz")
    args = ["evaluate", str(tmp_path / "generated.nii.gz"), str(tmp_path / "study"), "--json", str(tmp_path / "m.json")]
    assert main(args) == 2 and "--series-uid" in capsys.readouterr().err
    assert main([*args, "--series-uid", uid_a]) == 0
    import json

    assert json.loads((tmp_path / "m.json").read_text())["overall"]["nrmse"]["mean"] == pytest.approx(0.0, abs=1e-6)
