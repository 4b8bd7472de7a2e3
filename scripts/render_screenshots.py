#!/usr/bin/env python
"""Render the README's user-guide screenshots from real, off-screen Slicer views.

The slice views are slicer-core views (trame-slicer's ``SlicerApp`` with
``DirectViewFactory``), rendered off-screen through EGL/Mesa into PNGs.  They
are built from the Synthesis module's own compare layout
(:func:`T1ToT2Lib.slicer.scene.compare_layout_xml`), and the Compare picture is made
by :func:`T1ToT2Lib.slicer.scene.show_comparison`, the function behind the module's
Compare button: no layout or view assignment of its own here.  Slicer's plot and table views are Qt widgets that slicer-core does
not have, so the profile plot, the loss chart and the metrics table are drawn
with matplotlib *from the Table nodes' contents*.

Steps (one PNG each, in ``--out``):

1. ``01_t1_loaded.png``        the phantom right hand's T1 in a coronal slice view
2. ``02_compare.png``          T1 | acquired T2 | synthetic T2, linked, with the G - I overlay
3. ``03_line_profile.png``     a line across the thumb metacarpal and its profile plot
4. ``04_training_loss.png``    the loss chart fed by a real ``t1tot2 train --progress json`` job
5. ``05_metrics_table.png``    the NRMSE/PSNR/SSIM table of the synthetic T2

The model is ``--model`` (default ``Resources/demo_model.safetensors``); the
short training run of step 4 (left hand, coronal slices, on the CPU) always
happens, since it is what the loss chart shows, and its model is used for
synthesis when no model file exists.  The pictures show the right hand.

Usage: ``python scripts/render_screenshots.py [--model FILE] [--out DIR] [--epochs N]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

ROOT = Path(__file__).resolve().parent.parent
VIEW_SIZE = (300, 560)  # coronal view of the hand: 134 mm (R) by 295 mm (S)
DPI = 100


def build_app(orientation="Coronal"):
    """A slicer-core application with the compare layout's slice views, rendered off-screen.

    The views are the ones :func:`T1ToT2Lib.slicer.scene.compare_layout_xml` describes,
    the layout the Synthesis module registers with Slicer's layout manager.
    """
    import slicer
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory
    from trame_slicer.views.layout_grid import slicer_layout_to_vue

    from T1ToT2Lib.slicer import scene

    app = SlicerApp()
    slicer.mrmlScene = app.scene
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {}
    for definition in slicer_layout_to_vue(scene.compare_layout_xml(orientation)).items:
        view = app.view_manager.create_view(definition)
        view.render_window().SetSize(*VIEW_SIZE)
        view.update_size(*VIEW_SIZE)
        views[definition.singleton_tag] = view
    return app, views


def capture(view):
    """The view's current picture as an (h, w, 3) uint8 array."""
    import numpy as np
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[:, :, :3]
    return np.flipud(pixels).copy()


def show_slice(view, offset):
    """Fit the view to its volume and move it to the slice at ``offset`` mm along its normal."""
    view.fit_view_to_content()
    view.set_slice_value(offset)


def save(fig, path: Path):
    """Write the figure atomically as a 256-colour PNG (a few times smaller than true colour)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from T1ToT2Lib.core.atomic import atomic_path

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor=fig.get_facecolor())
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def figure(width, height, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), facecolor="#202020")
    fig.suptitle(title, color="white", fontsize=12)
    return fig


def image_axes(fig, rect, image, title):
    ax = fig.add_axes(rect)
    ax.imshow(image, interpolation="nearest")
    ax.set_title(title, color="white", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def train_job(t1_path, t2_path, model_path, epochs, log):
    """Run a short real training job in the background and collect its JSON progress events."""
    from T1ToT2Lib.slicer.jobs import BackgroundJob, cli_command

    # The recommended refiner with its own defaults, on the coronal slices only, so the chart fills in seconds; one
    # pair has no held-out pair to judge the CNN, so the chart's run trains it as --correction train does.
    argv = cli_command("train", "--t1", t1_path, "--t2", t2_path, "--model", "refiner", "--planes", "coronal",
                       "--epochs", str(epochs), "--epochs-decay", str(epochs), "--correction", "train", "--seed", "1",
                       "--device", "cpu",
                       "--progress", "json", "--out", model_path)
    job = BackgroundJob(argv).start()
    events = job.run_to_end(timeout=1800)
    if job.returncode != 0:
        sys.exit(f"render_screenshots: error: training failed: {job.error_message or job.log_text[-500:]}")
    log(f"trained {model_path.name} for {epochs} epochs")
    return events


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "Resources" / "demo_model.safetensors",
                        help="model file used for synthesis (default: the demo model; the run's tiny model if absent)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the loss-chart run (coronal slices of the left hand)")
    parser.add_argument("--plane", default="coronal", help="synthesis plane")
    parser.add_argument("--orientation", default="coronal", choices=("axial", "coronal", "sagittal"),
                        help="orientation of the slice views (the compare view's choice)")
    args = parser.parse_args(argv)
    started = time.time()

    def log(message):
        print(f"[{time.time() - started:6.1f} s] {message}", flush=True)

    import numpy as np
    import slicer
    import vtk

    from T1ToT2Lib.slicer import scene
    from T1ToT2Lib.core.metrics import evaluate_volumes, foreground_mask
    from T1ToT2Lib.phantom.render import landmarks, make_phantom
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.io.files import write_volume

    orientation = scene.compare_orientation(args.orientation)
    app, views = build_app(orientation)
    phantom = make_phantom("small", seed=0)
    marks = landmarks("small", seed=0)["right"]
    line_points = np.asarray(marks["thumb_metacarpal_profile"], dtype=float)
    # The views cut through the line's first point: R, A or S is the axis normal to the orientation.
    offset_a = float(line_points[0, {"Sagittal": 0, "Coronal": 1, "Axial": 2}[orientation]])
    t1_node = scene.node_from_volume(phantom["right_t1"], "right hand T1 VIBE")
    t2_node = scene.node_from_volume(phantom["right_t2"], "right hand T2 SPACE (acquired)")
    log("phantom loaded")

    # 1. The T1 in a slice view (as Slicer shows a loaded volume: the background of the first view).
    red = views[scene.SLICER_COMPARE_VIEWS[0]]
    red.set_background_volume_id(t1_node.GetID())
    show_slice(red, offset_a)
    fig = figure(3.4, 6.6, "1. Load a T1 volume")
    image_axes(fig, [0.03, 0.02, 0.94, 0.88], capture(red), f"right hand T1 VIBE (phantom), {orientation.lower()}")
    save(fig, args.out / "01_t1_loaded.png")

    with tempfile.TemporaryDirectory(prefix="t1tot2-shots-") as work:
        work = Path(work)
        # Train on the left hand, show the right hand: the pictures never show training data.
        t1_path = write_volume(phantom["left_t1"], work / "left_t1.nii.gz")
        t2_path = write_volume(phantom["left_t2"], work / "left_t2.nii.gz")
        tiny_model = work / "tiny.safetensors"
        events = train_job(t1_path, t2_path, tiny_model, args.epochs, log)
        model_path = args.model if args.model.exists() else tiny_model
        loss_plot = scene.LossPlot(name="training loss")
        for event in events:
            loss_plot.add_event(event)
        synthetic = synthesize_volume(str(model_path), phantom["right_t1"], plane=args.plane, device="cpu")
        model_label = args.model.name if args.model.exists() else f"refiner, {2 * args.epochs} epochs (coronal)"
    log(f"synthesized with {model_path.name}")

    # 2. Compare view.
    synthetic_node = scene.create_or_update_synthetic_node(t1_node, synthetic, model_label)
    # The Compare button's own code: volumes, one orientation, linked views, G - I on the synthetic view.
    scene.show_comparison(t1_node, t2_node, synthetic_node, orientation=orientation, overlay="difference",
                          scene=app.scene, views=scene.SLICER_COMPARE_VIEWS)
    images = []
    for name in scene.SLICER_COMPARE_VIEWS:
        show_slice(views[name], offset_a)
        images.append(capture(views[name]))
    fig = figure(8.6, 6.4, "2. Compare: difference map G - I on the synthetic view (blue: darker, red: brighter)")
    titles = ("T1 VIBE", "acquired T2 SPACE", "SYNTHETIC T2 + G - I")
    for n, (image, title) in enumerate(zip(images, titles)):
        image_axes(fig, [0.01 + n * 0.33, 0.01, 0.32, 0.88], image, title)
    save(fig, args.out / "02_compare.png")

    # 3. Line profile across the thumb metacarpal.
    line = app.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "thumb metacarpal")
    for point in line_points:
        line.AddControlPointWorld(vtk.vtkVector3d(*point))
    line.CreateDefaultDisplayNodes()
    line.GetDisplayNode().SetSelectedColor(1.0, 1.0, 0.0)
    line.GetDisplayNode().SetPropertiesLabelVisibility(False)
    profile = scene.LineProfile(line, {"T1": t1_node, "acquired T2": t2_node, "synthetic T2": synthetic_node}, samples=200)
    scene.show_comparison(t1_node, t2_node, synthetic_node, orientation=orientation, overlay="none", scene=app.scene,
                          views=scene.SLICER_COMPARE_VIEWS)
    view = views[scene.SLICER_COMPARE_VIEWS[1]]  # the acquired T2 with the line on it
    show_slice(view, offset_a)
    slice_image = capture(view)
    columns = scene.table_columns(profile.table_node)
    fig = figure(10.0, 5.6, "3. Line profile across the thumb metacarpal (updates when the line moves)")
    image_axes(fig, [0.01, 0.03, 0.26, 0.85], slice_image, "acquired T2 with the line")
    ax = fig.add_axes([0.35, 0.12, 0.62, 0.74])
    distance = np.asarray(columns[scene.DISTANCE_COLUMN])
    for name in ("T1", "acquired T2", "synthetic T2"):
        values = np.asarray(columns[name], dtype=float)
        peak = np.nanmax(values) or 1.0
        ax.plot(distance, values / peak, label=name, linestyle="--" if "synthetic" in name else "-", linewidth=2)
    _style_plot(ax, scene.DISTANCE_COLUMN, "intensity / profile maximum")
    ax.legend(facecolor="#303030", labelcolor="white")
    ax.set_title(f"from Table node '{profile.table_node.GetName()}'", color="#bbbbbb", fontsize=9)
    save(fig, args.out / "03_line_profile.png")

    # 4. Training loss chart from the LossPlot table.
    columns = scene.table_columns(loss_plot.table_node)
    fig = figure(7.0, 4.2, "4. Training: loss chart fed by 't1tot2 train --progress json'")
    ax = fig.add_axes([0.1, 0.14, 0.86, 0.72])
    for name, values in columns.items():
        if name != loss_plot.x_column:
            ax.plot(columns[loss_plot.x_column], values, label=name, linewidth=1.5)
    _style_plot(ax, loss_plot.x_column, "loss")
    ax.set_yscale("log")
    ax.legend(facecolor="#303030", labelcolor="white", fontsize=8)
    save(fig, args.out / "04_training_loss.png")

    # 5. Metrics table.
    mask = foreground_mask(phantom["right_labels"])
    metrics = evaluate_volumes(scene.volume_from_node(synthetic_node), scene.volume_from_node(t2_node), mask=mask)
    table = scene.metrics_table_node(metrics, name="synthetic T2 metrics")
    columns = scene.table_columns(table)
    fig = figure(8.4, 2.2, f"5. Metrics: SYNTHETIC T2 ({model_label}) vs acquired T2, hand mask")
    ax = fig.add_axes([0.01, 0.02, 0.98, 0.78])
    ax.axis("off")
    header = ["Plane", "NRMSE", "PSNR (dB)", "SSIM", "Slices"]
    rows = []
    for r, plane in enumerate(columns["Plane"]):
        rows.append([plane] + [f"{columns[f'{t} mean'][r]:.3f} ± {columns[f'{t} std'][r]:.3f}"
                               for t in ("NRMSE", "PSNR (dB)", "SSIM")] + [f"{int(columns['Slices'][r])}"])
    cells = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    cells.scale(1, 1.4)
    for (r, _), cell in cells.get_celld().items():
        cell.set_facecolor("#404040" if r == 0 else "#2a2a2a")
        cell.get_text().set_color("white")
        cell.set_edgecolor("#606060")
    save(fig, args.out / "05_metrics_table.png")
    profile.remove_observers()
    # Tearing down slicer-core views at interpreter exit makes VTK report errors from half-destroyed
    # pipelines; every picture is written by now, so they are noise.
    vtk.vtkObject.GlobalWarningDisplayOff()
    log("done")
    return 0


def _style_plot(ax, x_label, y_label):
    ax.set_facecolor("#2a2a2a")
    ax.set_xlabel(x_label, color="white")
    ax.set_ylabel(y_label, color="white")
    ax.tick_params(colors="white")
    ax.grid(color="#444444")
    for spine in ax.spines.values():
        spine.set_color("#888888")


if __name__ == "__main__":
    sys.exit(main())
