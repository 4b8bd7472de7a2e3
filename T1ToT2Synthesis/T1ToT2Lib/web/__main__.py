"""``python -m T1ToT2Lib.web serve ...``: the same ``serve`` command as ``t1tot2 serve``."""

import argparse
import sys

from . import register_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m T1ToT2Lib.web")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from ..core.errors import T1ToT2Error

    try:
        return int(args.func(args) or 0)
    except T1ToT2Error as exc:
        print(f"t1tot2 serve: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
