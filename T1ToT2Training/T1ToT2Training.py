"""3D Slicer module: train a T1 -> T2 network on paired volumes and watch it learn.

Training runs ``t1tot2 train --progress json`` in a separate process (the
volumes are written to temporary NRRD files first); the widget polls its
events with a timer to draw the loss chart and fill the per-epoch validation
table, and stays responsive.  The finished model is offered in the T1 to T2
Synthesis module.  All the work is in T1ToT2Lib, installed by that module.
"""

import json
import logging
import pathlib
import platform
import shutil
import tempfile
import threading
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: The recommended refiner first (T1ToT2Lib.training.presets.RECOMMENDED), then the paper's GANs.
MODEL_CHOICES = ["refiner", "pix2pix", "cyclegan", "unit"]


def _plausibleDevices():
    """CUDA on Linux and Windows, MPS on Apple-silicon macOS (as T1ToT2Lib.core.dependencies.plausible_devices)."""
    system, machine = platform.system(), platform.machine().lower()
    return (["auto"] + (["cuda"] if system in ("Linux", "Windows") else [])
            + (["mps"] if system == "Darwin" and machine in ("arm64", "aarch64") else []) + ["cpu"])


DEVICE_CHOICES = _plausibleDevices()
UPSAMPLE_CHOICES = ["transpose", "resize"]
#: Shared with T1ToT2Synthesis: the last model written here.
LAST_TRAINED_MODEL_SETTING = "T1ToT2/LastTrainedModel"
#: REPOSITORY URL copy (T1ToT2Lib.core.about.REPOSITORY_URL); Testing/test_slicer_static.py checks that the copies agree.
DOCUMENTATION_URL = "https://github.com/T1ToT2/SlicerT1ToT2#readme"
POLL_INTERVAL_MS = 250
VALIDATION_COLUMNS = ("Epoch", "NRMSE", "PSNR (dB)", "SSIM")  # = T1ToT2Lib.slicer.scene.VALIDATION_COLUMNS


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
            "the T2 has its own grid, and <i>Show aligned pair</i> to check the registration), in a background "
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
    modelType: Annotated[str, Choice(MODEL_CHOICES)] = "refiner"
    generatorWidth: Annotated[int, WithinRange(4, 256)] = 64
    residualBlocks: Annotated[int, WithinRange(1, 16)] = 9
    contextSlices: Annotated[int, WithinRange(1, 7)] = 1
    upsampling: Annotated[str, Choice(UPSAMPLE_CHOICES)] = "transpose"
    planeAxial: bool = True
    planeCoronal: bool = True
    planeSagittal: bool = True
    epochs: Annotated[int, WithinRange(1, 1000)] = 8  # the refiner's; choosing a model proposes its own
    learningRate: Annotated[float, WithinRange(1e-6, 1e-1)] = 2e-4
    batchSize: Annotated[int, WithinRange(1, 256)] = 1
    maxStepsPerEpoch: Annotated[int, WithinRange(0, 100000)] = 0
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    outputModelPath: pathlib.Path
    validationTable: vtkMRMLTableNode


class T1ToT2TrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._jobKind = None  # "train", "evaluate" or "align"
        self._shownModelType = None
        self._alignPair = None  # (T1 node, T2 node) of the running alignment
        self._lossPlot = None
        self._totalEpochs = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/T1ToT2Training.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = T1ToT2TrainingLogic()

        # A file to write: Browse opens a save dialog that accepts a new name.
        self.ui.outputModelPathLineEdit.filters = self.ui.outputModelPathLineEdit.Files | self.ui.outputModelPathLineEdit.Writable
        self.ui.outputModelPathLineEdit.nameFilters = [_("Model files (*.safetensors)")]
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.generatePhantomButton.connect("clicked(bool)", self.onGeneratePhantomButton)
        self.ui.showAlignedButton.connect("clicked(bool)", self.onShowAlignedButton)
        self.ui.startButton.connect("clicked(bool)", lambda: self.startTraining(resume=False))
        self.ui.resumeButton.connect("clicked(bool)", lambda: self.startTraining(resume=True))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self.stopJob()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        # The job's nodes and parameter node are about to go: stop it rather than poll into a closed scene.
        self.stopJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def stopJob(self) -> None:
        """Cancel a running job and forget it (scene close, module cleanup)."""
        job, self._job, self._jobKind, self._alignPair = self._job, None, None, None
        if self._timer is not None:
            self._timer.stop()
        if job is not None and job.is_running:
            job.cancel(timeout=10)
        self._lossPlot = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        self._shownModelType = None  # a node's own epochs stand until the user chooses another model
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None and self._job.is_running
        ready = bool(p and p.trainT1 and p.trainT2 and p.outputModelPath and str(p.outputModelPath) not in ("", ".")
                     and (p.planeAxial or p.planeCoronal or p.planeSagittal))
        self.ui.startButton.enabled = ready and not running
        self.ui.resumeButton.enabled = ready and not running
        self.ui.generatePhantomButton.enabled = not running
        self.ui.showAlignedButton.enabled = bool(p and p.trainT1 and p.trainT2 and not running)
        self.ui.evaluateButton.enabled = bool(p and p.validationT1 and p.validationT2 and not running
                                              and p.outputModelPath and pathlib.Path(p.outputModelPath).is_file())
        self.ui.residualBlocksSpinBox.enabled = bool(p and p.modelType in ("cyclegan", "unit"))
        if p and p.modelType != self._shownModelType:
            if self._shownModelType is not None:  # a model chosen by the user: propose its epochs
                from T1ToT2Lib.slicer import panel

                p.epochs = panel.default_epochs(p.modelType)
            self._shownModelType = p.modelType

    def onGeneratePhantomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to make the phantom."), waitCursor=True):
            nodes = self.logic.generatePhantomNodes()
            p = self._parameterNode
            p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
            p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
            if not p.outputModelPath or str(p.outputModelPath) in ("", "."):
                p.outputModelPath = self.logic.defaultModelPath()
            slicer.util.setSliceViewerLayers(background=nodes["left_t1"], fit=True)

    def _startJob(self, job, kind, status) -> None:
        self._job, self._jobKind = job, kind
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.ui.statusLabel.text = status
        self._timer.start()
        self._updateButtons()

    def startTraining(self, resume=False) -> None:
        if not self._checkTrainingPairs():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            p = self._parameterNode
            job = self.logic.startTrainingJob(p, resume=resume)
            self._lossPlot = self.logic.newLossPlot()
            p.validationTable = self.logic.newValidationTable(p.validationTable)
            self.ui.validationTableView.setMRMLTableNode(p.validationTable)
            self.logic.showPlot(self._lossPlot.chart_node)
            self._totalEpochs = None
            self._startJob(job, "train", _("Resuming training...") if resume else _("Training..."))

    def _checkTrainingPairs(self) -> bool:
        """False, with one message (no traceback), when a T1/T2 pair is on two grids and the align box is unticked."""
        from T1ToT2Lib.core.errors import T1ToT2Error

        try:
            self.logic.checkTrainingPairs(self._parameterNode)
        except T1ToT2Error as error:
            self.ui.statusLabel.text = str(error)
            slicer.util.errorDisplay(_("Cannot start training: {error}").format(error=error))
            return False
        return True

    def onShowAlignedButton(self) -> None:
        """Register the training T2 to the training T1 in a background process, as training with the box ticked does."""
        with slicer.util.tryWithErrorDisplay(_("Failed to align the T2."), waitCursor=True):
            p = self._parameterNode
            if self.logic.pairSharesGrid(p.trainT1, p.trainT2):
                self.ui.statusLabel.text = _("The training T2 already shares the T1's grid: training uses it as it is.")
                return
            job = self.logic.startAlignmentJob(p.trainT1, p.trainT2)
            self._alignPair = (p.trainT1, p.trainT2)
            self._startJob(job, "align", _("Aligning the training T2 to the T1 (rigid, mutual information)..."))

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        self._handleEvents(job.poll())
        if job.is_running:
            return
        job.wait(timeout=30)  # ended: collect the lines its reader threads still hold
        self._handleEvents(job.poll())
        self._timer.stop()
        kind, self._job, self._jobKind = self._jobKind, None, None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            with slicer.util.tryWithErrorDisplay(_("The job's result could not be used."), waitCursor=True):
                if kind == "evaluate":
                    self._finishEvaluation(job)
                elif kind == "align":
                    self._finishAlignment(job)
                else:
                    self._finishTraining(job)
        finally:
            self._updateButtons()

    def _finishAlignment(self, job) -> None:
        (t1Node, t2Node), self._alignPair = self._alignPair, None
        if job.cancelled:
            shutil.rmtree(job.workDir, ignore_errors=True)
            self.ui.statusLabel.text = _("Alignment cancelled.")
            return
        result = self._finishOrShowLog(job, lambda j: self.logic.finishAlignmentJob(j, t1Node, t2Node),
                                       _("Alignment failed."))
        if result is None:
            return
        slicer.util.setSliceViewerLayers(background=t1Node, foreground=result["node"], foregroundOpacity=0.5, fit=True)
        self.ui.statusLabel.text = _("'{name}' is shown over the T1 (its exact grid). {summary}").format(
            name=result["node"].GetName(), summary=result["summary"])
        logging.info("T1ToT2 alignment of '%s' to '%s': %s", t2Node.GetName(), t1Node.GetName(), json.dumps(result["report"]))

    def _finishTraining(self, job) -> None:
        if job.cancelled:
            shutil.rmtree(job.workDir, ignore_errors=True)
            self.ui.statusLabel.text = _("Cancelled: the last epoch's checkpoint is kept; press Resume to continue.")
            return
        path = self._finishOrShowLog(job, self.logic.finishTrainingJob, _("Training failed."))
        if path is None:
            return
        self.ui.statusLabel.text = _("Model saved to {path}; it is offered in T1 to T2 Synthesis.").format(path=path)
        if self._parameterNode and self._parameterNode.validationT1 and self._parameterNode.validationT2:
            self.onEvaluateButton()

    def _finishOrShowLog(self, job, finish, title):
        """``finish(job)``; on failure show the one-line error with the job's whole log as details."""
        from T1ToT2Lib.slicer.panel import JobError

        try:
            return finish(job)
        except JobError as error:
            self.ui.statusLabel.text = f"{title} {error}"
            slicer.util.errorDisplay(f"{title}\n{error}", detailedText=error.log)
            return None

    def _handleEvents(self, events) -> None:
        from T1ToT2Lib.slicer import panel

        for event in events:
            if self._jobKind == "align":
                continue  # t1tot2 align reports at the end (its JSON report), not as progress events
            if self._jobKind == "evaluate":
                if event.get("event") == "slices" and event.get("total"):
                    self.ui.progressBar.setValue(int(100 * event["done"] / event["total"]))
                continue
            if event.get("event") == "start":
                self._totalEpochs = event.get("epochs")
            panel.record_event(event, self._lossPlot, self._parameterNode.validationTable if self._parameterNode else None)
            fraction = panel.progress_fraction(event, self._totalEpochs)
            if fraction is not None:
                self.ui.progressBar.setValue(int(100 * fraction))
            text = panel.progress_text(event, self._totalEpochs)
            if text:
                self.ui.statusLabel.text = text
            if event.get("event") == "epoch":
                self.ui.statusLabel.text = _("Epoch {epoch} done.").format(epoch=event.get("epoch"))

    def onCancelButton(self) -> None:
        if self._job is not None:
            self.ui.statusLabel.text = _("Cancelling at the next step...")
            # cancel() waits for the process to stop; the timer keeps the panel live meanwhile.
            threading.Thread(target=self._job.cancel, kwargs={"timeout": 30}, daemon=True).start()

    def onEvaluateButton(self) -> None:
        """Synthesize the validation T1 in a background process, then compare, score and profile it."""
        with slicer.util.tryWithErrorDisplay(_("Failed to evaluate the model."), waitCursor=True):
            p = self._parameterNode
            job = self.logic.startEvaluationJob(p.outputModelPath, p.validationT1)
            self._startJob(job, "evaluate", _("Evaluating on the validation pair..."))

    def _finishEvaluation(self, job) -> None:
        from T1ToT2Lib.slicer import panel

        p = self._parameterNode
        if job.cancelled or p is None:
            shutil.rmtree(job.workDir, ignore_errors=True)
            self.ui.statusLabel.text = _("Evaluation cancelled.")
            return
        result = self._finishOrShowLog(
            job, lambda j: self.logic.finishEvaluationJob(j, p.validationT1, p.validationT2), _("Evaluation failed."))
        if result is None:
            return
        self.logic.showPlot(result["profile"].chart_node)
        self.ui.statusLabel.text = " ".join(filter(None, [
            _("Validation pair: difference map, profile and metrics table '{table}' made.").format(table=result["metrics"].GetName()),
            panel.notes_text(result["synthetic"])]))


class T1ToT2TrainingLogic(ScriptedLoadableModuleLogic):
    """Training without widgets; the work is in T1ToT2Lib.slicer.panel and T1ToT2Lib.slicer.scene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._evaluation = None  # the nodes of the last evaluation, reused by the next

    def getParameterNode(self):
        return T1ToT2TrainingParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(askConfirmation=True) -> bool:
        from T1ToT2Lib.core import dependencies

        return dependencies.ensure_in_slicer(slicer.util, ask_confirmation=askConfirmation)

    @staticmethod
    def defaultModelPath() -> pathlib.Path:
        folder = pathlib.Path(slicer.app.defaultScenePath if hasattr(slicer, "app") else tempfile.gettempdir())
        return folder / "T1ToT2-model.safetensors"

    def generatePhantomNodes(self, size="small", seed=0) -> dict:
        """The hand phantom's volumes as nodes (names say they are simulated); labels as label maps."""
        from T1ToT2Lib.phantom import render as phantom
        from T1ToT2Lib.slicer import scene

        nodes = {}
        for key, volume in phantom.make_phantom(size=size, seed=seed).items():
            name = f"Phantom {key.replace('_', ' ')}"
            if key.endswith("labels"):
                nodes[key] = scene.labelmap_node_from_volume(volume, name)
            else:
                nodes[key] = scene.node_from_volume(volume, name)
        return nodes

    @staticmethod
    def trainArguments(parameterNode, workDir, resume=False) -> list:
        from T1ToT2Lib.slicer import panel

        return panel.train_arguments(parameterNode, workDir, resume)

    @staticmethod
    def checkTrainingPairs(parameterNode) -> None:
        """Raise one line when a T1/T2 pair is on two grids and ``alignT2`` is off (see panel.check_training_pairs)."""
        from T1ToT2Lib.slicer import panel

        panel.check_training_pairs(parameterNode)

    @staticmethod
    def pairSharesGrid(t1Node, t2Node) -> bool:
        from T1ToT2Lib.slicer import scene

        return scene.nodes_share_grid(t1Node, t2Node)

    @staticmethod
    def startAlignmentJob(t1Node, t2Node, workDir=None):
        """Register the T2 to the T1 (``t1tot2 align``: rigid, mutual information) in a background process."""
        from T1ToT2Lib.slicer import panel

        return panel.start_alignment_job(t1Node, t2Node, workDir or tempfile.mkdtemp(prefix="T1ToT2-align-"))

    @staticmethod
    def finishAlignmentJob(job, t1Node, t2Node) -> dict:
        """{"node": the T2 on the T1's exact grid, "report", "summary"} of a finished alignment; raises its error."""
        from T1ToT2Lib.slicer import panel

        return panel.finish_alignment_job(job, t1Node, t2Node)

    def startTrainingJob(self, parameterNode, resume=False, workDir=None):
        from T1ToT2Lib.slicer import panel

        return panel.start_training_job(parameterNode, workDir or tempfile.mkdtemp(prefix="T1ToT2-train-"), resume)

    def finishTrainingJob(self, job) -> pathlib.Path:
        """The model a finished job wrote, remembered for the Synthesis module; raises the job's error."""
        from T1ToT2Lib.slicer import panel

        path = panel.finish_training_job(job)
        # The Synthesis module picks the newest trained model up from this setting when its panel is shown.
        slicer.app.settings().setValue(LAST_TRAINED_MODEL_SETTING, str(path))
        return path

    @staticmethod
    def newLossPlot():
        from T1ToT2Lib.slicer import scene

        return scene.LossPlot(scene=slicer.mrmlScene)

    @staticmethod
    def newValidationTable(tableNode=None):
        from T1ToT2Lib.slicer import scene

        return scene.validation_table_node(tableNode, scene=slicer.mrmlScene)

    @staticmethod
    def recordEvent(event, lossPlot=None, validationTable=None) -> None:
        from T1ToT2Lib.slicer import panel

        panel.record_event(event, lossPlot, validationTable)

    @staticmethod
    def showPlot(chartNode) -> None:
        from T1ToT2Lib.slicer import scene

        scene.show_plot(chartNode, scene=slicer.mrmlScene)

    def startEvaluationJob(self, modelPath, validationT1Node, workDir=None):
        """Synthesize the validation T1 with the model in a background process, on the model's own plane(s)."""
        from T1ToT2Lib.slicer import panel

        workDir = pathlib.Path(workDir or tempfile.mkdtemp(prefix="T1ToT2-evaluate-"))
        job = panel.start_synthesis_job(validationT1Node, modelPath, "auto", "auto", "fp32", workDir)
        job.workDir = workDir
        return job

    def finishEvaluationJob(self, job, validationT1Node, validationT2Node) -> dict:
        """The synthetic validation T2, its compare view, metrics table and line profile (nodes reused run to run)."""
        from T1ToT2Lib.slicer import panel

        try:
            synthetic = panel.finish_synthesis_job(job, validationT1Node)
        finally:
            shutil.rmtree(getattr(job, "workDir", "") or "", ignore_errors=True)
        self._evaluation = panel.evaluate_synthetic(synthetic, validationT1Node, validationT2Node, previous=self._evaluation)
        return self._evaluation

    def evaluateModel(self, modelPath, validationT1Node, validationT2Node, workDir=None, timeout=600) -> dict:
        """Evaluate to the end (scripts and self-tests; the panel polls the job instead of blocking)."""
        job = self.startEvaluationJob(modelPath, validationT1Node, workDir)
        job.run_to_end(timeout=timeout)
        return self.finishEvaluationJob(job, validationT1Node, validationT2Node)


class T1ToT2TrainingTest(ScriptedLoadableModuleTest):
    """Trains one tiny epoch on the phantom in the background process, as the Start button does."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        from T1ToT2Lib.core import dependencies

        missing = dependencies.missing_dependencies()
        if missing:
            # ctest must not install PyTorch: say what is missing and pass without running.
            self.delayDisplay(f"T1ToT2Training self-test skipped: not installed: {', '.join(missing)}. "
                              "Press Start in the module once to install them.")
            return
        self.test_train_one_tiny_epoch_on_phantom()

    def test_train_one_tiny_epoch_on_phantom(self):
        import numpy as np

        from T1ToT2Lib.networks import modelfile
        from T1ToT2Lib.slicer import scene

        logic = T1ToT2TrainingLogic()
        self.delayDisplay("Generating the phantom")
        nodes = logic.generatePhantomNodes()
        self.assertTrue(nodes["left_labels"].IsA("vtkMRMLLabelMapVolumeNode"))
        workDir = pathlib.Path(tempfile.mkdtemp(prefix="T1ToT2-test-"))
        p = logic.getParameterNode()
        p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
        p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
        p.planeCoronal = p.planeSagittal = False
        p.modelType = "pix2pix"  # one tiny epoch of a small U-Net (the refiner would fit its trees first)
        p.epochs, p.generatorWidth, p.maxStepsPerEpoch, p.batchSize, p.device = 1, 8, 2, 2, "cpu"
        p.outputModelPath = workDir / "tiny.safetensors"

        self.delayDisplay("Training one tiny epoch in the background")
        job = logic.startTrainingJob(p, workDir=workDir / "inputs")
        lossPlot = logic.newLossPlot()
        table = logic.newValidationTable()
        job.run_to_end(timeout=600)
        for event in job.events:
            logic.recordEvent(event, lossPlot, table)
        path = logic.finishTrainingJob(job)
        self.assertTrue(path.is_file())
        self.assertEqual(lossPlot.table_node.GetNumberOfRows(), 2)
        self.assertEqual(table.GetNumberOfRows(), 1)

        self.delayDisplay("The model loads and is remembered for the Synthesis module")
        loaded = modelfile.load_model(path)
        self.assertEqual(loaded.metadata["planes"], ["axial"])
        self.assertEqual(pathlib.Path(slicer.app.settings().value(LAST_TRAINED_MODEL_SETTING)), path)

        self.delayDisplay("Evaluation on the validation pair, in the background, on the model's plane")
        result = logic.evaluateModel(path, nodes["right_t1"], nodes["right_t2"], workDir=workDir / "evaluation")
        self.assertTrue(np.allclose(scene.world_ijk_to_ras(result["synthetic"]), scene.world_ijk_to_ras(nodes["right_t1"])))
        self.assertGreater(result["profile"].table_node.GetNumberOfRows(), 10)
        again = logic.evaluateModel(path, nodes["right_t1"], nodes["right_t2"], workDir=workDir / "evaluation2")
        self.assertEqual([again[k].GetID() for k in ("metrics", "line")], [result[k].GetID() for k in ("metrics", "line")])
        again["profile"].remove_observers()
        shutil.rmtree(workDir, ignore_errors=True)
        self.delayDisplay("Test passed")
