"""Child-process entry of the T1ToT2 Slicer modules: ``PYTHON t1tot2_child.py ARGS`` runs ``t1tot2 ARGS``.

Shipped in the Synthesis module's ``Resources`` folder, which Slicer installs
beside the module file and its ``T1ToT2Lib`` package; this script puts that
folder (its own parent's parent) first on ``sys.path``, so the child finds the
library whatever the launcher's own path is.  It replaces a ``python -c``
bootstrap, whose quoting differs between shells and platforms.

Before and after the command it prints two JSON lines on stdout, which
``T1ToT2Lib.slicer.jobs.BackgroundJob`` reads: ``{"event": "process", "pid": N}``
(this Python process, which a launcher such as PythonSlicer may have started
as its own child) and ``{"event": "exit", "code": N}``.  So the job reports
the real process's state and exit code, and cancels it even if the launcher
is gone.
"""

import json
import os
import sys
from pathlib import Path


def _emit(event: dict) -> None:
    try:
        print(json.dumps(event), flush=True)
    except (OSError, ValueError):  # the parent closed the pipe: nothing left to report to
        pass


def run(argv) -> int:
    library_parent = str(Path(__file__).resolve().parents[1])
    # sys.path[0] is this script's folder (Resources): replace it with the folder holding T1ToT2Lib.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path[0] = library_parent
    elif library_parent not in sys.path:
        sys.path.insert(0, library_parent)
    _emit({"event": "process", "pid": os.getpid()})
    code = 1
    try:
        from T1ToT2Lib.cli import main

        code = main(argv)
    except SystemExit as exc:  # argparse errors and --version
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    finally:
        _emit({"event": "exit", "code": int(code or 0)})
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
