"""The T1 to T2 Training module's logic and panel behaviour; ``T1ToT2Training.py`` is the shell over them.

:class:`TrainingLogic` starts and finishes the training, evaluation,
metrics and alignment jobs; :class:`TrainingPanel` is what the widget does
when a button is pressed, given its widgets (``ui``), a timer and the
parameter node.  No Qt import.
"""

from __future__ import annotations

import json
import logging
import pathlib
import tempfile

import slicer.util

from . import panel, scene
from .controller import JobController, remove_work_dir
from .settings import TrainingSettings, path_is_empty
from .synthesis_module import LAST_TRAINED_MODEL_SETTING
from ..core import dependencies
from ..core.errors import T1ToT2Error


class TrainingLogic:
    """Training without widgets; ``settings`` is the application's settings store."""

    def __init__(self, settings=None, default_folder=None):
        self.settings = settings
        self.default_folder = default_folder
        self._evaluation = None  # the nodes of the last evaluation, reused by the next

    @staticmethod
    def ensureDependencies(askConfirmation=True, needTorch=True, status=None) -> bool:
        return dependencies.ensure_in_slicer(slicer.util, ask_confirmation=askConfirmation, need_torch=needTorch,
                                             status=status)

    def defaultModelPath(self) -> pathlib.Path:
        return pathlib.Path(self.default_folder or tempfile.gettempdir()) / "T1ToT2-model.safetensors"

    @staticmethod
    def applyDefaults(parameterNode, modelType=None) -> None:
        """Propose the presets' epochs, rate, batch, context and up-sampling of ``modelType`` (the node's model)."""
        TrainingSettings.for_model(modelType or parameterNode.modelType).propose_to(parameterNode)

    def generatePhantomNodes(self, size="small", seed=0) -> dict:
        """The hand phantom's volumes as nodes (names say they are simulated); labels as label maps."""
        from ..phantom import render as phantom

        nodes = {}
        for key, volume in phantom.make_phantom(size=size, seed=seed).items():
            name = f"Phantom {key.replace('_', ' ')}"
            make = scene.labelmap_node_from_volume if key.endswith("labels") else scene.node_from_volume
            nodes[key] = make(volume, name)
        return nodes

    trainArguments = staticmethod(panel.train_arguments)
    checkTrainingPairs = staticmethod(panel.check_training_pairs)
    checkTrainingData = staticmethod(panel.check_training_data)
    addTrainingPair = staticmethod(panel.add_extra_training_pair)
    removeTrainingPair = staticmethod(panel.remove_extra_training_pair)
    extraTrainingPairs = staticmethod(panel.extra_training_pairs)
    pairSharesGrid = staticmethod(scene.nodes_share_grid)
    recordEvent = staticmethod(panel.record_event)
    finishAlignmentJob = staticmethod(panel.finish_alignment_job)

    @staticmethod
    def startAlignmentJob(t1Node, t2Node, workDir=None):
        return panel.start_alignment_job(t1Node, t2Node, workDir or tempfile.mkdtemp(prefix="T1ToT2-align-"))

    @staticmethod
    def startTrainingJob(parameterNode, resume=False, workDir=None, checked=None):
        """``checked``: :meth:`checkTrainingData`'s result when the caller has it (the data is then not read again)."""
        return panel.start_training_job(parameterNode, workDir or tempfile.mkdtemp(prefix="T1ToT2-train-"), resume,
                                        checked=checked)

    def finishTrainingJob(self, job) -> pathlib.Path:
        """The model a finished job wrote, remembered for the Synthesis module; raises the job's error."""
        path = panel.finish_training_job(job)
        # The Synthesis module picks the newest trained model up from this setting when its panel is shown.
        self.settings.setValue(LAST_TRAINED_MODEL_SETTING, str(path))
        return path

    @staticmethod
    def newLossPlot(previous=None, resume=False):
        """The training's loss plot: ``previous``'s table and chart reused (emptied unless ``resume``)."""
        return scene.LossPlot.reuse(previous, resume=resume, scene=slicer.mrmlScene)

    @staticmethod
    def newValidationTable(tableNode=None):
        return scene.validation_table_node(tableNode, scene=slicer.mrmlScene)

    @staticmethod
    def showPlot(chartNode) -> None:
        scene.show_plot(chartNode, scene=slicer.mrmlScene)

    @staticmethod
    def startEvaluationJob(modelPath, validationT1Node, workDir=None):
        """Synthesize the validation T1 with the model in a background process, on the model's own plane(s)."""
        workDir = pathlib.Path(workDir or tempfile.mkdtemp(prefix="T1ToT2-evaluate-"))
        job = panel.start_synthesis_job(validationT1Node, modelPath, "auto", "auto", "fp32", workDir)
        job.workDir = workDir
        return job

    def finishEvaluationJob(self, job, validationT1Node, validationT2Node, computeMetrics=True) -> dict:
        """The synthetic validation T2, its compare view, metrics table and line profile (nodes reused run to
        run, made anew after Close Scene); ``computeMetrics=False`` leaves the metrics to a background job."""
        try:
            synthetic = panel.finish_synthesis_job(job, validationT1Node)
        finally:
            remove_work_dir(job)
        self._evaluation = panel.evaluate_synthetic(synthetic, validationT1Node, validationT2Node,
                                                    previous=self._evaluation, views=scene.SLICER_COMPARE_VIEWS,
                                                    compute_metrics=computeMetrics)
        return self._evaluation

    def sceneClosed(self) -> None:
        self._evaluation = None

    def evaluateModel(self, modelPath, validationT1Node, validationT2Node, workDir=None, timeout=600) -> dict:
        """Evaluate to the end (scripts and self-tests; the panel polls the job instead of blocking)."""
        job = self.startEvaluationJob(modelPath, validationT1Node, workDir)
        job.run_to_end(timeout=timeout)
        return self.finishEvaluationJob(job, validationT1Node, validationT2Node)


class TrainingPanel:
    """What the Training widget does: its buttons and the training, evaluation, metrics and alignment jobs."""

    def __init__(self, ui, logic, timer):
        self.ui, self.logic = ui, logic
        self.parameters = None
        self.shownModelType = None
        self.lossPlot = None
        self.totalEpochs = None
        self._alignPair = None
        self.jobs = JobController(ui, timer, on_idle=self.updateButtons)
        self.jobs.register("train", self._finishTraining, self._onTrainingEvents)
        self.jobs.register("evaluate", self._finishEvaluation, self._onSlices)
        self.jobs.register("metrics", self._finishMetrics)
        self.jobs.register("align", self._finishAlignment)

    def setParameters(self, parameters) -> None:
        self.parameters = parameters
        self.shownModelType = None  # a node's own epochs stand until the user chooses another model
        if parameters is not None:
            self.updateButtons()
        self._showPairs()

    def _hasTrainingData(self) -> bool:
        """A first pair, additional pairs, a pairs CSV or phantom subjects (what ``t1tot2 train`` accepts)."""
        p = self.parameters
        return bool((p.trainT1 and p.trainT2) or getattr(p, "extraTrainT1", None) or getattr(p, "phantomSubjects", 0)
                    or not path_is_empty(getattr(p, "pairsCsvPath", None)))

    def updateButtons(self, caller=None, event=None) -> None:
        p, ui = self.parameters, self.ui
        running = self.jobs.running
        ready = bool(p and self._hasTrainingData() and not path_is_empty(p.outputModelPath)
                     and (p.planeAxial or p.planeCoronal or p.planeSagittal))
        ui.startButton.enabled = ui.resumeButton.enabled = ready and not running
        if hasattr(ui, "removePairButton"):
            ui.removePairButton.enabled = bool(p and getattr(p, "extraTrainT1", None) and not running)
        ui.generatePhantomButton.enabled = not running
        ui.showAlignedButton.enabled = bool(p and p.trainT1 and p.trainT2 and not running)
        ui.evaluateButton.enabled = bool(p and p.validationT1 and p.validationT2 and not running
                                         and p.outputModelPath and pathlib.Path(p.outputModelPath).is_file())
        ui.residualBlocksSpinBox.enabled = bool(p and p.modelType in ("cyclegan", "unit"))
        if p and p.modelType != self.shownModelType:
            if self.shownModelType is not None:  # a model chosen by the user: propose its settings
                self.logic.applyDefaults(p)
            self.shownModelType = p.modelType

    def _status(self, text) -> None:
        self.ui.statusLabel.text = text
        if hasattr(slicer, "app") and hasattr(slicer.app, "processEvents"):
            slicer.app.processEvents()

    def generatePhantom(self) -> None:
        # The phantom needs scikit-image and SciPy, which Slicer does not ship; never PyTorch.
        if not self.logic.ensureDependencies(askConfirmation=True, needTorch=False, status=self._status):
            return
        nodes = self.logic.generatePhantomNodes()
        p = self.parameters
        p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
        p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
        if path_is_empty(p.outputModelPath):
            p.outputModelPath = self.logic.defaultModelPath()
        slicer.util.setSliceViewerLayers(background=nodes["left_t1"], fit=True)
        self.ui.statusLabel.text = "Hand phantom made: left hand to train on, right hand to validate."

    def addPair(self, t1Node, t2Node) -> None:
        """List a further T1/T2 pair to train on (the refiner trains on all pairs, each on its own grid)."""
        try:
            self.logic.addTrainingPair(self.parameters, t1Node, t2Node)
        except T1ToT2Error as error:
            self.ui.statusLabel.text = str(error)
            return
        self._showPairs()
        self.updateButtons()
        self.ui.statusLabel.text = f"{len(self.logic.extraTrainingPairs(self.parameters)) + 1} training pairs listed."

    def removePair(self, row) -> None:
        self.logic.removeTrainingPair(self.parameters, row)
        self._showPairs()
        self.updateButtons()

    def _showPairs(self) -> None:
        """The additional pairs, one row each, in the panel's list (when the panel has one)."""
        listing = getattr(self.ui, "extraPairsListWidget", None)
        if listing is None:
            return
        listing.clear()
        for label in (panel.extra_pair_labels(self.parameters) if self.parameters is not None else []):
            listing.addItem(label)

    def startTraining(self, resume=False) -> None:
        checked = self._checkTrainingData()
        if checked is None:
            return
        if not self.logic.ensureDependencies(askConfirmation=True, status=self._status):
            return
        p = self.parameters
        job = self.logic.startTrainingJob(p, resume=resume, checked=checked)  # what was checked, not read again
        self.lossPlot = self.logic.newLossPlot(self.lossPlot, resume=resume)  # one chart per training
        if not (resume and p.validationTable):  # a new run empties the table; a resumed one goes on
            p.validationTable = self.logic.newValidationTable(p.validationTable)
        self.ui.validationTableView.setMRMLTableNode(p.validationTable)
        self.logic.showPlot(self.lossPlot.chart_node)
        self.totalEpochs = None
        self.jobs.start(job, "train", "Resuming training..." if resume else "Training...")

    def _checkTrainingData(self):
        """The checked training (:func:`panel.check_training_data`), or None with one message (no traceback) when a
        T1/T2 pair is on two grids and the align box is unticked, or the data is one ``t1tot2 train`` refuses (e.g.
        several pairs for a GAN): before any install or job."""
        try:
            return self.logic.checkTrainingData(self.parameters)
        except T1ToT2Error as error:
            self.ui.statusLabel.text = str(error)
            slicer.util.errorDisplay(f"Cannot start training: {error}")
            return None

    def showAligned(self) -> None:
        """Register the training T2 to the training T1 in a background process, as training with the box ticked does."""
        p = self.parameters
        if self.logic.pairSharesGrid(p.trainT1, p.trainT2):
            self.ui.statusLabel.text = "The training T2 already shares the T1's grid: training uses it as it is."
            return
        job = self.logic.startAlignmentJob(p.trainT1, p.trainT2)
        self._alignPair = (p.trainT1, p.trainT2)
        self.jobs.start(job, "align", "Aligning the training T2 to the T1 (rigid, mutual information)...")

    def _onSlices(self, events) -> None:
        for event in events:
            if event.get("event") == "slices" and event.get("total"):
                self.ui.progressBar.setValue(int(100 * event["done"] / event["total"]))

    def _onTrainingEvents(self, events) -> None:
        for event in events:
            if event.get("event") == "start":
                self.totalEpochs = event.get("epochs")
            panel.record_event(event, self.lossPlot, self.parameters.validationTable if self.parameters else None)
            fraction = panel.progress_fraction(event, self.totalEpochs)
            if fraction is not None:
                self.ui.progressBar.setValue(int(100 * fraction))
            text = panel.progress_text(event, self.totalEpochs)
            if text:
                self.ui.statusLabel.text = text
            if event.get("event") == "epoch":
                self.ui.statusLabel.text = f"Epoch {event.get('epoch')} done."

    def _finishAlignment(self, job) -> None:
        (t1Node, t2Node), self._alignPair = self._alignPair, None
        if job.cancelled:
            self.ui.statusLabel.text = "Alignment cancelled."
            return
        result = self.jobs.finish_or_show_log(job, lambda j: self.logic.finishAlignmentJob(j, t1Node, t2Node),
                                              "Alignment failed.")
        if result is None:
            return
        slicer.util.setSliceViewerLayers(background=t1Node, foreground=result["node"], foregroundOpacity=0.5, fit=True)
        self.ui.statusLabel.text = f"'{result['node'].GetName()}' is shown over the T1 (its exact grid). {result['summary']}"
        logging.info("T1ToT2 alignment of '%s' to '%s': %s", t2Node.GetName(), t1Node.GetName(), json.dumps(result["report"]))

    def _finishTraining(self, job) -> None:
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled: the last epoch's checkpoint is kept; press Resume to continue."
            return
        path = self.jobs.finish_or_show_log(job, self.logic.finishTrainingJob, "Training failed.")
        if path is None:
            return
        outcome = panel.cnn_stage_outcome(job.events)
        self.ui.statusLabel.text = f"Model saved to {path}; it is offered in T1 to T2 Synthesis." + (" " + outcome if outcome else "")
        if self.parameters and self.parameters.validationT1 and self.parameters.validationT2:
            self.evaluate()

    def evaluate(self) -> None:
        """Synthesize the validation T1 in a background process, then compare, profile and score it (the
        scoring in a second background process)."""
        p = self.parameters
        job = self.logic.startEvaluationJob(p.outputModelPath, p.validationT1)
        self.jobs.start(job, "evaluate", "Evaluating on the validation pair...")

    def _finishEvaluation(self, job) -> None:
        p = self.parameters
        if job.cancelled or p is None:
            self.ui.statusLabel.text = "Evaluation cancelled."
            return
        result = self.jobs.finish_or_show_log(
            job, lambda j: self.logic.finishEvaluationJob(j, p.validationT1, p.validationT2, computeMetrics=False),
            "Evaluation failed.")
        if result is None:
            return
        self.logic.showPlot(result["profile"].chart_node)
        notes = panel.notes_text(result["synthetic"])
        metrics = panel.start_metrics_job(result["synthetic"], p.validationT2, tempfile.mkdtemp(prefix="T1ToT2-metrics-"))
        self.jobs.start(metrics, "metrics", " ".join(filter(None, [
            "Validation pair: difference map and profile made; computing the metrics...", notes])))

    def _finishMetrics(self, job) -> None:
        evaluation = self.logic._evaluation
        if job.cancelled or evaluation is None:
            self.ui.statusLabel.text = "Metrics cancelled."
            return
        name = f"{evaluation['synthetic'].GetName()} metrics"
        table = self.jobs.finish_or_show_log(
            job, lambda j: panel.finish_metrics_job(j, name=name, table_node=evaluation.get("metrics")), "Metrics failed.")
        if table is not None:
            evaluation["metrics"] = table
            self.ui.statusLabel.text = " ".join(filter(None, [
                f"Validation pair: difference map, profile and metrics table '{table.GetName()}' made.",
                panel.notes_text(evaluation["synthetic"])]))

    def sceneClosing(self) -> None:
        self.jobs.stop()
        self.lossPlot = None
        self.logic.sceneClosed()
        self.parameters = None
