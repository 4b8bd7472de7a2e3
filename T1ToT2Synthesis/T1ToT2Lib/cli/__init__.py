"""The ``t1tot2`` command line.

Each command has a module in this package, which exposes
``register_cli(subparsers)``: it adds its sub-command(s) and sets
``func=callable(args) -> int | None`` as the parser default.  This file only
collects them, checks that the outputs' folders can be written before any work, and turns
:class:`T1ToT2Error` and write failures (``OSError``: disk full, permission denied...) into a one-line
message with exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from .. import __version__
from ..core.atomic import interrupt_on_termination
from ..core.errors import T1ToT2Error

#: Modules that register sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "phantom",
    "align",
    "train",
    "synthesize",
    "evaluate",
    "analyze",
    "compare",
    "dicom",
    "demo",
    "bench",
    "onnx",
    "serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t1tot2",
        description="Synthetic T2 SPACE from T1 VIBE MRI with Pix2Pix, CycleGAN and UNIT (Grant-Jacob et al. 2021).",
    )
    parser.add_argument("--version", action="version", version=f"t1tot2 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue  # a command module that is not part of this build
            _register_unavailable(sub, name, exc)  # one command's missing dependency never breaks the others
            continue
        module.register_cli(sub)
    return parser


def _register_unavailable(sub, name: str, exc: ModuleNotFoundError) -> None:
    """A stand-in for a command whose module cannot be imported here: it says what is missing, in one line."""
    missing = exc.name or str(exc)

    def refuse(_args):
        raise T1ToT2Error(f"this command needs the Python module '{missing}', which is not installed: "
                          f"pip install {missing.split('.')[0]} (or reinstall t1tot2 with its extras)")

    p = sub.add_parser(name, help=f"unavailable: needs '{missing}'", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=refuse)


#: Argument names that hold paths the command writes (files or folders).
OUTPUT_ARGUMENTS = ("out", "outdir", "json", "csv", "loss_csv", "transform", "checkpoint_dir")

#: errno -> what to tell the user, for write failures that reach the command line as ``OSError``.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere",
    errno.EACCES: "permission denied: choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "operation not permitted: choose a folder you can write to (or fix its permissions)",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "it is a folder, not a file: give a file name",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the name is too long: use a shorter path",
    errno.EMFILE: "too many open files: close other programs or raise the limit (ulimit -n)",
}


def check_output_path(path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written.

    A missing folder is fine (writers create it, like ``mkdir -p``); a "folder" that is a
    file, or a folder this user cannot write, is a one-line :class:`T1ToT2Error`.
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise T1ToT2Error(f"'{ancestor}' is a broken link: fix the output path")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise T1ToT2Error(f"cannot write '{path}': '{ancestor}' is not a folder: choose an output inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise T1ToT2Error(f"cannot write '{path}': folder '{ancestor}' is not writable: choose a folder you can write to")


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError`` (disk full, permission...): the file, the problem, what to do."""
    advice = _OS_ERROR_ADVICE.get(exc.errno) or f"{exc.strerror or exc.__class__.__name__}: check the path, the disk and its permissions"
    where = exc.filename if exc.filename is not None else None
    return f"cannot write '{where}': {advice}" if where is not None else advice


def run(args) -> int:
    """Run the parsed command ``args``: check its outputs' folders, then call it (errors propagate)."""
    for name in OUTPUT_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            check_output_path(value)
    return int(args.func(args) or 0)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # A cancel (SIGINT, SIGTERM, or CTRL_BREAK on Windows) unwinds the command so its temporary files are removed.
        with interrupt_on_termination():
            return run(args)
    except T1ToT2Error as exc:
        print(f"t1tot2 {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"t1tot2 {args.command}: error: '{exc.filename or exc}' already exists: choose another output or pass --overwrite", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"t1tot2 {args.command}: error: out of memory: crop or downsample the volume, lower --batch, or use a machine with more memory", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"t1tot2 {args.command}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t1tot2 {args.command}: interrupted; no partial output was left under a final name", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
