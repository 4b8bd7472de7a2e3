"""The MRML scene layer: Slicer nodes <-> :class:`Volume`, result nodes, profiles, charts, layout.

This is the only T1ToT2Lib module that touches MRML.  It needs ``slicer``
(the application, or ``slicer-core`` with a scene assigned to
``slicer.mrmlScene``) and is never imported by the command line.

Geometry conventions
--------------------
A :class:`Volume` always carries *world* geometry: :func:`volume_from_node`
folds a linear parent transform into ``ijk_to_ras`` and :func:`node_from_volume`
unfolds it again, so a node placed under the T1's transform lines up with the
T1 in the views.  Non-linear transforms are refused (they cannot be expressed
as one IJK-to-RAS matrix).
"""

from __future__ import annotations

import json

import numpy as np
import slicer
import slicer.util
import vtk

from ..core import sequence
from ..core.errors import T1ToT2Error
from ..core.volume import Volume

#: Node reference role from a T1 node to the synthetic T2 made from it, so a re-run updates that node.
SYNTHETIC_REFERENCE_ROLE = "T1ToT2.SyntheticT2"
SYNTHETIC_ATTRIBUTE = "T1ToT2.Synthetic"
MODEL_ATTRIBUTE = "T1ToT2.Model"
SOURCE_ATTRIBUTE = "T1ToT2.SourceT1"
#: Comma-separated planes the model was trained on (the compare view's default orientation when there is one).
MODEL_PLANES_ATTRIBUTE = "T1ToT2.ModelPlanes"
#: JSON list of the notes the synthesis made (e.g. the T1 resampled to the model's voxel size); absent when none.
NOTES_ATTRIBUTE = "T1ToT2.Notes"
#: Node reference role from a T2 node to its copy aligned onto a T1 grid, so a re-run updates that node.
ALIGNED_REFERENCE_ROLE = "T1ToT2.AlignedT2"
#: The registration report (JSON: mutual information before/after, rotation, shift, matrix) on an aligned T2 node.
ALIGNMENT_ATTRIBUTE = "T1ToT2.Alignment"
#: ID of the T1 node an aligned T2 node lies on.
ALIGNED_TO_ATTRIBUTE = "T1ToT2.AlignedTo"
#: The sequence parameters (JSON, core.sequence) of a volume made into a node, which a node loses otherwise.
SEQUENCE_ATTRIBUTE = "T1ToT2.SequenceParameters"
DIVERGING_COLOR_NAME = "T1ToT2 DivergingBlueWhiteRed"
DISTANCE_COLUMN = "Distance (mm)"

_SERIES_COLORS = [
    (0.12, 0.47, 0.71),
    (1.00, 0.50, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.40, 0.74),
    (0.55, 0.34, 0.29),
]


# --- matrices ------------------------------------------------------------------
def _to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _to_vtk(matrix) -> vtk.vtkMatrix4x4:
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(matrix[r][c]))
    return out


def _scene(scene=None):
    scene = scene or getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise T1ToT2Error("no MRML scene: run inside Slicer or assign a vtkMRMLScene to slicer.mrmlScene")
    return scene


def transform_to_world(node) -> np.ndarray:
    """4x4 matrix from ``node``'s local coordinates to world (identity without a parent transform)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise T1ToT2Error(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}': "
            "harden or remove the transform (Data module) first"
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _to_numpy(m)


def world_ijk_to_ras(node) -> np.ndarray:
    """The node's IJK-to-world matrix: transform-to-world x IJKToRAS."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return transform_to_world(node) @ _to_numpy(m)


# --- volumes -------------------------------------------------------------------
def _check_scalar_volume(node, what="volume"):
    if node is None:
        raise T1ToT2Error(f"no {what} selected: choose a scalar volume node")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise T1ToT2Error(f"'{node.GetName()}' is a {node.GetClassName()}, not a scalar volume: choose a grey-scale volume")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise T1ToT2Error(f"'{node.GetName()}' has no image data: load the volume again")
    if image.GetNumberOfScalarComponents() != 1:
        raise T1ToT2Error(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components: choose a grey-scale volume")


def volume_from_node(node) -> Volume:
    """A :class:`Volume` copy of a scalar volume node, in world geometry (linear parent transform included), with its
    sequence parameters when known: those of the volume it was made from, of the DICOM series it was loaded from, or
    of the BIDS sidecar beside the file it was loaded from."""
    _check_scalar_volume(node)
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise T1ToT2Error(f"'{node.GetName()}' is not a 3-D volume: choose a 3-D scalar volume")
    meta = {"node_name": node.GetName(), "node_id": node.GetID()}
    acquired_with = (sequence.checked(json.loads(node.GetAttribute(SEQUENCE_ATTRIBUTE) or "null")) or dicom_sequence(node)
                     or file_sequence(node))
    if acquired_with is not None:
        meta[sequence.META_KEY] = acquired_with
    return Volume(array, world_ijk_to_ras(node), meta)


def dicom_file(node):
    """A file of the DICOM series a node was loaded from, or None.  Slicer's DICOM module keeps the series' SOP
    instance UIDs on the node (attribute ``DICOM.instanceUIDs``, space-separated, "Unknown" for a file whose UID it
    could not read) and the files in its database (``slicer.dicomDatabase.fileForInstance``, an empty string for an
    instance it does not hold; nothing to ask while the database is closed)."""
    import pathlib

    uids = [uid for uid in (node.GetAttribute("DICOM.instanceUIDs") or "").split() if uid != "Unknown"]
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None or not database.isOpen:
        return None
    path = database.fileForInstance(uids[0])
    return pathlib.Path(path) if path else None


def dicom_sequence(node) -> dict | None:
    """TR, TE and flip from the header of the DICOM file a node was loaded from (:func:`dicom_file`), or None."""
    path = dicom_file(node)
    if path is None or not path.is_file():
        return None
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return sequence.from_dicom(pydicom.dcmread(path, stop_before_pixels=True))
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def file_sequence(node) -> dict | None:
    """TR, TE and flip from the BIDS sidecar beside the file a node was loaded from (its storage node's file name, as
    Add Data leaves it), or None; a sidecar that cannot be read leaves them unknown."""
    from ..io import files

    storage = node.GetStorageNode()
    path = storage.GetFileName() if storage is not None else None
    if not path:
        return None
    try:
        return files.sidecar_sequence(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def auto_window_level(array, low=1.0, high=99.5):
    """(window, level) spanning the ``low``..``high`` percentiles of the non-zero voxels (all voxels if none)."""
    values = np.asarray(array, dtype=np.float64)
    nonzero = values[values != 0]
    values = nonzero if nonzero.size else values.ravel()
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return float(hi - lo), float((hi + lo) / 2)


def node_from_volume(volume: Volume, name: str, node=None, scene=None):
    """Create (or update ``node``) a scalar volume node holding ``volume`` with its exact world geometry.

    When ``node`` is under a linear parent transform, the local IJK-to-RAS is
    set so that the node's *world* geometry equals ``volume.ijk_to_ras``.
    A display node is created and the window/level set from percentiles.
    """
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    elif name:
        node.SetName(name)
    array = np.ascontiguousarray(volume.array, dtype=np.float32)
    _fill_volume_node(node, array, vtk.VTK_FLOAT, volume.ijk_to_ras)
    acquired_with = sequence.of(volume)
    if acquired_with is None:
        node.RemoveAttribute(SEQUENCE_ATTRIBUTE)
    else:
        node.SetAttribute(SEQUENCE_ATTRIBUTE, json.dumps(acquired_with))
    display = node.GetDisplayNode()
    window, level = auto_window_level(array)
    display.AutoWindowLevelOff()
    display.SetWindowLevel(window, level)
    return node


def labelmap_node_from_volume(volume: Volume, name: str, node=None, scene=None):
    """A label map volume node holding ``volume``'s integer labels with its exact world geometry.

    Label maps show as coloured outlines/fills in slice views and are left out
    of the grey-scale volume selectors (which list scalar volumes only).
    """
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    elif name:
        node.SetName(name)
    _fill_volume_node(node, np.ascontiguousarray(np.rint(volume.array), dtype=np.int16), vtk.VTK_SHORT, volume.ijk_to_ras)
    return node


def _fill_volume_node(node, array: np.ndarray, vtk_type, world_ijk_to_ras) -> None:
    """Put ``array`` into ``node``'s image data and set the local IJK-to-RAS that gives ``world_ijk_to_ras``."""
    local = np.linalg.inv(transform_to_world(node)) @ world_ijk_to_ras
    image = node.GetImageData()
    if image is None:
        image = vtk.vtkImageData()
        node.SetAndObserveImageData(image)
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk_type, 1)
    slicer.util.arrayFromVolume(node)[:] = array
    node.SetIJKToRASMatrix(_to_vtk(local))
    slicer.util.arrayFromVolumeModified(node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()


def create_or_update_synthetic_node(t1_node, volume: Volume, model_name: str, model_planes=None):
    """Put a synthetic T2 made from ``t1_node`` into the scene, reusing the node of a previous run.

    The node is named "<T1 name> synthetic T2", referenced from the T1 node
    (role :data:`SYNTHETIC_REFERENCE_ROLE`), carries the attributes
    ``T1ToT2.Synthetic=true``, ``T1ToT2.Model``, ``T1ToT2.SourceT1`` and (when
    ``model_planes`` is given) ``T1ToT2.ModelPlanes``, sits under the T1's
    parent transform with the T1's world geometry, and beside the T1 in the
    subject hierarchy (the T1's patient/study folder).
    """
    _check_scalar_volume(t1_node, "T1 volume")
    if not on_node_grid(volume, t1_node):
        raise T1ToT2Error(
            f"the synthetic volume's grid does not match '{t1_node.GetName()}': synthesize from this T1 node's volume"
        )
    scene = t1_node.GetScene()
    node = t1_node.GetNodeReference(SYNTHETIC_REFERENCE_ROLE)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"{t1_node.GetName()} synthetic T2")
        t1_node.SetNodeReferenceID(SYNTHETIC_REFERENCE_ROLE, node.GetID())
    node.SetAndObserveTransformNodeID(t1_node.GetTransformNodeID())
    node_from_volume(volume, f"{t1_node.GetName()} synthetic T2", node=node, scene=scene)
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
    node.SetAttribute(MODEL_ATTRIBUTE, str(model_name))
    node.SetAttribute(SOURCE_ATTRIBUTE, t1_node.GetID())
    if model_planes is not None:
        planes = model_planes.split(",") if isinstance(model_planes, str) else list(model_planes)
        node.SetAttribute(MODEL_PLANES_ATTRIBUTE, ",".join(str(p) for p in planes if p))
    notes = [str(n) for n in volume.meta.get("notes") or []]
    if notes:
        node.SetAttribute(NOTES_ATTRIBUTE, json.dumps(notes))
    else:
        node.RemoveAttribute(NOTES_ATTRIBUTE)  # a re-run without notes must not show the last run's
    place_beside_in_subject_hierarchy(node, t1_node)
    return node


def synthesis_notes(node) -> list:
    """The notes a synthetic node's synthesis made (:data:`NOTES_ATTRIBUTE`), oldest first; [] when none."""
    text = node.GetAttribute(NOTES_ATTRIBUTE) if node is not None else None
    return [str(n) for n in json.loads(text)] if text else []


def _on_grid(shape, ijk_to_ras, node, tol: float) -> bool:
    """Whether a grid of ``shape`` and world ``ijk_to_ras`` is ``node``'s (within ``tol`` mm in the matrix)."""
    return tuple(shape) == tuple(slicer.util.arrayFromVolume(node).shape) and bool(
        np.allclose(ijk_to_ras, world_ijk_to_ras(node), atol=tol, rtol=0))


def on_node_grid(volume: Volume, node, tol: float = 1e-5) -> bool:
    """Whether ``volume`` has ``node``'s shape and world geometry (within ``tol`` mm in the IJK-to-RAS matrix)."""
    return _on_grid(volume.array.shape, volume.ijk_to_ras, node, tol)


def nodes_share_grid(node_a, node_b, tol: float = 1e-4) -> bool:
    """Whether two scalar volume nodes lie on one voxel grid in world coordinates (as ``Volume.same_geometry``).

    ``tol`` (mm, in the IJK-to-RAS matrix) is the one training uses to call a T1/T2 pair voxel-aligned.
    """
    _check_scalar_volume(node_a)
    _check_scalar_volume(node_b)
    return _on_grid(slicer.util.arrayFromVolume(node_a).shape, world_ijk_to_ras(node_a), node_b, tol)


def create_or_update_aligned_node(t1_node, t2_node, volume: Volume, report: dict | None = None):
    """Put ``t2_node`` aligned onto ``t1_node``'s grid into the scene, reusing the node of a previous alignment.

    ``volume`` must lie on the T1 node's world grid.  The node is named "<T2 name> aligned to <T1 name>",
    referenced from the T2 node (role :data:`ALIGNED_REFERENCE_ROLE`), sits under the T1's parent transform
    with the T1's world geometry and beside the T1 in the subject hierarchy, and carries the registration
    report as JSON (:data:`ALIGNMENT_ATTRIBUTE`) and the T1's ID (:data:`ALIGNED_TO_ATTRIBUTE`).
    """
    _check_scalar_volume(t1_node, "T1 volume")
    _check_scalar_volume(t2_node, "T2 volume")
    if not on_node_grid(volume, t1_node):
        raise T1ToT2Error(f"the aligned T2 does not lie on '{t1_node.GetName()}''s grid: align onto this T1 node")
    node = _referenced_volume_node(t2_node, ALIGNED_REFERENCE_ROLE, f"{t2_node.GetName()} aligned to {t1_node.GetName()}",
                                   volume, t1_node.GetTransformNodeID())
    node.SetAttribute(ALIGNED_TO_ATTRIBUTE, t1_node.GetID())
    if report is not None:
        node.SetAttribute(ALIGNMENT_ATTRIBUTE, json.dumps(report))
    else:
        node.RemoveAttribute(ALIGNMENT_ATTRIBUTE)
    place_beside_in_subject_hierarchy(node, t1_node)
    return node


def alignment_report(node) -> dict | None:
    """The registration report an aligned T2 node carries (:data:`ALIGNMENT_ATTRIBUTE`), or None."""
    text = node.GetAttribute(ALIGNMENT_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


def place_beside_in_subject_hierarchy(node, reference_node):
    """Put ``node``'s subject-hierarchy item under ``reference_node``'s parent (its study), when it has one.

    Returns the parent item id, or None when the scene has no subject hierarchy
    or the reference is not in it.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if hierarchy is None:
        return None
    invalid = hierarchy.GetInvalidItemID()
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    if reference_item == invalid:
        return None
    parent = hierarchy.GetItemParent(reference_item)
    if parent == invalid:
        return None
    item = hierarchy.GetItemByDataNode(node)
    if item == invalid:
        hierarchy.CreateItem(parent, node)
    elif hierarchy.GetItemParent(item) != parent:
        hierarchy.SetItemParent(item, parent)
    return parent


def resample_to(volume: Volume, reference: Volume) -> Volume:
    """``volume`` sampled (trilinear, 0 outside) at ``reference``'s voxel centres, in world coordinates."""
    if volume.same_geometry(reference):
        return volume
    from scipy.ndimage import map_coordinates

    k, j, i = np.indices(reference.shape, dtype=np.float64)
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    src = volume.ras_to_ijk(reference.ijk_to_ras_points(ijk))
    values = map_coordinates(volume.array, src[:, ::-1].T, order=1, mode="constant", cval=0.0)
    return reference.with_array(values.reshape(reference.shape))


def diverging_color_node(scene=None):
    """A blue-white-red colour table for signed maps (created once per scene)."""
    scene = _scene(scene)
    existing = scene.GetFirstNodeByName(DIVERGING_COLOR_NAME)
    if existing is not None:
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", DIVERGING_COLOR_NAME)
    node.SetTypeToUser()
    n = 256
    node.SetNumberOfColors(n)
    node.GetLookupTable().SetTableRange(0, n - 1)
    for index in range(n):
        t = index / (n - 1) * 2 - 1  # -1 .. 1
        if t < 0:
            rgb = (1 + t * 0.8, 1 + t * 0.8, 1.0)  # white -> blue
        else:
            rgb = (1.0, 1 - t * 0.8, 1 - t * 0.8)  # white -> red
        node.SetColor(index, f"{index}", *rgb, 1.0)
    node.SetAttribute("Category", "T1ToT2")
    return node


def difference_node(generated_node, acquired_node, name=None, absolute=False, node=None):
    """Difference map G - I (``absolute=False``, blue-white-red, symmetric window) or |G - I| (the paper's, grey).

    The acquired volume is resampled onto the generated one's grid when their
    grids differ.  The node is reused by name (or passed as ``node``).
    """
    generated = volume_from_node(generated_node)
    acquired = resample_to(volume_from_node(acquired_node), generated)
    difference = generated.array - acquired.array
    if absolute:
        difference = np.abs(difference)
    scene = generated_node.GetScene()
    name = name or f"{generated_node.GetName()} {'|G-I|' if absolute else 'G-I'}"
    if node is None:
        node = scene.GetFirstNode(name, "vtkMRMLScalarVolumeNode", False, True)
    # The map lives under the generated node's transform, like the generated node itself.
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveTransformNodeID(generated_node.GetTransformNodeID())
    node_from_volume(generated.with_array(difference), name, node=node, scene=scene)
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
    node.SetAttribute("T1ToT2.Difference", "absolute" if absolute else "signed")
    place_beside_in_subject_hierarchy(node, generated_node)
    display = node.GetDisplayNode()
    extent = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    display.AutoWindowLevelOff()
    if absolute:
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        display.SetWindowLevel(extent, extent / 2)
    else:
        display.SetAndObserveColorNodeID(diverging_color_node(scene).GetID())
        display.SetWindowLevel(2 * extent, 0.0)
    return node


# --- tables and charts -----------------------------------------------------------
def _table_from_columns(table_node, columns: dict):
    """Replace ``table_node``'s content with ``columns`` (name -> 1-D sequence; numbers become double columns)."""
    table = table_node.GetTable()
    table.Initialize()
    for name, values in columns.items():
        values = list(values)
        if values and isinstance(values[0], str):
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(v)
        else:
            array = vtk.vtkDoubleArray()
            for v in values:
                array.InsertNextValue(np.nan if v is None else float(v))
        array.SetName(name)
        table.AddColumn(array)
    table.Modified()
    table_node.Modified()
    return table_node


def table_columns(table_node) -> dict:
    """A table node's columns as {name: list} (numbers as floats), for tests and figures."""
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        out[column.GetName()] = [column.GetValue(r) for r in range(column.GetNumberOfTuples())]
    return out


METRIC_COLUMNS = (("nrmse", "NRMSE"), ("psnr", "PSNR (dB)"), ("ssim", "SSIM"))


def metrics_table_node(metrics: dict, name="T1ToT2 metrics", node=None, scene=None):
    """A table with one row per plane plus "all planes": NRMSE/PSNR/SSIM mean and std and the slice count."""
    if "per_plane" not in metrics or "overall" not in metrics:
        raise T1ToT2Error("the metrics have no 'per_plane'/'overall' entries: pass the result of evaluate_volumes")
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    rows = list(metrics["per_plane"].items()) + [("all planes", metrics["overall"])]
    columns = {"Plane": [plane for plane, _ in rows]}
    for key, title in METRIC_COLUMNS:
        columns[f"{title} mean"] = [entry[key]["mean"] for _, entry in rows]
        columns[f"{title} std"] = [entry[key]["std"] for _, entry in rows]
    columns["Slices"] = [entry["n_slices"] for _, entry in rows]
    _table_from_columns(node, columns)
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
    return node


VALIDATION_COLUMNS = ("Epoch", "NRMSE", "PSNR (dB)", "SSIM")


def validation_table_node(node=None, name="T1ToT2 validation per epoch", scene=None):
    """An empty per-epoch validation table (Epoch, NRMSE, PSNR, SSIM); ``node`` is emptied and reused."""
    scene = _scene(scene)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    _table_from_columns(node, {column: [] for column in VALIDATION_COLUMNS})
    return node


def add_validation_row(table_node, event) -> bool:
    """Append an "epoch" event's validation metrics as one row; returns False when it has none."""
    metrics = event.get("val_metrics") if isinstance(event, dict) else None
    if table_node is None or not metrics:
        return False
    values = (event.get("epoch"), metrics.get("nrmse"), metrics.get("psnr"), metrics.get("ssim"))
    _append_row(table_node, dict(zip(VALIDATION_COLUMNS, values)))
    return True


def _append_row(table_node, values: dict):
    """Append one row (column name -> number; missing columns get NaN, new columns are added NaN-filled).

    Only the new row (and a new column's earlier rows) is written: the cost
    of a row does not grow with the table.
    """
    table = table_node.GetTable()
    rows = table.GetNumberOfRows()
    for name in values:
        if table.GetColumnByName(name) is None:
            column = vtk.vtkDoubleArray()
            column.SetName(name)
            column.SetNumberOfTuples(rows)
            column.Fill(np.nan)
            table.AddColumn(column)
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        value = values.get(column.GetName())
        column.InsertNextValue(np.nan if value is None else float(value))
    table.Modified()
    table_node.Modified()


def _new_chart(scene, name, title, x_title, y_title, chart=None):
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    return chart


def _ensure_series(scene, chart, table_node, x_column, y_column, index, prefix):
    """The chart's series plotting ``y_column`` against ``x_column`` of ``table_node`` (created once)."""
    for n in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(n)
        if series is not None and series.GetYColumnName() == y_column:
            return series
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{prefix} {y_column}")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_column)
    series.SetYColumnName(y_column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetLineWidth(2)
    series.SetColor(*_SERIES_COLORS[index % len(_SERIES_COLORS)])
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return series


def curve_points_world(line_node) -> np.ndarray:
    """The (n, 3) world points of a Markups line or curve (the interpolated curve for curves)."""
    if line_node is None or line_node.GetNumberOfControlPoints() < 2:
        raise T1ToT2Error("the profile line needs at least two points: place both ends of the line")
    points = np.asarray(slicer.util.arrayFromMarkupsCurvePoints(line_node, world=True), dtype=np.float64)
    if points.shape[0] < 2:
        points = np.asarray(slicer.util.arrayFromMarkupsControlPoints(line_node, world=True), dtype=np.float64)
    return points


def resample_polyline(points, samples: int):
    """``samples`` points equally spaced by arc length along ``points``; returns (distances, points)."""
    points = np.asarray(points, dtype=np.float64)
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    if cumulative[-1] <= 0:
        raise T1ToT2Error("the profile line has zero length: move its end points apart")
    distances = np.linspace(0.0, cumulative[-1], int(samples))
    resampled = np.stack([np.interp(distances, cumulative, points[:, a]) for a in range(3)], axis=1)
    return distances, resampled


def sample_node(node, points_world) -> np.ndarray:
    """Trilinear samples of a volume node at world points (NaN outside the volume).

    World -> IJK uses the inverse of the node's world geometry (parent
    transform included), then ``scipy.ndimage.map_coordinates`` with order 1
    on the block of voxels the points touch only, in the node's own type: a
    drag of the line costs what the line crosses, not a float copy of the volume.
    """
    from scipy.ndimage import map_coordinates

    _check_scalar_volume(node)
    array = slicer.util.arrayFromVolume(node)
    world_to_ijk = np.linalg.inv(world_ijk_to_ras(node))
    ijk = np.asarray(points_world, dtype=np.float64) @ world_to_ijk[:3, :3].T + world_to_ijk[:3, 3]
    shape = np.array(array.shape[::-1])  # i, j, k sizes
    outside = np.any((ijk < -0.5) | (ijk > shape - 0.5), axis=1)
    values = np.full(len(ijk), np.nan)
    if outside.all():
        return values
    kji = np.clip(ijk[~outside][:, ::-1], 0, np.array(array.shape) - 1)
    low = np.floor(kji.min(axis=0)).astype(int)
    high = np.minimum(np.floor(kji.max(axis=0)).astype(int) + 2, array.shape)
    block = array[low[0]:high[0], low[1]:high[1], low[2]:high[2]]  # a view: nothing is copied yet
    values[~outside] = map_coordinates(block, (kji - low).T, order=1, mode="nearest", output=np.float64)
    return values


class LineProfile:
    """Intensity profiles of several volumes along a Markups line or curve, kept up to date.

    Samples every volume at ``samples`` points equally spaced (in mm, world
    coordinates) along the line, fills a Table node (``Distance (mm)`` plus one
    column per volume) and a PlotChart with one series per volume, and
    recomputes whenever a point of the line is moved, added or removed.
    Call :meth:`remove_observers` when done.
    """

    def __init__(self, line_node, volume_nodes, table_node=None, chart_node=None, samples=200, name=None):
        if isinstance(volume_nodes, dict):
            self.volume_nodes = dict(volume_nodes)
        else:
            self.volume_nodes = {node.GetName(): node for node in volume_nodes}
        if not self.volume_nodes:
            raise T1ToT2Error("no volumes to profile: choose at least one volume")
        if int(samples) < 2:
            raise T1ToT2Error(f"a profile needs at least 2 samples, got {samples}: raise the sample count")
        self.line_node = line_node
        self.samples = int(samples)
        self.scene = line_node.GetScene()
        name = name or f"{line_node.GetName()} profile"
        self.table_node = table_node or self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        self.chart_node = _new_chart(self.scene, name, "Line profile", DISTANCE_COLUMN, "Intensity", chart_node)
        self.distances = np.zeros(0)
        self.profiles: dict = {}
        self._observers = []
        markups = slicer.vtkMRMLMarkupsNode
        for event in (markups.PointModifiedEvent, markups.PointAddedEvent, markups.PointRemovedEvent,
                      slicer.vtkMRMLTransformableNode.TransformModifiedEvent):
            self._observers.append(line_node.AddObserver(event, self._on_line_modified))
        self.update()
        for index, column in enumerate(self.volume_nodes):
            _ensure_series(self.scene, self.chart_node, self.table_node, DISTANCE_COLUMN, column, index, name)

    def _on_line_modified(self, caller=None, event=None):
        if self.line_node.GetNumberOfControlPoints() >= 2:
            self.update()

    def update(self):
        """Resample every volume along the current line and refresh the table (and so the chart)."""
        distances, points = resample_polyline(curve_points_world(self.line_node), self.samples)
        self.distances = distances
        self.profiles = {name: sample_node(node, points) for name, node in self.volume_nodes.items()}
        _table_from_columns(self.table_node, {DISTANCE_COLUMN: distances, **self.profiles})
        return self.profiles

    def remove_observers(self):
        for tag in self._observers:
            self.line_node.RemoveObserver(tag)
        self._observers = []


def create_profile_line(volume_node, name="T1ToT2 profile line"):
    """A Markups line across the middle of the volume's world bounds (left to right), ready to be moved."""
    bounds = [0.0] * 6
    volume_node.GetRASBounds(bounds)
    centre = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    line = volume_node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
    line.AddControlPointWorld(vtk.vtkVector3d(bounds[0], centre[1], centre[2]))
    line.AddControlPointWorld(vtk.vtkVector3d(bounds[1], centre[1], centre[2]))
    return line


def line_profile(line_node, volume_nodes, previous=None, samples=200) -> "LineProfile":
    """A :class:`LineProfile`; with ``previous`` (the last one) its table and chart are reused, its observers removed."""
    if previous is not None:
        previous.remove_observers()
        return LineProfile(line_node, volume_nodes, table_node=previous.table_node, chart_node=previous.chart_node,
                           samples=samples)
    return LineProfile(line_node, volume_nodes, samples=samples)


def show_plot(chart_node, scene=None) -> bool:
    """Show ``chart_node`` in the plot view, switching to a layout with one when the current has none.

    Works on the scene's layout and plot view nodes (what Slicer's Plots
    logic ``ShowChartInLayout`` does); returns False when the scene has no
    layout node (no views, as in a headless scene).
    """
    scene = _scene(scene or chart_node.GetScene())
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        return False
    description = layout.GetCurrentLayoutDescription() or ""
    if layout.GetViewArrangement() == COMPARE_LAYOUT_ID and "vtkMRMLPlotViewNode" not in description:
        # The one-row comparison stays: the plot gets a row of its own below it.
        views = tuple(v for v in _compare_views_in(description)) or SLICER_COMPARE_VIEWS
        orientation = layout.GetAttribute(COMPARE_ORIENTATION_ATTRIBUTE) or "Coronal"
        layout.SetLayoutDescription(COMPARE_LAYOUT_ID, compare_layout_xml(orientation, views, plot=True))
    elif "vtkMRMLPlotViewNode" not in description:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView)
    views = [scene.GetNthNodeByClass(n, "vtkMRMLPlotViewNode") for n in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode"))]
    if not views:  # the application creates it with the layout; headless, make the one the layout names
        view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode")
        view.SetLayoutName("PlotView1")
        view.SetSingletonTag("PlotView1")
        views = [view]
    for view in views:
        view.SetPlotChartNodeID(chart_node.GetID())
    return True


#: Event keys that are bookkeeping, not losses (used when an event has no "losses" dict).
_NON_LOSS_KEYS = {"event", "step", "epoch", "epochs", "steps", "total", "total_steps", "iteration", "time",
                  "elapsed", "elapsed_s", "eta", "eta_s", "lr", "learning_rate", "seconds", "batch", "batches",
                  "progress", "fraction", "images_per_s", "it_per_s"}


class LossPlot:
    """Training losses as a Table node and a PlotChart (one series per loss), fed with progress events.

    ``add_event`` takes the JSON objects ``t1tot2 train --progress json``
    prints (dicts or JSON text).  By default every "step" event adds a row at
    the global step ``(epoch - 1) * steps + step``; pass ``events=("epoch",)``
    to plot the per-epoch mean losses against the epoch instead.  Losses come
    from the event's ``"losses"`` dict, or else from its numeric fields that
    are not bookkeeping (step, epoch, time, lr...).
    """

    def __init__(self, name="T1ToT2 training loss", scene=None, events=("step",), table_node=None, chart_node=None):
        self.scene = _scene(scene)
        self.events = tuple(events)
        self.x_column = "Epoch" if self.events == ("epoch",) else "Step"
        self.table_node = table_node or self.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        self.chart_node = _new_chart(self.scene, name, "Training loss", self.x_column, "Loss", chart_node)
        self.name = name
        self.rows: list[dict] = []
        self.loss_names: list[str] = []

    @classmethod
    def reuse(cls, previous, resume=False, scene=None) -> "LossPlot":
        """The training's loss plot: ``previous``'s table and chart when they are still in the scene (emptied
        for a new run, kept for ``resume`` so the curve goes on), else new ones."""
        scene = _scene(scene)
        if previous is None or previous.table_node.GetScene() is not scene or previous.chart_node.GetScene() is not scene:
            return cls(scene=scene)
        if not resume:
            previous.rows, previous.loss_names = [], []
            previous.table_node.GetTable().Initialize()
            previous.table_node.Modified()  # the chart's series find their columns again by name
        return previous

    @staticmethod
    def _losses(event: dict) -> dict:
        losses = event.get("losses")
        if isinstance(losses, dict):
            items = losses.items()
        else:
            items = ((k, v) for k, v in event.items() if k not in _NON_LOSS_KEYS)
        return {str(k): float(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def _x(self, event: dict) -> float:
        if event["event"] == "epoch":
            return float(event.get("epoch", len(self.rows) + 1))
        step = event.get("step", event.get("iteration"))
        if step is None:
            return float(len(self.rows) + 1)
        if "epoch" in event and "steps" in event:
            return float((int(event["epoch"]) - 1) * int(event["steps"]) + int(step))
        return float(step)

    def add_event(self, event) -> bool:
        """Append a row for a "step" (or "epoch") event; returns whether the table changed."""
        if isinstance(event, (str, bytes)):
            try:
                event = json.loads(event)
            except ValueError:
                return False
        if not isinstance(event, dict) or event.get("event") not in self.events:
            return False
        losses = self._losses(event)
        if not losses:
            return False
        row = {self.x_column: self._x(event), **losses}
        self.rows.append(row)
        _append_row(self.table_node, row)  # one row per event, however long the run
        for loss in losses:
            if loss not in self.loss_names:
                self.loss_names.append(loss)
                _ensure_series(self.scene, self.chart_node, self.table_node, self.x_column, loss,
                               len(self.loss_names) - 1, self.name)
        return True


# --- views -------------------------------------------------------------------
#: The web page's compare views, left to right: T1, acquired T2, synthetic T2 (overlays on the last only).
COMPARE_VIEWS = ("Red", "Yellow", "Green")
#: The Slicer modules' compare views: slice views of their own (singletontags of the compare layout), so that
#: comparing never re-links or re-orients the user's Red, Yellow and Green views.
SLICER_COMPARE_VIEWS = ("T1ToT2Compare1", "T1ToT2Compare2", "T1ToT2Compare3")
_COMPARE_VIEW_COLORS = ("#F34A33", "#EFD64D", "#6DAD4A")
_COMPARE_VIEW_LABELS = ("T1", "T2", "S")
#: Layout id of the one-row compare layout (outside Slicer's built-in ids, which stop below 100).
COMPARE_LAYOUT_ID = 5301
#: On the layout node: the arrangement shown before the compare layout (restored by :func:`leave_comparison`).
PREVIOUS_LAYOUT_ATTRIBUTE = "T1ToT2.PreviousLayout"
COMPARE_ORIENTATION_ATTRIBUTE = "T1ToT2.CompareOrientation"
ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
#: Node reference role from a synthetic node to its error map (how far each voxel can be trusted), when one exists.
ERROR_MAP_REFERENCE_ROLE = "T1ToT2.ErrorMap"
OVERLAYS = ("difference", "error", "none")


def compare_layout_xml(orientation="Coronal", views=SLICER_COMPARE_VIEWS, plot=False) -> str:
    """Slicer layout XML: the three compare slice views side by side in one row, all in ``orientation``
    (with ``plot``, a plot view in a second row for line profiles)."""
    orientation = compare_orientation(orientation)
    items = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{view}">'
        f'<property name="orientation" action="default">{orientation}</property>'
        f'<property name="viewlabel" action="default">{label}</property>'
        f'<property name="viewcolor" action="default">{colour}</property></view></item>'
        for view, colour, label in zip(views, _COMPARE_VIEW_COLORS, _COMPARE_VIEW_LABELS))
    row = f'<layout type="horizontal">{items}</layout>'
    if not plot:
        return row
    plot_view = '<item><view class="vtkMRMLPlotViewNode" singletontag="PlotView1"></view></item>'
    return f'<layout type="vertical" split="true"><item>{row}</item>{plot_view}</layout>'


def _compare_views_in(description: str) -> list:
    import re

    return re.findall(r'class="vtkMRMLSliceNode" singletontag="([^"]+)"', description or "")


def _show_compare_layout(scene, orientation, views) -> None:
    """Register (or update) the compare layout and switch to it, remembering the user's arrangement."""
    layout = _layout_node(scene)
    if layout is None:
        return
    current = layout.GetViewArrangement()
    keep_plot = current == COMPARE_LAYOUT_ID and "vtkMRMLPlotViewNode" in (layout.GetCurrentLayoutDescription() or "")
    xml = compare_layout_xml(orientation, views, plot=keep_plot)
    if not layout.SetLayoutDescription(COMPARE_LAYOUT_ID, xml):
        layout.AddLayoutDescription(COMPARE_LAYOUT_ID, xml)
    if current != COMPARE_LAYOUT_ID:
        layout.SetAttribute(PREVIOUS_LAYOUT_ATTRIBUTE, str(current))
    layout.SetAttribute(COMPARE_ORIENTATION_ATTRIBUTE, orientation)
    layout.SetViewArrangement(COMPARE_LAYOUT_ID)


def leave_comparison(scene=None) -> bool:
    """Put back the layout the user had before the compare layout (the views themselves were never touched);
    returns whether the layout changed."""
    layout = _layout_node(_scene(scene))
    if layout is None or layout.GetViewArrangement() != COMPARE_LAYOUT_ID:
        return False
    previous = layout.GetAttribute(PREVIOUS_LAYOUT_ATTRIBUTE)
    layout.SetViewArrangement(int(previous) if previous else slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
    return True


def compare_orientation(plane=None, synthetic_node=None) -> str:
    """The slice orientation for a compare view: ``plane`` when it names one, else the synthetic node's model plane.

    ``plane`` may be "axial"/"Axial", "coronal", "sagittal", or None/"auto".
    With "auto", a synthetic node made by a model trained on exactly one plane
    (attribute :data:`MODEL_PLANES_ATTRIBUTE`) gives that plane; otherwise Coronal.
    """
    if plane is not None and str(plane).lower() not in ("", "auto"):
        name = str(plane).capitalize()
        if name not in ORIENTATIONS:
            raise T1ToT2Error(f"unknown compare orientation {plane!r}: use auto, axial, coronal or sagittal")
        return name
    planes = (synthetic_node.GetAttribute(MODEL_PLANES_ATTRIBUTE) or "") if synthetic_node is not None else ""
    planes = [p for p in planes.split(",") if p]
    if len(planes) == 1 and planes[0].capitalize() in ORIENTATIONS:
        return planes[0].capitalize()
    return "Coronal"


def _layout_node(scene):
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    return node


def _slice_node(scene, layout_name):
    node = scene.GetSingletonNode(layout_name, "vtkMRMLSliceNode")
    if node is None:
        # A node made by the scene starts from its default slice node (orientation presets included).
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName(layout_name)
        node.SetSingletonTag(layout_name)
        node = scene.AddNode(node)
        node.UnRegister(None)
    return node


def _slice_composite_node(scene, layout_name):
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == layout_name:
            return node
    node = slicer.vtkMRMLSliceCompositeNode()
    node.SetLayoutName(layout_name)
    node.SetSingletonTag(layout_name)
    return scene.AddNode(node)


def error_map_node(synthetic_node):
    """The error map referenced by a synthetic node, or None."""
    return synthetic_node.GetNodeReference(ERROR_MAP_REFERENCE_ROLE) if synthetic_node is not None else None


def create_or_update_error_map_node(synthetic_node, volume: Volume):
    """The synthetic node's error map (expected |error| per voxel) as a second node, referenced from it.

    Same grid, parent transform and study as the synthetic node; named "<synthetic name> error map",
    marked synthetic, shown with a warm colour table when used as an overlay.
    """
    _check_scalar_volume(synthetic_node, "synthetic T2")
    if volume.array.shape != tuple(slicer.util.arrayFromVolume(synthetic_node).shape):
        raise T1ToT2Error(f"the error map's grid does not match '{synthetic_node.GetName()}': synthesize again")
    node = _referenced_volume_node(synthetic_node, ERROR_MAP_REFERENCE_ROLE, f"{synthetic_node.GetName()} error map",
                                   volume, synthetic_node.GetTransformNodeID())
    node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
    node.SetAttribute(SOURCE_ATTRIBUTE, synthetic_node.GetAttribute(SOURCE_ATTRIBUTE) or "")
    place_beside_in_subject_hierarchy(node, synthetic_node)
    return node


def _referenced_volume_node(owner_node, role: str, name: str, volume: Volume, transform_node_id):
    """The scalar volume node ``owner_node`` references under ``role`` (created and referenced on first use,
    so a re-run updates it), named ``name``, under ``transform_node_id``, holding ``volume``'s world geometry."""
    scene = owner_node.GetScene()
    node = owner_node.GetNodeReference(role)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        owner_node.SetNodeReferenceID(role, node.GetID())
    node.SetAndObserveTransformNodeID(transform_node_id)
    node_from_volume(volume, name, node=node, scene=scene)
    return node


def show_comparison(t1_node, acquired_node, synthetic_node, orientation=None, overlay="difference", opacity=0.5,
                    scene=None, views=COMPARE_VIEWS) -> dict:
    """T1 | acquired T2 | synthetic T2 in one row of linked slice views of one orientation.

    This is the Compare button, without Qt: it registers the one-row layout
    (:func:`compare_layout_xml`) in the scene's layout node and switches to it
    when the scene has one (the application then builds the views), puts the
    three volumes in the Red, Yellow and Green views (created when missing, as
    in a headless scene; the Slicer modules pass :data:`SLICER_COMPARE_VIEWS`, views of their own), sets all three slice nodes to one orientation
    (:func:`compare_orientation`: the given plane, else the model's plane, else
    coronal) and links them.  ``overlay`` chooses the synthetic view's
    foreground: "difference" (G - I, made here, needs the acquired T2),
    "error" (the synthetic node's error map, when it has one) or "none"; the
    T1 and acquired views never get an overlay.  ``acquired_node`` may be None:
    the middle view then shows the synthetic T2 too.

    Returns {"difference", "error_map", "overlay" (the foreground node or None),
    "orientation", "composites", "slice_nodes"}.
    """
    if overlay not in OVERLAYS:
        raise T1ToT2Error(f"unknown overlay {overlay!r}: use one of {', '.join(OVERLAYS)}")
    _check_scalar_volume(t1_node, "T1 volume")
    _check_scalar_volume(synthetic_node, "synthetic T2")
    scene = _scene(scene or synthetic_node.GetScene())
    orientation = compare_orientation(orientation, synthetic_node)
    difference = difference_node(synthetic_node, acquired_node) if acquired_node is not None else None
    error_map = error_map_node(synthetic_node)
    foreground = {"difference": difference, "error": error_map, "none": None}[overlay]

    _show_compare_layout(scene, orientation, views)

    backgrounds = (t1_node, acquired_node or synthetic_node, synthetic_node)
    composites, slice_nodes = [], []
    for view, background in zip(views, backgrounds):
        composite = _slice_composite_node(scene, view)
        # Unlink first, so that assigning one view's volumes is not broadcast to the others.
        composite.SetLinkedControl(False)
        composite.SetHotLinkedControl(False)
        composites.append(composite)
    for view, composite, background in zip(views, composites, backgrounds):
        composite.SetBackgroundVolumeID(background.GetID())
        is_synthetic_view = view == views[-1]
        shown = foreground if is_synthetic_view else None
        composite.SetForegroundVolumeID(shown.GetID() if shown is not None else None)
        composite.SetForegroundOpacity(opacity if shown is not None else 0.0)
        composite.SetLabelVolumeID(None)
        slice_node = _slice_node(scene, view)
        slice_node.SetOrientation(orientation)
        slice_nodes.append(slice_node)
    for composite in composites:
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
    return {"difference": difference, "error_map": error_map, "overlay": foreground, "orientation": orientation,
            "composites": composites, "slice_nodes": slice_nodes}
