"""What the browser front end lets in: files of the data folder, uploads, DICOM zips.

Everything here refuses with one :class:`WebInputError` line that the page
shows as it is; nothing here touches MRML or the web server.

* :func:`resolve_in_folder` turns a name chosen in the page into a path inside
  the server's data folder; ``..``, absolute names and symbolic links that
  lead out of the folder are refused (the real path is checked, not the text).
* :func:`receive_upload` copies an upload's byte chunks to disk and stops
  at the size limit, before the whole body has been read.
* :func:`read_uploaded_volume` recognises the file by its first bytes
  (NIfTI, NRRD, MHA, zip), never by its name alone, and reads it with the
  library's readers; a zip is unpacked member by member under names chosen
  here (no member name reaches the file system: no "zip slip"), within a
  size and a file-count limit (no "zip bomb").
"""

from __future__ import annotations

import gzip
import os
import shutil
import zipfile
from pathlib import Path

from ..core.errors import T1ToT2Error

#: Default upload limit (bytes): a 0.6 mm hand as float32 NIfTI is about 35 MB; a DICOM series zip a little more.
DEFAULT_UPLOAD_LIMIT = 512 * 1024 * 1024
#: Suffixes the data folder list shows (the readers' formats) and zips of DICOM series.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
#: A zip may expand to at most this many times the upload limit, and hold at most this many files.
ZIP_EXPANSION = 4
ZIP_MAX_FILES = 5000
#: The formats, in the words of the page's message.
FORMATS_TEXT = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) file or a zip of one DICOM series"


class WebInputError(T1ToT2Error):
    """A choice or an upload the server refuses; the message is one line for the page."""


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


# --- the data folder ------------------------------------------------------------------------------
def _has_volume_suffix(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def resolve_in_folder(root, name) -> Path:
    """The file ``name`` (relative, as listed by :func:`list_data_files`) inside ``root``, or :class:`WebInputError`.

    The resolved real path (symbolic links followed) must lie inside the real
    ``root``: ``../x``, ``/etc/passwd``, ``a/../../x`` and a link to a file
    outside are all refused with the same message.
    """
    if root is None:
        raise WebInputError("this server has no data folder: start it with --data FOLDER, or upload a file")
    root_real = Path(os.path.realpath(root))
    text = str(name or "").strip()
    if not text:
        raise WebInputError("no file chosen: pick a file of the data folder")
    if "\x00" in text or os.path.isabs(text) or text.startswith(("\\", "~")):
        raise WebInputError(f"'{text}' is not a file of the data folder: pick one from the list")
    candidate = Path(os.path.realpath(root_real / text))
    try:
        candidate.relative_to(root_real)
    except ValueError:
        raise WebInputError(f"'{text}' is not a file of the data folder: pick one from the list") from None
    if not candidate.exists():
        raise WebInputError(f"'{text}' does not exist in the data folder: refresh the list")
    return candidate


def list_data_files(root, limit: int = 500) -> list[str]:
    """Volume files (and DICOM zips) under ``root``, as relative POSIX paths, sorted; links out of ``root`` are left
    out, and so are hidden files and folders.  At most ``limit`` names."""
    if root is None or not Path(root).is_dir():
        return []
    root_real = Path(os.path.realpath(root))
    names = []
    for folder, dirs, files in os.walk(root_real, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            if file.startswith(".") or not _has_volume_suffix(file):
                continue
            path = Path(folder) / file
            try:
                Path(os.path.realpath(path)).relative_to(root_real)
            except ValueError:
                continue  # a link that leads out of the folder
            names.append(path.relative_to(root_real).as_posix())
            if len(names) >= limit:
                return sorted(names)
    return sorted(names)


# --- uploads --------------------------------------------------------------------------------------
def check_declared_size(size, limit: int) -> None:
    """Refuse an upload whose declared size (Content-Length, the browser's file size) is over ``limit``."""
    if size is not None and int(size) > limit:
        raise WebInputError(f"the file is {human_size(int(size))}, over this server's upload limit of "
                            f"{human_size(limit)}: crop or compress it, or put it in the server's data folder")


def safe_upload_name(name: str) -> str:
    """A file name for an upload: its last path part, letters, digits, '._-' only, never hidden; at most 100 chars."""
    base = str(name or "upload").replace("\\", "/").split("/")[-1]
    clean = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip(".") or "upload"
    return clean[-100:]


async def receive_upload(chunks, path, limit: int) -> int:
    """Write the async iterable of byte ``chunks`` to ``path``; stop and remove it past ``limit`` bytes.

    Returns the size written.  The partial file is removed on any failure.
    """
    path = Path(path)
    written = 0
    try:
        with open(path, "wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise WebInputError(f"the file is over this server's upload limit of {human_size(limit)}: "
                                        "crop or compress it, or put it in the server's data folder")
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written == 0:
        path.unlink(missing_ok=True)
        raise WebInputError("the file is empty: choose " + FORMATS_TEXT)
    return written


def sniff_kind(path) -> str | None:
    """"nifti", "nifti.gz", "nrrd", "mha", "zip" from a file's first bytes, or None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(path, "rb") as g:
                inner = g.read(348)
        except (OSError, EOFError):
            return None
        return "nifti.gz" if _is_nifti(inner) else None
    if _is_nifti(head):
        return "nifti"
    text = head.decode("latin-1")
    if "ObjectType" in text and "ElementDataFile" in text or text.startswith(("ObjectType", "NDims")):
        return "mha"
    return None


def _is_nifti(head: bytes) -> bool:
    if len(head) < 348:
        return False
    sizeof_hdr_le = int.from_bytes(head[:4], "little")
    sizeof_hdr_be = int.from_bytes(head[:4], "big")
    return 348 in (sizeof_hdr_le, sizeof_hdr_be) and head[344:347] in (b"n+1", b"ni1")


_SUFFIX = {"nifti": ".nii", "nifti.gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}


def extract_dicom_zip(path, dest, limit: int) -> Path:
    """Unpack a zip's files into ``dest`` as ``00000.dcm``, ``00001.dcm``... (member names never touch the disk);
    refuse more than :data:`ZIP_MAX_FILES` files or more than ``ZIP_EXPANSION x limit`` bytes in all."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    budget = ZIP_EXPANSION * limit
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if not members:
                raise WebInputError("the zip is empty: zip the files of one DICOM series")
            if len(members) > ZIP_MAX_FILES:
                raise WebInputError(f"the zip holds {len(members)} files, more than {ZIP_MAX_FILES}: "
                                    "zip one DICOM series")
            if sum(m.file_size for m in members) > budget:
                raise WebInputError(f"the zip expands to more than {human_size(budget)}: zip one DICOM series")
            total = 0
            for index, member in enumerate(members):
                with archive.open(member) as src, open(dest / f"{index:05d}.dcm", "wb") as out:
                    while True:
                        block = src.read(1 << 20)
                        if not block:
                            break
                        total += len(block)
                        if total > budget:  # the sizes in the directory can lie
                            raise WebInputError(f"the zip expands to more than {human_size(budget)}: "
                                                "zip one DICOM series")
                        out.write(block)
    except zipfile.BadZipFile:
        raise WebInputError("the zip is damaged: zip the files of one DICOM series again") from None
    except RuntimeError as exc:  # encrypted members
        raise WebInputError(f"the zip cannot be read ({' '.join(str(exc).split())}): zip it without a password") from None
    return dest


def read_uploaded_volume(path, work_dir, limit: int = DEFAULT_UPLOAD_LIMIT, display_name: str | None = None):
    """The :class:`~T1ToT2Lib.core.volume.Volume` in an uploaded file, or one :class:`WebInputError` line.

    ``work_dir`` receives the renamed file (or the unpacked DICOM files);
    the caller removes it.
    """
    from ..io.files import read_volume, sidecar_path

    path = Path(path)
    shown = display_name or path.name
    kind = sniff_kind(path)
    if kind is None:
        raise WebInputError(f"'{shown}' is not an image this server reads: choose {FORMATS_TEXT}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        if kind == "zip":
            source = extract_dicom_zip(path, work_dir / "dicom", limit)
        else:
            source = work_dir / f"volume{_SUFFIX[kind]}"
            shutil.copyfile(path, source)
            sidecar = sidecar_path(path)
            if sidecar is not None and sidecar.is_file() and not sidecar.is_symlink():  # a data-folder file's sequence
                shutil.copyfile(sidecar, sidecar_path(source))
        volume = read_volume(source)
    except WebInputError:
        raise
    except T1ToT2Error as exc:
        raise WebInputError(f"'{shown}' cannot be used: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # a reader's own exception (SimpleITK, pydicom): one line, no trace
        reason = " ".join(str(exc).split())[:200] or exc.__class__.__name__
        raise WebInputError(f"'{shown}' could not be read as {FORMATS_TEXT} ({reason})") from None
    if volume.array.ndim != 3 or min(volume.array.shape) < 1:
        raise WebInputError(f"'{shown}' is not a 3-D grey-scale volume: choose a 3-D T1 volume")
    return volume
