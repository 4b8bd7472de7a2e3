"""3D Slicer module: synthesize a T2 SPACE volume from a T1 VIBE volume, compare, profile, export.

A shell over T1ToT2Lib.slicer.synthesis_module (SynthesisLogic, SynthesisPanel), imported on first use only:
torch is never imported when the module loads; it is checked and, with the user's consent, installed on first use.
"""

import os
import pathlib
import platform
import shutil
import unittest
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsLineNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

PLANE_CHOICES = ["auto", "axial", "coronal", "sagittal", "fuse"]


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
PRECISION_CHOICES = ["fp32", "bf16", "fp16"]
#: Orientation of the three compare views; "auto": the model's plane when it was trained on one, else coronal.
COMPARE_ORIENTATION_CHOICES = ["auto", "axial", "coronal", "sagittal"]
#: T1ToT2Lib.core.about.REPOSITORY_URL (the module loads without the library); test_slicer_static checks the copies.
DOCUMENTATION_URL = "https://github.com/T1ToT2/SlicerT1ToT2#readme"
POLL_INTERVAL_MS = 200


class T1ToT2Synthesis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("T1 to T2 Synthesis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["T1ToT2 contributors (see the repository's commit history)"]
        self.parent.helpText = _(
            "Makes a <b>synthetic</b> T2 SPACE volume from a T1 VIBE volume with a trained Pix2Pix, CycleGAN "
            "or UNIT network, shows it beside the acquired T2 with a difference map, samples line profiles, "
            "computes NRMSE/PSNR/SSIM and exports a DICOM series flagged as derived and synthetic.<br>"
            "<b>Synthetic images are for research only, not for diagnosis.</b> "
            "The bundled demo model was trained on a computer-generated hand phantom; to try it, load "
            "<i>T1ToT2 hand phantom</i> in the Sample Data module and click <i>Synthesize T2</i>.<br>"
            "Documentation: <a href=\"{url}\">{url}</a>"
        ).format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "Method after J. A. Grant-Jacob, C. Everitt, R. W. Eason, L. J. King and B. Mills, \"Exploring sequence "
            "transformation in magnetic resonance imaging via deep learning using data from a single asymptomatic "
            "patient\", J. Phys. Commun. 5, 095015 (2021)."
        )
        # Sample Data lists the phantom once the application has started (the template's pattern).
        slicer.app.connect("startupCompleted()", registerSampleData)


#: The phantom's volumes as Sample Data lists them; generated on click, nothing is downloaded.  SampleDataSource
#: checks one uri/fileName/nodeName per volume (SampleData.py:205 at 5.8/5.10): each gets a placeholder URI.
PHANTOM_SAMPLE_NODE_NAMES = ["Phantom right t1", "Phantom right t2", "Phantom right labels"]


def registerSampleData():
    """Offer the hand phantom (right hand T1, T2, tissue labels as a label map) in the Sample Data module."""
    import SampleData

    kinds = ("t1", "t2", "labels")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="T1ToT2", sampleName="T1ToT2 hand phantom", nodeNames=PHANTOM_SAMPLE_NODE_NAMES,
        uris=[f"t1tot2-phantom://right/{kind}" for kind in kinds], fileNames=[f"phantom_right_{kind}.nrrd" for kind in kinds],
        loadFiles=[False] * 3, customDownloader=downloadPhantomSample,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "T1ToT2Synthesis.png"))


def downloadPhantomSample(source=None):
    """Sample Data's button calls this with its source: install what the phantom needs (asking first; never
    PyTorch), generate it and show the T1 in the slice views."""
    logic = T1ToT2SynthesisLogic()
    with slicer.util.tryWithErrorDisplay(_("Could not generate the hand phantom."), waitCursor=True):
        if not logic.ensureDependencies(askConfirmation=True, needTorch=False):
            return []
        nodes = logic.loadPhantomSampleData()
        slicer.util.setSliceViewerLayers(background=nodes[0], label=nodes[2], fit=True)
        return nodes


@parameterNodeWrapper
class T1ToT2SynthesisParameterNode:
    inputT1: vtkMRMLScalarVolumeNode
    useBundledModel: bool = True
    modelPath: pathlib.Path
    plane: Annotated[str, Choice(PLANE_CHOICES)] = "auto"
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    precision: Annotated[str, Choice(PRECISION_CHOICES)] = "fp32"
    acquiredT2: vtkMRMLScalarVolumeNode
    syntheticT2: vtkMRMLScalarVolumeNode
    profileLine: vtkMRMLMarkupsLineNode
    metricsTable: vtkMRMLTableNode
    compareOrientation: Annotated[str, Choice(COMPARE_ORIENTATION_CHOICES)] = "auto"
    showErrorMap: bool = False


class T1ToT2SynthesisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui and the parameter node; every button runs T1ToT2Lib.slicer.synthesis_module.SynthesisPanel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self.panel = self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/T1ToT2Synthesis.ui"))
        self.layout.addWidget(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        timer = qt.QTimer()
        timer.setInterval(POLL_INTERVAL_MS)
        self.setupPanel(slicer.util.childWidgetVariables(uiWidget), timer)
        timer.connect("timeout()", self.panel.jobs.poll)
        self.ui.modelPathLineEdit.filters = self.ui.modelPathLineEdit.Files
        self.ui.modelPathLineEdit.nameFilters = [_("Model files (*.safetensors *.onnx)")]
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for button, slot in ((self.ui.synthesizeButton, self.panel.synthesize), (self.ui.compareButton, self.panel.compare),
                             (self.ui.lineProfileButton, self.panel.profile), (self.ui.metricsButton, self.panel.computeMetrics),
                             (self.ui.exportDicomButton, self.onExportDicomButton), (self.ui.useLastTrainedButton, self.panel.useLastTrained)):
            button.connect("clicked(bool)", lambda checked=False, slot=slot: self._run(slot))
        self.ui.cancelButton.connect("clicked(bool)", lambda checked=False: self.panel.jobs.cancel())
        self.initializeParameterNode()

    def setupPanel(self, ui, timer) -> None:
        """The library panel over these widgets (the tests call this with stand-in widgets and timer)."""
        from T1ToT2Lib.slicer.synthesis_module import SynthesisPanel

        self.ui, self.logic = ui, T1ToT2SynthesisLogic()
        self.panel = SynthesisPanel(ui, self.logic, timer)
        self.ui.bundledModelLabel.text = self.logic.bundledModelDescription()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

    def _run(self, slot) -> None:
        with slicer.util.tryWithErrorDisplay(_("T1 to T2 Synthesis failed."), waitCursor=True):
            slot()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.panel:
            self.panel.stopLineProfile()
            self.panel.jobs.stop()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        from T1ToT2Lib.slicer import scene

        scene.leave_comparison(slicer.mrmlScene)  # the user's layout comes back; its views were never touched
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.sceneClosing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.panel.parametersShown()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateButtons)
        self._parameterNode = self.panel.parameters = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.panel.updateButtons)
            self.panel.updateButtons()

    def onExportDicomButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the synthetic T2 DICOM series"))
        if folder:
            self.panel.exportDicom(folder)



class T1ToT2SynthesisLogic(ScriptedLoadableModuleLogic):
    """The module's logic: T1ToT2Lib.slicer.synthesis_module.SynthesisLogic, reached through this object
    (scripts and tests call e.g. ``T1ToT2SynthesisLogic().synthesize(t1Node, modelPath)``)."""

    def getParameterNode(self):
        return T1ToT2SynthesisParameterNode(super().getParameterNode())

    @property
    def library(self):
        if "_library" not in self.__dict__:
            from T1ToT2Lib.slicer.synthesis_module import SynthesisLogic

            self.__dict__["_library"] = SynthesisLogic(pathlib.Path(__file__).resolve().parent, slicer.app.settings(),
                                                       parameter_node=self.getParameterNode)
        return self.__dict__["_library"]

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.library, name)


class T1ToT2SynthesisTest(ScriptedLoadableModuleTest):
    def setUp(self):
        # ctest runs each test_* method with setUp (loadTestsFromName), never runTest: the skip lives here.
        from T1ToT2Lib.core import dependencies

        missing = dependencies.missing_dependencies()
        if missing:
            raise unittest.SkipTest(f"T1ToT2Synthesis self-test skipped: not installed: {', '.join(missing)}. "
                                    "Press Synthesize T2 in the module once to install them.")
        slicer.mrmlScene.Clear()

    def runTest(self):
        try:  # Reload and Test calls runTest directly (ScriptedLoadableModule.py:72-85): a skip is said, not raised
            self.setUp()
        except unittest.SkipTest as skip:
            return self.delayDisplay(str(skip))
        self.test_synthesize_phantom_with_bundled_model()

    def test_synthesize_phantom_with_bundled_model(self):
        from T1ToT2Lib.slicer import selftests

        selftests.synthesis_on_the_phantom(self, T1ToT2SynthesisLogic())
