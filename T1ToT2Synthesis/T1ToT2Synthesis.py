"""3D Slicer module: synthesize a T2 SPACE volume from a T1 VIBE volume, compare, profile, export.

Thin by design: the widget binds a parameter node and the logic calls
T1ToT2Lib, where all the work is done (and tested outside Slicer).  Torch is
never imported when the module loads; it is checked and, with the user's
consent, installed on first use.
"""

import os
import pathlib
import platform
import shutil
import tempfile
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsLineNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

PLANE_CHOICES = ["auto", "axial", "coronal", "sagittal", "fuse"]


def _plausibleDevices():
    """CUDA on Linux and Windows, MPS on Apple-silicon macOS (as T1ToT2Lib.core.dependencies.plausible_devices)."""
    system, machine = platform.system(), platform.machine().lower()
    return (["auto"] + (["cuda"] if system in ("Linux", "Windows") else [])
            + (["mps"] if system == "Darwin" and machine in ("arm64", "aarch64") else []) + ["cpu"])


DEVICE_CHOICES = _plausibleDevices()
PRECISION_CHOICES = ["fp32", "bf16", "fp16"]
#: Orientation of the three compare views; "auto": the model's plane when it was trained on one, else coronal.
COMPARE_ORIENTATION_CHOICES = ["auto", "axial", "coronal", "sagittal"]
#: Application setting holding the last model the Training module wrote, offered here.
LAST_TRAINED_MODEL_SETTING = "T1ToT2/LastTrainedModel"
#: The last trained model this module has already picked up (so a user's later choice is not overridden).
LAST_ADOPTED_MODEL_SETTING = "T1ToT2/LastAdoptedModel"
#: REPOSITORY URL (the project's one constant, T1ToT2Lib.core.about.REPOSITORY_URL; repeated here because the
#: module file loads without the library). Testing/test_slicer_static.py checks that the copies agree.
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


#: The phantom's three volumes as Sample Data lists them.  Nothing is downloaded: they are generated when the
#: user clicks the entry.  Slicer's SampleDataSource still checks that uris, fileNames and nodeNames have one
#: entry per volume (SampleData.py:205 at 5.8/5.10), so each gets a descriptive placeholder URI.
PHANTOM_SAMPLE_NODE_NAMES = ["Phantom right t1", "Phantom right t2", "Phantom right labels"]


def registerSampleData():
    """Offer the hand phantom (right hand T1, T2, tissue labels as a label map) in the Sample Data module."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="T1ToT2",
        sampleName="T1ToT2 hand phantom",
        uris=[f"t1tot2-phantom://right/{kind}" for kind in ("t1", "t2", "labels")],
        fileNames=["phantom_right_t1.nrrd", "phantom_right_t2.nrrd", "phantom_right_labels.nrrd"],
        nodeNames=PHANTOM_SAMPLE_NODE_NAMES,
        loadFiles=[False, False, False],
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "T1ToT2Synthesis.png"),
        customDownloader=downloadPhantomSample,
    )


def downloadPhantomSample(source=None):
    """Sample Data's button calls this with its source: install what the phantom needs (asking first),
    generate it and show the T1 in the slice views."""
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
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobT1Node = None
        self._jobOutput = None
        self._jobTimer = None
        self._lineProfile = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/T1ToT2Synthesis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = T1ToT2SynthesisLogic()
        self.ui.bundledModelLabel.text = self.logic.bundledModelDescription()
        self.ui.modelPathLineEdit.filters = self.ui.modelPathLineEdit.Files
        self.ui.modelPathLineEdit.nameFilters = [_("Model files (*.safetensors *.onnx)")]
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(POLL_INTERVAL_MS)
        self._jobTimer.connect("timeout()", self.onJobTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.synthesizeButton.connect("clicked(bool)", self.onSynthesizeButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.lineProfileButton.connect("clicked(bool)", self.onLineProfileButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.ui.metricsButton.connect("clicked(bool)", self.onMetricsButton)
        self.ui.useLastTrainedButton.connect("clicked(bool)", self.onUseLastTrainedButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._stopLineProfile()
        self.stopJob()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # The T1 the job reads and the node it would fill are about to go: stop it.
        self.stopJob()
        self._stopLineProfile()
        self._lineProfile = None
        self.setParameterNode(None)

    def stopJob(self) -> None:
        """Cancel a running synthesis and forget it (scene close, module cleanup)."""
        job, self._job = self._job, None
        if self._jobTimer is not None:
            self._jobTimer.stop()
        if job is not None and job.is_running:
            job.cancel(timeout=10)
        if self._jobOutput:
            shutil.rmtree(self._jobOutput, ignore_errors=True)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if self.logic.adoptLastTrainedModel(self._parameterNode):
            self.ui.statusLabel.text = _("Using the model just trained in T1 to T2 Training.")
        if not self._parameterNode.inputT1:
            # The first grey-scale volume (label maps are scalar volume nodes too, but never a T1).
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                self._parameterNode.inputT1 = volumes[0]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None and self._job.is_running
        hasModel = bool(p and (p.useBundledModel and self.logic.bundledModelPath() or (not p.useBundledModel and p.modelPath and p.modelPath.is_file())))
        self.ui.synthesizeButton.enabled = bool(p and p.inputT1 and hasModel and not running)
        self.ui.synthesizeButton.toolTip = _("Make a synthetic T2 from the T1 volume") if self.ui.synthesizeButton.enabled else _(
            "Select a T1 volume and a model file")
        self.ui.modelPathLineEdit.enabled = bool(p and not p.useBundledModel)
        hasSynthetic = bool(p and p.syntheticT2)
        self.ui.compareButton.enabled = hasSynthetic
        hasErrorMap = bool(hasSynthetic and p.syntheticT2.GetNodeReference("T1ToT2.ErrorMap"))
        self.ui.showErrorMapCheckBox.enabled = hasErrorMap
        self.ui.showErrorMapCheckBox.toolTip = _(
            "Show the synthetic T2's error map (how far each voxel can be trusted) instead of the difference map"
        ) if hasErrorMap else _("This synthetic T2 has no error map")
        self.ui.lineProfileButton.enabled = hasSynthetic
        self.ui.exportDicomButton.enabled = hasSynthetic
        self.ui.metricsButton.enabled = bool(hasSynthetic and p.acquiredT2)

    # --- synthesis in a background process -------------------------------------------
    def onSynthesizeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start the synthesis."), waitCursor=True):
            p = self._parameterNode
            # An exported ONNX model needs only ONNX Runtime (a small install), not PyTorch.
            if not self.logic.ensureDependencies(askConfirmation=True, modelPath=self.logic.modelPathFromParameters(p)):
                return
            self._jobOutput = tempfile.mkdtemp(prefix="T1ToT2-")
            self._jobT1Node = p.inputT1
            self._job = self.logic.startSynthesisJob(
                p.inputT1, self.logic.modelPathFromParameters(p), p.plane, p.device, p.precision, self._jobOutput)
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            self.ui.statusLabel.text = _("Synthesizing...")
            self._jobTimer.start()
            self._updateButtons()

    def onJobTimer(self) -> None:
        job = self._job
        if job is None:
            self._jobTimer.stop()
            return
        for event in job.poll():
            if event.get("event") == "slices" and event.get("total"):
                self.ui.progressBar.setValue(int(100 * event["done"] / event["total"]))
        if job.is_running:
            return
        self._jobTimer.stop()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self._job = None
        try:
            if job.cancelled:
                self.ui.statusLabel.text = _("Cancelled: no synthetic volume was made.")
                return
            with slicer.util.tryWithErrorDisplay(_("Synthesis failed."), waitCursor=True):
                node = self._finishOrShowLog(job)
                if node is not None:
                    self._parameterNode.syntheticT2 = node
                    slicer.util.setSliceViewerLayers(background=node, fit=True)
                    # The synthesis's notes (e.g. the T1 resampled to the model's voxel size) follow the result.
                    self.ui.statusLabel.text = " ".join(filter(None, [
                        _("Synthetic T2 '{name}' made (not for diagnosis).").format(name=node.GetName()),
                        self.logic.synthesisNotesText(node)]))
                    if self._parameterNode.acquiredT2:
                        self.onMetricsButton()
        finally:
            shutil.rmtree(self._jobOutput, ignore_errors=True)
            self._updateButtons()

    def _finishOrShowLog(self, job):
        """The synthetic node of a finished job; on failure the one-line error with the job's whole log as details."""
        from T1ToT2Lib.slicer.panel import JobError

        try:
            return self.logic.finishSynthesisJob(job, self._jobT1Node)
        except JobError as error:
            self.ui.statusLabel.text = _("Synthesis failed: {error}").format(error=error)
            slicer.util.errorDisplay(_("Synthesis failed.") + f"\n{error}", detailedText=error.log)
            return None

    def onCancelButton(self) -> None:
        if self._job is not None:
            self.ui.statusLabel.text = _("Cancelling...")
            # cancel() waits for the process to stop; the timer keeps the panel live meanwhile.
            threading.Thread(target=self._job.cancel, daemon=True).start()

    # --- analysis ---------------------------------------------------------------------
    def onCompareButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the comparison."), waitCursor=True):
            p = self._parameterNode
            overlay = "error" if p.showErrorMap and self.ui.showErrorMapCheckBox.enabled else "difference"
            self.logic.showComparison(p.inputT1, p.acquiredT2, p.syntheticT2, orientation=p.compareOrientation,
                                      overlay=overlay)

    def onMetricsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the metrics."), waitCursor=True):
            p = self._parameterNode
            p.metricsTable = self.logic.computeMetrics(p.syntheticT2, p.acquiredT2, p.metricsTable)
            self.ui.metricsTableView.setMRMLTableNode(p.metricsTable)

    def onLineProfileButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to make the line profile."), waitCursor=True):
            p = self._parameterNode
            if not p.profileLine:
                # A line across the volume that the user then drags; the profile follows it.
                p.profileLine = self.logic.createProfileLine(p.syntheticT2)
            volumes = [n for n in (p.inputT1, p.acquiredT2, p.syntheticT2) if n]
            # The same table and chart every click; the previous profile stops following its line.
            self._lineProfile = self.logic.lineProfile(p.profileLine, volumes, previous=self._lineProfile)
            self.logic.showPlot(self._lineProfile.chart_node)

    def _stopLineProfile(self) -> None:
        if self._lineProfile is not None:
            self._lineProfile.remove_observers()

    def onExportDicomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("DICOM export failed."), waitCursor=True):
            folder = qt.QFileDialog.getExistingDirectory(
                slicer.util.mainWindow(), _("Folder for the synthetic T2 DICOM series"))
            if not folder:
                return
            p = self._parameterNode
            written = self.logic.exportDicom(p.syntheticT2, p.inputT1, folder)
            self.ui.statusLabel.text = _("Wrote {count} DICOM files to {folder}.").format(count=len(written), folder=folder)

    def onUseLastTrainedButton(self) -> None:
        path = self.logic.lastTrainedModel()
        if path is None:
            slicer.util.warningDisplay(_("No model has been trained in the T1 to T2 Training module yet."))
            return
        self._parameterNode.useBundledModel = False
        self._parameterNode.modelPath = path


class T1ToT2SynthesisLogic(ScriptedLoadableModuleLogic):
    """Everything the widget does, without Qt widgets, so that it can be scripted and tested."""

    def getParameterNode(self):
        return T1ToT2SynthesisParameterNode(super().getParameterNode())

    # --- dependencies -----------------------------------------------------------------
    @staticmethod
    def moduleDir() -> pathlib.Path:
        return pathlib.Path(__file__).resolve().parent

    def missingRequirements(self) -> list:
        from T1ToT2Lib.core import dependencies

        requirements = dependencies.read_requirements(self.moduleDir() / "Resources" / "requirements.txt")
        return dependencies.missing_requirements(requirements)

    def ensureDependencies(self, askConfirmation=True, modelPath=None, needTorch=None) -> bool:
        """Make the packages importable (torch only when no ONNX export of ``modelPath`` exists, or as
        ``needTorch`` says); False if declined."""
        from T1ToT2Lib.core import dependencies
        from T1ToT2Lib.slicer import panel

        if needTorch is None:
            needTorch = modelPath is None or panel.onnx_model_for(modelPath) is None
        return dependencies.ensure_in_slicer(slicer.util, ask_confirmation=askConfirmation, need_torch=needTorch,
                                             missing=self.missingRequirements, cuda_version=self.cudaDriverVersion)

    @staticmethod
    def cudaDriverVersion():
        from T1ToT2Lib.core import dependencies

        return dependencies.cuda_driver_version()

    # --- models -----------------------------------------------------------------------
    def bundledModelPath(self):
        from T1ToT2Lib.core.dependencies import find_bundled_model

        return find_bundled_model(self.moduleDir())

    def bundledModelDescription(self) -> str:
        if self.bundledModelPath() is None:
            return _("Bundled demo model: not installed")
        return _("Bundled demo model (phantom, not for diagnosis)")

    def modelPathFromParameters(self, parameterNode) -> pathlib.Path:
        from T1ToT2Lib.core.errors import T1ToT2Error

        if parameterNode.useBundledModel:
            path = self.bundledModelPath()
            if path is None:
                raise T1ToT2Error("the bundled demo model is not installed: choose a model file or reinstall the extension")
            return path
        if not parameterNode.modelPath or not pathlib.Path(parameterNode.modelPath).is_file():
            raise T1ToT2Error(f"model file '{parameterNode.modelPath}' does not exist: choose a .safetensors or .onnx model file")
        return pathlib.Path(parameterNode.modelPath)

    @staticmethod
    def lastTrainedModel():
        value = slicer.app.settings().value(LAST_TRAINED_MODEL_SETTING)
        return pathlib.Path(value) if value and pathlib.Path(value).is_file() else None

    def adoptLastTrainedModel(self, parameterNode) -> bool:
        """Select the model the Training module wrote last, once per new model; True when it was selected."""
        path = self.lastTrainedModel()
        settings = slicer.app.settings()
        if parameterNode is None or path is None or settings.value(LAST_ADOPTED_MODEL_SETTING) == str(path):
            return False
        settings.setValue(LAST_ADOPTED_MODEL_SETTING, str(path))
        parameterNode.useBundledModel = False
        parameterNode.modelPath = path
        return True

    # --- synthesis --------------------------------------------------------------------
    def synthesize(self, t1Node, modelPath, plane="auto", device="auto", precision="fp32", batchSize=8):
        """Synthesize in this process (blocks); returns the synthetic T2 node with the T1's geometry."""
        from T1ToT2Lib.networks import modelfile
        from T1ToT2Lib.slicer import scene
        from T1ToT2Lib.inference import synthesize

        model = modelfile.load_model(modelPath)
        if plane == "auto":  # as the command line: fuse for models trained on every plane, else their plane
            plane = synthesize.default_plane(model)
        t1 = scene.volume_from_node(t1Node)
        volume = synthesize.synthesize_volume(model, t1, plane=plane, device=device, precision=precision, batch_size=batchSize)
        return scene.create_or_update_synthetic_node(t1Node, volume, model.name, model_planes=model.planes)

    def loadPhantomSampleData(self) -> list:
        """The phantom's right hand as Sample Data loads it: T1 and T2 volumes and the tissue label map."""
        from T1ToT2Lib.phantom import render as phantom
        from T1ToT2Lib.slicer import scene

        volumes = phantom.make_phantom(size="small", seed=0)
        t1 = scene.node_from_volume(volumes["right_t1"], "Phantom right t1")
        t2 = scene.node_from_volume(volumes["right_t2"], "Phantom right t2")
        labels = scene.labelmap_node_from_volume(volumes["right_labels"], "Phantom right labels")
        parameterNode = self.getParameterNode()
        parameterNode.inputT1, parameterNode.acquiredT2 = t1, t2
        return [t1, t2, labels]

    @staticmethod
    def cliCommand(*args) -> list:
        """argv running ``t1tot2 ARGS`` with Slicer's Python through the runner script shipped in Resources."""
        from T1ToT2Lib.slicer import jobs as worker

        return worker.cli_command(*args, python=worker.python_executable())

    @staticmethod
    def startSynthesisJob(t1Node, modelPath, plane, device, precision, workDir):
        """Start ``t1tot2 synthesize`` on the T1 node in a separate process; returns the running job."""
        from T1ToT2Lib.slicer import panel

        return panel.start_synthesis_job(t1Node, modelPath, plane, device, precision, workDir)

    @staticmethod
    def finishSynthesisJob(job, t1Node):
        """Load a finished job's output into the T1's synthetic node; raises the job's error (a JobError)."""
        from T1ToT2Lib.slicer import panel

        return panel.finish_synthesis_job(job, t1Node)

    @staticmethod
    def synthesisNotes(syntheticNode) -> list:
        """The notes the synthesis of this node made (e.g. the T1 resampled to the model's training voxel size)."""
        from T1ToT2Lib.slicer import scene

        return scene.synthesis_notes(syntheticNode)

    @staticmethod
    def synthesisNotesText(syntheticNode) -> str:
        """Those notes for the status line ("Note: ... Note: ..."), or "" when there are none."""
        from T1ToT2Lib.slicer import panel

        return panel.notes_text(syntheticNode)

    @staticmethod
    def modelName(modelPath) -> str:
        from T1ToT2Lib.slicer import panel

        return panel.model_name(modelPath)

    # --- analysis ---------------------------------------------------------------------
    def showComparison(self, t1Node, acquiredNode, syntheticNode, orientation="auto", overlay="difference"):
        """T1 | acquired T2 | synthetic T2 in one row of linked views of one orientation (see scene.show_comparison).

        The difference map G - I (made when the acquired T2 exists) or the error
        map overlays the synthetic view only.  Returns the difference node or None.
        """
        from T1ToT2Lib.slicer import scene

        shown = scene.show_comparison(t1Node, acquiredNode, syntheticNode, orientation=orientation, overlay=overlay,
                                      scene=slicer.mrmlScene)
        if slicer.app.layoutManager() is not None:
            slicer.util.resetSliceViews()
        return shown["difference"]

    def computeMetrics(self, syntheticNode, acquiredNode, tableNode=None):
        from T1ToT2Lib.core import metrics
        from T1ToT2Lib.slicer import scene

        values = metrics.evaluate_volumes(scene.volume_from_node(syntheticNode), scene.volume_from_node(acquiredNode))
        return scene.metrics_table_node(values, node=tableNode)

    @staticmethod
    def createProfileLine(volumeNode):
        from T1ToT2Lib.slicer import scene

        return scene.create_profile_line(volumeNode)

    @staticmethod
    def lineProfile(lineNode, volumeNodes, previous=None):
        """A profile of the volumes along the line; ``previous``'s table and chart are reused."""
        from T1ToT2Lib.slicer import scene

        return scene.line_profile(lineNode, volumeNodes, previous=previous)

    @staticmethod
    def showPlot(chartNode):
        """Show ``chartNode`` in a plot view (switching to a layout with one when needed)."""
        from T1ToT2Lib.slicer import scene

        scene.show_plot(chartNode, scene=slicer.mrmlScene)

    def exportDicom(self, syntheticNode, t1Node, folder):
        """Write the synthetic T2 as a DICOM series (patient/study from the T1's series when it came from DICOM)."""
        from T1ToT2Lib.io import dicom
        from T1ToT2Lib.slicer import scene

        reference = self.dicomReferenceFolder(t1Node)
        return dicom.export_dicom_series(
            scene.volume_from_node(syntheticNode), folder, reference=reference,
            series_description=f"{syntheticNode.GetName()} (synthetic, not for diagnosis)",
            model_name=syntheticNode.GetAttribute("T1ToT2.Model"), overwrite=False)

    @staticmethod
    def dicomReferenceFolder(volumeNode):
        """The folder of the DICOM files a volume was loaded from, or None."""
        uids = volumeNode.GetAttribute("DICOM.instanceUIDs")
        if not uids or not hasattr(slicer, "dicomDatabase") or slicer.dicomDatabase is None:
            return None
        path = slicer.dicomDatabase.fileForInstance(uids.split()[0])
        return pathlib.Path(path).parent if path else None


class T1ToT2SynthesisTest(ScriptedLoadableModuleTest):
    """Drives the logic on the phantom as a user would: synthesize, compare, profile, metrics, export."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        from T1ToT2Lib.core import dependencies

        missing = dependencies.missing_dependencies()
        if missing:
            # ctest must not install PyTorch: say what is missing and pass without running.
            self.delayDisplay(f"T1ToT2Synthesis self-test skipped: not installed: {', '.join(missing)}. "
                              "Press Synthesize T2 in the module once to install them.")
            return
        self.test_synthesize_phantom_with_bundled_model()

    def test_synthesize_phantom_with_bundled_model(self):
        import numpy as np

        from T1ToT2Lib.phantom import render as phantom
        from T1ToT2Lib.slicer import scene

        logic = T1ToT2SynthesisLogic()
        modelPath = logic.bundledModelPath()
        self.assertIsNotNone(modelPath, "the bundled demo model must be installed with the module")

        self.delayDisplay("Generating the phantom")
        volumes = phantom.make_phantom(size="small", seed=0)
        t1Node = scene.node_from_volume(volumes["left_t1"], "left T1")
        t2Node = scene.node_from_volume(volumes["left_t2"], "left T2")

        self.delayDisplay("Synthesizing in the background process")
        workDir = tempfile.mkdtemp(prefix="T1ToT2-test-")
        job = logic.startSynthesisJob(t1Node, modelPath, "axial", "cpu", "fp32", workDir)
        job.run_to_end(timeout=600)
        synthetic = logic.finishSynthesisJob(job, t1Node)
        self.assertEqual(synthetic.GetAttribute("T1ToT2.Synthetic"), "true")
        self.assertTrue(np.allclose(scene.world_ijk_to_ras(synthetic), scene.world_ijk_to_ras(t1Node), atol=1e-6))
        self.assertEqual(slicer.util.arrayFromVolume(synthetic).shape, slicer.util.arrayFromVolume(t1Node).shape)
        self.assertGreater(float(np.std(slicer.util.arrayFromVolume(synthetic))), 0.0)

        self.delayDisplay("In-process synthesis reuses the same node")
        again = logic.synthesize(t1Node, modelPath, plane="axial", device="cpu")
        self.assertEqual(again.GetID(), synthetic.GetID())

        self.delayDisplay("Compare, metrics and line profile")
        difference = logic.showComparison(t1Node, t2Node, synthetic)
        self.assertIsNotNone(difference)
        table = logic.computeMetrics(synthetic, t2Node)
        columns = scene.table_columns(table)
        self.assertTrue(any("SSIM" in str(name).upper() for name in columns))
        line = logic.createProfileLine(synthetic)
        profile = logic.lineProfile(line, [t1Node, t2Node, synthetic])
        profile.update()
        self.assertGreater(profile.table_node.GetNumberOfRows(), 10)
        profile.remove_observers()

        self.delayDisplay("DICOM export")
        written = logic.exportDicom(synthetic, t1Node, os.path.join(workDir, "dicom"))
        self.assertEqual(len(written), slicer.util.arrayFromVolume(synthetic).shape[0])
        shutil.rmtree(workDir, ignore_errors=True)
        self.delayDisplay("Test passed")
