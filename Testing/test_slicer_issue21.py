"""Issue 21 items 3-9 against Slicer's contracts (Testing/slicer_doubles.py) on a real slicer-core scene."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("slicer")

import slicer  # noqa: E402
import slicer_module_shim  # noqa: E402
from slicer_scene import mrml_scene  # noqa: E402,F401  (fixture)
from test_slicer_modules import _training_widget, modules, small_t1  # noqa: E402,F401

from T1ToT2Lib.core.volume import Volume  # noqa: E402
from T1ToT2Lib.slicer import scene as sc  # noqa: E402


def test_ctest_skips_in_setup_and_installs_nothing(modules, monkeypatch):
    """Item 3: slicer.testing.runUnitTest (loadTestsFromName) never calls runTest: the skip must be in setUp."""
    from slicer_doubles import run_unit_test

    from T1ToT2Lib.core import dependencies

    monkeypatch.setattr(dependencies, "missing_dependencies", lambda: ["torch>=2.1"])
    monkeypatch.setattr(slicer.util, "pip_install", lambda *a: pytest.fail("ctest must not install"), raising=False)
    for module, name in zip(modules, ("T1ToT2Synthesis", "T1ToT2Training")):
        result = run_unit_test(module, name)
        assert result.wasSuccessful() and not result.errors
        assert len(result.skipped) == 1 and "not installed: torch" in result.skipped[0][1]


def test_generate_phantom_installs_its_packages_first_never_torch(modules, monkeypatch):
    """Item 4: the phantom needs scikit-image (not shipped by Slicer); declining leaves the scene untouched."""
    _, training = modules
    widget = _training_widget(training)
    asked = []
    monkeypatch.setattr(type(widget.logic.library), "ensureDependencies",
                        staticmethod(lambda askConfirmation=True, needTorch=True, status=None: asked.append(needTorch) or False))
    widget.panel.generatePhantom()
    assert asked == [False] and slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
    requirements = (slicer_module_shim.ROOT / "T1ToT2Synthesis" / "Resources" / "requirements.txt").read_text()
    assert "scikit-image" in requirements


def test_compare_uses_its_own_views_and_gives_the_layout_back(mrml_scene):
    """Item 5: Red/Yellow/Green keep their volumes, links and orientation; a plot keeps the compare row."""
    layout = mrml_scene.AddNode(slicer.vtkMRMLLayoutNode())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    t1 = sc.node_from_volume(small_t1((10, 20, 24)), "T1")
    synthetic = sc.create_or_update_synthetic_node(t1, sc.volume_from_node(t1).with_array(np.ones((10, 20, 24))), "m")
    red = sc._slice_composite_node(mrml_scene, "Red")
    red.SetBackgroundVolumeID(t1.GetID())
    red_slice = sc._slice_node(mrml_scene, "Red")
    red_slice.SetOrientation("Axial")
    sc.show_comparison(t1, None, synthetic, orientation="sagittal", views=sc.SLICER_COMPARE_VIEWS)
    assert layout.GetViewArrangement() == sc.COMPARE_LAYOUT_ID
    assert red.GetLinkedControl() == 0 and red_slice.GetOrientation() == "Axial"
    assert sc._slice_composite_node(mrml_scene, "T1ToT2Compare3").GetBackgroundVolumeID() == synthetic.GetID()
    chart = mrml_scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    sc.show_plot(chart)
    description = layout.GetCurrentLayoutDescription()
    assert layout.GetViewArrangement() == sc.COMPARE_LAYOUT_ID and "vtkMRMLPlotViewNode" in description
    assert all(f'singletontag="{v}"' in description for v in sc.SLICER_COMPARE_VIEWS)
    assert sc.leave_comparison(mrml_scene)
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView


def test_profile_samples_only_along_the_line(mrml_scene):
    """Item 6: a drag of the line must not copy the whole (int16) volume to float32."""
    array = np.arange(64 * 128 * 128, dtype=np.int16).reshape(64, 128, 128) % 1000
    node = sc.node_from_volume(Volume.from_geometry(array.astype(np.float32), spacing=(1, 1, 1)), "T1")
    slicer.util.updateVolumeFromArray(node, array)  # int16 scalars, as DICOM gives
    points = np.array([[10.0, 20.0, 30.0], [60.0, 20.0, 30.0]])
    _, along = sc.resample_polyline(points, 200)
    sc.sample_node(node, along)  # imports done before measuring
    tracemalloc.start()
    values = sc.sample_node(node, along)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < array.nbytes / 8  # a float32 copy alone would be 2 x nbytes
    ras_to_ijk = np.linalg.inv(sc.world_ijk_to_ras(node))
    ijk = np.rint(along[::20] @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3]).astype(int)
    on_voxels = np.allclose(along[::20] @ ras_to_ijk[:3, :3].T + ras_to_ijk[:3, 3], ijk, atol=1e-6)
    if on_voxels:
        np.testing.assert_allclose(values[::20], array[ijk[:, 2], ijk[:, 1], ijk[:, 0]])


def test_loss_chart_is_reused_and_continued_on_resume(mrml_scene):
    """Item 7: one table and chart per training, not per Start/Resume."""
    plot = sc.LossPlot.reuse(None, scene=mrml_scene)
    plot.add_event({"event": "step", "epoch": 1, "step": 1, "steps": 1, "losses": {"L1": 1.0}})
    again = sc.LossPlot.reuse(plot, resume=True, scene=mrml_scene)
    again.add_event({"event": "step", "epoch": 2, "step": 1, "steps": 1, "losses": {"L1": 0.5}})
    assert again.table_node is plot.table_node and again.table_node.GetNumberOfRows() == 2
    fresh = sc.LossPlot.reuse(again, resume=False, scene=mrml_scene)
    assert fresh.table_node is plot.table_node and fresh.table_node.GetNumberOfRows() == 0
    counts = [mrml_scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode")]
    assert counts == [1, 1]
    mrml_scene.Clear(0)
    assert sc.LossPlot.reuse(fresh, scene=mrml_scene).table_node.GetScene() is mrml_scene


def test_evaluation_after_close_scene_fills_the_new_scene(mrml_scene):
    """Item 7: nodes of an evaluation from before Close Scene are made anew, not written into removed nodes."""
    from T1ToT2Lib.slicer import panel

    t1 = small_t1((10, 20, 24))
    for _ in range(2):
        t1_node, t2_node = sc.node_from_volume(t1, "T1"), sc.node_from_volume(t1.with_array(t1.array + 1), "T2")
        synthetic = sc.create_or_update_synthetic_node(t1_node, t1, "m")
        previous = panel.evaluate_synthetic(synthetic, t1_node, t2_node, previous=locals().get("previous"))
        assert all(previous[k].GetScene() is mrml_scene for k in ("metrics", "line", "difference"))
        assert previous["profile"].table_node.GetScene() is mrml_scene
        previous["profile"].remove_observers()
        mrml_scene.Clear(0)


def test_dicom_export_into_a_non_empty_folder_goes_to_a_series_subfolder(tmp_path):
    """Item 9."""
    from T1ToT2Lib.slicer.synthesis_module import export_folder

    assert export_folder(tmp_path / "new", "T1 synthetic T2") == tmp_path / "new"
    (tmp_path / "notes.txt").write_text("the user's")
    first = export_folder(tmp_path, "T1 synthetic T2")
    assert first == tmp_path / "T1 synthetic T2"
    first.mkdir()
    assert export_folder(tmp_path, "T1 synthetic T2") == tmp_path / "T1 synthetic T2 2"
    assert export_folder(tmp_path, "a/b:c") == tmp_path / "a_b_c"


def test_metrics_after_synthesis_run_in_a_background_job_not_on_the_gui_thread(modules, monkeypatch):
    """Item 6: the Synthesis panel never scores in Slicer's process; it starts `t1tot2 evaluate` and polls it,
    and the table it fills holds the same PSNR the library computes."""
    synthesis, _ = modules
    from test_slicer_modules import _synthesis_widget

    from T1ToT2Lib.core import metrics

    widget = _synthesis_widget(synthesis)
    p = widget._parameterNode
    t1 = small_t1((10, 20, 24))
    rng = np.random.default_rng(3)
    acquired = t1.with_array(t1.array * 0.5 + 20)
    synthetic = acquired.with_array(acquired.array + rng.normal(0, 5, acquired.shape).astype(np.float32))
    p.inputT1 = sc.node_from_volume(t1, "T1")
    p.acquiredT2 = sc.node_from_volume(acquired, "T2")
    p.syntheticT2 = sc.create_or_update_synthetic_node(p.inputT1, synthetic, "m")
    expected = metrics.evaluate_volumes(synthetic, acquired)["overall"]["psnr"]["mean"]
    monkeypatch.setattr(metrics, "evaluate_volumes", lambda *a, **k: pytest.fail("scored on the GUI thread"))
    widget.panel.computeMetrics()
    assert widget.panel.jobs.running and widget.panel.jobs.kind == "metrics"
    assert "evaluate" in widget.panel.jobs.job.argv
    widget.panel.jobs.job.wait(timeout=600)
    widget.panel.jobs.poll()
    table = p.metricsTable
    assert table is not None and table.GetNumberOfRows() >= 1
    cells = [table.GetCellText(r, c) for r in range(table.GetNumberOfRows()) for c in range(table.GetNumberOfColumns())]
    assert any(f"{expected:.2f}" in cell for cell in cells), (expected, cells)
