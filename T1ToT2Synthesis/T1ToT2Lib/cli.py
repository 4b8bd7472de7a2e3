"""The ``t1tot2`` command line.

Each command lives in the module of its concern, which exposes
``register_cli(subparsers)``: it adds its sub-command(s) and sets
``func=callable(args) -> int | None`` as the parser default.  This file only
collects them and turns :class:`T1ToT2Error` into a one-line message.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .atomic import interrupt_on_termination
from .errors import T1ToT2Error

#: Modules that register sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (
    "phantom",
    "align",
    "train",
    "synthesize",
    "metrics",
    "analysis",
    "compare",
    "dicom",
    "demo",
    "bench",
    "onnx_engine",
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
            raise
        module.register_cli(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # A cancel (SIGINT, SIGTERM, or CTRL_BREAK on Windows) unwinds the command so its temporary files are removed.
        with interrupt_on_termination():
            return int(args.func(args) or 0)
    except T1ToT2Error as exc:
        print(f"t1tot2 {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"t1tot2 {args.command}: error: '{exc}' already exists: choose another output or pass --overwrite", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t1tot2 {args.command}: interrupted; no partial output was left under a final name", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
