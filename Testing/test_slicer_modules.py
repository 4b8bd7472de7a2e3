"""The two Slicer modules' Logic, driven on a real headless MRML scene as the panels drive it.

The module files are loaded unchanged with stand-ins for Slicer's GUI layer
(``slicer_module_shim``); the volumes, tables, markups and background
processes are real.  When the networks and the bundled demo model are
present, the modules' own in-Slicer self-test classes run here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

import slicer  # noqa: E402
import slicer_module_shim  # noqa: E402
from conftest import cropped, oblique_direction  # noqa: E402
from slicer_scene import mrml_scene  # noqa: E402,F401  (fixture)

from T1ToT2Lib.slicer import scene as sc
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import read_volume
from T1ToT2Lib.slicer.jobs import BackgroundJob

ROOT = Path(__file__).resolve().parents[1]


def networks_available() -> bool:
    try:
        from T1ToT2Lib import networks

        return hasattr(networks, "build_generator")
    except ImportError:
        return False


needs_networks = pytest.mark.skipif(not networks_available(), reason="T1ToT2Lib.networks is not in this checkout yet")


@pytest.fixture
def modules(mrml_scene, tmp_path):
    """The two module files, imported with the shim, and their logics."""
    slicer_module_shim.install(tmp_path)
    import T1ToT2Synthesis
    import T1ToT2Training

    yield T1ToT2Synthesis, T1ToT2Training
    slicer_module_shim.uninstall()


def small_t1(shape=(6, 20, 24)) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.uniform(10, 200, size=shape).astype(np.float32)
    return Volume.from_geometry(array, spacing=(0.7, 1.1, 2.3), origin=(-12.0, 30.5, 7.25), direction=oblique_direction())


def fake_child(script: str, tmp_path) -> list:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(script))
    return [sys.executable, str(path)]


# --- loading --------------------------------------------------------------------------
def test_module_files_load_without_importing_torch_or_the_library(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / 'Testing')!r})
        import slicer_module_shim
        slicer_module_shim.install({str(tmp_path)!r})
        import T1ToT2Synthesis, T1ToT2Training
        print(sorted(m for m in sys.modules if m == "torch" or m.startswith("T1ToT2Lib")))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().replace("'", '"')) == []


def test_module_descriptions_warn_and_cite(modules):
    synthesis, training = modules
    for module_class in (synthesis.T1ToT2Synthesis, training.T1ToT2Training):
        parent = type("Parent", (), {})()
        module_class(parent)
        assert parent.title.startswith("T1 to T2")
        assert "not for diagnosis" in parent.helpText
        from T1ToT2Lib.core.about import CITATION

        assert CITATION in parent.acknowledgementText
    assert parent.dependencies == ["T1ToT2Synthesis"]


# --- synthesis ------------------------------------------------------------------------------
def test_finished_job_output_becomes_the_synthetic_node_with_the_t1_geometry(modules, tmp_path):
    synthesis, _ = modules
    logic = synthesis.T1ToT2SynthesisLogic()
    t1 = small_t1()
    t1_node = sc.node_from_volume(t1, "T1")
    out = tmp_path / "synthetic.nrrd"
    from T1ToT2Lib.io.files import write_volume

    write_volume(t1.with_array(t1.array * 2), tmp_path / "source.nrrd")
    argv = fake_child(f"""
        import json, shutil
        print(json.dumps({{"event": "slices", "done": 3, "total": 6}}), flush=True)
        shutil.copy({str(tmp_path / 'source.nrrd')!r}, {str(out)!r})
        print(json.dumps({{"event": "done", "output": {str(out)!r}}}), flush=True)
    """, tmp_path)
    job = BackgroundJob(argv)
    job.modelPath = tmp_path / "some_model.safetensors"  # unreadable: the node is labelled with its file name
    job.outputPath = out
    job.run_to_end(timeout=60)
    node = logic.finishSynthesisJob(job, t1_node)
    assert node.GetAttribute("T1ToT2.Synthetic") == "true"
    assert node.GetName() == "T1 synthetic T2"
    assert node.GetAttribute("T1ToT2.Model") == "some_model.safetensors"
    assert np.array_equal(sc.world_ijk_to_ras(node), sc.world_ijk_to_ras(t1_node))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), t1.array * 2, rtol=1e-6)
    again = logic.finishSynthesisJob(job, t1_node)
    assert again.GetID() == node.GetID()  # a second run updates the same node


def test_failed_job_raises_its_one_line_error(modules, tmp_path):
    synthesis, _ = modules
    logic = synthesis.T1ToT2SynthesisLogic()
    t1_node = sc.node_from_volume(small_t1(), "T1")
    job = logic.startSynthesisJob(t1_node, tmp_path / "missing.safetensors", "axial", "cpu", "fp32", tmp_path / "work")
    assert (tmp_path / "work" / "t1.nrrd").is_file()  # the node went to the child as a file
    assert read_volume(tmp_path / "work" / "t1.nrrd").same_geometry(sc.volume_from_node(t1_node), tol=1e-5)
    job.run_to_end(timeout=120)
    with pytest.raises(T1ToT2Error) as info:
        logic.finishSynthesisJob(job, t1_node)
    assert "missing.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert t1_node.GetNodeReference("T1ToT2.Synthetic") is None or not job.returncode == 0


def test_child_command_finds_the_library_next_to_the_module(modules, tmp_path):
    synthesis, _ = modules
    argv = synthesis.T1ToT2SynthesisLogic().cliCommand("--version")
    assert argv[1] == str(ROOT / "T1ToT2Synthesis" / "Resources" / "t1tot2_child.py")  # a shipped runner, no -c
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    from T1ToT2Lib import __version__

    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and f"t1tot2 {__version__}" in lines, result.stderr
    assert json.loads(lines[-1]) == {"event": "exit", "code": 0}


def test_model_choice_bundled_or_file_with_clear_errors(modules, tmp_path):
    synthesis, _ = modules
    logic = synthesis.T1ToT2SynthesisLogic()
    p = logic.getParameterNode()
    assert (p.plane, p.device, p.precision, p.useBundledModel) == ("auto", "auto", "fp32", True)
    bundled = logic.bundledModelPath()
    if bundled is None:
        with pytest.raises(T1ToT2Error, match="bundled demo model is not installed"):
            logic.modelPathFromParameters(p)
        assert "not installed" in logic.bundledModelDescription()
    else:
        assert logic.modelPathFromParameters(p) == bundled
        assert "not for diagnosis" in logic.bundledModelDescription()
    p.useBundledModel = False
    p.modelPath = tmp_path / "nope.safetensors"
    with pytest.raises(T1ToT2Error, match="does not exist: choose a .safetensors"):
        logic.modelPathFromParameters(p)
    model = tmp_path / "mine.safetensors"
    model.write_bytes(b"x")
    p.modelPath = model
    assert logic.modelPathFromParameters(p) == model


def test_compare_metrics_profile_and_dicom_export(modules, tmp_path):
    synthesis, _ = modules
    logic = synthesis.T1ToT2SynthesisLogic()
    t1 = small_t1(shape=(10, 20, 24))  # metrics need 8 voxels along every axis (grid energy E_8)
    t1_node = sc.node_from_volume(t1, "T1")
    acquired = sc.node_from_volume(t1.with_array(t1.array + 5), "T2")
    synthetic = sc.create_or_update_synthetic_node(t1_node, t1.with_array(t1.array + 1), "test model")

    difference = logic.showComparison(t1_node, acquired, synthetic)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), -4.0, atol=1e-4)
    assert logic.showComparison(t1_node, None, synthetic) is None

    table = logic.computeMetrics(synthetic, acquired)
    columns = sc.table_columns(table)
    assert columns["Plane"][-1] == "all planes"
    assert all(v < 1.0 for v in columns["SSIM mean"])  # a 4-unit offset is not perfect agreement

    line = logic.createProfileLine(synthetic)
    assert line.GetNumberOfControlPoints() == 2
    profile = logic.lineProfile(line, [t1_node, acquired, synthetic])
    profile.update()
    values = sc.table_columns(profile.table_node)
    assert profile.table_node.GetNumberOfRows() > 10
    series = [np.asarray(v, dtype=float) for k, v in values.items() if k not in list(values)[:1]]
    finite = [s[np.isfinite(s)] for s in series]
    assert any(len(f) for f in finite)
    profile.remove_observers()

    written = logic.exportDicom(synthetic, t1_node, tmp_path / "dicom")
    assert len(written) == t1.shape[0]
    import pydicom

    ds = pydicom.dcmread(str(written[0]))
    assert "SYNTHETIC" in ds.SeriesDescription.upper() and "DERIVED" in list(ds.ImageType)
    assert logic.dicomReferenceFolder(t1_node) is None  # not loaded from DICOM


def test_compare_button_lines_up_the_three_volumes_in_one_orientation(modules, tmp_path):
    """After Compare the three slice composite nodes hold T1, acquired and synthetic T2, in one orientation."""
    synthesis, _ = modules
    widget = _synthesis_widget(synthesis)
    p = widget._parameterNode
    t1 = small_t1(shape=(10, 20, 24))
    p.inputT1 = sc.node_from_volume(t1, "T1")
    p.acquiredT2 = sc.node_from_volume(t1.with_array(t1.array + 5), "T2")
    # A model trained on sagittal slices only: "auto" shows the sagittal plane.
    p.syntheticT2 = sc.create_or_update_synthetic_node(p.inputT1, t1.with_array(t1.array + 1), "m", model_planes=["sagittal"])
    widget.panel.updateButtons()
    assert widget.ui.compareButton.enabled and not widget.ui.showErrorMapCheckBox.enabled  # no error map yet
    assert p.compareOrientation == "auto"
    widget.panel.compare()
    composites = [sc._slice_composite_node(slicer.mrmlScene, v) for v in sc.SLICER_COMPARE_VIEWS]
    assert [c.GetBackgroundVolumeID() for c in composites] == [p.inputT1.GetID(), p.acquiredT2.GetID(), p.syntheticT2.GetID()]
    orientations = [slicer.mrmlScene.GetSingletonNode(v, "vtkMRMLSliceNode").GetOrientation() for v in sc.SLICER_COMPARE_VIEWS]
    assert orientations == ["Sagittal"] * 3
    difference = slicer.mrmlScene.GetNodeByID(composites[2].GetForegroundVolumeID())
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), -4.0, atol=1e-4)
    assert composites[0].GetForegroundVolumeID() is None and composites[1].GetForegroundVolumeID() is None

    p.compareOrientation = "axial"
    error = sc.node_from_volume(t1.with_array(np.abs(t1.array - 100)), "error map")
    p.syntheticT2.SetNodeReferenceID(sc.ERROR_MAP_REFERENCE_ROLE, error.GetID())
    p.showErrorMap = True
    widget.panel.updateButtons()
    assert widget.ui.showErrorMapCheckBox.enabled
    widget.panel.compare()
    assert [slicer.mrmlScene.GetSingletonNode(v, "vtkMRMLSliceNode").GetOrientation() for v in sc.SLICER_COMPARE_VIEWS] == ["Axial"] * 3
    assert composites[2].GetForegroundVolumeID() == error.GetID()


# --- training ------------------------------------------------------------------------------
def test_train_arguments_follow_the_panel(modules, tmp_path):
    _, training = modules
    logic = training.T1ToT2TrainingLogic()
    p = logic.getParameterNode()
    t1 = small_t1()
    p.trainT1 = sc.node_from_volume(t1, "T1")
    p.outputModelPath = tmp_path / "out" / "model.safetensors"
    with pytest.raises(T1ToT2Error, match="training T1 or T2 volume is not selected"):
        logic.trainArguments(p, tmp_path / "work")
    p.trainT2 = sc.node_from_volume(t1.with_array(t1.array * 0.5), "T2")
    p.planeAxial = p.planeCoronal = p.planeSagittal = False
    with pytest.raises(T1ToT2Error, match="tick at least one"):
        logic.trainArguments(p, tmp_path / "work")
    p.planeAxial = p.planeSagittal = True
    p.modelType, p.residualBlocks, p.learningRate, p.epochs = "cyclegan", 5, 1e-4, 3
    args = logic.trainArguments(p, tmp_path / "work", resume=True)
    option = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith("--") and not args[i + 1].startswith("--")}
    assert args[0] == "train" and args[-1] == "--resume"
    assert option["--planes"] == "axial,sagittal" and option["--model"] == "cyclegan" and option["--n-blocks"] == "5"
    assert float(option["--lr"]) == 1e-4 and option["--epochs"] == "3" and option["--progress"] == "json"
    assert read_volume(option["--t2"]).same_geometry(t1, tol=1e-5)
    assert "--val-t1" not in option and "--max-steps-per-epoch" not in option
    assert Path(option["--checkpoint-dir"]).name == "model.checkpoints"
    p.modelType = "pix2pix"
    assert "--n-blocks" not in logic.trainArguments(p, tmp_path / "work")
    # The arguments are ones the real command line accepts.
    from T1ToT2Lib.cli import build_parser

    parsed = build_parser().parse_args(args)
    assert parsed.resume and parsed.model == "cyclegan" and parsed.n_blocks == 5


def test_phantom_nodes_and_label_maps(modules):
    _, training = modules
    logic = training.T1ToT2TrainingLogic()
    nodes = logic.generatePhantomNodes()
    assert set(nodes) >= {"left_t1", "left_t2", "right_t1", "right_t2", "left_labels", "right_labels"}
    from T1ToT2Lib.phantom import render as phantom

    expected = phantom.make_phantom(size="small", seed=0)
    for key in ("left_t1", "right_t2"):
        assert np.allclose(sc.world_ijk_to_ras(nodes[key]), expected[key].ijk_to_ras)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(nodes[key]), expected[key].array)
        assert "Phantom" in nodes[key].GetName() and not nodes[key].IsA("vtkMRMLLabelMapVolumeNode")
    labels = nodes["right_labels"]
    assert labels.IsA("vtkMRMLLabelMapVolumeNode")  # outlines in the views, out of the grey-scale selectors
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labels), expected["right_labels"].array.astype(np.int16))
    assert np.allclose(sc.world_ijk_to_ras(labels), expected["right_labels"].ijk_to_ras)


def test_sample_data_offers_the_phantom_with_labels_as_a_label_map(modules, monkeypatch):
    """Registered and clicked through a Sample Data double that follows Slicer 5.8/5.10 (Testing/slicer_doubles.py):
    a registration without uris raises TypeError there, as it does in Slicer."""
    synthesis, _ = modules
    from slicer_doubles import sample_data_module

    sample_data = sample_data_module()
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    asked = []
    logic_class = synthesis.T1ToT2SynthesisLogic
    monkeypatch.setattr(logic_class, "ensureDependencies",
                        lambda self, askConfirmation=True, modelPath=None, needTorch=None, status=None: asked.append((askConfirmation, needTorch)) or True,
                        raising=False)
    composite = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")  # a slice view's layers
    parent = type("Parent", (), {})()
    synthesis.T1ToT2Synthesis(parent)
    signal, slot = slicer.app.connections[-1]
    assert signal == "startupCompleted()"
    slot()  # the application has started
    (source,) = sample_data.SampleDataLogic.sources["T1ToT2"]
    assert source.sampleName == "T1ToT2 hand phantom" and Path(source.thumbnailFileName).is_file()
    assert source.nodeNames == synthesis.PHANTOM_SAMPLE_NODE_NAMES
    sample_data.SampleDataLogic.clickSampleButton("T1ToT2 hand phantom")
    assert asked == [(True, False)]  # the phantom's packages are installed first (asking), never PyTorch
    nodes = [slicer.util.getNode(name) for name in source.nodeNames]
    assert [n.GetClassName() for n in nodes] == ["vtkMRMLScalarVolumeNode", "vtkMRMLScalarVolumeNode",
                                                 "vtkMRMLLabelMapVolumeNode"]
    assert composite.GetBackgroundVolumeID() == nodes[0].GetID()  # the T1 is shown
    assert composite.GetLabelVolumeID() == nodes[2].GetID()
    p = synthesis.T1ToT2SynthesisLogic().getParameterNode()
    assert p.inputT1 is nodes[0] and p.acquiredT2 is nodes[1]  # two clicks: load, then Synthesize T2


def test_sample_data_double_refuses_what_slicer_refuses():
    """The double raises where Slicer's SampleDataSource does (SampleData.py:205), so the test above can fail."""
    from slicer_doubles import sample_data_module

    logic = sample_data_module().SampleDataLogic
    with pytest.raises(TypeError):
        logic.registerCustomSampleDataSource(category="T", sampleName="s", nodeNames=["a"], customDownloader=print)
    with pytest.raises(ValueError):
        logic.registerCustomSampleDataSource(category="T", sampleName="s", uris=["u1", "u2"], fileNames=["f1"])
    with pytest.raises(TypeError):
        logic.registerCustomSampleDataSource(category="T", sampleName="s", sampleDescription="d", uris="u", fileNames="f")


def test_devices_are_offered_by_hardware_not_by_operating_system(modules, monkeypatch):
    """CUDA only where an NVIDIA driver is installed, MPS only on Apple silicon with macOS 12.3+ (issue 21 item 8);
    the module files' load-time copies agree with the library on every faked machine."""
    import os
    import platform
    import shutil

    synthesis, training = modules
    from T1ToT2Lib.core import dependencies

    assert synthesis.DEVICE_CHOICES == training.DEVICE_CHOICES == dependencies.this_machines_devices()
    cases = [("Linux", "x86_64", False, "", ["auto", "cpu"]), ("Linux", "x86_64", True, "", ["auto", "cuda", "cpu"]),
             ("Windows", "AMD64", False, "", ["auto", "cpu"]), ("Windows", "AMD64", True, "", ["auto", "cuda", "cpu"]),
             ("Darwin", "arm64", False, "14.2", ["auto", "mps", "cpu"]), ("Darwin", "arm64", False, "11.7", ["auto", "cpu"]),
             ("Darwin", "x86_64", False, "14.2", ["auto", "cpu"])]
    for system, machine, nvidia, release, expected in cases:
        monkeypatch.setattr(platform, "system", lambda: system)
        monkeypatch.setattr(platform, "machine", lambda: machine)
        monkeypatch.setattr(platform, "mac_ver", lambda: (release, ("", "", ""), machine))
        monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/nvidia-smi" if nvidia and name == "nvidia-smi" else None)
        monkeypatch.setattr(os.path, "exists", lambda path: False)
        assert dependencies.offered_devices(system, machine, nvidia, release) == expected
        assert synthesis._offeredDevices() == training._offeredDevices() == dependencies.this_machines_devices() == expected


def test_finished_training_is_offered_to_the_synthesis_module(modules, tmp_path):
    synthesis, training = modules
    logic = training.T1ToT2TrainingLogic()
    job = BackgroundJob(fake_child('print(\'{"event": "error", "message": "T2 grid differs: resample it"}\'); raise SystemExit(2)', tmp_path))
    job.workDir = tmp_path / "inputs"
    job.outputPath = tmp_path / "model.safetensors"
    job.run_to_end(timeout=60)
    with pytest.raises(T1ToT2Error, match="T2 grid differs: resample it"):
        logic.finishTrainingJob(job)
    assert synthesis.T1ToT2SynthesisLogic().lastTrainedModel() is None


def write_fake_model(path):
    """A model file with real metadata (no usable network): enough for the panels' bookkeeping."""
    import torch

    from T1ToT2Lib.networks.modelfile import save_model

    return save_model(path, {"weight": torch.zeros(2)}, {"config": {"arch": "pix2pix"}, "planes": ["axial"],
                                                       "in_channels": 1, "intensity": {"t2_scale": 1.0}})


def test_training_panel_follows_a_job_to_the_end(modules, tmp_path, monkeypatch):
    """The Start button's flow: loss chart, progress, per-epoch table, model offered to Synthesis."""
    synthesis, training = modules
    widget = _training_widget(training)
    assert not widget.ui.startButton.enabled  # nothing selected yet

    p = widget._parameterNode
    t1 = small_t1()
    p.trainT1, p.trainT2 = sc.node_from_volume(t1, "T1"), sc.node_from_volume(t1, "T2")
    p.outputModelPath = tmp_path / "model.safetensors"
    widget.panel.updateButtons()
    assert widget.ui.startButton.enabled and not widget.ui.residualBlocksSpinBox.enabled  # the refiner has no ResNet blocks
    # The recommended refiner is the default, with its schedule; choosing another model proposes that model's epochs.
    from T1ToT2Lib.training.presets import RECOMMENDED

    assert p.modelType == RECOMMENDED["model"] and p.epochs == RECOMMENDED["training"]["epochs"]
    p.modelType = "pix2pix"
    widget.panel.updateButtons()  # what the parameter node's ModifiedEvent runs in Slicer
    assert p.epochs == 15 and not widget.ui.residualBlocksSpinBox.enabled  # the paper's 15 epochs
    p.modelType = "unit"
    widget.panel.updateButtons()
    assert widget.ui.residualBlocksSpinBox.enabled
    p.modelType = "pix2pix"
    widget.panel.updateButtons()
    # Another parameter node (a reloaded scene) keeps its own model and epochs.
    other = training.T1ToT2TrainingParameterNode({"modelType": "unit", "epochs": 3})
    widget.setParameterNode(other)
    assert other.modelType == "unit" and other.epochs == 3
    widget.setParameterNode(p)
    assert p.modelType == "pix2pix" and p.epochs == 15

    events = [{"event": "start", "epochs": 2, "steps_per_epoch": 2}]
    for epoch in (1, 2):
        events += [{"event": "step", "epoch": epoch, "step": step, "steps": 2, "losses": {"G_GAN": 1.0 / (epoch + step), "G_L1": 0.5}}
                   for step in (1, 2)]
        events.append({"event": "epoch", "epoch": epoch, "losses": {"G_L1": 0.5},
                       "val_metrics": {"nrmse": 0.2 / epoch, "psnr": 20.0 + epoch, "ssim": 0.5}})
    events.append({"event": "done", "model": str(p.outputModelPath)})
    lines = "".join(f"print({json.dumps(json.dumps(e))}, flush=True)\ntime.sleep(0.02)\n" for e in events[:-1])
    script = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT / 'Testing')!r})
{lines}
from test_slicer_modules import write_fake_model
write_fake_model({str(p.outputModelPath)!r})
print({json.dumps(json.dumps(events[-1]))}, flush=True)
"""

    def fake_start(parameterNode, resume=False, workDir=None, checked=None):
        job = BackgroundJob(fake_child(script, tmp_path))
        job.workDir, job.outputPath = tmp_path / "inputs", Path(parameterNode.outputModelPath)
        return job.start()

    monkeypatch.setattr(widget.logic, "startTrainingJob", fake_start)
    widget.panel.startTraining(resume=False)
    assert widget.panel.jobs.timer.active and widget.ui.cancelButton.visible and not widget.ui.startButton.enabled
    import time

    deadline = time.time() + 120
    while widget.panel.jobs.job is not None:
        assert time.time() < deadline
        widget.panel.jobs.poll()
        time.sleep(0.02)

    assert not widget.panel.jobs.timer.active and not widget.ui.cancelButton.visible and widget.ui.startButton.enabled
    assert widget.ui.progressBar.value == 100
    losses = sc.table_columns(widget.panel.lossPlot.table_node)
    assert losses["Step"] == [1.0, 2.0, 3.0, 4.0] and losses["G_GAN"][0] == pytest.approx(0.5)
    table = sc.table_columns(p.validationTable)
    assert table["Epoch"] == [1.0, 2.0] and table["NRMSE"] == pytest.approx([0.2, 0.1])
    assert widget.ui.validationTableView.tableNode is p.validationTable
    assert "Model saved" in widget.ui.statusLabel.text
    # The Synthesis panel picks the new model up when it is shown, once (a later choice is the user's).
    synthesis_logic = synthesis.T1ToT2SynthesisLogic()
    offered = synthesis_logic.getParameterNode()
    assert synthesis.T1ToT2SynthesisLogic().lastTrainedModel() == p.outputModelPath
    assert synthesis_logic.adoptLastTrainedModel(offered)
    assert offered.useBundledModel is False and Path(offered.modelPath) == p.outputModelPath
    offered.useBundledModel = True
    assert not synthesis_logic.adoptLastTrainedModel(offered) and offered.useBundledModel


def test_synthesis_panel_runs_cancels_and_reports(modules, tmp_path, monkeypatch):
    synthesis, _ = modules
    widget = _synthesis_widget(synthesis)
    p = widget._parameterNode
    t1 = small_t1()
    p.inputT1 = sc.node_from_volume(t1, "T1")
    p.useBundledModel = False
    p.modelPath = write_fake_model(tmp_path / "model.safetensors")
    widget.panel.updateButtons()
    assert widget.ui.synthesizeButton.enabled and not widget.ui.compareButton.enabled

    slow = fake_child("""
import json, time
print(json.dumps({"event": "slices", "done": 1, "total": 4}), flush=True)
time.sleep(60)
""", tmp_path)
    monkeypatch.setattr(widget.logic, "startSynthesisJob",
                        lambda *a, **k: BackgroundJob(slow).start())
    widget.panel.synthesize()
    assert widget.ui.cancelButton.visible and not widget.ui.synthesizeButton.enabled
    import time

    deadline = time.time() + 120  # a hang guard, not a speed bound
    while widget.ui.progressBar.value != 25:
        assert time.time() < deadline
        widget.panel.jobs.poll()
        time.sleep(0.02)
    widget.panel.jobs.cancel()
    assert widget.panel.jobs.job is not None  # the panel does not wait for the process: its timer notices the end
    while widget.panel.jobs.job is not None:
        assert time.time() < deadline
        widget.panel.jobs.poll()
        time.sleep(0.02)
    assert "Cancelled" in widget.ui.statusLabel.text and p.syntheticT2 is None
    assert widget.ui.synthesizeButton.enabled and not widget.ui.cancelButton.visible


# --- end to end, with real networks ----------------------------------------------------------
@needs_networks
@pytest.mark.slow
def test_training_job_then_background_synthesis_equals_in_process(modules, tmp_path):
    synthesis, training = modules
    train_logic = training.T1ToT2TrainingLogic()
    p = train_logic.getParameterNode()
    t1 = small_t1(shape=(8, 32, 32))
    t2 = t1.with_array(np.sqrt(t1.array) * 10)
    p.trainT1, p.trainT2 = sc.node_from_volume(t1, "T1"), sc.node_from_volume(t2, "T2")
    p.validationT1, p.validationT2 = p.trainT1, p.trainT2
    p.planeCoronal = p.planeSagittal = False
    p.modelType = "pix2pix"  # a tiny U-Net: the job's plumbing, not the recommended model, is under test
    p.epochs, p.generatorWidth, p.maxStepsPerEpoch, p.batchSize, p.device = 2, 4, 1, 2, "cpu"
    p.outputModelPath = tmp_path / "tiny.safetensors"
    job = train_logic.startTrainingJob(p, workDir=tmp_path / "inputs")
    loss_plot = train_logic.newLossPlot()
    table = train_logic.newValidationTable()
    job.run_to_end(timeout=300)
    for event in job.events:
        train_logic.recordEvent(event, loss_plot, table)
    model = train_logic.finishTrainingJob(job)
    assert model == p.outputModelPath and model.is_file()
    assert sc.table_columns(loss_plot.table_node)["Step"] == [1.0, 2.0]  # numbered over the run
    assert table.GetNumberOfRows() == 2
    assert synthesis.T1ToT2SynthesisLogic().lastTrainedModel() == model
    offered = synthesis.T1ToT2SynthesisLogic().getParameterNode()
    assert synthesis.T1ToT2SynthesisLogic().adoptLastTrainedModel(offered)
    assert offered.useBundledModel is False and Path(offered.modelPath) == model

    logic = synthesis.T1ToT2SynthesisLogic()
    t1_node = p.trainT1
    job = logic.startSynthesisJob(t1_node, model, "axial", "cpu", "fp32", tmp_path / "synth")
    job.run_to_end(timeout=300)
    background = slicer.util.arrayFromVolume(logic.finishSynthesisJob(job, t1_node)).copy()
    in_process = logic.synthesize(t1_node, model, plane="auto", device="cpu")  # axial-only model: auto = axial
    np.testing.assert_allclose(slicer.util.arrayFromVolume(in_process), background, rtol=1e-4, atol=1e-3)
    assert np.array_equal(sc.world_ijk_to_ras(in_process), sc.world_ijk_to_ras(t1_node))


@needs_networks
@pytest.mark.slow
def test_training_module_self_test_runs_headless(modules):
    _, training = modules
    result = training.T1ToT2TrainingTest("test_train_one_tiny_epoch_on_phantom").run()
    assert result.wasSuccessful(), (result.failures + result.errors)[0][1]


@needs_networks
@pytest.mark.slow
def test_synthesis_module_self_test_runs_headless(modules):
    synthesis, _ = modules
    if synthesis.T1ToT2SynthesisLogic().bundledModelPath() is None:
        pytest.skip("Resources/demo_model.safetensors is not in this checkout yet")
    result = synthesis.T1ToT2SynthesisTest("test_synthesize_phantom_with_bundled_model").run()
    assert result.wasSuccessful(), (result.failures + result.errors)[0][1]


# --- dependencies inside Slicer ------------------------------------------------------------------
@pytest.fixture
def slicer_installers(monkeypatch):
    """Record pip installs and answer the confirmation dialog; no package is really installed."""
    calls = {"pip": [], "asked": [], "answer": True}

    def confirm(text, *args, **kwargs):
        calls["asked"].append(text)
        return calls["answer"]

    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls["pip"].append(args), raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm, raising=False)
    return calls


def test_missing_torch_is_installed_through_pytorchutils_when_present(modules, slicer_installers, monkeypatch):
    synthesis, _ = modules
    from T1ToT2Lib.core import dependencies

    requested = []

    class FakePyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            requested.append((askConfirmation, torchVersionRequirement))
            return object()

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = FakePyTorchUtilsLogic
    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    logic = synthesis.T1ToT2SynthesisLogic()
    monkeypatch.setattr(logic.library, "missingRequirements", lambda: [])
    assert logic.ensureDependencies(askConfirmation=True)
    assert requested == [(True, ">=2.1")]
    assert slicer_installers["pip"] == []


def test_without_pytorchutils_the_user_is_asked_and_slicer_packages_are_pinned(modules, slicer_installers, monkeypatch):
    synthesis, _ = modules
    from T1ToT2Lib.core import dependencies

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails as if the extension were absent
    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    logic = synthesis.T1ToT2SynthesisLogic()
    monkeypatch.setattr(logic.library, "cudaDriverVersion", lambda: None)
    monkeypatch.setattr(logic.library, "missingRequirements", lambda: ["scikit-image>=0.21"])

    slicer_installers["answer"] = False
    assert not logic.ensureDependencies(askConfirmation=True)
    assert len(slicer_installers["asked"]) == 1 and "PyTorch" in slicer_installers["asked"][0]
    assert slicer_installers["pip"] == []

    slicer_installers["answer"] = True
    assert logic.ensureDependencies(askConfirmation=True)
    torch_args, requirement_args = slicer_installers["pip"]
    assert torch_args.startswith('"torch>=2.1"')
    if platform_is_mac():
        assert "--index-url" not in torch_args
    else:
        assert torch_args.endswith("--index-url https://download.pytorch.org/whl/cpu")
    assert requirement_args.startswith('"scikit-image>=0.21" -c ')
    constraints = Path(requirement_args.split("-c ", 1)[1].strip('"'))
    import numpy

    assert f"numpy=={numpy.__version__}" in constraints.read_text().split()


def test_installed_requirements_need_no_prompt(modules, slicer_installers):
    synthesis, _ = modules
    assert synthesis.T1ToT2SynthesisLogic().missingRequirements() == []
    assert synthesis.T1ToT2SynthesisLogic().ensureDependencies(askConfirmation=True)
    assert slicer_installers["asked"] == [] and slicer_installers["pip"] == []


def platform_is_mac() -> bool:
    import platform

    return platform.system() == "Darwin"


# --- panels: scene close, failures, reuse ---------------------------------------------------------
def _training_widget(training):
    """The module's widget set up over stand-in widgets and timer (what setup() does with the .ui and a QTimer)."""
    widget = training.T1ToT2TrainingWidget()
    widget.setupPanel(slicer_module_shim.fake_ui(ROOT / "T1ToT2Training" / "Resources" / "UI" / "T1ToT2Training.ui"),
                      slicer_module_shim.FakeTimer())
    widget.setParameterNode(widget.logic.getParameterNode())
    return widget


def _synthesis_widget(synthesis):
    widget = synthesis.T1ToT2SynthesisWidget()
    widget.setupPanel(slicer_module_shim.fake_ui(ROOT / "T1ToT2Synthesis" / "Resources" / "UI" / "T1ToT2Synthesis.ui"),
                      slicer_module_shim.FakeTimer())
    widget.setParameterNode(widget.logic.getParameterNode())
    return widget


SLEEPER = """
import json, os, time
print(json.dumps({"event": "start", "epochs": 3, "pid": os.getpid()}), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("which", ["training", "synthesis"])
def test_closing_the_scene_cancels_a_running_job(modules, tmp_path, which):
    psutil = pytest.importorskip("psutil")
    synthesis, training = modules
    widget = _training_widget(training) if which == "training" else _synthesis_widget(synthesis)
    job = BackgroundJob(fake_child(SLEEPER, tmp_path)).start()
    job.workDir = tmp_path / "work"
    widget.panel.jobs.register("sleep", lambda job: None)
    widget.panel.jobs.start(job, "sleep", "sleeping")
    import time

    deadline = time.time() + 60
    while not job.poll() and not job.events:
        assert time.time() < deadline
        time.sleep(0.02)
    child = psutil.Process(job.events[0]["pid"])
    widget.onSceneStartClose(None, None)
    assert widget.panel.jobs.job is None and widget._parameterNode is None
    assert not widget.panel.jobs.timer.active  # no polling into a closed scene
    assert not job.is_running and job.cancelled
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


def test_a_failed_training_shows_its_whole_log(modules, tmp_path, monkeypatch):
    _, training = modules
    widget = _training_widget(training)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append((text, kw)), raising=False)
    failing = fake_child("""
import sys
for n in range(40):
    print(f"log line {n}", file=sys.stderr)
print("t1tot2 train: error: the T2 grid differs from the T1 grid: add --align", file=sys.stderr)
raise SystemExit(2)
""", tmp_path)
    job = BackgroundJob(failing).start()
    job.workDir, job.outputPath = tmp_path / "inputs", tmp_path / "model.safetensors"
    widget.panel.jobs.start(job, "train", "Training...")
    import time

    deadline = time.time() + 60
    while widget.panel.jobs.job is not None:
        assert time.time() < deadline
        widget.panel.jobs.poll()
        time.sleep(0.02)
    ((text, kwargs),) = shown
    assert "add --align" in text and "log line 0" not in text  # the one-line error...
    assert "log line 0" in kwargs["detailedText"] and "log line 39" in kwargs["detailedText"]  # ...and the full log
    assert "Training failed" in widget.ui.statusLabel.text


def test_training_status_shows_epoch_step_and_time_left(modules):
    _, training = modules
    widget = _training_widget(training)
    widget.panel._onTrainingEvents([{"event": "start", "epochs": 15},
                          {"event": "step", "epoch": 3, "step": 40, "steps": 290, "losses": {"G": 1.0}, "eta_s": 754}])
    assert widget.ui.statusLabel.text == "Epoch 3/15, step 40/290, about 13 min left"
    assert widget.ui.progressBar.value == int(100 * (2 + 40 / 290) / 15)


def test_evaluate_button_starts_a_background_job_and_does_not_block(modules, tmp_path, monkeypatch):
    _, training = modules
    widget = _training_widget(training)
    p = widget._parameterNode
    t1 = small_t1(shape=(10, 20, 24))
    p.validationT1 = sc.node_from_volume(t1, "val T1")
    p.validationT2 = sc.node_from_volume(t1.with_array(t1.array + 2), "val T2")
    p.outputModelPath = tmp_path / "model.safetensors"
    from T1ToT2Lib.io.files import write_volume

    write_volume(t1.with_array(t1.array + 1), tmp_path / "source.nrrd")
    started = []

    def fake_evaluation(modelPath, validationT1Node, workDir=None):
        out = tmp_path / "synthetic_t2.nrrd"
        job = BackgroundJob(fake_child(f"""
import json, shutil, time
time.sleep(0.5)
shutil.copy({str(tmp_path / 'source.nrrd')!r}, {str(out)!r})
print(json.dumps({{"event": "done", "output": {str(out)!r}}}), flush=True)
""", tmp_path))
        job.modelPath, job.outputPath, job.workDir = Path(modelPath), out, tmp_path / "eval"
        started.append(job)
        return job.start()

    monkeypatch.setattr(widget.logic, "startEvaluationJob", fake_evaluation)
    import time

    for run in range(2):
        widget.panel.evaluate()
        assert widget.panel.jobs.kind == "evaluate" and widget.panel.jobs.job.is_running  # returned at once, the job still runs
        deadline = time.time() + 60
        while widget.panel.jobs.job is not None:
            assert time.time() < deadline
            widget.panel.jobs.poll()
            time.sleep(0.02)
        assert "metrics table" in widget.ui.statusLabel.text
        if run == 0:
            counts = [slicer.mrmlScene.GetNumberOfNodesByClass(c) for c in
                      ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLMarkupsLineNode")]
    assert [slicer.mrmlScene.GetNumberOfNodesByClass(c) for c in
            ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLMarkupsLineNode")] == counts  # reused, not piled up
    widget.logic._evaluation["profile"].remove_observers()


def test_line_profile_button_reuses_its_table_and_chart(modules):
    synthesis, _ = modules
    widget = _synthesis_widget(synthesis)
    p = widget._parameterNode
    t1 = small_t1(shape=(10, 20, 24))
    p.inputT1 = sc.node_from_volume(t1, "T1")
    p.syntheticT2 = sc.create_or_update_synthetic_node(p.inputT1, t1.with_array(t1.array + 1), "m")
    widget.panel.profile()
    first = widget.panel.lineProfile
    widget.panel.profile()
    assert widget.panel.lineProfile.table_node is first.table_node and widget.panel.lineProfile.chart_node is first.chart_node
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 1
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode") == 1
    widget.panel.stopLineProfile()


def test_self_tests_skip_with_a_message_when_dependencies_are_missing(modules, monkeypatch):
    synthesis, training = modules
    from T1ToT2Lib.core import dependencies

    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    for test_class in (synthesis.T1ToT2SynthesisTest, training.T1ToT2TrainingTest):
        messages = []
        test = test_class("runTest")
        monkeypatch.setattr(test, "delayDisplay", lambda message, msec=None: messages.append(message))
        monkeypatch.setattr(slicer.util, "pip_install", lambda *a: pytest.fail("a self-test must not install"),
                            raising=False)
        test.runTest()
        assert len(messages) == 1 and "skipped" in messages[0] and "torch" in messages[0]


def test_an_exported_onnx_model_needs_no_pytorch_install(modules, slicer_installers, monkeypatch, tmp_path):
    synthesis, _ = modules
    from T1ToT2Lib.core import dependencies

    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    monkeypatch.setattr(dependencies, "torch_installed", lambda: False)
    logic = synthesis.T1ToT2SynthesisLogic()
    monkeypatch.setattr(logic.library, "missingRequirements", lambda: [])
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x")
    slicer_installers["answer"] = False  # a PyTorch prompt would be declined
    assert not logic.ensureDependencies(askConfirmation=True, modelPath=model)  # no export: PyTorch is needed
    assert "PyTorch" in slicer_installers["asked"][0]
    slicer_installers["asked"].clear()
    (tmp_path / "model.onnx").write_bytes(b"x")  # exported beside it: ONNX Runtime is enough
    assert logic.ensureDependencies(askConfirmation=True, modelPath=model)
    assert logic.ensureDependencies(askConfirmation=True, modelPath=tmp_path / "model.onnx")
    assert slicer_installers["asked"] == [] and slicer_installers["pip"] == []


def test_panel_picks_the_first_grey_scale_volume_never_a_label_map(modules):
    synthesis, _ = modules
    from T1ToT2Lib.core.volume import Volume

    labels = sc.labelmap_node_from_volume(Volume.from_geometry(np.ones((4, 5, 6)), spacing=(1, 1, 1)), "labels")
    t1 = sc.node_from_volume(small_t1(), "T1")
    widget = _synthesis_widget(synthesis)
    widget.initializeParameterNode()
    assert widget._parameterNode.inputT1 is t1 and labels.IsA("vtkMRMLScalarVolumeNode")


# --- real scans: the align box, the aligned pair, the voxel-size note --------------------------------
def _cropped_right_hand(spacing_mm=None):
    """A crop of the phantom's right hand around its middle (seconds, not minutes), optionally resampled."""
    from T1ToT2Lib.phantom.render import make_phantom
    from T1ToT2Lib.inference.preprocess import resample_to_spacing

    t1 = make_phantom("small", seed=0)["right_t1"]
    k, _, i = np.array(t1.shape) // 2
    crop = cropped(t1, k=slice(k - 20, k + 20), i=slice(i - 24, i + 24))
    if spacing_mm is None:
        return crop
    fine = resample_to_spacing(crop, (spacing_mm,) * 3)
    fine.meta = dict(crop.meta)  # interpolated by a console, it keeps its acquisition's header (the VIBE's timing)
    return fine


def _run_widget_job(widget):
    """Poll a module widget's background job (training or synthesis) to its end."""
    import time

    deadline = time.time() + 300  # a hang guard, not a speed bound
    while widget.panel.jobs.job is not None:
        assert time.time() < deadline
        widget.panel.jobs.poll()
        time.sleep(0.05)


@pytest.mark.slow
def test_training_panel_asks_for_the_align_box_then_aligns_and_shows_the_pair(modules, tmp_path, monkeypatch):
    """A T2 on its own grid: Start says to tick the box (one message, no job); Show aligned pair registers it in the
    background and loads it on the T1's exact grid with MI before/after and the transform in the status line."""
    import xml.etree.ElementTree as ET

    from test_align import TOL_DEG, TOL_MM, expected_in_ras, oblique_grid

    from T1ToT2Lib.training.align import resample_onto
    from T1ToT2Lib.phantom.render import make_phantom

    _, training = modules
    widget = _training_widget(training)
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append((text, kw)), raising=False)
    monkeypatch.setattr(widget.logic, "startTrainingJob", lambda *a, **k: pytest.fail("no training may start"))
    hand = make_phantom("small", seed=0, misregistration=True)
    t1, t2 = hand["left_t1"], hand["left_t2"]
    moved = resample_onto(t2, oblique_grid(t2))  # the T2 as a scanner would give it: its own rotated 1.2 mm grid
    p = widget._parameterNode
    p.trainT1, p.trainT2 = sc.node_from_volume(t1, "VIBE"), sc.node_from_volume(moved, "SPACE")
    p.outputModelPath = tmp_path / "model.safetensors"
    widget.panel.updateButtons()
    assert widget.ui.showAlignedButton.enabled and widget.ui.startButton.enabled

    # Unticked: one message naming the box exactly as the panel shows it, no traceback, no job.
    ui = ET.parse(ROOT / "T1ToT2Training" / "Resources" / "UI" / "T1ToT2Training.ui").getroot()
    (box,) = [w for w in ui.iter("widget") if w.get("name") == "alignT2CheckBox"]
    box_text = next(prop.find("string").text for prop in box.findall("property") if prop.get("name") == "text")
    assert box_text == "Align T2 to T1 (rigid registration)"
    assert p.alignT2 is False  # off by default
    widget.panel.startTraining(resume=False)
    ((text, kwargs),) = shown
    assert f"tick '{box_text}'" in text and "'SPACE'" in text and "'VIBE'" in text and "\n" not in text
    assert "detailedText" not in kwargs and "Traceback" not in text
    assert box_text in widget.ui.statusLabel.text and widget.panel.jobs.job is None

    # Ticked: the job is started with --align, which the real command line accepts.
    p.alignT2 = True
    args = widget.logic.trainArguments(p, tmp_path / "work")
    from T1ToT2Lib.cli import build_parser

    assert "--align" in args and build_parser().parse_args(args).align

    # Show aligned pair: the real `t1tot2 align` in the background, polled by the panel's timer.
    red = sc._slice_composite_node(slicer.mrmlScene, "Red")  # the headless scene has no views of its own
    widget.panel.showAligned()
    assert widget.panel.jobs.kind == "align" and widget.panel.jobs.timer.active and not widget.ui.showAlignedButton.enabled
    _run_widget_job(widget)
    aligned = p.trainT2.GetNodeReference(sc.ALIGNED_REFERENCE_ROLE)
    assert aligned is not None and aligned.GetName() == "SPACE aligned to VIBE"
    assert np.array_equal(sc.world_ijk_to_ras(aligned), sc.world_ijk_to_ras(p.trainT1))  # the T1's exact grid
    assert slicer.util.arrayFromVolume(aligned).shape == t1.shape
    report = sc.alignment_report(aligned)
    angles, shift = expected_in_ras(t2.meta["misregistration"], "left")  # the phantom's recorded motion
    np.testing.assert_array_less(np.abs(np.asarray(report["rotation_deg_ras"]) - angles), TOL_DEG)
    np.testing.assert_array_less(np.abs(np.asarray(report["translation_mm_ras"]) - shift), TOL_MM)
    assert report["mutual_information_after"] > report["mutual_information_before"]
    status = widget.ui.statusLabel.text
    assert (f"mutual information {report['mutual_information_before']:.4f} -> {report['mutual_information_after']:.4f}"
            in status)
    assert f"{report['rotation_deg_ras'][0]:+.3f}" in status and f"{report['translation_mm_ras'][2]:+.3f} mm" in status
    assert red.GetBackgroundVolumeID() == p.trainT1.GetID() and red.GetForegroundVolumeID() == aligned.GetID()
    assert widget.ui.showAlignedButton.enabled and widget.panel.jobs.kind is None

    # A T2 already on the T1's grid needs no alignment: said, and no job.
    p.trainT2 = sc.node_from_volume(t2, "SPACE on the T1 grid")
    widget.panel.showAligned()
    assert widget.panel.jobs.job is None and "already shares the T1's grid" in widget.ui.statusLabel.text


@pytest.mark.slow
def test_synthesis_panel_shows_the_voxel_size_note_of_a_1mm_t1(modules, tmp_path, slicer_installers):
    """A 1.5 mm T1 interpolated to 1.0 mm through the bundled 1.5 mm model in the background job: the note that it
    looks interpolated (so the trees ran on its acquired 1.5 mm) reaches the status line."""
    synthesis, _ = modules
    widget = _synthesis_widget(synthesis)
    if widget.logic.bundledModelPath() is None:
        pytest.skip("Resources/demo_model.safetensors is not in this checkout yet")
    fine = _cropped_right_hand(spacing_mm=1.0)
    assert np.allclose(fine.spacing, 1.0)
    p = widget._parameterNode
    p.inputT1, p.useBundledModel, p.plane, p.device = sc.node_from_volume(fine, "T1 1mm"), True, "coronal", "cpu"
    widget.panel.updateButtons()
    widget.panel.synthesize()
    assert slicer_installers["asked"] == []
    _run_widget_job(widget)
    node = p.syntheticT2
    assert node is not None, widget.ui.statusLabel.text
    assert np.array_equal(sc.world_ijk_to_ras(node), sc.world_ijk_to_ras(p.inputT1))  # on the 1 mm T1's own grid
    (note,) = widget.logic.synthesisNotes(node)
    assert "looks interpolated from about [1.5, 1.5, 1.5] mm onto its [1.0, 1.0, 1.0] mm grid" in note
    status = widget.ui.statusLabel.text
    assert status.startswith("Synthetic T2 'T1 1mm synthetic T2' made (not for diagnosis).")
    assert f"Note: {note.rstrip('.')}." in status

    # The same T1 at the model's own 1.5 mm: nothing to note, and the status says nothing more.
    native = sc.node_from_volume(_cropped_right_hand(), "T1 native")
    in_process = widget.logic.synthesize(native, widget.logic.bundledModelPath(), plane="coronal", device="cpu")
    assert widget.logic.synthesisNotes(in_process) == [] and widget.logic.synthesisNotesText(in_process) == ""
    again = widget.logic.synthesize(p.inputT1, widget.logic.bundledModelPath(), plane="coronal", device="cpu")
    assert again.GetID() == node.GetID() and widget.logic.synthesisNotes(again) == [note]  # in-process synthesis keeps its note too


def test_a_t1_from_slicers_dicom_module_is_noted_when_the_model_learnt_another_vibe(modules, tmp_path, slicer_installers,
                                                                                  monkeypatch):
    """The DICOM module leaves the series' instance UIDs on the node and its files in the database (a double that
    follows Slicer 5.8/5.10, Testing/slicer_doubles.py): the T1's TR, TE and flip are read from there, travel to the
    background job beside the T1 it writes, and the status says the bundled model learnt another VIBE; a database
    that is closed or does not hold the files leaves the sequence unknown (synthesis then says it is unchecked)."""
    import pydicom
    from slicer_doubles import DICOMDatabase
    from test_dicom import write_fake_t1

    synthesis, _ = modules
    widget = _synthesis_widget(synthesis)
    paths = write_fake_t1(_cropped_right_hand(), tmp_path / "series")
    uids = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "9", "3", "12"
        ds.save_as(path)
        uids[str(ds.SOPInstanceUID)] = path
    loaded = read_volume(tmp_path / "series")
    loaded.meta.clear()  # as the DICOM module loads it: pixels, geometry and the UIDs, nothing of T1ToT2's
    node = sc.node_from_volume(loaded, "T1 VIBE other")
    assert node.GetAttribute(sc.SEQUENCE_ATTRIBUTE) is None
    node.SetAttribute("DICOM.instanceUIDs", " ".join(["Unknown", *uids]))
    database = DICOMDatabase(uids)
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    assert sc.volume_from_node(node).meta["sequence_parameters"] == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}
    assert database.asked[0] != "Unknown" and widget.logic.dicomReferenceFolder(node) == tmp_path / "series"
    # Every background job (synthesis, training) gets its volumes through one writer, which puts the sequence beside.
    from T1ToT2Lib.slicer import panel

    written = read_volume(panel._write_node(node, tmp_path / "job", "t1"))
    assert written.meta["sequence_parameters"] == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}

    p = widget._parameterNode
    p.inputT1, p.useBundledModel, p.plane, p.device = node, True, "coronal", "cpu"
    widget.panel.updateButtons()
    widget.panel.synthesize()
    _run_widget_job(widget)
    synthetic = p.syntheticT2
    assert synthetic is not None, widget.ui.statusLabel.text
    (note,) = [n for n in widget.logic.synthesisNotes(synthetic) if "tissue contrast" in n]
    assert "TR 9 ms, TE 3 ms, flip 12°" in note and "TR 13.5 ms, TE 6 ms, flip 10°" in note
    assert f"Note: {note.rstrip('.')}." in widget.ui.statusLabel.text

    database.isOpen = False
    assert "sequence_parameters" not in sc.volume_from_node(node).meta
    database.isOpen = True
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4")  # an instance the database does not hold
    assert "sequence_parameters" not in sc.volume_from_node(node).meta


def test_a_t1_added_from_a_file_brings_the_sequence_of_its_bids_sidecar(mrml_scene, tmp_path):
    """Add Data loads a file through the volumes logic, whose storage node keeps the file's name
    (vtkSlicerVolumesLogic.cxx: InitializeStorageNode's SetFileName and AddArchetypeVolume's ReadData, lines 502 and
    615 at v5.8.0, 463 and 570 at v5.10.0): the BIDS sidecar beside that file (dcm2niix writes one) gives the T1's
    TR, TE and flip; without one, or with one that cannot be read, they stay unknown."""
    from T1ToT2Lib.io.files import write_sidecar, write_volume

    path = write_volume(_cropped_right_hand(), tmp_path / "t1.nii.gz")
    logic = mrml_scene._t1tot2_logics[1]["Volumes"]
    node = logic.AddArchetypeVolume(str(path), "T1 from a file")
    assert node is not None and node.GetAttribute(sc.SEQUENCE_ATTRIBUTE) is None
    assert "sequence_parameters" not in sc.volume_from_node(node).meta
    write_sidecar(path, {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0})
    assert sc.volume_from_node(node).meta["sequence_parameters"] == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}
    (tmp_path / "t1.json").write_text("{\"RepetitionTime\": 0.009,")  # cut short
    assert "sequence_parameters" not in sc.volume_from_node(node).meta
