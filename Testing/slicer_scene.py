"""A real, headless Slicer MRML scene from slicer-core, for tests and scripts.

There is no ``slicer.app`` outside the Slicer application, so this builds what
the application would: a ``vtkMRMLScene``, a ``vtkSlicerApplicationLogic``,
the colour logic registered as "Colors" (volume loading looks it up by that
name), the volumes logic, and ``slicer.mrmlScene`` pointing at the scene so
``slicer.util`` helpers find it.  Same set-up as trame-slicer's ``SlicerApp``,
minus views.
"""

from __future__ import annotations

import contextlib

import pytest


def headless_scene():
    """Return a new scene with its application logic; also assigned to ``slicer.mrmlScene``."""
    import slicer
    from slicer import (
        vtkMRMLColorLogic,
        vtkMRMLCrosshairNode,
        vtkMRMLScene,
        vtkMRMLSliceNode,
        vtkSlicerApplicationLogic,
        vtkSlicerVolumesLogic,
    )
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = vtkMRMLScene()
    crosshair = vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    app_logic = vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    logics = {"Colors": vtkMRMLColorLogic(), "Volumes": vtkSlicerVolumesLogic()}
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    logics["Colors"].AddDefaultColorNodes()
    vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

    # The application logic holds its module logics weakly: keep them alive as long as the scene.
    scene._t1tot2_logics = (app_logic, logics)
    slicer.mrmlScene = scene
    return scene


@pytest.fixture
def mrml_scene():
    """A fresh headless scene per test (skips the test only if slicer-core is not installed)."""
    pytest.importorskip("slicer")
    import slicer

    previous = getattr(slicer, "mrmlScene", None)
    scene = headless_scene()
    yield scene
    with contextlib.suppress(Exception):
        scene.Clear(True)
    slicer.mrmlScene = previous
