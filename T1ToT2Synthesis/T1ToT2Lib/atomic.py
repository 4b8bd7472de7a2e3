"""Write files and folders under a temporary name and rename them into place.

Nothing half-written ever appears under a final name: if the writer fails or
is interrupted, only the temporary file (removed on error) is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``final``; rename it to ``final`` on success.

    The temporary name keeps the final name's extension(s) (``.nii.gz``,
    ``.safetensors``...) so that writers choosing a format by extension work.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes) if final.suffixes else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder next to ``final``; move it to ``final`` on success.

    An existing ``final`` folder is replaced only when ``overwrite`` is true,
    otherwise :class:`FileExistsError` is raised before anything is written.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(str(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_default(obj):
    """``json.dumps(default=...)`` for what our results hold besides plain types: numpy scalars/arrays, paths."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(data, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, default=json_default) + "\n")
    return Path(path)
