"""Write files and folders under a temporary name and rename them into place.

Nothing half-written ever appears under a final name: if the writer fails or
is interrupted, only the temporary file (removed on error) is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

#: Signals that end a job: each must unwind the writer (so its ``finally`` removes the temporary file) instead of
#: killing the process on the spot.  SIGBREAK is what Windows delivers for CTRL_BREAK_EVENT.
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interrupt_on_termination():
    """Turn SIGINT/SIGTERM (SIGBREAK on Windows) into ``KeyboardInterrupt`` while the block runs.

    Python's default for SIGTERM ends the process without unwinding, and a child started from a
    non-interactive shell inherits SIGINT *ignored*: either way a temporary file would survive a
    cancel.  Handlers a program installed itself (training's stop-at-the-next-step handler) are kept.
    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in TERMINATING_SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.SIG_IGN, None):
            previous[sig] = current
            signal.signal(sig, _raise_interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def partial_paths(final: str | os.PathLike) -> list[Path]:
    """The temporary files or folders :func:`atomic_path` / :func:`atomic_directory` may have left for ``final``."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    prefixes = {f".{final.stem}.", f".{final.name}."}
    return sorted(p for p in final.parent.iterdir()
                  if any(p.name.startswith(prefix) for prefix in prefixes) and ".partial" in p.name)


def remove_partials(final: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of ``final`` left behind; returns the removed paths."""
    removed = []
    for path in partial_paths(final):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``final``; rename it to ``final`` on success.

    The temporary name keeps the final name's extension(s) (``.nii.gz``,
    ``.safetensors``...) so that writers choosing a format by extension work.
    A SIGINT or SIGTERM while the block runs removes the temporary file too.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes) if final.suffixes else ""
    with interrupt_on_termination():
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{suffix}", dir=final.parent)
        tmp = Path(tmp)
        try:
            os.close(fd)
            mode = 0o666 & ~_umask()
            os.chmod(tmp, mode)  # mkstemp makes 0600; give the file the mode a plain open() would
            yield tmp
            # Some writers (safetensors) replace the file rather than write into it, and the new file is 0600 again.
            os.chmod(tmp, mode)
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
    with interrupt_on_termination():
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())
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
