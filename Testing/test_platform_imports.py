"""The library imports and runs where POSIX-only modules do not exist (Windows).

A child process first imports the third-party packages as they are (they have Windows code paths of their own),
then makes ``resource``, ``fcntl``, ``termios``, ``pwd`` and ``grp`` unimportable and reports
``sys.platform == "win32"``; ``os.name`` stays "posix" because ``pathlib`` picks its path flavour from it and a
faked value breaks the interpreter rather than the library.  In that child, every module of the library is imported,
``t1tot2 --help`` is printed and a small volume is synthesized with the bundled model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POSIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp")

CHILD = textwrap.dedent(
    r'''
    import importlib, importlib.abc, json, pkgutil, sys, io, contextlib
    import numpy, scipy, scipy.ndimage, torch, SimpleITK, safetensors, sklearn.ensemble, skimage, pydicom  # third party, real platform

    POSIX_ONLY = {posix_only!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in POSIX_ONLY:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    for name in POSIX_ONLY:
        sys.modules.pop(name, None)
    sys.meta_path.insert(0, Refuse())
    sys.platform = "win32"

    import T1ToT2Lib
    imported, failed = [], {{}}
    for info in pkgutil.walk_packages(T1ToT2Lib.__path__, "T1ToT2Lib."):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as exc:
            failed[info.name] = f"{{type(exc).__name__}}: {{exc}}"

    from T1ToT2Lib.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["--help"])
        except SystemExit as exc:
            help_code = exc.code
    code = main(["synthesize", {model!r}, {t1!r}, {out_path!r}])
    print(json.dumps({{"imported": imported, "failed": failed, "help_code": help_code, "help": out.getvalue(),
                      "synthesize_code": code, "resource_loaded": "resource" in sys.modules}}))
    '''
)


def test_library_imports_and_runs_without_posix_modules(tmp_path):
    import SimpleITK as sitk

    t1 = np.random.default_rng(0).random((12, 24, 20), dtype=np.float32) * 300
    image = sitk.GetImageFromArray(t1)
    image.SetSpacing((1.5, 1.5, 1.5))
    sitk.WriteImage(image, str(tmp_path / "t1.nii.gz"))
    script = CHILD.format(posix_only=POSIX_ONLY, model=str(ROOT / "Resources" / "demo_model.safetensors"),
                          t1=str(tmp_path / "t1.nii.gz"), out_path=str(tmp_path / "t2.nii.gz"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    assert len(report["imported"]) > 20
    assert report["help_code"] == 0
    for command in ("synthesize", "train", "align", "evaluate", "bench", "phantom"):
        assert command in report["help"], f"'{command}' missing from t1tot2 --help"
    assert report["synthesize_code"] == 0, result.stderr[-2000:]
    assert not report["resource_loaded"]
    synthetic = sitk.ReadImage(str(tmp_path / "t2.nii.gz"))
    assert synthetic.GetSize() == image.GetSize() and synthetic.GetSpacing() == image.GetSpacing()


def test_one_missing_dependency_leaves_the_other_commands_working(tmp_path):
    """A command whose module cannot import (here: bench needs a package that is absent) says so in one line,
    exit code 2, and every other command still parses and runs."""
    script = textwrap.dedent(
        """
        import importlib.abc, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "T1ToT2Lib.research.bench":
                    raise ModuleNotFoundError("No module named 'some_missing_package'", name="some_missing_package")
        sys.meta_path.insert(0, Refuse())
        from T1ToT2Lib.cli import main
        main(["phantom", "--help"])  # argparse exits 0 after printing the usage
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "usage: t1tot2 phantom" in result.stdout, result.stderr[-2000:]
    script_bench = script.replace('main(["phantom", "--help"])', 'sys.exit(main(["bench"]))')
    result = subprocess.run([sys.executable, "-c", script_bench], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "some_missing_package" in lines[0] and "Traceback" not in result.stderr
