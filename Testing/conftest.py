"""Shared pytest set-up: keep torch to the machine's two cores, make runs repeatable, and never skip in CI.

In CI (the environment variable ``CI`` set, as ``.ci/run`` and most CI services do) every tool the suite
uses is installed by ``scripts/setup.sh --system``, so a test that skips because a tool or package is
missing (Chromium, dciodvfy, dcmdump, playwright, slicer, onnxruntime...) is a broken environment, not
a pass: such skips are turned into failures.  Skips for other reasons (a GPU present, another OS) stay.
"""

import os
import re


def _threads() -> int:
    """Threads per test process: the cores shared among pytest-xdist's workers (``make test`` runs one per core)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers))


# Before numpy, torch or scikit-learn load their thread pools (OpenBLAS, OpenMP read these once); children inherit them.
# Two workers with two threads each on two cores would spin against each other in OpenMP's barriers.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = str(_threads())

import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(_threads())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def few_trees(monkeypatch):
    """Small tree ensembles on a small voxel sample, for one pair and for several: for tests of what is trained,
    written and shown, not of the trees' quality."""
    from T1ToT2Lib.networks import feature_regression
    from T1ToT2Lib.training import prior

    monkeypatch.setitem(feature_regression.DEFAULT_FIT, "max_iter", 8)
    monkeypatch.setitem(feature_regression.DEFAULT_FIT, "max_samples", 20_000)
    monkeypatch.setitem(prior.PAIRS_FIT, "max_iter", 8)


def cropped(volume, k=slice(None), j=slice(None), i=slice(None)):
    """The sub-volume ``array[k, j, i]`` at its place in RAS: same axes and spacing, the corner moved to voxel
    (i.start, j.start, k.start); the acquisition it came from (its meta) goes with it."""
    from T1ToT2Lib.core.volume import Volume

    matrix = volume.ijk_to_ras.copy()
    matrix[:, 3] = volume.ijk_to_ras @ np.array([i.start or 0, j.start or 0, k.start or 0, 1.0])
    return Volume(np.ascontiguousarray(volume.array[k, j, i]), matrix, dict(volume.meta))


def oblique_direction(angles_deg=(20.0, -35.0, 50.0)) -> np.ndarray:
    """A proper rotation (det +1) well away from any axis-aligned orientation."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


# --- in CI a missing tool is a failure, not a skip ------------------------------------------------
#: Words in a skip reason that mean "a tool or package is missing" (case-insensitive).
MISSING_TOOL = re.compile(
    r"could not import|no module named|not installed|unavailable|not found|missing|"
    r"chromium|playwright|dciodvfy|dcmdump|dicom3tools|dcmtk|onnx|slicer|psutil|hypothesis|\begl\b",
    re.IGNORECASE,
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def is_missing_tool_skip(reason: str) -> bool:
    """Whether a skip reason says that a tool or package is missing (what CI must have)."""
    return bool(MISSING_TOOL.search(reason or ""))


def _fail_in_ci(report) -> None:
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report.longrepr)
        if is_missing_tool_skip(reason):
            report.outcome = "failed"
            report.longrepr = f"CI=true but this test skipped for a missing tool: {reason.removeprefix('Skipped: ')} (scripts/setup.sh --system installs it)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip("slicer") skips at collection
    _fail_in_ci(outcome.get_result())
