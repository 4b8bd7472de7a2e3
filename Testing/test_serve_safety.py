"""``t1tot2 serve``'s gate: data-folder confinement, upload limit, file recognition, DICOM zips, defaults.

No browser and no server here: the functions the page and the launcher call, on real files.
"""

from __future__ import annotations

import asyncio
import os
import zipfile

import numpy as np
import pytest

from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import write_volume
from T1ToT2Lib.cli.serve import parse_size, register_cli
from T1ToT2Lib.web.safety import (WebInputError, extract_dicom_zip, list_data_files, read_uploaded_volume,
                                  receive_upload, resolve_in_folder, safe_upload_name, sniff_kind)


def small_volume(shape=(6, 7, 8)):
    rng = np.random.default_rng(0)
    return Volume.from_geometry(rng.uniform(0, 100, shape).astype(np.float32), spacing=(0.5, 0.6, 0.7),
                                origin=(1.0, 2.0, 3.0))


@pytest.fixture
def data_folder(tmp_path):
    """data/ with two volumes (one in a subfolder), a secret file beside it and links that lead out."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_volume(small_volume(), data / "t1.nii.gz")
    write_volume(small_volume(), data / "sub" / "t2.nrrd")
    secret = tmp_path / "secret.nii.gz"
    write_volume(small_volume(), secret)
    (tmp_path / "outside").mkdir()
    write_volume(small_volume(), tmp_path / "outside" / "other.nrrd")
    os.symlink(secret, data / "link_out.nii.gz")
    os.symlink(tmp_path / "outside", data / "dir_out")
    os.symlink(data / "t1.nii.gz", data / "link_in.nii.gz")
    return data


def test_data_folder_lists_only_its_own_volumes(data_folder):
    names = list_data_files(data_folder)
    assert names == ["link_in.nii.gz", "sub/t2.nrrd", "t1.nii.gz"]


@pytest.mark.parametrize("name", ["../secret.nii.gz", "sub/../../secret.nii.gz", "link_out.nii.gz",
                                  "dir_out/other.nrrd", "/etc/passwd", "~/x.nii", "t1.nii.gz\x00.png",
                                  "..\\secret.nii.gz", ""])
def test_path_traversal_and_links_out_are_refused(data_folder, name):
    with pytest.raises(WebInputError) as info:
        resolve_in_folder(data_folder, name)
    message = str(info.value)
    assert "\n" not in message and "data folder" in message or "no file chosen" in message
    assert str(data_folder.parent) not in message  # the server's own paths are not told


def test_files_inside_the_folder_resolve(data_folder):
    assert resolve_in_folder(data_folder, "sub/t2.nrrd") == (data_folder / "sub" / "t2.nrrd").resolve()
    assert resolve_in_folder(data_folder, "link_in.nii.gz") == (data_folder / "t1.nii.gz").resolve()
    with pytest.raises(WebInputError, match="no data folder"):
        resolve_in_folder(None, "t1.nii.gz")


def _chunks(sizes):
    async def gen():
        for n in sizes:
            yield b"\x00" * n
    return gen()


def test_upload_stops_at_the_limit_and_leaves_nothing(tmp_path):
    target = tmp_path / "up.bin"
    with pytest.raises(WebInputError, match="upload limit of 1.0 MB"):
        asyncio.run(receive_upload(_chunks([600_000, 600_000, 600_000]), target, limit=1024 ** 2))
    assert not target.exists()
    assert asyncio.run(receive_upload(_chunks([1000, 24]), target, limit=1024 ** 2)) == 1024
    with pytest.raises(WebInputError, match="empty"):
        asyncio.run(receive_upload(_chunks([]), tmp_path / "empty.bin", limit=10))
    assert not (tmp_path / "empty.bin").exists()


def test_upload_names_are_made_harmless():
    assert safe_upload_name("../../etc/passwd") == "passwd"
    assert safe_upload_name("C:\\x\\..\\.bashrc") == "bashrc"
    assert safe_upload_name("my scan (1).nii.gz") == "my_scan__1_.nii.gz"


@pytest.mark.parametrize("suffix,kind", [(".nii.gz", "nifti.gz"), (".nii", "nifti"), (".nrrd", "nrrd"), (".mha", "mha")])
def test_each_format_is_recognised_by_its_bytes_and_read(tmp_path, suffix, kind):
    volume = small_volume()
    path = write_volume(volume, tmp_path / f"v{suffix}")
    renamed = tmp_path / "upload.bin"  # the name says nothing; the bytes do
    renamed.write_bytes(path.read_bytes())
    assert sniff_kind(renamed) == kind
    read = read_uploaded_volume(renamed, tmp_path / "work", display_name="scan")
    np.testing.assert_allclose(read.array, volume.array, rtol=1e-6)
    np.testing.assert_allclose(read.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)


@pytest.mark.parametrize("content", [b"hello, this is not an image\n" * 40, b"\x89PNG\r\n\x1a\n" + b"\x00" * 600,
                                     b"NRRD0004\ntype: float\ndimension: 3\nsizes: 9 9\n", b"\x1f\x8b\x08garbage"])
def test_a_bad_upload_is_one_clear_line(tmp_path, content):
    path = tmp_path / "upload.bin"
    path.write_bytes(content)
    with pytest.raises(WebInputError) as info:
        read_uploaded_volume(path, tmp_path / "work", display_name="notes.txt")
    message = str(info.value)
    assert "\n" not in message and "'notes.txt'" in message
    assert "Traceback" not in message and "File \"" not in message


def _dicom_zip(tmp_path, volume, extra=()):
    from T1ToT2Lib.io.dicom_write import export_dicom_series

    files = export_dicom_series(volume, tmp_path / "series", model_name="test")
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for f in files:
            archive.write(f, f"scan/{f.name}")
        for name, data in extra:
            archive.writestr(name, data)
    return path


def test_a_dicom_zip_is_read_and_member_names_never_reach_the_disk(tmp_path):
    volume = small_volume((5, 8, 9))
    path = _dicom_zip(tmp_path, volume, extra=[("../../escaped.txt", b"x"), ("/abs.txt", b"y")])
    work = tmp_path / "work"
    read = read_uploaded_volume(path, work, display_name="series.zip")
    assert read.shape == volume.shape and "dicom" in read.meta
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()
    names = sorted(p.name for p in (work / "dicom").iterdir())
    assert names == [f"{i:05d}.dcm" for i in range(len(names))]


def test_a_zip_bomb_and_a_zip_of_nothing_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", b"\x00" * (5 * 1024 ** 2))
    with pytest.raises(WebInputError, match="expands to more than"):
        extract_dicom_zip(bomb, tmp_path / "out", limit=1024 ** 2)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("dir/", b"")
    with pytest.raises(WebInputError, match="empty"):
        read_uploaded_volume(empty, tmp_path / "w2", display_name="empty.zip")
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("readme.txt", b"not dicom")
    with pytest.raises(WebInputError) as info:
        read_uploaded_volume(junk, tmp_path / "w3", display_name="junk.zip")
    assert "\n" not in str(info.value)


def test_serve_binds_loopback_unless_told(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8080 and args.upload_limit == 512 * 1024 ** 2
    assert parser.parse_args(["serve", "--upload-limit", "2G"]).upload_limit == 2 * 1024 ** 3
    assert parse_size("800k") == 800 * 1024 and parse_size("123") == 123
