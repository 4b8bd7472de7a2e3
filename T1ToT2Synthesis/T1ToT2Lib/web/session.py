"""One browser session's work, without the page: its scene, volumes, synthesis job, overlays, profile,
metrics and exports.

A :class:`Session` lives in its own process (the launcher starts one per
browser session, :mod:`T1ToT2Lib.web.launcher`), owns one MRML scene and one
working folder, and reaches MRML only through the library's Slicer layer
(:mod:`T1ToT2Lib.slicer.scene`, :mod:`T1ToT2Lib.slicer.panel`).  The page
(:mod:`T1ToT2Lib.web.page`) calls its methods and shows what they return;
tests call them directly.

Nothing is published half-written: the synthesis job writes through the
library's atomic paths and a cancel removes its partial files; exports are
built in a temporary folder and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

from ..slicer import panel, scene
from ..core.atomic import atomic_path
from ..core.errors import T1ToT2Error
from .safety import DEFAULT_UPLOAD_LIMIT, WebInputError, read_uploaded_volume, resolve_in_folder

ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
OVERLAY_CHOICES = ("none", "difference", "error")
#: What the metrics panel says under its table (the report's reading of the numbers, for data without an oracle).
METRICS_EXPLANATION = (
    "NRMSE, PSNR and SSIM as Grant-Jacob et al. (2021) define them, per 2-D slice inside the object "
    "(the acquired T2's foreground, dilated 2 voxels), then mean ± standard deviation over the slices of each plane "
    "and of all three. The acquired T2 is noisy and carries its coil's bias field, so no synthesis scores perfectly: "
    "without a noise-free reference (an 'oracle', which only the phantom has) these numbers rank models on the same "
    "scan but do not say how far a model is from the best possible. The synthetic T2 is computed, not acquired: "
    "research only, not for diagnosis."
)
ORACLE_ROW = "oracle (noise-free T2)"
#: The error map's colours when shown over the synthetic T2 (black-red-yellow-white).
ERROR_MAP_COLORS = "vtkMRMLPETProceduralColorNodePET-Heat"
#: The error map overlay shows the voxels above this percentile of the error map inside the object.
ERROR_MAP_SHOWN = 70


def _round(value, digits):
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


class Session:
    """The state of one browser session (one scene, one working folder)."""

    def __init__(self, work_dir, data_dir=None, model_path=None, upload_limit: int = DEFAULT_UPLOAD_LIMIT,
                 device: str = "auto", slicer_app=None):
        import slicer

        if slicer_app is None:
            from trame_slicer.core import SlicerApp

            slicer_app = SlicerApp()
        self.app = slicer_app
        self.scene = slicer_app.scene
        slicer.mrmlScene = self.scene  # the library's scene helpers find it there (one scene per process)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else None
        self.model_path = Path(model_path) if model_path else None
        self.upload_limit = int(upload_limit)
        self.device = device
        self.t1_node = self.t2_node = self.synthetic_node = None
        self.t1_volume = None  # the T1 as read (its DICOM tags become the export's reference)
        self.mask = None  # boolean foreground for the metrics (the phantom's labels, else the T2's Otsu mask)
        self.oracle = None  # the phantom's noise-free T2
        self.job = None
        self.job_started = None
        self.job_fraction = 0.0
        self.job_stage = ""
        self.line_node = None
        self.profile = None
        self.metrics = None
        self.orientation = "Coronal"
        self.overlay = "difference"
        self._uploads = 0

    # --- inputs -----------------------------------------------------------------------------------
    def _clear_results(self):
        """Forget the synthetic T2 and everything computed from it (a new T1 or T2 was loaded)."""
        self.cancel_synthesis()
        for node in (self.synthetic_node, scene.error_map_node(self.synthetic_node) if self.synthetic_node else None):
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.synthetic_node = None
        self.metrics = None
        self._remove_profile()

    def _set_volume(self, role: str, volume, name: str):
        old = self.t1_node if role == "t1" else self.t2_node
        if role == "t1":
            self._clear_results()
        node = scene.node_from_volume(volume, name)
        if old is not None and old.GetScene() is not None:
            self.scene.RemoveNode(old)
        if role == "t1":
            self.t1_node, self.t1_volume = node, volume
            self.oracle = None
            self.mask = None
        else:
            self.t2_node = node
            self.metrics = None
            self.oracle = None
            if self.mask is None or self.mask.shape != volume.shape:
                self.mask = None
        return node

    def load_phantom(self, size: str = "small", seed: int = 0):
        """The phantom's right hand: T1, acquired T2, and (for the metrics) its hand mask and noise-free T2."""
        from ..phantom.render import make_phantom

        return self.load_phantom_volumes(make_phantom(size=size, seed=seed))

    def load_phantom_volumes(self, hands: dict):
        """Show the right hand of a :func:`~T1ToT2Lib.phantom.render.make_phantom` result (rendered elsewhere)."""
        from ..core.metrics import foreground_mask

        self._set_volume("t1", hands["right_t1"], "phantom T1")
        self._set_volume("t2", hands["right_t2"], "phantom T2")
        self.mask = foreground_mask(hands["right_labels"])
        self.oracle = hands["right_t2_clean"]
        self.show()
        return self.t1_node

    def load_data_file(self, role: str, name: str):
        """Load ``name`` (relative to the data folder, as listed) as the T1 or the acquired T2."""
        return self.load_file(role, self.data_file_path(name), display_name=name)

    def data_file_path(self, name: str) -> Path:
        """The file ``name`` of the data folder (never outside it: :func:`resolve_in_folder`)."""
        path = resolve_in_folder(self.data_dir, name)
        if path.is_dir():
            raise WebInputError(f"'{name}' is a folder: pick a file (zip a DICOM series)")
        return path

    def load_file(self, role: str, path, display_name: str | None = None):
        """Load a file (an upload already on disk, or a data-folder file) as the T1 (``role="t1"``) or T2."""
        return self.show_volume(role, self.read_file(role, path, display_name), display_name or Path(path).name)

    def read_file(self, role: str, path, display_name: str | None = None):
        """The volume in a file, without touching the scene (the page calls this off its event loop)."""
        if role not in ("t1", "t2"):
            raise WebInputError(f"unknown role {role!r}: load a T1 or a T2")
        self._uploads += 1
        unpack = self.work_dir / "inputs" / f"{self._uploads:03d}"
        try:
            return read_uploaded_volume(path, unpack, limit=self.upload_limit, display_name=display_name)
        finally:
            shutil.rmtree(unpack, ignore_errors=True)

    def show_volume(self, role: str, volume, display_name: str):
        """Put a volume read by :meth:`read_file` into the scene as the T1 or the acquired T2, and show it."""
        label = Path(display_name).name
        # A T2 on another grid is shown as it is; the metrics and the difference map resample it onto the synthetic's.
        node = self._set_volume(role, volume, f"{'T1' if role == 't1' else 'T2'}: {label}")
        self.show()
        return node

    # --- synthesis ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.returncode is None

    def start_synthesis(self, plane: str = "auto"):
        if self.t1_node is None:
            raise WebInputError("no T1 loaded: load the phantom, a file of the data folder, or upload a T1")
        if self.model_path is None or not self.model_path.is_file():
            raise WebInputError("no model file: start the server with --model FILE")
        if self.running:
            raise WebInputError("a synthesis is already running: wait for it or cancel it")
        job_dir = self.work_dir / "job"
        shutil.rmtree(job_dir, ignore_errors=True)
        self.job = panel.start_synthesis_job(self.t1_node, self.model_path, plane, self.device, "fp32", job_dir)
        self.job_started = time.monotonic()
        self.job_fraction = 0.0
        self.job_stage = "starting"
        return self.job

    def poll_synthesis(self) -> dict:
        """Progress of the running job: {"state": idle|running|done|failed|cancelled, "fraction", "eta_s", "text"}."""
        if self.job is None:
            return {"state": "idle", "fraction": 0.0, "eta_s": None, "text": ""}
        for event in self.job.poll():
            kind = event.get("event")
            if kind == "prior":
                self.job_stage = "feature regression"
            elif kind == "slices" and event.get("total"):
                self.job_stage = "network"
                self.job_fraction = float(event["done"]) / float(event["total"])
        elapsed = time.monotonic() - (self.job_started or time.monotonic())
        if self.job.returncode is None:
            # The trees' prior comes before the first slice: count it as the first fifth of the work.
            fraction = 0.2 + 0.8 * self.job_fraction if self.job_stage == "network" else min(0.2, elapsed / 100)
            eta = elapsed * (1 - fraction) / fraction if fraction >= 0.05 else None
            text = f"{self.job_stage}: {int(round(100 * fraction))}%"
            if eta is not None:
                text += f", about {panel.format_duration(eta)} left"
            return {"state": "running", "fraction": fraction, "eta_s": eta, "text": text}
        job, self.job = self.job, None
        if job.cancelled:
            self._remove_job_files()
            return {"state": "cancelled", "fraction": 0.0, "eta_s": None, "text": "Synthesis cancelled: nothing was kept."}
        try:
            self.synthetic_node = panel.finish_synthesis_job(job, self.t1_node)
        except T1ToT2Error as exc:
            self._remove_job_files()
            return {"state": "failed", "fraction": 0.0, "eta_s": None, "text": f"Synthesis failed: {exc}"}
        finally:
            self._remove_job_files()
        self.metrics = None
        self._style_results()
        self.overlay = "none"  # the synthetic T2 itself first; the overlays are a click away
        self.show()
        self.show_3d()
        notes = panel.notes_text(self.synthetic_node)
        return {"state": "done", "fraction": 1.0, "eta_s": 0,
                "text": f"Synthetic T2 ready in {panel.format_duration(elapsed)}. {notes}".strip()}

    def wait_synthesis(self, timeout=600.0, interval=0.1) -> dict:
        """Poll until the job ends (tests and scripts)."""
        end = time.monotonic() + timeout
        while True:
            status = self.poll_synthesis()
            if status["state"] != "running" or time.monotonic() > end:
                return status
            time.sleep(interval)

    def cancel_synthesis(self) -> bool:
        if not self.running:
            return False
        self.job.cancel(timeout=10.0)
        return True

    def _remove_job_files(self):
        shutil.rmtree(self.work_dir / "job", ignore_errors=True)

    # --- views ------------------------------------------------------------------------------------
    def show(self, orientation: str | None = None, overlay: str | None = None) -> dict | None:
        """T1 | acquired T2 | synthetic T2 in the Red, Yellow, Green views (the library's compare view)."""
        if orientation:
            if orientation not in ORIENTATIONS:
                raise WebInputError(f"unknown orientation {orientation!r}: use Axial, Coronal or Sagittal")
            self.orientation = orientation
        if overlay:
            if overlay not in OVERLAY_CHOICES:
                raise WebInputError(f"unknown overlay {overlay!r}: use none, difference or error")
            self.overlay = overlay
        if self.t1_node is None:
            return None
        if self.synthetic_node is None:
            # Before synthesis: the T1 and the acquired T2 (or the T1 again); the synthetic view stays empty.
            shown = [self.t1_node, self.t2_node, None]
            for view, node in zip(scene.COMPARE_VIEWS, shown):
                composite = scene._slice_composite_node(self.scene, view)
                composite.SetLinkedControl(False)
                composite.SetBackgroundVolumeID(node.GetID() if node is not None else None)
                composite.SetForegroundVolumeID(None)
                scene._slice_node(self.scene, view).SetOrientation(self.orientation)
            for view in scene.COMPARE_VIEWS:
                scene._slice_composite_node(self.scene, view).SetLinkedControl(True)
            self.fit_views()
            return None
        overlay = self.overlay
        if overlay == "difference" and self.t2_node is None:
            overlay = "none"
        if overlay == "error" and scene.error_map_node(self.synthetic_node) is None:
            overlay = "none"
        shown = scene.show_comparison(self.t1_node, self.t2_node, self.synthetic_node, orientation=self.orientation,
                                      overlay=overlay)
        self.fit_views()
        return shown

    def _style_results(self):
        """The synthetic T2 in the acquired T2's grey scale; the error map as heat over the least trusted 30% of the
        object (the T1's Otsu foreground), transparent elsewhere."""
        import slicer

        if self.t2_node is not None and self.t2_node.GetDisplayNode() is not None:
            display = self.t2_node.GetDisplayNode()
            self.set_window_level(display.GetWindow(), display.GetLevel(), roles=("synthetic",))
        error_map = scene.error_map_node(self.synthetic_node)
        if error_map is None or error_map.GetDisplayNode() is None:
            return
        from ..inference.slices import foreground_threshold

        values = slicer.util.arrayFromVolume(error_map)
        t1 = slicer.util.arrayFromVolume(self.t1_node)
        inside = values[t1 > foreground_threshold(t1)] if t1.shape == values.shape else values.ravel()
        low, high = (float(v) for v in np.percentile(inside if inside.size else values, [ERROR_MAP_SHOWN, 99.5]))
        display = error_map.GetDisplayNode()
        display.SetAndObserveColorNodeID(ERROR_MAP_COLORS)
        display.AutoWindowLevelOff()
        bottom = low - 0.6 * (high - low)  # the threshold falls on red, not on the colour table's black
        display.SetWindowLevel(max(high - bottom, 1e-6), (high + bottom) / 2)
        display.SetLowerThreshold(low)
        display.SetUpperThreshold(float(values.max()) + 1)
        display.ApplyThresholdOn()  # the better trusted voxels: transparent, the synthetic T2 shows through

    def fit_views(self):
        for view in self.app.view_manager.get_slice_views():
            view.fit_view_to_content()
            view.schedule_render()

    def show_3d(self):
        """A volume rendering of the synthetic T2 in the 3-D view."""
        if self.synthetic_node is None:
            return
        rendering = self.app.volume_rendering
        try:
            display = rendering.create_display_node(self.synthetic_node, "MR-Default")
            display.SetVisibility(True)
        except Exception:  # noqa: BLE001 - a missing preset must not lose the synthesis; the slices still show
            return
        for view in self.app.view_manager.get_threed_views():
            view.reset_camera()
            view.schedule_render()

    def set_window_level(self, window: float, level: float, roles=("t2", "synthetic")):
        """One window/level on the acquired and synthetic T2 (so both show the same grey for the same value)."""
        nodes = {"t1": self.t1_node, "t2": self.t2_node, "synthetic": self.synthetic_node}
        for role in roles:
            node = nodes.get(role)
            if node is not None and node.GetDisplayNode() is not None:
                node.GetDisplayNode().AutoWindowLevelOff()
                node.GetDisplayNode().SetWindowLevel(float(window), float(level))

    def t2_window_range(self):
        """(min, max) of the T2 values shown, for the page's window/level sliders."""
        node = self.t2_node or self.synthetic_node
        if node is None:
            return (0.0, 1.0)
        import slicer

        array = slicer.util.arrayFromVolume(node)
        return (float(np.min(array)), float(np.percentile(array, 99.9)))

    def t2_window_level(self):
        node = self.synthetic_node or self.t2_node
        if node is None or node.GetDisplayNode() is None:
            return None
        display = node.GetDisplayNode()
        return float(display.GetWindow()), float(display.GetLevel())

    # --- line profile ----------------------------------------------------------------------------
    def profile_nodes(self) -> dict:
        nodes = {"T1": self.t1_node, "acquired T2": self.t2_node, "synthetic T2": self.synthetic_node}
        return {name: node for name, node in nodes.items() if node is not None}

    def new_line(self):
        """An empty Markups line for the user to place on a slice view (two clicks); returns it."""
        self._remove_profile()
        self.line_node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "T1ToT2 profile line")
        return self.line_node

    def default_line(self):
        """A line across the middle of the T1 (left to right), ready to be moved; returns it."""
        if self.t1_node is None:
            raise WebInputError("no T1 loaded: load a volume before drawing a profile line")
        self._remove_profile()
        self.line_node = scene.create_profile_line(self.t1_node)
        return self.line_node

    def update_profile(self):
        """The profile along the line as {"distance_mm": [...], "<volume>": [...]}, or None without a full line."""
        if self.line_node is None or self.line_node.GetNumberOfControlPoints() < 2 or not self.profile_nodes():
            return None
        if self.profile is None or set(self.profile.volume_nodes.values()) != set(self.profile_nodes().values()):
            self.profile = scene.line_profile(self.line_node, self.profile_nodes(), previous=self.profile)
        else:
            self.profile.update()
        return self.profile_data()

    def profile_data(self):
        if self.profile is None:
            return None
        data = {scene.DISTANCE_COLUMN: [_round(d, 3) for d in self.profile.distances]}
        for name, values in self.profile.profiles.items():
            data[name] = [_round(v, 3) for v in values]
        return data

    def profile_csv(self) -> str:
        data = self.profile_data()
        if data is None:
            raise WebInputError("no profile yet: place a line on a slice view first")
        out = io.StringIO()
        writer = csv.writer(out)
        names = list(data)
        writer.writerow(names)
        for row in zip(*(data[n] for n in names)):
            writer.writerow(["" if v is None else v for v in row])
        return out.getvalue()

    def _remove_profile(self):
        if self.profile is not None:
            self.profile.remove_observers()
            for node in (self.profile.table_node, self.profile.chart_node):
                if node is not None and node.GetScene() is not None:
                    self.scene.RemoveNode(node)
        self.profile = None
        if self.line_node is not None and self.line_node.GetScene() is not None:
            self.scene.RemoveNode(self.line_node)
        self.line_node = None

    # --- metrics -----------------------------------------------------------------------------------
    def compute_metrics(self) -> dict:
        """NRMSE/PSNR/SSIM per plane and over all planes inside the object; rows for the page's table."""
        self.metrics = self.score(self.metrics_inputs())
        return self.metrics

    def metrics_inputs(self) -> dict:
        """Copies of what the metrics need, taken from the scene (on the page's thread)."""
        if self.synthetic_node is None:
            raise WebInputError("no synthetic T2 yet: click Synthesize T2 first")
        if self.t2_node is None:
            raise WebInputError("no acquired T2: load one to score the synthetic T2 against it")
        return {"synthetic": scene.volume_from_node(self.synthetic_node), "acquired": scene.volume_from_node(self.t2_node),
                "mask": self.mask, "oracle": self.oracle}

    @classmethod
    def score(cls, inputs: dict) -> dict:
        """The metrics of :meth:`metrics_inputs` (no scene: the page runs this off its event loop)."""
        from ..core.metrics import evaluate_volumes, foreground_mask
        from ..inference.slices import foreground_threshold

        synthetic = inputs["synthetic"]
        acquired = scene.resample_to(inputs["acquired"], synthetic)
        mask = inputs["mask"]
        if mask is None or mask.shape != synthetic.shape:
            mask = foreground_mask(acquired.array > foreground_threshold(acquired.array))
        rows = []
        result = evaluate_volumes(synthetic, acquired, mask=mask)
        rows += cls._metric_rows("synthetic T2", result)
        oracle = inputs["oracle"]
        if oracle is not None and oracle.shape == synthetic.shape:
            scored = evaluate_volumes(synthetic.with_array(oracle.array), acquired, mask=mask)
            rows += cls._metric_rows(ORACLE_ROW, scored, planes=False)
        return {"rows": rows, "explanation": METRICS_EXPLANATION, "result": result}

    @staticmethod
    def _metric_rows(name, result, planes=True):
        entries = (list(result["per_plane"].items()) if planes else []) + [("all planes", result["overall"])]
        rows = []
        for plane, entry in entries:
            rows.append({
                "volume": name, "plane": plane, "slices": int(entry["n_slices"]),
                "nrmse": f"{entry['nrmse']['mean']:.4f} ± {entry['nrmse']['std']:.4f}",
                "psnr": f"{entry['psnr']['mean']:.2f} ± {entry['psnr']['std']:.2f}",
                "ssim": f"{entry['ssim']['mean']:.4f} ± {entry['ssim']['std']:.4f}",
            })
        return rows

    # --- exports -----------------------------------------------------------------------------------
    def _synthetic_volume(self):
        if self.synthetic_node is None:
            raise WebInputError("no synthetic T2 yet: click Synthesize T2 first")
        volume = scene.volume_from_node(self.synthetic_node)
        model = self.synthetic_node.GetAttribute(scene.MODEL_ATTRIBUTE) or ""
        volume.meta.update({"model": model})
        return volume, model

    def export_snapshot(self):
        """What an export needs from the scene (call on the page's thread); pass it to :meth:`write_export`."""
        volume, model = self._synthetic_volume()
        reference = self.t1_volume if self.t1_volume is not None and self.t1_volume.meta.get("dicom") else None
        return {"volume": volume, "model": model, "reference": reference}

    def write_export(self, kind: str, snapshot: dict) -> Path:
        """Write ``kind`` ("dicom": a zip of the DICOM series, "nifti": .nii.gz) under ``exports/``; atomic."""
        from ..io.dicom_write import export_dicom_series
        from ..inference.synthesize import write_synthetic_volume

        exports = self.work_dir / "exports"
        exports.mkdir(parents=True, exist_ok=True)
        volume, model = snapshot["volume"], snapshot["model"]
        if kind == "nifti":
            return write_synthetic_volume(volume, exports / "synthetic_t2.nii.gz")
        if kind != "dicom":
            raise WebInputError(f"unknown export {kind!r}: use dicom or nifti")
        final = exports / "synthetic_t2_dicom.zip"
        staging = exports / ".dicom_staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            files = export_dicom_series(volume, staging / "series", reference=snapshot["reference"], model_name=model,
                                        overwrite=True)
            with atomic_path(final) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in files:
                    archive.write(path, f"synthetic_t2/{Path(path).name}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def export(self, kind: str) -> Path:
        return self.write_export(kind, self.export_snapshot())

    # --- summary -----------------------------------------------------------------------------------
    def summary(self) -> dict:
        """What is loaded, for the page and the tests."""
        def name(node):
            return node.GetName() if node is not None else None

        return {"t1": name(self.t1_node), "t2": name(self.t2_node), "synthetic": name(self.synthetic_node),
                "error_map": name(scene.error_map_node(self.synthetic_node)) if self.synthetic_node else None,
                "running": self.running, "orientation": self.orientation, "overlay": self.overlay}

    def close(self):
        self.cancel_synthesis()
        self._remove_profile()

    def __repr__(self):  # pragma: no cover
        return f"Session({json.dumps(self.summary())})"
