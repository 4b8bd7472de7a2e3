"""3D Slicer module: train a T1 -> T2 network on paired volumes and watch it learn.

Training runs ``t1tot2 train --progress json`` in a separate process (the
volumes are written to temporary NRRD files first); the widget polls its
events with a timer to draw the loss chart and fill the per-epoch validation
table, and stays responsive.  The finished model is offered in the T1 to T2
Synthesis module.  All the work is in T1ToT2Lib, installed by that module.
"""

import pathlib
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

MODEL_CHOICES = ["pix2pix", "cyclegan", "unit"]
DEVICE_CHOICES = ["auto", "cuda", "mps", "cpu"]
UPSAMPLE_CHOICES = ["transpose", "resize"]
#: Shared with T1ToT2Synthesis: the last model written here.
LAST_TRAINED_MODEL_SETTING = "T1ToT2/LastTrainedModel"
POLL_INTERVAL_MS = 250
VALIDATION_COLUMNS = ("Epoch", "NRMSE", "PSNR (dB)", "SSIM")


class T1ToT2Training(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("T1 to T2 Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = ["T1ToT2Synthesis"]
        self.parent.contributors = ["T1ToT2 developers"]
        self.parent.helpText = _(
            "Trains a Pix2Pix, CycleGAN or UNIT network that turns T1 VIBE slices into T2 SPACE slices, on a "
            "paired T1/T2 volume (the built-in hand phantom, or your own registered pair), in a background "
            "process: live loss chart, per-epoch validation metrics, difference map and line profile. "
            "The model is saved as one .safetensors file and offered in the T1 to T2 Synthesis module.<br>"
            "<b>Images made by these models are synthetic: research only, not for diagnosis.</b>"
        )
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
    modelType: Annotated[str, Choice(MODEL_CHOICES)] = "pix2pix"
    generatorWidth: Annotated[int, WithinRange(4, 256)] = 64
    residualBlocks: Annotated[int, WithinRange(1, 16)] = 9
    contextSlices: Annotated[int, WithinRange(1, 7)] = 1
    upsampling: Annotated[str, Choice(UPSAMPLE_CHOICES)] = "transpose"
    planeAxial: bool = True
    planeCoronal: bool = True
    planeSagittal: bool = True
    epochs: Annotated[int, WithinRange(1, 1000)] = 15
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

        self.ui.outputModelPathLineEdit.filters = self.ui.outputModelPathLineEdit.Files
        self.ui.outputModelPathLineEdit.nameFilters = [_("Model files (*.safetensors)")]
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.generatePhantomButton.connect("clicked(bool)", self.onGeneratePhantomButton)
        self.ui.startButton.connect("clicked(bool)", lambda: self.startTraining(resume=False))
        self.ui.resumeButton.connect("clicked(bool)", lambda: self.startTraining(resume=True))
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluateButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None and self._job.is_running:
            self._job.cancel()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

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
        ready = bool(p and p.trainT1 and p.trainT2 and p.outputModelPath and str(p.outputModelPath) not in ("", ".")
                     and (p.planeAxial or p.planeCoronal or p.planeSagittal))
        self.ui.startButton.enabled = ready and not running
        self.ui.resumeButton.enabled = ready and not running
        self.ui.generatePhantomButton.enabled = not running
        self.ui.evaluateButton.enabled = bool(p and p.validationT1 and p.validationT2 and not running
                                              and p.outputModelPath and pathlib.Path(p.outputModelPath).is_file())
        self.ui.residualBlocksSpinBox.enabled = bool(p and p.modelType != "pix2pix")

    def onGeneratePhantomButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to make the phantom."), waitCursor=True):
            nodes = self.logic.generatePhantomNodes()
            p = self._parameterNode
            p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
            p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
            if not p.outputModelPath or str(p.outputModelPath) in ("", "."):
                p.outputModelPath = self.logic.defaultModelPath()
            slicer.util.setSliceViewerLayers(background=nodes["left_t1"], fit=True)

    def startTraining(self, resume=False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to start training."), waitCursor=True):
            import T1ToT2Synthesis

            if not T1ToT2Synthesis.T1ToT2SynthesisLogic().ensureDependencies(askConfirmation=True):
                return
            p = self._parameterNode
            self._job = self.logic.startTrainingJob(p, resume=resume)
            self._lossPlot = self.logic.newLossPlot()
            p.validationTable = self.logic.newValidationTable(p.validationTable)
            self.ui.validationTableView.setMRMLTableNode(p.validationTable)
            T1ToT2Synthesis.T1ToT2SynthesisLogic.showPlot(self._lossPlot.chart_node)
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.cancelButton.show()
            self.ui.statusLabel.text = _("Resuming training...") if resume else _("Training...")
            self._timer.start()
            self._updateButtons()

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
        self._job = None
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        try:
            if job.cancelled:
                shutil.rmtree(job.workDir, ignore_errors=True)
                self.ui.statusLabel.text = _("Cancelled: the last epoch's checkpoint is kept; press Resume to continue.")
                return
            with slicer.util.tryWithErrorDisplay(_("Training failed."), waitCursor=True):
                path = self.logic.finishTrainingJob(job)
                self.ui.statusLabel.text = _("Model saved to {path}; it is offered in T1 to T2 Synthesis.").format(path=path)
                if self._parameterNode.validationT1 and self._parameterNode.validationT2:
                    self.onEvaluateButton()
        finally:
            self._updateButtons()

    def _handleEvents(self, events) -> None:
        for event in events:
            if event.get("event") == "start":
                self._totalEpochs = event.get("epochs")
            self.logic.recordEvent(event, self._lossPlot, self._parameterNode.validationTable)
            fraction = self.logic.progressFraction(event, self._totalEpochs)
            if fraction is not None:
                self.ui.progressBar.setValue(int(100 * fraction))
            if event.get("event") == "epoch":
                self.ui.statusLabel.text = _("Epoch {epoch} done.").format(epoch=event.get("epoch"))

    def onCancelButton(self) -> None:
        if self._job is not None:
            self.ui.statusLabel.text = _("Cancelling at the next step...")
            # cancel() waits for the process to stop; the timer keeps the panel live meanwhile.
            threading.Thread(target=self._job.cancel, kwargs={"timeout": 30}, daemon=True).start()

    def onEvaluateButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to evaluate the model."), waitCursor=True):
            p = self._parameterNode
            result = self.logic.evaluateModel(p.outputModelPath, p.validationT1, p.validationT2)
            self.ui.statusLabel.text = _("Validation pair: difference map, profile and metrics table '{table}' made.").format(
                table=result["metrics"].GetName())


class T1ToT2TrainingLogic(ScriptedLoadableModuleLogic):
    """Training without widgets: phantom nodes, the background job, its events, the evaluation."""

    def getParameterNode(self):
        return T1ToT2TrainingParameterNode(super().getParameterNode())

    @staticmethod
    def defaultModelPath() -> pathlib.Path:
        folder = pathlib.Path(slicer.app.defaultScenePath if hasattr(slicer, "app") else tempfile.gettempdir())
        return folder / "T1ToT2-model.safetensors"

    def generatePhantomNodes(self, size="small", seed=0) -> dict:
        """The hand phantom's T1, T2 and label volumes of both hands as volume nodes (names say they are simulated)."""
        from T1ToT2Lib import phantom, scene

        volumes = phantom.make_phantom(size=size, seed=seed)
        return {key: scene.node_from_volume(volume, f"Phantom {key.replace('_', ' ')}") for key, volume in volumes.items()}

    @staticmethod
    def planes(parameterNode) -> list:
        chosen = [name for name, on in (("axial", parameterNode.planeAxial), ("coronal", parameterNode.planeCoronal),
                                        ("sagittal", parameterNode.planeSagittal)) if on]
        if not chosen:
            from T1ToT2Lib.errors import T1ToT2Error

            raise T1ToT2Error("no training plane is selected: tick at least one of axial, coronal, sagittal")
        return chosen

    def trainArguments(self, parameterNode, workDir, resume=False) -> list:
        """The ``t1tot2 train`` arguments for the parameter node's settings (volumes written to ``workDir``)."""
        from T1ToT2Lib import scene, volume

        p = parameterNode
        workDir = pathlib.Path(workDir)
        paths = {}
        for key in ("trainT1", "trainT2", "validationT1", "validationT2"):
            node = getattr(p, key)
            if node is not None:
                paths[key] = volume.write_volume(scene.volume_from_node(node), workDir / f"{key}.nrrd")
        if "trainT1" not in paths or "trainT2" not in paths:
            from T1ToT2Lib.errors import T1ToT2Error

            raise T1ToT2Error("the training T1 or T2 volume is not selected: choose both (or generate the phantom)")
        out = pathlib.Path(p.outputModelPath)
        args = ["train", "--t1", paths["trainT1"], "--t2", paths["trainT2"], "--model", p.modelType,
                "--planes", ",".join(self.planes(p)), "--epochs", p.epochs, "--lr", repr(float(p.learningRate)),
                "--batch-size", p.batchSize, "--context", p.contextSlices, "--ngf", p.generatorWidth,
                "--upsample", p.upsampling, "--device", p.device, "--out", out,
                "--checkpoint-dir", out.with_name(out.name.replace(".safetensors", "") + ".checkpoints"),
                "--progress", "json"]
        if p.modelType != "pix2pix":
            args += ["--n-blocks", p.residualBlocks]
        if "validationT1" in paths and "validationT2" in paths:
            args += ["--val-t1", paths["validationT1"], "--val-t2", paths["validationT2"]]
        if p.maxStepsPerEpoch:
            args += ["--max-steps-per-epoch", p.maxStepsPerEpoch]
        if resume:
            args.append("--resume")
        return [str(a) for a in args]

    def startTrainingJob(self, parameterNode, resume=False, workDir=None):
        from T1ToT2Lib import worker

        workDir = pathlib.Path(workDir or tempfile.mkdtemp(prefix="T1ToT2-train-"))
        argv = worker.cli_command(*self.trainArguments(parameterNode, workDir, resume), python=worker.python_executable())
        job = worker.BackgroundJob(argv, outputs=[pathlib.Path(parameterNode.outputModelPath)])
        job.workDir = workDir
        job.outputPath = pathlib.Path(parameterNode.outputModelPath)
        return job.start()

    @staticmethod
    def progressFraction(event, totalEpochs=None):
        """Fraction of the run done after a "step" event (``totalEpochs`` comes from the "start" event), or None."""
        total = event.get("epochs") or totalEpochs
        if event.get("event") == "step" and event.get("steps") and total:
            return ((event["epoch"] - 1) + event["step"] / event["steps"]) / total
        return None

    @staticmethod
    def globalStepEvent(event):
        """A "step" event numbered over the whole run (steps restart every epoch), for the loss chart; None otherwise."""
        if event.get("event") != "step" or not event.get("steps"):
            return None
        return {"event": "step", "step": (event["epoch"] - 1) * event["steps"] + event["step"], "losses": event.get("losses", {})}

    def recordEvent(self, event, lossPlot=None, validationTable=None) -> None:
        """Feed one training event to the loss chart (steps) and the validation table (epochs)."""
        stepEvent = self.globalStepEvent(event)
        if lossPlot is not None and stepEvent is not None:
            lossPlot.add_event(stepEvent)
        self.addValidationRow(validationTable, event)

    def finishTrainingJob(self, job) -> pathlib.Path:
        """The model a finished job wrote (remembered for the Synthesis module); raises the job's error."""
        from T1ToT2Lib.errors import T1ToT2Error
        from T1ToT2Lib.modelfile import read_metadata

        job.wait(timeout=30)  # the process has ended; let the reader threads hand over its last lines
        job.poll()
        shutil.rmtree(getattr(job, "workDir", ""), ignore_errors=True)
        if job.returncode != 0 or job.error_message:
            raise T1ToT2Error(job.error_message or f"the training process exited with status {job.returncode}")
        done = [e for e in job.events if e.get("event") == "done"]
        path = pathlib.Path(done[-1]["model"]) if done else job.outputPath
        read_metadata(path)  # a readable T1ToT2 model, or a clear error
        slicer.app.settings().setValue(LAST_TRAINED_MODEL_SETTING, str(path))
        self.offerInSynthesisModule(path)
        return path

    @staticmethod
    def offerInSynthesisModule(path):
        """Select ``path`` as the model of the Synthesis module's parameter node."""
        from T1ToT2Synthesis import T1ToT2SynthesisLogic

        parameterNode = T1ToT2SynthesisLogic().getParameterNode()
        parameterNode.useBundledModel = False
        parameterNode.modelPath = pathlib.Path(path)

    @staticmethod
    def newLossPlot():
        from T1ToT2Lib import scene

        return scene.LossPlot(scene=slicer.mrmlScene)

    @staticmethod
    def newValidationTable(tableNode=None):
        """An empty per-epoch validation table (Epoch, NRMSE, PSNR, SSIM)."""
        if tableNode is None:
            tableNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "T1ToT2 validation per epoch")
        table = tableNode.GetTable()
        table.Initialize()
        for name in VALIDATION_COLUMNS:
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            table.AddColumn(column)
        tableNode.Modified()
        return tableNode

    @staticmethod
    def addValidationRow(tableNode, event) -> bool:
        """Append an "epoch" event's validation metrics; returns False when it has none."""
        metrics = event.get("val_metrics") or {}
        if tableNode is None or not metrics:
            return False
        table = tableNode.GetTable()
        row = table.InsertNextBlankRow()
        values = (event.get("epoch"), metrics.get("nrmse"), metrics.get("psnr"), metrics.get("ssim"))
        for column, value in enumerate(values):
            table.SetValue(row, column, vtk.vtkVariant(float(value) if value is not None else float("nan")))
        tableNode.Modified()
        return True

    def evaluateModel(self, modelPath, validationT1Node, validationT2Node) -> dict:
        """Synthesize the validation T1, then its difference map, metrics table and a line profile."""
        from T1ToT2Synthesis import T1ToT2SynthesisLogic

        synthesisLogic = T1ToT2SynthesisLogic()
        synthetic = synthesisLogic.synthesize(validationT1Node, modelPath, plane="axial", device="auto")
        difference = synthesisLogic.showComparison(validationT1Node, validationT2Node, synthetic)
        metrics = synthesisLogic.computeMetrics(synthetic, validationT2Node)
        line = synthesisLogic.createProfileLine(synthetic)
        profile = synthesisLogic.lineProfile(line, [validationT1Node, validationT2Node, synthetic])
        return {"synthetic": synthetic, "difference": difference, "metrics": metrics, "profile": profile}


class T1ToT2TrainingTest(ScriptedLoadableModuleTest):
    """Trains one tiny epoch on the phantom in the background process, as the Start button does."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_train_one_tiny_epoch_on_phantom()

    def test_train_one_tiny_epoch_on_phantom(self):
        import T1ToT2Synthesis
        from T1ToT2Lib import modelfile, scene

        self.assertTrue(T1ToT2Synthesis.T1ToT2SynthesisLogic().ensureDependencies(askConfirmation=False))
        logic = T1ToT2TrainingLogic()
        self.delayDisplay("Generating the phantom")
        nodes = logic.generatePhantomNodes()
        workDir = pathlib.Path(tempfile.mkdtemp(prefix="T1ToT2-test-"))
        p = logic.getParameterNode()
        p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
        p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
        p.planeCoronal = p.planeSagittal = False
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

        self.delayDisplay("The model loads and is offered in the Synthesis module")
        loaded = modelfile.load_model(path)
        self.assertEqual(loaded.metadata["planes"], ["axial"])
        self.assertEqual(pathlib.Path(T1ToT2Synthesis.T1ToT2SynthesisLogic().getParameterNode().modelPath), path)

        result = logic.evaluateModel(path, nodes["right_t1"], nodes["right_t2"])
        import numpy as np

        self.assertTrue(np.allclose(scene.world_ijk_to_ras(result["synthetic"]), scene.world_ijk_to_ras(nodes["right_t1"])))
        self.assertGreater(result["profile"].table_node.GetNumberOfRows(), 10)
        result["profile"].remove_observers()
        shutil.rmtree(workDir, ignore_errors=True)
        self.delayDisplay("Test passed")
