"""T1ToT2Lib.slicer.panel and the scene helpers behind the two modules' panels, on a real headless MRML scene."""

import json
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("slicer")

import slicer  # noqa: E402
from slicer_scene import mrml_scene  # noqa: E402,F401  (fixture)

from T1ToT2Lib.slicer import panel
from T1ToT2Lib.slicer import scene as sc
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.slicer.jobs import BackgroundJob


def test_progress_fraction_and_status_text_with_eta():
    step = {"event": "step", "epoch": 2, "step": 5, "steps": 10, "losses": {"G_L1": 0.5}, "eta_s": 185.0}
    assert panel.progress_fraction(step, total_epochs=4) == pytest.approx(0.375)
    assert panel.progress_fraction(step) is None  # total unknown before the "start" event
    assert panel.progress_fraction({"event": "epoch", "epoch": 1}, 4) is None
    assert panel.progress_text(step, 4) == "Epoch 2/4, step 5/10, about 3 min left"
    assert panel.progress_text({"event": "epoch", "epoch": 2}, 4) is None
    assert [panel.format_duration(s) for s in (0, 42.4, 89, 3599, 3600 + 5 * 60)] == [
        "0 s", "42 s", "1 min", "1 h 00 min", "1 h 05 min"]


def test_validation_table_appends_rows_and_is_emptied_for_a_new_run(mrml_scene):
    table = sc.validation_table_node()
    assert not sc.add_validation_row(table, {"event": "epoch", "epoch": 1, "val_metrics": None})
    assert not sc.add_validation_row(table, {"event": "step", "epoch": 1})
    assert sc.add_validation_row(table, {"event": "epoch", "epoch": 1, "val_metrics": {"nrmse": 0.1, "psnr": 20.0, "ssim": 0.5}})
    assert sc.add_validation_row(table, {"event": "epoch", "epoch": 2, "val_metrics": {"nrmse": 0.05, "psnr": 25.0, "ssim": 0.7}})
    columns = sc.table_columns(table)
    assert list(columns) == list(sc.VALIDATION_COLUMNS)
    assert columns["Epoch"] == [1.0, 2.0] and columns["PSNR (dB)"] == [20.0, 25.0]
    assert sc.validation_table_node(table) is table and table.GetNumberOfRows() == 0  # Start again empties it


def test_record_event_numbers_steps_over_the_whole_run(mrml_scene):
    plot, table = sc.LossPlot(), sc.validation_table_node()
    for epoch in (1, 2):
        for step in (1, 2, 3):
            panel.record_event({"event": "step", "epoch": epoch, "step": step, "steps": 3, "losses": {"G": float(step)}},
                               plot, table)
        panel.record_event({"event": "epoch", "epoch": epoch, "val_metrics": {"nrmse": 0.1, "psnr": 20, "ssim": 0.5}},
                           plot, table)
    assert sc.table_columns(plot.table_node)["Step"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert table.GetNumberOfRows() == 2


def _parameters(**values):
    defaults = dict(trainT1=None, trainT2=None, validationT1=None, validationT2=None, modelType="pix2pix",
                    generatorWidth=16, residualBlocks=9, contextSlices=3, upsampling="resize", planeAxial=True,
                    planeCoronal=False, planeSagittal=True, epochs=2, learningRate=2e-4, batchSize=1,
                    maxStepsPerEpoch=0, device="cpu", outputModelPath=None, alignT2=False)
    defaults.update(values)
    return type("Parameters", (), defaults)()


def test_train_arguments_need_an_output_model(mrml_scene, tmp_path):
    t1 = Volume.from_geometry(np.ones((4, 8, 8), np.float32), spacing=(1, 1, 1))
    p = _parameters(trainT1=sc.node_from_volume(t1, "T1"), trainT2=sc.node_from_volume(t1, "T2"))
    with pytest.raises(sc.T1ToT2Error, match="no output model file is chosen"):
        panel.train_arguments(p, tmp_path)
    p.outputModelPath = tmp_path / "m.safetensors"
    args = panel.train_arguments(p, tmp_path / "work")
    assert args[args.index("--planes") + 1] == "axial,sagittal" and args[args.index("--out") + 1] == str(p.outputModelPath)


def test_refiner_training_uses_its_own_schedule_not_the_gan_settings(mrml_scene, tmp_path):
    from T1ToT2Lib.cli import build_parser

    from T1ToT2Lib.cli.train import _check_correction
    from T1ToT2Lib.training.presets import training_defaults

    t1 = Volume.from_geometry(np.ones((4, 8, 8), np.float32), spacing=(1, 1, 1))
    pair = {"trainT1": sc.node_from_volume(t1, "T1"), "trainT2": sc.node_from_volume(t1, "T2")}
    validation = {"validationT1": sc.node_from_volume(t1, "V1"), "validationT2": sc.node_from_volume(t1, "V2")}
    for judged in (True, False):
        p = _parameters(**pair, **(validation if judged else {}), modelType="refiner",
                        outputModelPath=tmp_path / "r.safetensors", epochs=6)
        args = panel.train_arguments(p, tmp_path / "work")
        assert args[args.index("--model") + 1] == "refiner" and args[args.index("--correction") + 1] == "auto"
        for gan_only in ("--upsample", "--n-blocks", "--lr", "--batch-size", "--ngf", "--context"):
            assert gan_only not in args
        parsed = build_parser().parse_args(args)  # the CLI accepts exactly these arguments...
        _check_correction(parsed, training_defaults("refiner"))  # ...and its check of the CNN's options passes
        if judged:  # a validation pair judges the CNN stage: it trains with the panel's epochs
            assert parsed.epochs == 6 and parsed.epochs_decay == 6 and parsed.checkpoint_dir
        else:  # one pair alone: the model is its trees, so no epochs or checkpoints are asked for
            assert "--epochs" not in args and "--checkpoint-dir" not in args


def test_a_pair_on_two_grids_needs_the_align_box_and_the_box_passes_align(mrml_scene, tmp_path):
    from T1ToT2Lib.cli import build_parser

    rng = np.random.default_rng(4)
    t1 = Volume.from_geometry(rng.uniform(10, 100, (6, 10, 12)).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    other_grid = Volume.from_geometry(rng.uniform(10, 100, (6, 10, 12)).astype(np.float32), spacing=(1.0, 1.0, 2.0),
                                      origin=(0.0, 0.5, 0.0))  # same size, shifted half a voxel: not the T1's grid
    t1_node, t2_node = sc.node_from_volume(t1, "T1 VIBE"), sc.node_from_volume(other_grid, "T2 SPACE")
    p = _parameters(trainT1=t1_node, trainT2=t2_node, outputModelPath=tmp_path / "m.safetensors")
    work = tmp_path / "work"
    with pytest.raises(sc.T1ToT2Error) as info:
        panel.train_arguments(p, work)
    message = str(info.value)
    assert "\n" not in message and f"tick '{panel.ALIGN_OPTION_TEXT}'" in message
    assert "training T2 'T2 SPACE'" in message and "training T1 'T1 VIBE'" in message
    assert not work.exists()  # refused before any volume was written

    p.alignT2 = True
    args = panel.train_arguments(p, work)
    assert args.count("--align") == 1 and build_parser().parse_args(args).align

    # A training pair on one grid and a validation pair on two: the message names the validation pair.
    p.alignT2, p.trainT2 = False, sc.node_from_volume(t1.with_array(t1.array + 1), "T2 on the T1 grid")
    p.validationT1, p.validationT2 = t1_node, t2_node
    with pytest.raises(sc.T1ToT2Error, match="the validation T2 'T2 SPACE' is not on the validation T1"):
        panel.check_training_pairs(p)
    p.validationT2 = p.trainT2
    args = panel.train_arguments(p, work)
    assert "--align" not in args and not build_parser().parse_args(args).align


def test_synthesis_notes_reach_the_node_and_a_rerun_without_notes_clears_them(mrml_scene, tmp_path):
    from T1ToT2Lib.io.files import write_volume

    t1 = Volume.from_geometry(np.full((4, 8, 8), 7.0, np.float32), spacing=(1.0, 1.0, 1.0), origin=(3, 2, 1))
    t1_node = sc.node_from_volume(t1, "T1")
    source = write_volume(t1.with_array(np.full(t1.shape, 9.0, np.float32)), tmp_path / "source.nrrd")
    notes = ["T1 voxel size [1.0, 1.0, 1.0] mm differs (a 33% difference)", "second note."]
    nodes = []
    for run_notes in (notes, None):
        out = tmp_path / "synthetic_t2.nrrd"
        done = {"event": "done", "output": str(out)} | ({"notes": run_notes} if run_notes is not None else {})
        script = tmp_path / "child.py"
        script.write_text(f"import json, shutil\nshutil.copy({str(source)!r}, {str(out)!r})\n"
                          f"print(json.dumps({done!r}), flush=True)\n")
        job = BackgroundJob([sys.executable, str(script)])
        job.modelPath, job.outputPath = tmp_path / "model.safetensors", out
        job.run_to_end(timeout=60)
        assert panel.job_notes(job) == (run_notes or [])
        nodes.append(panel.finish_synthesis_job(job, t1_node))
        if run_notes:
            assert sc.synthesis_notes(nodes[-1]) == notes
            assert panel.notes_text(nodes[-1]) == (
                "Note: T1 voxel size [1.0, 1.0, 1.0] mm differs (a 33% difference). Note: second note.")
    assert nodes[0] is nodes[1]  # the re-run updated the same node...
    assert sc.synthesis_notes(nodes[1]) == [] and panel.notes_text(nodes[1]) == ""  # ...and its old notes are gone
    assert nodes[1].GetAttribute(sc.NOTES_ATTRIBUTE) is None


def _fake_synthesis_job(tmp_path, source, model_path):
    """A child that writes ``source`` where the synthesis job's output goes, as t1tot2 synthesize would."""
    out = tmp_path / "synthetic_t2.nrrd"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import json, shutil
        shutil.copy({str(source)!r}, {str(out)!r})
        print(json.dumps({{"event": "done", "output": {str(out)!r}}}), flush=True)
    """))
    job = BackgroundJob([sys.executable, str(script)])
    job.modelPath, job.outputPath = model_path, out
    return job


def test_evaluation_reuses_its_table_line_and_chart(mrml_scene, tmp_path):
    from T1ToT2Lib.io.files import write_volume

    rng = np.random.default_rng(2)
    t1 = Volume.from_geometry(rng.uniform(10, 100, (10, 20, 24)).astype(np.float32), spacing=(1.0, 1.2, 2.0))
    t1_node, t2_node = sc.node_from_volume(t1, "val T1"), sc.node_from_volume(t1.with_array(t1.array + 4), "val T2")
    write_volume(t1.with_array(t1.array + 1), tmp_path / "source.nrrd")
    counts = []
    previous = None
    for run in range(3):
        job = _fake_synthesis_job(tmp_path, tmp_path / "source.nrrd", tmp_path / "model.safetensors")
        job.run_to_end(timeout=60)
        synthetic = panel.finish_synthesis_job(job, t1_node)
        previous = panel.evaluate_synthetic(synthetic, t1_node, t2_node, previous=previous)
        counts.append([mrml_scene.GetNumberOfNodesByClass(c) for c in (
            "vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLMarkupsLineNode",
            "vtkMRMLScalarVolumeNode")])
    assert counts[0] == counts[1] == counts[2], counts
    assert counts[0][:4] == [2, 1, 3, 1]  # metrics + profile tables, one chart with 3 series, one line
    np.testing.assert_allclose(slicer.util.arrayFromVolume(previous["difference"]), -3.0, atol=1e-4)
    assert sc.table_columns(previous["metrics"])["Plane"][-1] == "all planes"
    previous["profile"].remove_observers()


def test_evaluation_runs_in_a_background_process_on_the_models_plane(mrml_scene, tmp_path):
    t1 = Volume.from_geometry(np.ones((4, 8, 8), np.float32), spacing=(1, 1, 1))
    job = panel.start_synthesis_job(sc.node_from_volume(t1, "T1"), tmp_path / "missing.safetensors", "auto", "auto",
                                    "fp32", tmp_path / "work")
    assert job.argv[job.argv.index("--plane") + 1] == "auto"  # the model's own plane(s), not always axial
    job.run_to_end(timeout=120)
    with pytest.raises(panel.JobError) as info:
        panel.finish_synthesis_job(job, sc.node_from_volume(t1, "T1 again"))
    assert "missing.safetensors" in str(info.value) and "\n" not in str(info.value)
    assert "missing.safetensors" in info.value.log  # the whole log travels with the one-line error


def test_show_plot_switches_to_a_layout_with_a_plot_view(mrml_scene):
    chart = mrml_scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "chart")
    assert not sc.show_plot(chart)  # no layout node: nothing to show in
    layout = mrml_scene.AddNode(slicer.vtkMRMLLayoutNode())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    assert sc.show_plot(chart)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView
    view = mrml_scene.GetFirstNodeByClass("vtkMRMLPlotViewNode")
    assert view.GetPlotChartNodeID() == chart.GetID()
    other = mrml_scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "other")
    assert sc.show_plot(other) and mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode") == 1
    assert view.GetPlotChartNodeID() == other.GetID()


def test_profile_line_spans_the_volume_and_a_new_profile_reuses_table_and_chart(mrml_scene):
    t1 = Volume.from_geometry(np.arange(6 * 10 * 12, dtype=np.float32).reshape(6, 10, 12), spacing=(1, 1, 2),
                              origin=(5, -3, 7))
    node = sc.node_from_volume(t1, "T1")
    line = sc.create_profile_line(node)
    points = slicer.util.arrayFromMarkupsControlPoints(line, world=True)
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    assert np.allclose(points[:, 0], [bounds[0], bounds[1]]) and np.allclose(points[0, 1:], points[1, 1:])
    first = sc.line_profile(line, [node])
    second = sc.line_profile(line, [node], previous=first)
    assert second.table_node is first.table_node and second.chart_node is first.chart_node
    assert first._observers == []  # the old profile no longer follows the line
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 1
    second.remove_observers()
    assert json.dumps(sc.table_columns(second.table_node)[sc.DISTANCE_COLUMN][:2])
