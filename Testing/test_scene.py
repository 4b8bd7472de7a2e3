"""The MRML scene layer on a real headless slicer-core scene (no fakes)."""

import json

import numpy as np
import pytest

pytest.importorskip("slicer")

import slicer  # noqa: E402
import vtk  # noqa: E402
from conftest import oblique_direction  # noqa: E402
from slicer_scene import mrml_scene  # noqa: E402,F401  (fixture)

from T1ToT2Lib.slicer import scene as sc
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.core.volume import Volume

SPACING = (0.6, 0.9, 2.5)


def oblique_volume(shape=(9, 11, 13), origin=(-12.0, 30.5, 7.25), fill=None, rng=None):
    rng = rng or np.random.default_rng(7)
    array = rng.normal(100, 20, shape).astype(np.float32) if fill is None else fill
    return Volume.from_geometry(array, spacing=SPACING, origin=origin, direction=oblique_direction())


def linear_transform_node(scene, angles=(10.0, 25.0, -40.0), translation=(5.0, -3.0, 12.0), name="move"):
    from scipy.spatial.transform import Rotation

    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    matrix[:3, 3] = translation
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(sc._to_vtk(matrix))
    return node, matrix


def node_ijk_to_ras(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return sc._to_numpy(m)


# --- volume <-> node -------------------------------------------------------------
def test_round_trip_keeps_oblique_anisotropic_geometry_and_values(mrml_scene):
    volume = oblique_volume()
    node = sc.node_from_volume(volume, "T1")
    assert node.GetScene() is mrml_scene and node.GetName() == "T1"
    assert np.allclose(node.GetSpacing(), SPACING, atol=1e-6)
    assert np.allclose(node_ijk_to_ras(node), volume.ijk_to_ras, atol=1e-6)
    back = sc.volume_from_node(node)
    assert back.shape == volume.shape
    assert np.allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-6, rtol=0)
    assert np.array_equal(back.array, volume.array)
    # The copy is independent of the node.
    back.array[:] = 0
    assert slicer.util.arrayFromVolume(node).max() > 0
    display = node.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    assert display.GetWindow() > 0 and volume.array.min() < display.GetLevel() < volume.array.max()


def test_updating_a_node_replaces_array_and_geometry(mrml_scene):
    node = sc.node_from_volume(oblique_volume(), "T1")
    other = Volume.from_geometry(np.ones((4, 5, 6)), spacing=(1.5, 1.0, 0.5), origin=(1, 2, 3))
    same = sc.node_from_volume(other, "T1 again", node=node)
    assert same is node and node.GetName() == "T1 again"
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    assert slicer.util.arrayFromVolume(node).shape == (4, 5, 6)
    assert sc.volume_from_node(node).same_geometry(other)


def test_linear_parent_transform_is_folded_into_world_geometry(mrml_scene):
    volume = oblique_volume()
    node = sc.node_from_volume(volume, "T1")
    transform, matrix = linear_transform_node(mrml_scene)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = sc.volume_from_node(node)
    assert np.allclose(world.ijk_to_ras, matrix @ volume.ijk_to_ras, atol=1e-6, rtol=0)

    # Writing a world-geometry volume into a transformed node keeps the world geometry.
    placed = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "placed")
    placed.SetAndObserveTransformNodeID(transform.GetID())
    sc.node_from_volume(volume, "placed", node=placed)
    assert np.allclose(sc.volume_from_node(placed).ijk_to_ras, volume.ijk_to_ras, atol=1e-6, rtol=0)
    assert np.allclose(node_ijk_to_ras(placed), np.linalg.inv(matrix) @ volume.ijk_to_ras, atol=1e-6, rtol=0)


def test_non_linear_transform_is_refused_with_the_fix(mrml_scene):
    node = sc.node_from_volume(oblique_volume(), "T1")
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for p, q in (((0, 0, 0), (0, 0, 0)), ((50, 0, 0), (55, 3, 0)), ((0, 50, 0), (0, 50, 4)), ((0, 0, 50), (2, 0, 50)),
                 ((50, 50, 50), (48, 53, 51))):
        source.InsertNextPoint(p)
        target.InsertNextPoint(q)
    spline = vtk.vtkThinPlateSplineTransform()
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    warp = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(spline)
    node.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(T1ToT2Error, match="non-linear transform 'warp'.*harden or remove"):
        sc.volume_from_node(node)


def test_non_scalar_or_missing_nodes_get_a_clear_error(mrml_scene):
    with pytest.raises(T1ToT2Error, match="no volume selected"):
        sc.volume_from_node(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(T1ToT2Error, match="'empty' has no image data"):
        sc.volume_from_node(empty)
    labels = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(T1ToT2Error, match="not a scalar volume"):
        sc.volume_from_node(labels)


# --- synthetic and difference nodes ------------------------------------------------
def _t1_under_transform(mrml_scene):
    """An oblique "hand T1" node under a linear transform node: (node, transform node, its volume in world space)."""
    t1_node = sc.node_from_volume(oblique_volume(), "hand T1")
    transform, _ = linear_transform_node(mrml_scene)
    t1_node.SetAndObserveTransformNodeID(transform.GetID())
    return t1_node, transform, sc.volume_from_node(t1_node)


def test_synthetic_node_takes_t1_geometry_transform_and_is_reused(mrml_scene):
    t1_node, transform, t1 = _t1_under_transform(mrml_scene)

    synthetic = sc.create_or_update_synthetic_node(t1_node, t1.with_array(t1.array * 2), "tiny.safetensors")
    assert synthetic.GetName() == "hand T1 synthetic T2"
    assert synthetic.GetAttribute("T1ToT2.Synthetic") == "true"
    assert synthetic.GetAttribute("T1ToT2.Model") == "tiny.safetensors"
    assert synthetic.GetAttribute("T1ToT2.SourceT1") == t1_node.GetID()
    assert synthetic.GetTransformNodeID() == transform.GetID()
    assert np.allclose(sc.volume_from_node(synthetic).ijk_to_ras, t1.ijk_to_ras, atol=1e-6, rtol=0)
    assert np.allclose(node_ijk_to_ras(synthetic), node_ijk_to_ras(t1_node), atol=1e-6, rtol=0)

    again = sc.create_or_update_synthetic_node(t1_node, t1.with_array(t1.array * 3), "other.safetensors")
    assert again.GetID() == synthetic.GetID()
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2
    assert again.GetAttribute("T1ToT2.Model") == "other.safetensors"
    assert np.allclose(slicer.util.arrayFromVolume(again), t1.array * 3)


def test_error_map_is_a_second_node_on_the_synthetic_grid_referenced_and_reused(mrml_scene):
    t1_node, transform, t1 = _t1_under_transform(mrml_scene)
    synthetic = sc.create_or_update_synthetic_node(t1_node, t1.with_array(t1.array * 2), "m.safetensors")
    errors = sc.create_or_update_error_map_node(synthetic, t1.with_array(np.abs(t1.array - 100)))
    assert sc.error_map_node(synthetic) is errors and errors.GetName() == "hand T1 synthetic T2 error map"
    assert errors.GetAttribute("T1ToT2.Synthetic") == "true" and errors.GetTransformNodeID() == transform.GetID()
    assert np.allclose(sc.volume_from_node(errors).ijk_to_ras, t1.ijk_to_ras, atol=1e-6, rtol=0)
    assert np.allclose(slicer.util.arrayFromVolume(errors), np.abs(t1.array - 100))
    again = sc.create_or_update_error_map_node(synthetic, t1.with_array(np.ones_like(t1.array)))
    assert again.GetID() == errors.GetID() and mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 3
    with pytest.raises(T1ToT2Error, match="grid"):
        sc.create_or_update_error_map_node(synthetic, Volume.from_geometry(np.ones((3, 3, 3), np.float32)))


def test_synthetic_node_refuses_a_volume_on_another_grid(mrml_scene):
    t1_node = sc.node_from_volume(oblique_volume(), "T1")
    wrong = Volume.from_geometry(np.zeros((9, 11, 13)), spacing=(1, 1, 1))
    with pytest.raises(T1ToT2Error, match="grid does not match 'T1'"):
        sc.create_or_update_synthetic_node(t1_node, wrong, "m")


def ramp(volume: Volume, a=(2.0, -1.5, 0.5), b=40.0) -> Volume:
    """The volume's grid filled with a*ras + b (trilinear interpolation reproduces it exactly)."""
    k, j, i = np.indices(volume.shape)
    ras = volume.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    return volume.with_array((ras @ np.asarray(a) + b).reshape(volume.shape))


def test_signed_difference_map_and_diverging_colours(mrml_scene):
    base = oblique_volume()
    generated = base.with_array(base.array + 5)
    generated.array[0, 0, 0] -= 40
    g_node = sc.node_from_volume(generated, "synthetic")
    i_node = sc.node_from_volume(base, "acquired")
    diff = sc.difference_node(g_node, i_node)
    values = slicer.util.arrayFromVolume(diff)
    expected = generated.array - base.array
    assert np.allclose(values, expected, atol=1e-4)
    assert values.min() < 0 < values.max()
    assert sc.volume_from_node(diff).same_geometry(generated)
    display = diff.GetDisplayNode()
    assert display.GetLevel() == pytest.approx(0.0)
    assert display.GetWindow() == pytest.approx(2 * np.percentile(np.abs(expected), 99.5), rel=1e-5)
    colours = display.GetColorNode()
    assert colours.GetName() == sc.DIVERGING_COLOR_NAME
    low, mid, high = (colours.GetLookupTable().GetTableValue(n)[:3] for n in (0, 128, 255))
    assert low[2] > low[0] and high[0] > high[2] and min(mid) > 0.95  # blue, white, red
    assert diff.GetAttribute("T1ToT2.Difference") == "signed"

    again = sc.difference_node(g_node, i_node, absolute=True, name="abs map")
    assert np.allclose(slicer.util.arrayFromVolume(again), np.abs(expected), atol=1e-4)
    assert again.GetAttribute("T1ToT2.Difference") == "absolute"
    # Re-running reuses the node of the same name, and one diverging table serves both runs.
    assert sc.difference_node(g_node, i_node).GetID() == diff.GetID()
    assert len(slicer.util.getNodes(sc.DIVERGING_COLOR_NAME)) == 1


def test_difference_resamples_an_acquired_volume_on_another_grid(mrml_scene):
    generated = ramp(oblique_volume())
    acquired = ramp(Volume.from_geometry(np.zeros((40, 60, 60)), spacing=(1.0, 1.1, 0.9), origin=(-40, 0, -20)))
    diff = slicer.util.arrayFromVolume(sc.difference_node(sc.node_from_volume(generated, "g"), sc.node_from_volume(acquired, "i")))
    # Where the generated grid lies inside the acquired one, the two ramps agree: G - I = 0.
    ijk = acquired.ras_to_ijk(generated.ijk_to_ras_points(np.argwhere(np.ones(generated.shape))[:, ::-1]))
    inside = np.all((ijk >= 0) & (ijk <= np.array(acquired.shape[::-1]) - 1), axis=1).reshape(generated.shape)
    assert inside.sum() > 100
    assert np.abs(diff[inside]).max() < 1e-3


# --- tables and charts -----------------------------------------------------------
def test_metrics_table_has_a_row_per_plane_and_all_planes(mrml_scene, rng):
    from T1ToT2Lib.core.metrics import evaluate_volumes

    actual = Volume.from_geometry(rng.uniform(10, 100, (8, 24, 24)), spacing=SPACING)
    generated = actual.with_array(actual.array + rng.normal(0, 5, actual.shape))
    metrics = evaluate_volumes(generated, actual)
    node = sc.metrics_table_node(metrics)
    columns = sc.table_columns(node)
    assert columns["Plane"] == ["axial", "coronal", "sagittal", "all planes"]
    assert list(columns) == ["Plane", "NRMSE mean", "NRMSE std", "PSNR (dB) mean", "PSNR (dB) std", "SSIM mean",
                             "SSIM std", "Slices"]
    for row, plane in enumerate(["axial", "coronal", "sagittal"]):
        entry = metrics["per_plane"][plane]
        assert columns["NRMSE mean"][row] == pytest.approx(entry["nrmse"]["mean"])
        assert columns["SSIM std"][row] == pytest.approx(entry["ssim"]["std"])
        assert columns["Slices"][row] == entry["n_slices"]
    assert columns["PSNR (dB) mean"][3] == pytest.approx(metrics["overall"]["psnr"]["mean"])
    assert columns["Slices"][3] == 8 + 24 + 24
    with pytest.raises(T1ToT2Error, match="evaluate_volumes"):
        sc.metrics_table_node({"nrmse": 1})


def line_node(scene, p0, p1, name="profile line"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    node.AddControlPointWorld(vtk.vtkVector3d(*p0))
    node.AddControlPointWorld(vtk.vtkVector3d(*p1))
    return node


def test_line_profile_matches_analytic_volumes_and_follows_the_line(mrml_scene):
    grid = Volume.from_geometry(np.zeros((40, 44, 48)), spacing=(0.8, 0.9, 1.2), origin=(-18, -19, -22),
                                direction=oblique_direction((5.0, -8.0, 12.0)))
    slope, offset = 3.0, 25.0
    ramp_volume = ramp(grid, a=(slope, 0.0, 0.0), b=offset)  # value = 3 x + 25 along R
    k, j, i = np.indices(grid.shape)
    ras = grid.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    sphere = grid.with_array((np.linalg.norm(ras, axis=1) < 8.0).reshape(grid.shape) * 100.0)
    ramp_node = sc.node_from_volume(ramp_volume, "ramp")
    # The sphere sits under a pure translation: the profile must follow the world position.
    shift, _ = linear_transform_node(mrml_scene, angles=(0, 0, 0), translation=(4.0, 0.0, 0.0))
    sphere_node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sphere")
    sphere_node.SetAndObserveTransformNodeID(shift.GetID())
    sc.node_from_volume(sphere.with_array(sphere.array), "sphere", node=sphere_node)
    # node_from_volume keeps world geometry, so the world sphere is still centred at the origin.

    line = line_node(mrml_scene, (-12.0, 0.0, 0.0), (12.0, 0.0, 0.0))
    profile = sc.LineProfile(line, {"ramp": ramp_node, "sphere": sphere_node}, samples=121)
    columns = sc.table_columns(profile.table_node)
    assert list(columns) == ["Distance (mm)", "ramp", "sphere"]
    distance = np.array(columns["Distance (mm)"])
    assert len(distance) == 121 and distance[0] == 0 and distance[-1] == pytest.approx(24.0)
    x = -12.0 + distance
    assert np.allclose(columns["ramp"], slope * x + offset, atol=1e-3)
    sphere_values = np.array(columns["sphere"])
    assert np.all(sphere_values[np.abs(x) < 6.5] == pytest.approx(100.0))
    assert np.all(sphere_values[np.abs(x) > 9.5] == pytest.approx(0.0))

    # Chart: one series per volume, reading this table's columns against distance.
    chart = profile.chart_node
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(n) for n in range(2)]
    assert [s.GetYColumnName() for s in series] == ["ramp", "sphere"]
    assert all(s.GetXColumnName() == "Distance (mm)" and s.GetTableNode() is profile.table_node for s in series)

    # Move the end point: the table follows without calling update().
    line.SetNthControlPointPositionWorld(1, 4.0, 3.0, 0.0)
    columns = sc.table_columns(profile.table_node)
    moved = np.array([-12.0, 0.0, 0.0]) + np.outer(np.array(columns["Distance (mm)"]) / np.hypot(16, 3), [16.0, 3.0, 0.0])
    assert columns["Distance (mm)"][-1] == pytest.approx(np.hypot(16.0, 3.0))
    assert np.allclose(columns["ramp"], slope * moved[:, 0] + offset, atol=1e-3)

    profile.remove_observers()
    line.SetNthControlPointPositionWorld(1, 12.0, 0.0, 0.0)
    assert sc.table_columns(profile.table_node)["Distance (mm)"][-1] == pytest.approx(np.hypot(16.0, 3.0))


def test_line_profile_outside_the_volume_is_nan_and_short_lines_are_refused(mrml_scene):
    node = sc.node_from_volume(Volume.from_geometry(np.ones((5, 5, 5))), "cube")
    line = line_node(mrml_scene, (2.0, 2.0, 2.0), (20.0, 2.0, 2.0))
    profile = sc.LineProfile(line, [node], samples=19)
    values = np.array(sc.table_columns(profile.table_node)["cube"])
    assert np.all(values[:3] == 1.0) and np.all(np.isnan(values[-10:]))
    lonely = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "one point")
    lonely.AddControlPointWorld(vtk.vtkVector3d(0, 0, 0))
    with pytest.raises(T1ToT2Error, match="at least two points"):
        sc.LineProfile(lonely, [node])


def test_loss_plot_adds_rows_and_series_from_progress_events(mrml_scene):
    plot = sc.LossPlot(name="loss")
    assert not plot.add_event({"event": "start", "epochs": 2})
    assert plot.add_event({"event": "step", "epoch": 1, "step": 1, "steps": 2, "losses": {"G": 2.0, "D": 0.7}})
    assert plot.add_event(json.dumps({"event": "step", "epoch": 1, "step": 2, "steps": 2,
                                      "losses": {"G": 1.5, "D": 0.6, "L1": 0.3}}))
    assert not plot.add_event({"event": "epoch", "epoch": 1, "losses": {"G": 1.75}})  # step plot ignores epochs
    assert plot.add_event({"event": "step", "epoch": 2, "step": 1, "steps": 2, "loss_G": 1.0, "lr": 0.0002})
    assert not plot.add_event("not json")
    assert not plot.add_event({"event": "done"})
    columns = sc.table_columns(plot.table_node)
    assert columns["Step"] == [1.0, 2.0, 3.0]  # global steps across epochs
    assert columns["G"][:2] == [2.0, 1.5] and np.isnan(columns["G"][2])
    assert np.isnan(columns["L1"][0]) and columns["L1"][1] == 0.3
    assert columns["loss_G"][2] == 1.0 and "lr" not in columns
    chart = plot.chart_node
    assert sorted(chart.GetNthPlotSeriesNode(n).GetYColumnName() for n in range(chart.GetNumberOfPlotSeriesNodes())) == [
        "D", "G", "L1", "loss_G"]

    per_epoch = sc.LossPlot(name="epochs", events=("epoch",))
    assert not per_epoch.add_event({"event": "step", "epoch": 1, "step": 1, "losses": {"G": 2.0}})
    assert per_epoch.add_event({"event": "epoch", "epoch": 1, "losses": {"G": 1.75}})
    assert sc.table_columns(per_epoch.table_node) == {"Epoch": [1.0], "G": [1.75]}


def _compare_nodes(mrml_scene, planes=None):
    volume = oblique_volume()
    t1, acquired = (sc.node_from_volume(volume, n) for n in ("T1", "T2"))
    synthetic = sc.create_or_update_synthetic_node(t1, volume.with_array(volume.array + 3), "m", model_planes=planes)
    return t1, acquired, synthetic


def test_compare_shows_three_volumes_in_linked_views_of_one_orientation(mrml_scene):
    t1, acquired, synthetic = _compare_nodes(mrml_scene)
    # The application's slice nodes start in their own orientations, as in Slicer's Conventional layout.
    for view, orientation in zip(sc.COMPARE_VIEWS, ("Axial", "Sagittal", "Coronal")):
        node = mrml_scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName(view)
        node.SetSingletonTag(view)
        mrml_scene.AddNode(node).SetOrientation(orientation)
        node.UnRegister(None)
    shown = sc.show_comparison(t1, acquired, synthetic, orientation="sagittal")
    composites = [mrml_scene.GetSingletonNode(v, "vtkMRMLSliceCompositeNode") or sc._slice_composite_node(mrml_scene, v)
                  for v in sc.COMPARE_VIEWS]
    assert [c.GetID() for c in composites] == [c.GetID() for c in shown["composites"]]
    assert [c.GetBackgroundVolumeID() for c in composites] == [t1.GetID(), acquired.GetID(), synthetic.GetID()]
    slices = [mrml_scene.GetSingletonNode(v, "vtkMRMLSliceNode") for v in sc.COMPARE_VIEWS]
    assert [s.GetOrientation() for s in slices] == ["Sagittal"] * 3
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 3  # the existing views were reused
    assert all(c.GetLinkedControl() and c.GetHotLinkedControl() for c in composites)
    # The difference map G - I is the synthetic view's overlay only.
    difference = shown["difference"]
    np.testing.assert_allclose(slicer.util.arrayFromVolume(difference), 3.0, atol=1e-4)
    assert [c.GetForegroundVolumeID() for c in composites] == [None, None, difference.GetID()]
    assert composites[2].GetForegroundOpacity() == 0.5 and composites[0].GetForegroundOpacity() == 0.0


def test_compare_orientation_defaults_to_the_models_plane_else_coronal(mrml_scene):
    t1, acquired, synthetic = _compare_nodes(mrml_scene, planes=["axial"])
    assert sc.show_comparison(t1, acquired, synthetic)["orientation"] == "Axial"
    assert {mrml_scene.GetSingletonNode(v, "vtkMRMLSliceNode").GetOrientation() for v in sc.COMPARE_VIEWS} == {"Axial"}
    synthetic.SetAttribute(sc.MODEL_PLANES_ATTRIBUTE, "axial,coronal,sagittal")
    assert sc.show_comparison(t1, acquired, synthetic, orientation="auto")["orientation"] == "Coronal"
    assert sc.compare_orientation(None, None) == "Coronal"
    with pytest.raises(T1ToT2Error, match="unknown compare orientation 'oblique'"):
        sc.show_comparison(t1, acquired, synthetic, orientation="oblique")
    with pytest.raises(T1ToT2Error, match="unknown overlay"):
        sc.show_comparison(t1, acquired, synthetic, overlay="heat")


def test_compare_error_map_toggle_and_missing_acquired(mrml_scene):
    t1, acquired, synthetic = _compare_nodes(mrml_scene)
    error = sc.node_from_volume(sc.volume_from_node(t1).with_array(np.ones((9, 11, 13), np.float32)), "error map")
    synthetic.SetNodeReferenceID(sc.ERROR_MAP_REFERENCE_ROLE, error.GetID())
    shown = sc.show_comparison(t1, acquired, synthetic, overlay="error")
    assert [c.GetForegroundVolumeID() for c in shown["composites"]] == [None, None, error.GetID()]
    shown = sc.show_comparison(t1, acquired, synthetic, overlay="none")
    assert [c.GetForegroundVolumeID() for c in shown["composites"]] == [None, None, None]
    # Without an acquired T2 there is no difference map; the middle view repeats the synthetic T2.
    shown = sc.show_comparison(t1, None, synthetic)
    assert shown["difference"] is None and shown["composites"][2].GetForegroundVolumeID() is None
    assert shown["composites"][1].GetBackgroundVolumeID() == synthetic.GetID()


def test_compare_switches_the_layout_node_to_one_row_of_three_slice_views(mrml_scene):
    import xml.etree.ElementTree as ET

    layout = mrml_scene.AddNode(slicer.vtkMRMLLayoutNode())
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    t1, acquired, synthetic = _compare_nodes(mrml_scene, planes=["sagittal"])
    sc.show_comparison(t1, acquired, synthetic)
    assert layout.GetViewArrangement() == sc.COMPARE_LAYOUT_ID
    root = ET.fromstring(layout.GetCurrentLayoutDescription())
    assert root.get("type") == "horizontal" and len(root) == 3
    views = [item.find("view") for item in root]
    assert [v.get("singletontag") for v in views] == list(sc.COMPARE_VIEWS)
    assert {v.find("property[@name='orientation']").text for v in views} == {"Sagittal"}
    sc.show_comparison(t1, acquired, synthetic, orientation="axial")  # registered once, then updated
    assert "Axial" in layout.GetCurrentLayoutDescription() and "Sagittal" not in layout.GetCurrentLayoutDescription()


def test_synthetic_and_difference_nodes_join_the_t1s_study(mrml_scene):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    volume = oblique_volume()
    t1 = sc.node_from_volume(volume, "T1")
    hierarchy.CreateItem(study, t1)
    acquired = sc.node_from_volume(volume, "T2")
    synthetic = sc.create_or_update_synthetic_node(t1, volume.with_array(volume.array * 2), "m")
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(synthetic)) == study
    difference = sc.difference_node(synthetic, acquired)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(difference)) == study
    # A T1 outside any study leaves the nodes where they are.
    other = sc.node_from_volume(volume, "loose T1")
    assert sc.place_beside_in_subject_hierarchy(acquired, other) is None


def test_synthesis_turns_a_t1_node_into_a_synthetic_t2_node_on_the_t1_grid(mrml_scene, tmp_path, rng):
    """The Synthesis module's path: T1 node -> Volume -> tiny trained model -> synthetic T2 node."""
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.training.train import TrainConfig, train

    t1_volume = oblique_volume(shape=(28, 32, 36), fill=rng.uniform(0, 100, (28, 32, 36)).astype(np.float32))
    t1_node = sc.node_from_volume(t1_volume, "T1 VIBE")
    transform, matrix = linear_transform_node(mrml_scene)
    t1_node.SetAndObserveTransformNodeID(transform.GetID())

    t1 = sc.volume_from_node(t1_node)
    model_path = tmp_path / "tiny.safetensors"
    train(TrainConfig(t1=t1, t2=t1.with_array(100 - t1.array), out=model_path, model="pix2pix", planes=("axial",),
                      network={"ngf": 4, "ndf": 4, "depth": 2}, epochs=1, max_steps_per_epoch=1, batch_size=2,
                      device="cpu", checkpoint_dir=tmp_path / "ckpt"))
    synthetic = synthesize_volume(str(model_path), t1, plane="axial", device="cpu", batch_size=4)
    node = sc.create_or_update_synthetic_node(t1_node, synthetic, model_path.name)

    values = slicer.util.arrayFromVolume(node)
    assert values.shape == t1_volume.shape and np.all(np.isfinite(values)) and values.std() > 0
    assert node.GetTransformNodeID() == transform.GetID()
    assert np.allclose(sc.world_ijk_to_ras(node), matrix @ t1_volume.ijk_to_ras, atol=1e-6, rtol=0)
    assert np.allclose(sc.world_ijk_to_ras(node), sc.world_ijk_to_ras(t1_node), atol=1e-6, rtol=0)
    assert node.GetAttribute("T1ToT2.Synthetic") == "true" and node.GetAttribute("T1ToT2.Model") == "tiny.safetensors"


def test_loss_chart_writes_one_row_per_event_however_long_the_run(mrml_scene, monkeypatch):
    """The loss chart appends: the table's existing columns are kept and only the new row is written."""
    plot = sc.LossPlot(name="losses")
    rebuilds = []
    monkeypatch.setattr(sc, "_table_from_columns", lambda *a, **k: rebuilds.append(a))
    modified = []
    plot.table_node.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: modified.append(1))
    columns = None
    for n in range(1, 301):
        losses = {"G": 1.0 / n, "D": 0.5} if n < 150 else {"G": 1.0 / n, "D": 0.5, "L1": 0.1}
        before = len(modified)
        assert plot.add_event({"event": "step", "epoch": 1, "step": n, "steps": 300, "losses": losses})
        assert len(modified) - before <= 2  # a constant number of table writes per event
        if n == 10:
            columns = {name: plot.table_node.GetTable().GetColumnByName(name) for name in ("Step", "G")}
            first_values = [columns["G"].GetValue(r) for r in range(10)]
    assert rebuilds == []  # never rebuilt from all rows
    table = plot.table_node.GetTable()
    # The very same column arrays grew (a rebuild would have replaced them) and kept their first values.
    assert all(table.GetColumnByName(name) is columns[name] for name in columns)
    assert [columns["G"].GetValue(r) for r in range(10)] == first_values
    values = sc.table_columns(plot.table_node)
    assert len(values["Step"]) == 300 and values["Step"][-1] == 300.0
    assert np.isnan(values["L1"][148]) and values["L1"][149] == 0.1  # a late loss is NaN before it appears
