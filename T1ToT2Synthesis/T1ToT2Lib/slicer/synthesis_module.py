"""The T1 to T2 Synthesis module's logic and panel behaviour; ``T1ToT2Synthesis.py`` is the shell over them.

:class:`SynthesisLogic` is what the module's Logic offers (scripts, self-tests);
:class:`SynthesisPanel` is what its widget does when a button is pressed,
given the widgets (``ui``), a timer and the parameter node.  No Qt import:
the module file creates the timer and the folder dialog.
"""

from __future__ import annotations

import pathlib
import re
import tempfile

import slicer.util

from . import panel, scene
from .controller import JobController
from ..core import dependencies
from ..core.errors import T1ToT2Error

#: Application setting holding the last model the Training module wrote, offered in the Synthesis module.
LAST_TRAINED_MODEL_SETTING = "T1ToT2/LastTrainedModel"
#: The last trained model the Synthesis module has already picked up (so a user's later choice is not overridden).
LAST_ADOPTED_MODEL_SETTING = "T1ToT2/LastAdoptedModel"


class SynthesisLogic:
    """Synthesis, comparison, metrics, profiles and DICOM export on scene nodes; ``settings`` is the
    application's settings store (``slicer.app.settings()``)."""

    def __init__(self, module_dir, settings=None, parameter_node=None):
        self.module_dir = pathlib.Path(module_dir)
        self.settings = settings
        self.parameter_node = parameter_node  # a callable giving the module's parameter node

    # --- dependencies and models --------------------------------------------------------
    def missingRequirements(self) -> list:
        requirements = dependencies.read_requirements(self.module_dir / "Resources" / "requirements.txt")
        return dependencies.missing_requirements(requirements)

    def ensureDependencies(self, askConfirmation=True, modelPath=None, needTorch=None, status=None) -> bool:
        """Make the packages importable (torch only when no ONNX export of ``modelPath`` exists, or as
        ``needTorch`` says); False if declined.  ``status(text)`` is told before a long install starts."""
        if needTorch is None:
            needTorch = modelPath is None or panel.onnx_model_for(modelPath) is None
        return dependencies.ensure_in_slicer(slicer.util, ask_confirmation=askConfirmation, need_torch=needTorch,
                                             missing=self.missingRequirements, cuda_version=self.cudaDriverVersion,
                                             status=status)

    @staticmethod
    def cudaDriverVersion():
        return dependencies.cuda_driver_version()

    def bundledModelPath(self):
        return dependencies.find_bundled_model(self.module_dir)

    def bundledModelDescription(self) -> str:
        if self.bundledModelPath() is None:
            return "Bundled demo model: not installed"
        return "Bundled demo model (phantom, not for diagnosis)"

    def modelPathFromParameters(self, parameterNode) -> pathlib.Path:
        if parameterNode.useBundledModel:
            path = self.bundledModelPath()
            if path is None:
                raise T1ToT2Error("the bundled demo model is not installed: choose a model file or reinstall the extension")
            return path
        if not parameterNode.modelPath or not pathlib.Path(parameterNode.modelPath).is_file():
            raise T1ToT2Error(f"model file '{parameterNode.modelPath}' does not exist: choose a .safetensors or .onnx model file")
        return pathlib.Path(parameterNode.modelPath)

    def lastTrainedModel(self):
        value = self.settings.value(LAST_TRAINED_MODEL_SETTING)
        return pathlib.Path(value) if value and pathlib.Path(value).is_file() else None

    def adoptLastTrainedModel(self, parameterNode) -> bool:
        """Select the model the Training module wrote last, once per new model; True when it was selected."""
        path = self.lastTrainedModel()
        if parameterNode is None or path is None or self.settings.value(LAST_ADOPTED_MODEL_SETTING) == str(path):
            return False
        self.settings.setValue(LAST_ADOPTED_MODEL_SETTING, str(path))
        parameterNode.useBundledModel = False
        parameterNode.modelPath = path
        return True

    # --- synthesis --------------------------------------------------------------------------
    def synthesize(self, t1Node, modelPath, plane="auto", device="auto", precision="fp32", batchSize=8):
        """Synthesize in this process (blocks); returns the synthetic T2 node with the T1's geometry."""
        from ..inference import synthesize
        from ..networks import modelfile

        model = modelfile.load_model(modelPath)
        if plane == "auto":  # as the command line: fuse for models trained on every plane, else their plane
            plane = synthesize.default_plane(model)
        volume = synthesize.synthesize_volume(model, scene.volume_from_node(t1Node), plane=plane, device=device,
                                              precision=precision, batch_size=batchSize)
        return scene.create_or_update_synthetic_node(t1Node, volume, model.name, model_planes=model.planes)

    def loadPhantomSampleData(self) -> list:
        """The phantom's right hand as Sample Data loads it: T1 and T2 volumes and the tissue label map."""
        from ..phantom import render as phantom

        volumes = phantom.make_phantom(size="small", seed=0)
        t1 = scene.node_from_volume(volumes["right_t1"], "Phantom right t1")
        t2 = scene.node_from_volume(volumes["right_t2"], "Phantom right t2")
        labels = scene.labelmap_node_from_volume(volumes["right_labels"], "Phantom right labels")
        if self.parameter_node is not None:
            parameters = self.parameter_node()
            parameters.inputT1, parameters.acquiredT2 = t1, t2
        return [t1, t2, labels]

    @staticmethod
    def cliCommand(*args) -> list:
        """argv running ``t1tot2 ARGS`` with Slicer's Python through the runner script shipped in Resources."""
        from . import jobs

        return jobs.cli_command(*args, python=jobs.python_executable())

    startSynthesisJob = staticmethod(panel.start_synthesis_job)
    finishSynthesisJob = staticmethod(panel.finish_synthesis_job)
    synthesisNotes = staticmethod(scene.synthesis_notes)
    synthesisNotesText = staticmethod(panel.notes_text)
    modelName = staticmethod(panel.model_name)
    createProfileLine = staticmethod(scene.create_profile_line)

    # --- analysis --------------------------------------------------------------------------
    def showComparison(self, t1Node, acquiredNode, syntheticNode, orientation="auto", overlay="difference"):
        """T1 | acquired T2 | synthetic T2 in one row of the module's own linked compare views; returns the
        difference node or None."""
        shown = scene.show_comparison(t1Node, acquiredNode, syntheticNode, orientation=orientation, overlay=overlay,
                                      scene=slicer.mrmlScene, views=scene.SLICER_COMPARE_VIEWS)
        return shown["difference"]

    def computeMetrics(self, syntheticNode, acquiredNode, tableNode=None):
        """The metrics in this process (scripts and tests; the panel runs :func:`panel.start_metrics_job`)."""
        from ..core import metrics

        values = metrics.evaluate_volumes(scene.volume_from_node(syntheticNode), scene.volume_from_node(acquiredNode))
        return scene.metrics_table_node(values, node=tableNode)

    @staticmethod
    def lineProfile(lineNode, volumeNodes, previous=None):
        return scene.line_profile(lineNode, volumeNodes, previous=previous)

    @staticmethod
    def showPlot(chartNode):
        scene.show_plot(chartNode, scene=slicer.mrmlScene)

    def exportDicom(self, syntheticNode, t1Node, folder):
        """Write the synthetic T2 as a DICOM series; into a new subfolder named after the series when
        ``folder`` already holds files.  Returns the written paths."""
        from ..io.dicom_write import export_dicom_series

        description = f"{syntheticNode.GetName()} (synthetic, not for diagnosis)"
        return export_dicom_series(
            scene.volume_from_node(syntheticNode), export_folder(folder, syntheticNode.GetName()),
            reference=self.dicomReferenceFolder(t1Node), series_description=description,
            model_name=syntheticNode.GetAttribute(scene.MODEL_ATTRIBUTE), overwrite=False)

    @staticmethod
    def dicomReferenceFolder(volumeNode):
        """The folder of the DICOM files a volume was loaded from, or None."""
        path = scene.dicom_file(volumeNode)
        return None if path is None else path.parent


def export_folder(folder, series_name: str) -> pathlib.Path:
    """``folder`` when it is empty or new, else a new subfolder of it named after the series
    ("name", "name 2", ...): an export never mixes with the files already there."""
    folder = pathlib.Path(folder)
    if not folder.exists() or not any(folder.iterdir()):
        return folder
    base = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", series_name).strip(" .") or "T1ToT2 synthetic T2"
    candidate, number = folder / base, 2
    while candidate.exists():
        candidate, number = folder / f"{base} {number}", number + 1
    return candidate


class SynthesisPanel:
    """What the Synthesis widget does: its buttons, the synthesis and metrics jobs, the line profile."""

    def __init__(self, ui, logic, timer):
        self.ui, self.logic = ui, logic
        self.parameters = None
        self.jobs = JobController(ui, timer, on_idle=self.updateButtons)
        self.jobs.register("synthesis", self._finishSynthesis, self._onSynthesisEvents)
        self.jobs.register("metrics", self._finishMetrics)
        self._jobT1Node = None
        self.lineProfile = None

    def updateButtons(self, caller=None, event=None) -> None:
        p, ui = self.parameters, self.ui
        running = self.jobs.running
        hasModel = bool(p and (self.logic.bundledModelPath() if p.useBundledModel else p.modelPath and pathlib.Path(p.modelPath).is_file()))
        ui.synthesizeButton.enabled = bool(p and p.inputT1 and hasModel and not running)
        ui.synthesizeButton.toolTip = ("Make a synthetic T2 from the T1 volume" if ui.synthesizeButton.enabled
                                       else "Select a T1 volume and a model file")
        ui.modelPathLineEdit.enabled = bool(p and not p.useBundledModel)
        hasSynthetic = bool(p and p.syntheticT2)
        ui.compareButton.enabled = ui.lineProfileButton.enabled = ui.exportDicomButton.enabled = hasSynthetic
        hasErrorMap = bool(hasSynthetic and scene.error_map_node(p.syntheticT2))
        ui.showErrorMapCheckBox.enabled = hasErrorMap
        ui.showErrorMapCheckBox.toolTip = ("Show the synthetic T2's error map (how far each voxel can be trusted) "
                                           "instead of the difference map" if hasErrorMap else "This synthetic T2 has no error map")
        ui.metricsButton.enabled = bool(hasSynthetic and p.acquiredT2 and not running)

    def _status(self, text) -> None:
        self.ui.statusLabel.text = text
        if hasattr(slicer, "app") and hasattr(slicer.app, "processEvents"):
            slicer.app.processEvents()  # the busy message shows before pip blocks

    def synthesize(self) -> None:
        p = self.parameters
        modelPath = self.logic.modelPathFromParameters(p)
        # An exported ONNX model needs only ONNX Runtime (a small install), not PyTorch.
        if not self.logic.ensureDependencies(askConfirmation=True, modelPath=modelPath, status=self._status):
            return
        self._jobT1Node = p.inputT1
        workDir = tempfile.mkdtemp(prefix="T1ToT2-")
        job = self.logic.startSynthesisJob(p.inputT1, modelPath, p.plane, p.device, p.precision, workDir)
        job.workDir = getattr(job, "workDir", None) or workDir
        self.jobs.start(job, "synthesis", "Synthesizing...")

    def _onSynthesisEvents(self, events) -> None:
        for event in events:
            if event.get("event") == "slices" and event.get("total"):
                self.ui.progressBar.setValue(int(100 * event["done"] / event["total"]))

    def _finishSynthesis(self, job) -> None:
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled: no synthetic volume was made."
            return
        node = self.jobs.finish_or_show_log(job, lambda j: self.logic.finishSynthesisJob(j, self._jobT1Node),
                                            "Synthesis failed:")
        if node is None or self.parameters is None:
            return
        self.parameters.syntheticT2 = node
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        # The synthesis's notes (e.g. the T1 resampled to the model's voxel size) follow the result.
        self.ui.statusLabel.text = " ".join(filter(None, [
            f"Synthetic T2 '{node.GetName()}' made (not for diagnosis).", self.logic.synthesisNotesText(node)]))
        if self.parameters.acquiredT2:
            self.computeMetrics(status=self.ui.statusLabel.text)

    def computeMetrics(self, status=None) -> None:
        """NRMSE/PSNR/SSIM of the synthetic T2 against the acquired one, in a background process."""
        p = self.parameters
        job = panel.start_metrics_job(p.syntheticT2, p.acquiredT2, tempfile.mkdtemp(prefix="T1ToT2-metrics-"))
        self.jobs.start(job, "metrics", " ".join(filter(None, [status, "Computing the metrics..."])))

    def _finishMetrics(self, job) -> None:
        p = self.parameters
        if job.cancelled or p is None:
            self.ui.statusLabel.text = "Metrics cancelled."
            return
        table = self.jobs.finish_or_show_log(job, lambda j: panel.finish_metrics_job(j, table_node=p.metricsTable),
                                             "Metrics failed:")
        if table is not None:
            p.metricsTable = table
            self.ui.metricsTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = self.ui.statusLabel.text.replace("Computing the metrics...", "Metrics computed.")

    def compare(self) -> None:
        p = self.parameters
        overlay = "error" if p.showErrorMap and self.ui.showErrorMapCheckBox.enabled else "difference"
        self.logic.showComparison(p.inputT1, p.acquiredT2, p.syntheticT2, orientation=p.compareOrientation, overlay=overlay)

    def profile(self) -> None:
        p = self.parameters
        if not p.profileLine:
            # A line across the volume that the user then drags; the profile follows it.
            p.profileLine = self.logic.createProfileLine(p.syntheticT2)
        volumes = [n for n in (p.inputT1, p.acquiredT2, p.syntheticT2) if n]
        # The same table and chart every click; the previous profile stops following its line.
        self.lineProfile = self.logic.lineProfile(p.profileLine, volumes, previous=self.lineProfile)
        self.logic.showPlot(self.lineProfile.chart_node)

    def stopLineProfile(self) -> None:
        if self.lineProfile is not None:
            self.lineProfile.remove_observers()

    def exportDicom(self, folder) -> None:
        p = self.parameters
        written = self.logic.exportDicom(p.syntheticT2, p.inputT1, folder)
        where = pathlib.Path(written[0]).parent if written else folder
        self.ui.statusLabel.text = f"Wrote {len(written)} DICOM files to {where}."

    def parametersShown(self) -> None:
        """The panel is shown with its parameter node: offer a newly trained model, pick a T1 when none is."""
        p = self.parameters
        if self.logic.adoptLastTrainedModel(p):
            self.ui.statusLabel.text = "Using the model just trained in T1 to T2 Training."
        if not p.inputT1:
            # The first grey-scale volume (label maps are scalar volume nodes too, but never a T1).
            volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                       if not n.IsA("vtkMRMLLabelMapVolumeNode")]
            if volumes:
                p.inputT1 = volumes[0]

    def useLastTrained(self) -> None:
        path = self.logic.lastTrainedModel()
        if path is None:
            slicer.util.warningDisplay("No model has been trained in the T1 to T2 Training module yet.")
            return
        self.parameters.useBundledModel = False
        self.parameters.modelPath = path

    def sceneClosing(self) -> None:
        """The T1 the job reads and the node it would fill are about to go: stop both."""
        self.jobs.stop()
        self.stopLineProfile()
        self.lineProfile = None
        self.parameters = None
