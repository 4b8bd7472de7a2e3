"""3D Slicer module: train a T1 -> T2 network on paired volumes and watch it learn.

A shell over T1ToT2Lib.slicer.training_module (TrainingLogic, TrainingPanel), installed by the Synthesis
module and imported on first use: training runs ``t1tot2 train --progress json`` in a separate process and
the panel polls its events with a timer (loss chart, per-epoch validation table), staying responsive.
"""

import os
import pathlib
import platform
import shutil
import tempfile
import unittest
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

#: The recommended refiner first (T1ToT2Lib.training.presets.RECOMMENDED), then the paper's GANs.
MODEL_CHOICES = ["refiner", "pix2pix", "cyclegan", "unit"]


def _offeredDevices():
    """auto, CUDA only with an NVIDIA driver, MPS only on Apple silicon with macOS 12.3+, cpu: a copy of
    T1ToT2Lib.core.dependencies.this_machines_devices (the library is not imported at load; a test compares them)."""
    system, machine = platform.system(), platform.machine().lower()
    nvidia = bool(shutil.which("nvidia-smi")) or (system == "Linux" and os.path.exists("/proc/driver/nvidia/version")) or (
        system == "Windows" and os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll")))
    release = tuple(int(p) for p in (platform.mac_ver()[0] or "0").split(".")[:2] if p.isdigit())
    return (["auto"] + (["cuda"] if nvidia and system in ("Linux", "Windows") else [])
            + (["mps"] if system == "Darwin" and machine in ("arm64", "aarch64") and release >= (12, 3) else []) + ["cpu"])


DEVICE_CHOICES = _offeredDevices()
UPSAMPLE_CHOICES = ["transpose", "resize"]
#: T1ToT2Lib.core.about.REPOSITORY_URL (the module loads without the library); test_slicer_static checks the copies.
DOCUMENTATION_URL = "https://github.com/T1ToT2/SlicerT1ToT2#readme"
POLL_INTERVAL_MS = 250


class T1ToT2Training(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("T1 to T2 Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = ["T1ToT2Synthesis"]  # installs the T1ToT2Lib library this module uses
        self.parent.contributors = ["T1ToT2 contributors (see the repository's commit history)"]
        self.parent.helpText = _(
            "Trains a Pix2Pix, CycleGAN or UNIT network that turns T1 VIBE slices into T2 SPACE slices, on a "
            "paired T1/T2 volume (the built-in hand phantom, or your own scans: tick <i>Align T2 to T1</i> when "
            "the T2 has its own grid, and <i>Show aligned pair</i> to check the registration; the refiner also trains on "
            "additional pairs, a pairs CSV and rendered phantom subjects), in a background "
            "process: live loss chart, per-epoch validation metrics, difference map and line profile. "
            "The model is saved as one .safetensors file and offered in the T1 to T2 Synthesis module.<br>"
            "<b>Images made by these models are synthetic: research only, not for diagnosis.</b><br>"
            "Documentation: <a href=\"{url}\">{url}</a>"
        ).format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "Method after J. A. Grant-Jacob, C. Everitt, R. W. Eason, L. J. King and B. Mills, \"Exploring sequence "
            "transformation in magnetic resonance imaging via deep learning using data from a single asymptomatic "
            "patient\", J. Phys. Commun. 5, 095015 (2021)."
        )


@parameterNodeWrapper
class T1ToT2TrainingParameterNode:
    trainT1: vtkMRMLScalarVolumeNode
    trainT2: vtkMRMLScalarVolumeNode
    validationT1: vtkMRMLScalarVolumeNode
    validationT2: vtkMRMLScalarVolumeNode
    #: Train with ``--align``: each T2 on its own grid is registered (rigid, mutual information) onto its T1's grid.
    alignT2: bool = False
    # Several pairs (the refiner): further T1/T2 nodes (Add/Remove pair), a pairs CSV, rendered phantom subjects.
    extraTrainT1: list[vtkMRMLScalarVolumeNode]
    extraTrainT2: list[vtkMRMLScalarVolumeNode]
    pairsCsvPath: pathlib.Path
    phantomSubjects: Annotated[int, WithinRange(0, 1000)] = 0
    randomizeAcquisition: bool = False
    modelType: Annotated[str, Choice(MODEL_CHOICES)] = "refiner"
    generatorWidth: Annotated[int, WithinRange(4, 256)] = 64
    residualBlocks: Annotated[int, WithinRange(1, 16)] = 9
    contextSlices: Annotated[int, WithinRange(1, 7)] = 1
    upsampling: Annotated[str, Choice(UPSAMPLE_CHOICES)] = "transpose"
    planeAxial: bool = True
    planeCoronal: bool = True
    planeSagittal: bool = True
    # The refiner's epochs (test_slicer_modules checks them against T1ToT2Lib.training.presets); choosing a
    # model proposes its epochs, rate, batch, context and up-sampling from the presets (TrainingSettings).
    epochs: Annotated[int, WithinRange(1, 1000)] = 8
    learningRate: Annotated[float, WithinRange(1e-6, 1e-1)] = 2e-4
    batchSize: Annotated[int, WithinRange(1, 256)] = 1
    maxStepsPerEpoch: Annotated[int, WithinRange(0, 100000)] = 0
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    outputModelPath: pathlib.Path
    validationTable: vtkMRMLTableNode


class T1ToT2TrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui and the parameter node; every button runs T1ToT2Lib.slicer.training_module.TrainingPanel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self.panel = self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/T1ToT2Training.ui"))
        self.layout.addWidget(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)
        self.setupPanel(slicer.util.childWidgetVariables(uiWidget), timer)
        timer.connect("timeout()", self.panel.jobs.poll)
        # A file to write: Browse opens a save dialog that accepts a new name.
        self.ui.outputModelPathLineEdit.filters = self.ui.outputModelPathLineEdit.Files | self.ui.outputModelPathLineEdit.Writable
        self.ui.outputModelPathLineEdit.nameFilters = [_("Model files (*.safetensors)")]
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for button, slot in ((self.ui.generatePhantomButton, self.panel.generatePhantom),
                             (self.ui.showAlignedButton, self.panel.showAligned), (self.ui.evaluateButton, self.panel.evaluate),
                             (self.ui.startButton, lambda: self.panel.startTraining(resume=False)),
                             (self.ui.resumeButton, lambda: self.panel.startTraining(resume=True))):
            button.connect("clicked(bool)", lambda checked=False, slot=slot: self._run(slot))
        self.ui.cancelButton.connect("clicked(bool)", lambda checked=False: self.panel.jobs.cancel())
        self.ui.addPairButton.connect("clicked(bool)", lambda checked=False: self.panel.addPair(
            self.ui.extraT1Selector.currentNode(), self.ui.extraT2Selector.currentNode()))
        self.ui.removePairButton.connect("clicked(bool)", lambda checked=False: self.panel.removePair(
            self.ui.extraPairsListWidget.currentRow))
        self.ui.pairsCsvPathLineEdit.nameFilters = [_("Pairs CSV (*.csv)")]
        self.initializeParameterNode()

    def setupPanel(self, ui, timer) -> None:
        """The library panel over these widgets (the tests call this with stand-in widgets and timer)."""
        from T1ToT2Lib.slicer.training_module import TrainingPanel

        self.ui, self.logic = ui, T1ToT2TrainingLogic()
        self.panel = TrainingPanel(ui, self.logic, timer)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

    def _run(self, slot) -> None:
        with slicer.util.tryWithErrorDisplay(_("T1 to T2 Training failed."), waitCursor=True):
            slot()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.panel:
            self.panel.jobs.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        from T1ToT2Lib.slicer import scene

        scene.leave_comparison(slicer.mrmlScene)  # the user's layout comes back; its views were never touched
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        # The job's nodes and parameter node are about to go: stop it rather than poll into a closed scene.
        self.panel.sceneClosing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateButtons)
        self.panel.setParameters(self._parameterNode)


class T1ToT2TrainingLogic(ScriptedLoadableModuleLogic):
    """The module's logic: T1ToT2Lib.slicer.training_module.TrainingLogic, reached through this object."""

    def getParameterNode(self):
        return T1ToT2TrainingParameterNode(super().getParameterNode())

    @property
    def library(self):
        if "_library" not in self.__dict__:
            from T1ToT2Lib.slicer.training_module import TrainingLogic

            folder = getattr(slicer.app, "defaultScenePath", None) or tempfile.gettempdir()
            self.__dict__["_library"] = TrainingLogic(slicer.app.settings(), folder)
        return self.__dict__["_library"]

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.library, name)


class T1ToT2TrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        # ctest runs each test_* method with setUp (loadTestsFromName), never runTest: the skip lives here.
        from T1ToT2Lib.core import dependencies

        missing = dependencies.missing_dependencies()
        if missing:
            raise unittest.SkipTest(f"T1ToT2Training self-test skipped: not installed: {', '.join(missing)}. "
                                    "Press Start in the module once to install them.")
        slicer.mrmlScene.Clear()

    def runTest(self):
        try:  # Reload and Test calls runTest directly (ScriptedLoadableModule.py:72-85): a skip is said, not raised
            self.setUp()
        except unittest.SkipTest as skip:
            return self.delayDisplay(str(skip))
        self.test_train_one_tiny_epoch_on_phantom()

    def test_train_one_tiny_epoch_on_phantom(self):
        from T1ToT2Lib.slicer import selftests

        selftests.training_one_tiny_epoch(self, T1ToT2TrainingLogic())
