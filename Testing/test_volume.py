import numpy as np
import pytest

from conftest import oblique_direction
from T1ToT2Lib import T1ToT2Error
from T1ToT2Lib.core.volume import PLANES, Volume, from_slices
from T1ToT2Lib.io.files import read_volume, write_volume


def oblique_volume(rng, shape=(7, 9, 11)):
    return Volume.from_geometry(
        rng.normal(size=shape).astype(np.float32),
        spacing=(0.6, 0.9, 2.5),
        origin=(-12.5, 40.25, 7.0),
        direction=oblique_direction(),
    )


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_file_round_trip_keeps_geometry_and_values(tmp_path, rng, ext):
    vol = oblique_volume(rng)
    path = write_volume(vol, tmp_path / f"v{ext}")
    back = read_volume(path)
    np.testing.assert_allclose(back.ijk_to_ras, vol.ijk_to_ras, atol=1e-5)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, [0.6, 0.9, 2.5], atol=1e-6)
    np.testing.assert_allclose(back.direction, oblique_direction(), atol=1e-6)


def test_geometry_properties_follow_the_matrix():
    # Columns are the I, J, K directions: I→P, J→S, K→R.
    direction = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], dtype=float)
    vol = Volume.from_geometry(np.zeros((2, 3, 4)), spacing=(1, 2, 3), origin=(5, 6, 7), direction=direction)
    np.testing.assert_allclose(vol.spacing, [1, 2, 3])
    np.testing.assert_allclose(vol.origin, [5, 6, 7])
    ijk = np.array([[1.0, 2.0, 1.0]])
    ras = vol.ijk_to_ras_points(ijk)
    np.testing.assert_allclose(ras, [[5 + 1 * 3, 6 - 1 * 1, 7 + 2 * 2]])
    np.testing.assert_allclose(vol.ras_to_ijk(ras), ijk)


def test_planes_resolved_from_direction_not_array_order():
    # Standard RAS-aligned volume: K is superior, so axial slices iterate array axis 0.
    axis_aligned = Volume.from_geometry(np.zeros((4, 5, 6)))
    assert {p: axis_aligned.plane_axis(p) for p in PLANES} == {"axial": 0, "coronal": 1, "sagittal": 2}
    # A sagittally acquired volume: I→A, J→S, K→R (Slicer's usual sagittal DICOM).
    sag = Volume.from_geometry(np.zeros((4, 5, 6)), direction=np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float))
    assert sag.plane_axis("sagittal") == 0
    assert sag.plane_axis("axial") == 1
    assert sag.plane_axis("coronal") == 2
    assert sag.slices("sagittal").shape == (4, 5, 6)
    assert sag.slices("axial").shape == (5, 4, 6)


def test_oblique_planes_are_a_permutation(rng):
    vol = oblique_volume(rng)
    axes = [vol.plane_axis(p) for p in PLANES]
    assert sorted(axes) == [0, 1, 2]


def test_slices_round_trip(rng):
    vol = oblique_volume(rng)
    for plane in PLANES:
        axis = vol.plane_axis(plane)
        np.testing.assert_array_equal(from_slices(vol.slices(plane), axis), vol.array)


def test_with_array_keeps_geometry_and_rejects_other_shapes(rng):
    vol = oblique_volume(rng)
    other = vol.with_array(np.ones(vol.shape), synthetic=True)
    assert other.same_geometry(vol) and other.meta["synthetic"] is True
    with pytest.raises(T1ToT2Error, match="does not match"):
        vol.with_array(np.ones((1, 2, 3)))


def test_clear_errors_for_bad_files(tmp_path, rng):
    with pytest.raises(T1ToT2Error, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(T1ToT2Error, match="not a supported volume file"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(T1ToT2Error, match="cannot read"):
        read_volume(tmp_path / "broken.nii.gz")
    with pytest.raises(T1ToT2Error, match="use one of"):
        write_volume(oblique_volume(rng), tmp_path / "out.png")
    with pytest.raises(T1ToT2Error, match="plane"):
        oblique_volume(rng).plane_axis("transverse")


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path, rng, monkeypatch):
    import SimpleITK as sitk

    def exploding_writer(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", exploding_writer)
    with pytest.raises(T1ToT2Error) as excinfo:  # one line for the user, not ITK's multi-line RuntimeError
        write_volume(oblique_volume(rng), tmp_path / "out.nii.gz")
    assert "cannot write" in str(excinfo.value) and "\n" not in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_ordinary_permissions(tmp_path, rng):
    import os
    import stat

    path = write_volume(oblique_volume(rng), tmp_path / "v.nrrd")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_synthetic_volumes_are_labelled_in_the_file(tmp_path, rng):
    import SimpleITK as sitk

    vol = oblique_volume(rng).with_array(np.zeros((7, 9, 11)), synthetic=True)
    path = write_volume(vol, tmp_path / "synthetic.nii.gz")
    assert "SYNTHETIC" in sitk.ReadImage(str(path)).GetMetaData("descrip")
