"""What the two Slicer modules' panels do, without Qt: jobs, their arguments, progress text, evaluation.

The module files (``T1ToT2Synthesis.py``, ``T1ToT2Training.py``) are skins:
widgets, the parameter node and timers.  The work behind their buttons is
here, tested outside Slicer on a real slicer-core scene.  Parameter nodes are
read by attribute name (``trainT1``, ``epochs``...), so any object with those
attributes will do.  MRML is touched through :mod:`T1ToT2Lib.slicer.scene` only.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

from . import jobs, scene
from .settings import SynthesisSettings, TrainingSettings, path_is_empty
from ..io import files
from ..core import sequence
from ..core.errors import T1ToT2Error

PLANES = ("axial", "coronal", "sagittal")
#: The Training panel's check box that passes ``--align`` (the text T1ToT2Training.ui shows; messages name it).
ALIGN_OPTION_TEXT = "Align T2 to T1 (rigid registration)"
#: (T1 parameter, T2 parameter, what the user calls the pair) of the Training panel's T1/T2 pairs.
TRAINING_PAIRS = (("trainT1", "trainT2", "training"), ("validationT1", "validationT2", "validation"))


class JobError(T1ToT2Error):
    """A background job failed: the one-line message, with the job's whole log in :attr:`log`."""

    def __init__(self, message, log=""):
        super().__init__(message)
        self.log = log


# --- models -------------------------------------------------------------------------------------
def model_metadata(model_path) -> dict:
    """A model's metadata, from a ``.safetensors`` model file or an exported ``.onnx`` (no weights are loaded)."""
    path = pathlib.Path(model_path)
    if path.suffix.lower() == ".onnx":
        from ..inference.onnx_engine import load_onnx_model

        return load_onnx_model(path).metadata
    from ..networks.modelfile import read_metadata

    return read_metadata(path)


def model_name(model_path) -> str:
    """"<architecture> (<file name>)", the label synthetic nodes and DICOM series carry."""
    path = pathlib.Path(model_path)
    try:
        return f"{model_metadata(path)['config'].get('arch', 'model')} ({path.name})"
    except (T1ToT2Error, OSError, KeyError):
        return path.name


def model_planes(model_path):
    """The planes a model was trained on, or None when its metadata cannot be read."""
    try:
        return list(model_metadata(model_path)["planes"])
    except (T1ToT2Error, OSError, KeyError):
        return None


def onnx_model_for(model_path):
    """The ONNX model synthesis can run without PyTorch: the path itself if ``.onnx``, else an export beside it."""
    path = pathlib.Path(model_path)
    if path.suffix.lower() == ".onnx":
        return path
    sibling = path.with_suffix(".onnx")
    return sibling if sibling.is_file() else None


# --- synthesis job ------------------------------------------------------------------------------
def start_synthesis_job(t1_node, model_path, plane, device, precision, work_dir, python=None):
    """Start ``t1tot2 synthesize`` on the T1 node in a separate process; returns the running job.

    The node is written to ``work_dir/t1.nrrd``; the job writes
    ``work_dir/synthetic_t2.nrrd`` (:attr:`outputPath`).
    """
    work_dir = pathlib.Path(work_dir)
    t1_path = _write_node(t1_node, work_dir, "t1")
    output = work_dir / "synthetic_t2.nrrd"
    error_map = work_dir / "synthetic_t2_error_map.nrrd"
    settings = SynthesisSettings(pathlib.Path(model_path), plane=plane, device=device, precision=precision)
    argv = jobs.cli_command(*settings.asArgList(t1_path, output, error_map), python=python or jobs.python_executable())
    job = jobs.BackgroundJob(argv, outputs=[output, error_map])
    job.modelPath = pathlib.Path(model_path)
    job.outputPath = output
    job.errorMapPath = error_map
    return job.start()


def _raise_if_failed(job, what):
    job.wait(timeout=30)  # the process has ended; let the reader threads hand over its last lines
    job.poll()
    if job.returncode != 0 or job.error_message:
        message = job.error_message or f"the {what} process exited with status {job.returncode}"
        raise JobError(message, job.log_text)


def finish_synthesis_job(job, t1_node):
    """Load a finished job's output into the T1's synthetic node; raises :class:`JobError` on failure."""
    _raise_if_failed(job, "synthesis")
    done = [e for e in job.events if e.get("event") == "done"]
    output = pathlib.Path(done[-1]["output"]) if done else job.outputPath
    synthetic = files.read_volume(output)
    # The file holds the T1's geometry; reuse the node's exact matrix so no rounding creeps in.
    synthetic = scene.volume_from_node(t1_node).with_array(synthetic.array, notes=job_notes(job))
    node = scene.create_or_update_synthetic_node(t1_node, synthetic, model_name(job.modelPath),
                                                 model_planes=model_planes(job.modelPath))
    error_map = getattr(job, "errorMapPath", None)
    if error_map is not None and pathlib.Path(error_map).is_file():
        scene.create_or_update_error_map_node(node, synthetic.with_array(files.read_volume(error_map).array))
    return node


def job_notes(job) -> list:
    """The notes a finished ``t1tot2 synthesize`` job reported in its "done" event (e.g. the T1 resampled to the
    model's voxel size), in order; [] when it made none."""
    done = [e for e in job.events if e.get("event") == "done"]
    notes = done[-1].get("notes") if done else None
    return [str(n) for n in notes] if isinstance(notes, list) else []


def notes_text(node) -> str:
    """The notes a synthetic node's synthesis made, for the panel's status line: "Note: ... Note: ..." or ""."""
    return " ".join(f"Note: {n.rstrip('.')}." for n in scene.synthesis_notes(node))


# --- training job -------------------------------------------------------------------------------
def chosen_planes(parameters) -> list:
    return list(TrainingSettings.from_parameters(parameters).planes)


def check_training_pairs(parameters) -> None:
    """Refuse, in one line, a T1/T2 pair on two grids unless the panel asks to align it (``alignT2``).

    Training needs voxel-aligned pairs; a T2 on its own grid is registered and
    resampled onto its T1's by ``t1tot2 train --align`` (:data:`ALIGN_OPTION_TEXT`).
    """
    if parameters.alignT2:
        return
    listed = [(getattr(parameters, t1_key), getattr(parameters, t2_key), what) for t1_key, t2_key, what in TRAINING_PAIRS]
    extra = [(t1, t2, f"additional pair {n}") for n, (t1, t2) in enumerate(extra_training_pairs(parameters), start=1)]
    for t1_node, t2_node, what in listed + extra:
        if t1_node is None or t2_node is None or scene.nodes_share_grid(t1_node, t2_node):
            continue
        raise T1ToT2Error(
            f"the {what} T2 '{t2_node.GetName()}' is not on the {what} T1 '{t1_node.GetName()}''s voxel grid "
            f"(size, spacing, origin or orientation differ): tick '{ALIGN_OPTION_TEXT}' to register it and resample it "
            "onto the T1 grid before training")


def extra_training_pairs(parameters) -> list:
    """The (T1 node, T2 node) pairs a Training parameter node lists after its first pair (``extraTrainT1/T2``)."""
    t1s, t2s = (list(getattr(parameters, key, None) or []) for key in ("extraTrainT1", "extraTrainT2"))
    if len(t1s) != len(t2s):
        raise T1ToT2Error(f"{len(t1s)} additional T1 but {len(t2s)} additional T2: remove the pairs and add them again")
    return list(zip(t1s, t2s))


def add_extra_training_pair(parameters, t1_node, t2_node) -> None:
    """List (``t1_node``, ``t2_node``) after the Training parameter node's pairs; refuses, in one line, a missing
    volume, one volume as both, or a pair already there."""
    if t1_node is None or t2_node is None:
        raise T1ToT2Error("choose the T1 and the T2 of the pair to add")
    if t1_node is t2_node:
        raise T1ToT2Error(f"'{t1_node.GetName()}' cannot be both the T1 and the T2 of a pair: choose its T2")
    pairs = extra_training_pairs(parameters)
    if (t1_node, t2_node) in pairs + [(parameters.trainT1, parameters.trainT2)]:
        raise T1ToT2Error(f"the pair '{t1_node.GetName()}' / '{t2_node.GetName()}' is already a training pair")
    parameters.extraTrainT1 = [t1 for t1, _ in pairs] + [t1_node]  # new lists: the parameter node stores on assignment
    parameters.extraTrainT2 = [t2 for _, t2 in pairs] + [t2_node]


def remove_extra_training_pair(parameters, index) -> None:
    """Drop the ``index``-th additional pair (0-based; out of range: nothing to remove)."""
    pairs = extra_training_pairs(parameters)
    if 0 <= int(index) < len(pairs):
        del pairs[int(index)]
        parameters.extraTrainT1, parameters.extraTrainT2 = [t1 for t1, _ in pairs], [t2 for _, t2 in pairs]


def extra_pair_labels(parameters) -> list:
    return [f"{t1.GetName()}  /  {t2.GetName()}" for t1, t2 in extra_training_pairs(parameters)]


def default_epochs(model_type: str) -> int:
    """The constant-rate epochs the Training panel proposes for a model (the presets': the recommended
    refiner's schedule, as many decaying epochs follow; the paper's 15 for its GANs)."""
    return int(TrainingSettings.for_model(model_type).epochs)


@dataclasses.dataclass(frozen=True)
class CheckedTraining:
    """What :func:`check_training_data` accepted of a Training parameter node: the job is built from this, so the
    data one Start trains on is the data it checked, read once."""

    settings: TrainingSettings
    #: trainT1, trainT2, validationT1, validationT2 -> node (None when not chosen).
    nodes: dict
    #: The additional (T1 node, T2 node) pairs.
    extra: list
    output: pathlib.Path
    #: :meth:`TrainingSettings.check_data`'s record, handed to :meth:`TrainingSettings.asArgList`.
    data_check: tuple


def check_training_data(parameters) -> CheckedTraining:
    """What a Training parameter node asks to train, checked, or a one-line refusal of what ``t1tot2 train``
    would refuse (:meth:`TrainingSettings.check_data`); nothing is written or started."""
    p = parameters
    extra = extra_training_pairs(p)
    settings = TrainingSettings.from_parameters(p)
    other_data = extra or settings.pairs_csv or settings.phantom_subjects
    if (p.trainT1 is None) != (p.trainT2 is None) or (p.trainT1 is None and not other_data):
        raise T1ToT2Error("the training T1 or T2 volume is not selected: choose both (or generate the phantom)")
    if path_is_empty(p.outputModelPath):
        raise T1ToT2Error("no output model file is chosen: pick where to save the .safetensors model")
    check_training_pairs(p)
    data_check = settings.check_data(([(p.trainT1, p.trainT2)] if p.trainT1 is not None else []) + extra)
    nodes = {key: getattr(p, key) for key in ("trainT1", "trainT2", "validationT1", "validationT2")}
    return CheckedTraining(settings, nodes, extra, pathlib.Path(p.outputModelPath), data_check)


def train_arguments(parameters, work_dir, resume=False, checked=None) -> list:
    """The ``t1tot2 train`` arguments for a Training parameter node (its volumes are written to ``work_dir``).

    The command line itself comes from :class:`TrainingSettings`.  With ``alignT2`` the command gets ``--align``;
    without it, a pair on two grids is refused here in one line (:func:`check_training_pairs`), before anything
    is written.  ``checked`` is :func:`check_training_data`'s result when the caller has it (then the node is not
    checked again); without it the node is checked here.
    """
    work_dir = pathlib.Path(work_dir)
    checked = checked or check_training_data(parameters)
    paths = {key: _write_node(node, work_dir, key) for key, node in checked.nodes.items() if node is not None}
    extra_paths = [(_write_node(t1, work_dir, f"extraTrainT1_{n}"), _write_node(t2, work_dir, f"extraTrainT2_{n}"))
                   for n, (t1, t2) in enumerate(checked.extra, start=1)]
    return checked.settings.asArgList(paths.get("trainT1"), paths.get("trainT2"), checked.output,
                                      paths.get("validationT1"), paths.get("validationT2"), resume=resume,
                                      extra_pairs=extra_paths, checked=checked.data_check)


def _write_node(node, work_dir, name) -> pathlib.Path:
    """A volume node written to ``work_dir/name.nrrd`` with its exact geometry, for a background job, and its sequence
    parameters beside it when known (the job compares or records them)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    volume = scene.volume_from_node(node)
    path = files.write_volume(volume, work_dir / f"{name}.nrrd")
    if sequence.of(volume) is not None:
        files.write_sidecar(path, sequence.of(volume))
    return path


def start_training_job(parameters, work_dir, resume=False, python=None, checked=None):
    """Start ``t1tot2 train`` for a Training parameter node; returns the running job.  ``checked``: as for
    :func:`train_arguments`."""
    work_dir = pathlib.Path(work_dir)
    checked = checked or check_training_data(parameters)
    argv = jobs.cli_command(*train_arguments(parameters, work_dir, resume, checked),
                            python=python or jobs.python_executable())
    job = jobs.BackgroundJob(argv, outputs=[checked.output])
    job.workDir = work_dir
    job.outputPath = checked.output
    return job.start()


def finish_training_job(job) -> pathlib.Path:
    """The model a finished training job wrote; raises :class:`JobError` (with the whole log) on failure."""
    from ..networks.modelfile import read_metadata

    try:
        _raise_if_failed(job, "training")
    finally:
        shutil.rmtree(getattr(job, "workDir", "") or "", ignore_errors=True)
    done = [e for e in job.events if e.get("event") == "done"]
    path = pathlib.Path(done[-1]["model"]) if done else job.outputPath
    read_metadata(path)  # a readable T1ToT2 model, or a clear error
    return path


# --- alignment job ("show the aligned pair") ---------------------------------------------------
def start_alignment_job(t1_node, t2_node, work_dir, python=None):
    """Start ``t1tot2 align`` (rigid, mutual information; what ``train --align`` does) in a separate process.

    The nodes are written to ``work_dir``; the job writes the T2 resampled onto the T1 grid
    (:attr:`outputPath`) and the registration report (:attr:`reportPath`, JSON).
    """
    work_dir = pathlib.Path(work_dir)
    t1, t2 = scene.volume_from_node(t1_node), scene.volume_from_node(t2_node)
    work_dir.mkdir(parents=True, exist_ok=True)
    t1_path = files.write_volume(t1, work_dir / "t1.nrrd")
    t2_path = files.write_volume(t2, work_dir / "t2.nrrd")
    output, report = work_dir / "aligned_t2.nrrd", work_dir / "alignment.json"
    argv = jobs.cli_command("align", "--fixed", t1_path, "--moving", t2_path, "--out", output, "--json", report,
                              python=python or jobs.python_executable())
    job = jobs.BackgroundJob(argv, outputs=[output, report])
    job.workDir, job.outputPath, job.reportPath = work_dir, output, report
    return job.start()


def finish_alignment_job(job, t1_node, t2_node) -> dict:
    """The aligned T2 of a finished alignment job as a node on the T1's exact grid, with its report.

    Returns {"node", "report" (mutual information before/after, rotation, shift, matrix), "summary" (one line)};
    raises :class:`JobError` (with the whole log) when the job failed.  The work folder is removed.
    """
    import json

    from ..training.align import report_summary

    try:
        _raise_if_failed(job, "alignment")
        aligned = files.read_volume(job.outputPath)
        report = json.loads(pathlib.Path(job.reportPath).read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(getattr(job, "workDir", "") or "", ignore_errors=True)
    t1 = scene.volume_from_node(t1_node)
    if aligned.shape != t1.shape or not aligned.same_geometry(t1, tol=1e-4):
        raise T1ToT2Error(f"the aligned T2 is not on '{t1_node.GetName()}''s grid: was the T1 changed during the alignment? "
                          "Align again")
    # The file holds the T1's grid; the node gets the T1 node's exact matrix so no rounding creeps in.
    node = scene.create_or_update_aligned_node(t1_node, t2_node, t1.with_array(aligned.array), report)
    return {"node": node, "report": report, "summary": report_summary(report)}


def progress_fraction(event, total_epochs=None):
    """Fraction of the run done after a "step" event (``total_epochs`` comes from the "start" event), or None."""
    total = event.get("epochs") or total_epochs
    if event.get("event") == "step" and event.get("steps") and total:
        return ((event["epoch"] - 1) + event["step"] / event["steps"]) / total
    return None


def format_duration(seconds) -> str:
    """A rough, readable duration: "40 s", "3 min", "1 h 05 min"."""
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def progress_text(event, total_epochs=None):
    """The status line for a training "step" event (epoch, step and the time left, ``eta_s``), for the stages before
    the first epoch, or None."""
    if event.get("event") == "prior":
        return f"Trees fitted ({event.get('stages', 1)} stage(s), {event.get('seconds', 0):.0f} s)."
    if event.get("event") == "correction" and not event.get("trained", True):
        return f"CNN stage not trained: {event.get('reason', '')}"
    if event.get("event") == "gate":
        return "CNN stage kept: it improved the held-out pair." if event.get("kept") else \
            "CNN stage not kept: it did not improve the held-out pair, so the model is its trees."
    if event.get("event") != "step":
        return None
    total = event.get("epochs") or total_epochs
    text = f"Epoch {event.get('epoch')}" + (f"/{total}" if total else "")
    if event.get("steps"):
        text += f", step {event.get('step')}/{event['steps']}"
    if event.get("eta_s") is not None:
        text += f", about {format_duration(event['eta_s'])} left"
    return text


def cnn_stage_outcome(events) -> str:
    """What became of the refiner's CNN stage in a finished training job's events ("" when they say nothing)."""
    texts = [progress_text(e) for e in events if isinstance(e, dict) and e.get("event") in ("correction", "gate")]
    return next((t for t in reversed(texts) if t), "")


def record_event(event, loss_plot=None, validation_table=None) -> None:
    """Feed one training event to the loss chart ("step": a row at the run's global step) and the validation table."""
    if loss_plot is not None:
        loss_plot.add_event(event)
    scene.add_validation_row(validation_table, event)


# --- evaluation on the validation pair ----------------------------------------------------------
def evaluate_synthetic(synthetic_node, t1_node, t2_node, previous=None, orientation="auto", views=scene.COMPARE_VIEWS,
                       compute_metrics=True) -> dict:
    """Compare view, metrics table and line profile of a synthetic T2 against the acquired one.

    ``previous`` (the dict an earlier call returned) is reused: the same
    metrics table, profile line, profile table and chart, so evaluating after
    every training run does not pile up nodes; its nodes that left the scene
    (Close Scene) are made anew.  ``compute_metrics=False`` leaves the metrics
    to a background job (:func:`start_metrics_job`): "metrics" is then the
    previous table or None.  Returns {"synthetic", "difference", "metrics", "line", "profile"}.
    """
    live_scene = synthetic_node.GetScene()
    previous = {key: value for key, value in (previous or {}).items() if _in_scene(value, live_scene)}
    shown = scene.show_comparison(t1_node, t2_node, synthetic_node, orientation=orientation, views=views)
    table = previous.get("metrics")
    if compute_metrics:
        from ..core import metrics

        values = metrics.evaluate_volumes(scene.volume_from_node(synthetic_node), scene.volume_from_node(t2_node))
        table = scene.metrics_table_node(values, name=f"{synthetic_node.GetName()} metrics", node=table)
    line = previous.get("line") or scene.create_profile_line(synthetic_node)
    profile = scene.line_profile(line, [t1_node, t2_node, synthetic_node], previous=previous.get("profile"))
    return {"synthetic": synthetic_node, "difference": shown["difference"], "metrics": table, "line": line,
            "profile": profile}


def _in_scene(value, live_scene) -> bool:
    """Whether a node (or a LineProfile's table and chart) still belongs to ``live_scene``."""
    if isinstance(value, scene.LineProfile):
        return all(n.GetScene() is live_scene for n in (value.table_node, value.chart_node, value.line_node))
    return value is not None and hasattr(value, "GetScene") and value.GetScene() is live_scene


# --- metrics in a background process ------------------------------------------------------------
def start_metrics_job(synthetic_node, acquired_node, work_dir, synthetic_file=None, python=None):
    """Start ``t1tot2 evaluate`` (NRMSE/PSNR/SSIM per plane) in a separate process; returns the running job.

    The scoring runs in the child; here the volumes are only written (``synthetic_file``, a finished
    synthesis job's output, is used as it is).  An acquired T2 on another grid is resampled onto the
    synthetic's first, as the in-process evaluation does.  The metrics arrive in :attr:`jsonPath`.
    """
    work_dir = pathlib.Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if synthetic_file is None or not pathlib.Path(synthetic_file).is_file():
        synthetic_file = files.write_volume(scene.volume_from_node(synthetic_node), work_dir / "synthetic_t2.nrrd")
    acquired = scene.volume_from_node(acquired_node)
    if not scene.nodes_share_grid(synthetic_node, acquired_node):
        acquired = scene.resample_to(acquired, scene.volume_from_node(synthetic_node))
    acquired_path = files.write_volume(acquired, work_dir / "acquired_t2.nrrd")
    result = work_dir / "metrics.json"
    argv = jobs.cli_command("evaluate", synthetic_file, acquired_path, "--json", result,
                            python=python or jobs.python_executable())
    job = jobs.BackgroundJob(argv, outputs=[result])
    job.workDir, job.jsonPath = work_dir, result
    return job.start()


def finish_metrics_job(job, name="T1ToT2 metrics", table_node=None):
    """The metrics table of a finished :func:`start_metrics_job` (``table_node`` reused); raises :class:`JobError`."""
    import json

    try:
        _raise_if_failed(job, "metrics")
        values = json.loads(pathlib.Path(job.jsonPath).read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(getattr(job, "workDir", "") or "", ignore_errors=True)
    return scene.metrics_table_node(values, name=name, node=table_node)
