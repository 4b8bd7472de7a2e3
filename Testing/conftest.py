"""Shared pytest set-up: keep torch to the machine's two cores and make runs repeatable."""

import os

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def pytest_configure(config):
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def oblique_direction(angles_deg=(20.0, -35.0, 50.0)) -> np.ndarray:
    """A proper rotation (det +1) well away from any axis-aligned orientation."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
