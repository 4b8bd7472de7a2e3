"""One browser session's page: a trame-slicer application over a :class:`~T1ToT2Lib.web.session.Session`.

Run as its own process by the launcher (``python -m T1ToT2Lib.web.page SETTINGS_JSON``):
it listens on a loopback port, prints ``{"event": "ready", "port": N}`` on
stdout once it serves, and ends when its launcher tells it to (or when no page
has been connected for the settings' ``idle`` seconds).  Besides trame's websocket it serves:

* ``POST upload?role=t1|t2&name=...``: the file's bytes, streamed to disk and stopped at the upload limit;
* ``GET download/synthetic_t2_dicom.zip``, ``download/synthetic_t2.nii.gz``, ``download/profile.csv``.

The views are slicer-core's own slice and 3-D views, streamed by trame-slicer's
remote-controlled areas.  Every handler turns a :class:`T1ToT2Error` into one
line in the page's message bar; any other exception is logged here (stderr)
and the page says only that it failed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import time
import traceback

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

from ..core.errors import T1ToT2Error  # noqa: E402
from .safety import (DEFAULT_UPLOAD_LIMIT, WebInputError, check_declared_size, human_size, list_data_files,  # noqa: E402
                     receive_upload, safe_upload_name)

LOG = logging.getLogger("t1tot2.web")
TITLE = "T1ToT2 — synthetic T2 in the browser"
SYNTHETIC_BANNER = "Synthetic T2 images are computed, not acquired: research only, not for diagnosis."
DOWNLOADS = {"synthetic_t2_dicom.zip": "dicom", "synthetic_t2.nii.gz": "nifti", "profile.csv": "csv"}
VIEW_COLORS = {"Red": "#F34A33", "Yellow": "#EFD64D", "Green": "#6DAD4A"}
VIEW_TITLES = {"Red": "T1", "Yellow": "acquired T2", "Green": "synthetic T2"}
#: The header the launcher's relay adds to every request it passes to a session process, and the environment
#: variable that hands the session its value (not its argv: other users could read that in the process list).
RELAY_HEADER = "X-T1ToT2-Relay"
RELAY_KEY_ENV = "T1TOT2_RELAY_KEY"
PROFILE_COLORS = {"T1": "#1f77b4", "acquired T2": "#ff7f0e", "synthetic T2": "#2ca02c"}

_UPLOAD_JS = """
window.t1tot2Upload = async function (role, input) {
  const file = input && input.files && input.files[0];
  if (!file) { return; }
  const state = window.trame.state;
  state.set('busy_text', 'Uploading ' + file.name + '…');
  try {
    const r = await fetch('upload?role=' + role + '&name=' + encodeURIComponent(file.name) + '&size=' + file.size,
                          {method: 'POST', body: file});
    if (!r.ok) {
      let message = 'the upload failed (HTTP ' + r.status + ')';
      try { message = (await r.json()).error || message; } catch (e) {}
      state.set('message', message);
      state.set('message_type', 'error');
    }
  } catch (e) {
    state.set('message', 'the upload was interrupted: ' + e);
    state.set('message_type', 'error');
  } finally {
    state.set('busy_text', '');
    input.value = '';
  }
};
"""


def profile_svg(data: dict | None) -> str:
    """The profile plot as an SVG (one line per volume, each with ``gid`` ``profile-<volume>``), or ""."""
    if not data:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..slicer.scene import DISTANCE_COLUMN

    distances = np.asarray(data[DISTANCE_COLUMN], dtype=float)
    out = io.StringIO()
    with matplotlib.rc_context({"path.simplify": False, "svg.fonttype": "none"}):  # every sample is drawn
        fig, ax = plt.subplots(figsize=(4.6, 2.8), dpi=100)
        for name, values in data.items():
            if name == DISTANCE_COLUMN:
                continue
            y = np.asarray([np.nan if v is None else v for v in values], dtype=float)
            (line,) = ax.plot(distances, y, label=name, color=PROFILE_COLORS.get(name), linewidth=1.5)
            line.set_gid(f"profile-{name.replace(' ', '-')}")
        ax.set_xlabel("distance (mm)")
        ax.set_ylabel("intensity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        fig.savefig(out, format="svg")
        plt.close(fig)
    text = out.getvalue()
    return text[text.find("<svg"):]


class Page:
    """The trame server, its state and UI, wired to one :class:`Session`."""

    def __init__(self, server, session, relay_key: str | None = None):
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        self.state = server.state
        self.ctrl = server.controller
        self.session = session
        self.relay_key = relay_key  # requests must carry it: only the launcher's relay reaches this process
        self._poll_task = None
        self._profile_last = 0.0
        self._profile_pending = False
        self._t2_range = (0.0, 1.0)
        server.enable_module(trame_slicer_module)
        register_rca_factories(session.app.view_manager, server)
        self.layout_manager = LayoutManager(session.scene, session.app.view_manager, server)
        self._register_layout()
        self._init_state()
        self._build_ui()
        self.ctrl.on_server_bind.add(self._bind_routes)

    # --- layout and state -----------------------------------------------------------------------------
    def _register_layout(self):
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        slices = [ViewLayoutDefinition.slice_view(self.session.orientation, label=tag, color=VIEW_COLORS[tag])
                  for tag in VIEW_TITLES]
        layout = Layout(LayoutDirection.Vertical, [
            Layout(LayoutDirection.Horizontal, slices),
            Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.threed_view()]),
        ], flex_sizes=["3", "2"])
        self.layout_manager.register_layout("compare", layout)
        self.layout_manager.set_layout("compare")

    def _init_state(self):
        s = self.state
        s.trame__title = "T1ToT2"
        s.message = ""
        s.message_type = "info"
        s.busy_text = ""
        s.data_files = list_data_files(self.session.data_dir)
        s.data_file = None
        s.has_data_folder = self.session.data_dir is not None
        s.upload_limit = self.session.upload_limit
        s.upload_limit_text = human_size(self.session.upload_limit)
        s.model_text = self._model_text()
        s.loaded = {"t1": None, "t2": None, "synthetic": None, "error_map": None}
        s.job_running = False
        s.job_fraction = 0
        s.job_text = ""
        s.orientation = self.session.orientation
        s.overlay = self.session.overlay
        s.t2_window = 100.0  # per cent of the T2 range (fixed slider bounds: the sliders never clamp a value)
        s.t2_level = 50.0
        s.placing_line = False
        s.profile = None
        s.profile_svg = ""
        s.metrics_rows = []
        s.metrics_explanation = ""
        s.downloads_ready = False
        s.change("orientation")(self._on_orientation)
        s.change("overlay")(self._on_overlay)
        s.change("t2_window", "t2_level")(self._on_window_level)

    def _model_text(self):
        from ..slicer import panel

        path = self.session.model_path
        if path is None:
            return "No model: start the server with --model FILE."
        return f"Model: {panel.model_name(path)}"

    def _refresh_loaded(self):
        summary = self.session.summary()
        self.state.loaded = {k: summary[k] for k in ("t1", "t2", "synthetic", "error_map")}
        self.state.downloads_ready = summary["synthetic"] is not None
        low, high = self._t2_range = self.session.t2_window_range()
        wl = self.session.t2_window_level()
        if wl is not None:
            span = max(high - low, 1e-6)
            self.state.t2_window = round(100 * wl[0] / span, 2)
            self.state.t2_level = round(100 * (wl[1] - low) / span, 2)
        self._render()

    def _render(self):
        for view in self.session.app.view_manager.get_views():
            view.schedule_render()

    def say(self, text, kind="info"):
        self.state.message = text
        self.state.message_type = kind

    def _fail(self, exc: BaseException, what: str):
        """One line in the page: the library's own message, or only what failed (the trace goes to the log)."""
        if isinstance(exc, T1ToT2Error):
            self.say(" ".join(str(exc).split()), "error")
        else:
            LOG.error("%s failed:\n%s", what, "".join(traceback.format_exception(exc)))
            self.say(f"{what} failed ({exc.__class__.__name__}); the server log has the details", "error")

    # --- actions ------------------------------------------------------------------------------------------
    async def load_phantom(self):
        from ..phantom.render import make_phantom

        with self.state:
            self.state.busy_text = "Rendering the phantom's right hand…"
        try:
            hands = await asyncio.get_running_loop().run_in_executor(None, make_phantom, "small", 0)
            with self.state:
                self.session.load_phantom_volumes(hands)
                self._after_load("Phantom loaded: the right hand's T1 VIBE and T2 SPACE (simulated).")
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self._fail(exc, "Loading the phantom")
        finally:
            with self.state:
                self.state.busy_text = ""

    def _after_load(self, text):
        self.state.metrics_rows = []
        self.state.metrics_explanation = ""
        self.state.profile = None
        self.state.profile_svg = ""
        self.say(text, "success")
        self._refresh_loaded()

    async def load_data_file(self, role):
        name = self.state.data_file
        with self.state:
            self.state.busy_text = f"Reading {name}…"
        try:
            path = self.session.data_file_path(name)
            volume = await asyncio.get_running_loop().run_in_executor(None, self.session.read_file, role, path, name)
            with self.state:
                self.session.show_volume(role, volume, name)
                self._after_load(f"Loaded '{name}' as the {'T1' if role == 't1' else 'acquired T2'}.")
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self._fail(exc, f"Loading '{name}'")
        finally:
            with self.state:
                self.state.busy_text = ""

    def refresh_data_files(self):
        self.state.data_files = list_data_files(self.session.data_dir)

    def synthesize(self):
        try:
            self.session.start_synthesis()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Starting the synthesis")
            return
        self.state.job_running = True
        self.state.job_fraction = 0
        self.state.job_text = "starting…"
        self.say("Synthesizing the T2 in a background process…", "info")
        self._poll_task = asyncio.ensure_future(self._poll_job())

    async def _poll_job(self):
        while True:
            await asyncio.sleep(0.25)
            try:
                status = self.session.poll_synthesis()
            except Exception as exc:  # noqa: BLE001
                with self.state:
                    self.state.job_running = False
                    self._fail(exc, "The synthesis")
                return
            with self.state:
                self.state.job_fraction = round(100 * status["fraction"], 1)
                self.state.job_text = status["text"]
                if status["state"] == "running":
                    continue
                self.state.job_running = False
                kind = {"done": "success", "cancelled": "warning"}.get(status["state"], "error")
                self.say(status["text"], kind)
                if status["state"] == "done":
                    self.state.overlay = self.session.overlay
                    self._refresh_loaded()
                    if self.session.line_node is not None:
                        self._update_profile(force=True)
            return

    def cancel(self):
        if self.session.cancel_synthesis():
            self.state.job_text = "cancelling…"

    def _on_orientation(self, orientation, **_):
        try:
            self.session.show(orientation=orientation)
            self._render()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Changing the orientation")

    def _on_overlay(self, overlay, **_):
        try:
            self.session.show(overlay=overlay)
            self._render()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Changing the overlay")

    def _on_window_level(self, t2_window, t2_level, **_):
        low, high = getattr(self, "_t2_range", (0.0, 1.0))
        span = max(high - low, 1e-6)
        try:
            self.session.set_window_level(max(float(t2_window), 0.1) / 100 * span, low + float(t2_level) / 100 * span)
            self._render()
        except (TypeError, ValueError):
            pass

    # --- line profile ----------------------------------------------------------------------------------
    def place_line(self):
        try:
            if self.session.t1_node is None:
                raise WebInputError("no T1 loaded: load a volume before placing a profile line")
            line = self.session.new_line()
            self._observe_line(line)
            self.session.app.markups_logic.place_node(line, False)
            self.state.placing_line = True
            self.say("Click the two ends of the line on a slice view.", "info")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Placing a line")

    def default_line(self):
        try:
            line = self.session.default_line()
            self._observe_line(line)
            self._update_profile(force=True)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Drawing a line")

    def _observe_line(self, line):
        import slicer

        markups = slicer.vtkMRMLMarkupsNode
        for event in (markups.PointModifiedEvent, markups.PointPositionDefinedEvent, markups.PointEndInteractionEvent):
            line.AddObserver(event, lambda *_: self._on_line_changed())

    def _on_line_changed(self):
        if self.session.line_node is None or self.session.line_node.GetNumberOfControlPoints() < 2:
            return
        # While a point is dragged the profile follows at most 4 times a second; the last move always counts.
        now = time.monotonic()
        if now - self._profile_last >= 0.25:
            self._update_profile()
        elif not self._profile_pending:
            self._profile_pending = True
            asyncio.get_event_loop().call_later(0.3, self._update_profile_later)

    def _update_profile_later(self):
        self._profile_pending = False
        self._update_profile()

    def _update_profile(self, force=False):
        self._profile_last = time.monotonic()
        try:
            data = self.session.update_profile()
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self._fail(exc, "The line profile")
            return
        with self.state:
            if self.state.placing_line and data is not None:
                length = data[next(iter(data))][-1]
                self.say(f"Line profile over {length:.1f} mm; drag an end to move the line.", "success")
            self.state.placing_line = False
            self.state.profile = data
            self.state.profile_svg = profile_svg(data)

    # --- metrics ----------------------------------------------------------------------------------------
    async def compute_metrics(self):
        with self.state:
            self.state.busy_text = "Scoring the synthetic T2 against the acquired T2…"
        try:
            inputs = self.session.metrics_inputs()
            metrics = await asyncio.get_running_loop().run_in_executor(None, self.session.score, inputs)
            self.session.metrics = metrics
            with self.state:
                self.state.metrics_rows = metrics["rows"]
                self.state.metrics_explanation = metrics["explanation"]
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self._fail(exc, "Computing the metrics")
        finally:
            with self.state:
                self.state.busy_text = ""

    # --- HTTP routes: uploads and downloads --------------------------------------------------------
    def _bind_routes(self, wslink_server):
        app = wslink_server.app
        if self.relay_key:
            app.middlewares.append(_relay_only(self.relay_key))
        app.router.add_post("/upload", self._http_upload)
        app.router.add_get("/download/{name}", self._http_download)

    async def _http_upload(self, request):
        from aiohttp import web

        role = request.query.get("role", "t1")
        shown = safe_upload_name(request.query.get("name", "upload"))
        path = self.session.work_dir / "uploads" / f"{int(time.time() * 1000)}_{shown}"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if role not in ("t1", "t2"):
                raise WebInputError(f"unknown role {role!r}: upload a T1 or a T2")
            check_declared_size(request.content_length, self.session.upload_limit)
            check_declared_size(request.query.get("size"), self.session.upload_limit)
            await receive_upload(request.content.iter_chunked(1 << 20), path, self.session.upload_limit)
            with self.state:
                self.state.busy_text = f"Reading {shown}…"
            volume = await asyncio.get_running_loop().run_in_executor(None, self.session.read_file, role, path, shown)
            with self.state:
                self.session.show_volume(role, volume, shown)
                self._after_load(f"Loaded '{shown}' as the {'T1' if role == 't1' else 'acquired T2'}.")
                self.state.busy_text = ""
            return web.json_response({"ok": True})
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self.state.busy_text = ""
                self._fail(exc, f"Uploading '{shown}'")
                message = self.state.message
            status = 413 if "upload limit" in message else 400
            return web.json_response({"error": message}, status=status)
        finally:
            path.unlink(missing_ok=True)

    async def _http_download(self, request):
        from aiohttp import web

        name = request.match_info["name"]
        kind = DOWNLOADS.get(name)
        if kind is None:
            return web.json_response({"error": "no such download"}, status=404)
        try:
            if kind == "csv":
                body = self.session.profile_csv().encode()
                return web.Response(body=body, content_type="text/csv",
                                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
            snapshot = self.session.export_snapshot()
            path = await asyncio.get_running_loop().run_in_executor(None, self.session.write_export, kind, snapshot)
            return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})
        except Exception as exc:  # noqa: BLE001
            with self.state:
                self._fail(exc, f"Exporting {name}")
                message = self.state.message
            return web.json_response({"error": message}, status=400)

    # --- UI -----------------------------------------------------------------------------------------------
    def _build_ui(self):
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v

        with VAppLayout(self.server, full_height=True, theme="dark") as layout:
            client.Script(_UPLOAD_JS)
            client.Style(".t1t2-label{position:absolute;top:4px;right:8px;z-index:2;font:600 13px sans-serif;"
                         "padding:1px 6px;border-radius:3px;background:rgba(0,0,0,.55);pointer-events:none}"
                         ".t1t2-svg svg{width:100%;height:auto;background:#fff;border-radius:4px}"
                         ".t1t2-table td,.t1t2-table th{font-size:11px;padding:1px 4px!important;white-space:nowrap}")
            with v.VAppBar(density="compact"):
                v.VAppBarTitle(TITLE)
                v.VChip(SYNTHETIC_BANNER, color="amber", size="small", variant="outlined", classes="mr-4")
            with v.VNavigationDrawer(permanent=True, width=330, location="left"):
                self._controls(v, html)
            with v.VNavigationDrawer(permanent=True, width=470, location="right"):
                self._results(v, html)
            with v.VMain(), html.Div(style="position:relative;height:calc(100vh - 48px);", id="views"):
                for tag, title in VIEW_TITLES.items():
                    index = list(VIEW_TITLES).index(tag)
                    html.Div(title, classes="t1t2-label",
                             style=f"left:calc({index} * 33.33% + 16.66% - 60px);width:120px;text-align:center;"
                                   f"color:{VIEW_COLORS[tag]}")
                self.layout_manager.initialize_layout_grid(layout)
        self.ui = layout

    def _controls(self, v, html):
        with html.Div(classes="pa-3"):
            v.VAlert(v_show="message", text=("message",), type=("message_type",), density="compact",
                     closable=True, classes="mb-2", id="message", click_close="message = ''")
            v.VAlert(v_show="busy_text", text=("busy_text",), type="info", density="compact", classes="mb-2",
                     id="busy")
            html.Div("1. Load", classes="text-subtitle-2")
            v.VBtn("Load phantom", click=self.load_phantom, block=True, color="primary", classes="my-1",
                   id="load-phantom", disabled=("job_running",))
            with html.Div(v_if="has_data_folder"):
                v.VSelect(label="Data folder", items=("data_files",), v_model=("data_file",), density="compact",
                          hide_details=True, classes="mt-2", id="data-file")
                with html.Div(classes="d-flex ga-1 my-1"):
                    v.VBtn("as T1", click=(self.load_data_file, "['t1']"), size="small", disabled=("!data_file",),
                           id="data-t1")
                    v.VBtn("as T2", click=(self.load_data_file, "['t2']"), size="small", disabled=("!data_file",),
                           id="data-t2")
                    v.VBtn(icon="mdi-refresh", click=self.refresh_data_files, size="small", variant="text")
            html.Div("Upload (NIfTI, NRRD, MHA, or a zip of a DICOM series; at most {{ upload_limit_text }})",
                     classes="text-caption mt-2")
            for role, title in (("t1", "T1"), ("t2", "acquired T2")):
                with html.Div(classes="d-flex align-center ga-2 my-1"):
                    html.Span(title, style="width:90px", classes="text-body-2")
                    html.Input(type="file", id=f"upload-{role}", style="font-size:12px;max-width:210px",
                               change=f"utils.get('t1tot2Upload')('{role}', $event.target)")
            html.Div("T1: {{ loaded.t1 || '—' }}", classes="text-caption", id="loaded-t1")
            html.Div("T2: {{ loaded.t2 || '—' }}", classes="text-caption", id="loaded-t2")
            v.VDivider(classes="my-2")
            html.Div("2. Synthesize", classes="text-subtitle-2")
            html.Div("{{ model_text }}", classes="text-caption")
            v.VBtn("Synthesize T2", click=self.synthesize, block=True, color="primary", classes="my-1",
                   disabled=("job_running || !loaded.t1",), id="synthesize")
            with html.Div(v_show="job_running || job_text", classes="my-1"):
                v.VProgressLinear(model_value=("job_fraction",), height=8, color="primary", id="progress")
                with html.Div(classes="d-flex align-center"):
                    html.Span("{{ job_text }}", classes="text-caption", id="job-text")
                    v.VSpacer()
                    v.VBtn("Cancel", click=self.cancel, size="small", variant="tonal", color="warning",
                           v_show="job_running", id="cancel")
            v.VDivider(classes="my-2")
            html.Div("3. View", classes="text-subtitle-2")
            with v.VBtnToggle(v_model=("orientation",), mandatory=True, density="compact", divided=True,
                              classes="my-1", id="orientation"):
                for name in ("Axial", "Coronal", "Sagittal"):
                    v.VBtn(name, value=name, size="small")
            html.Div("Overlay on the synthetic view", classes="text-caption mt-1")
            with v.VBtnToggle(v_model=("overlay",), mandatory=True, density="compact", divided=True, id="overlay"):
                v.VBtn("none", value="none", size="small", id="overlay-none")
                v.VBtn("difference", value="difference", size="small", id="overlay-difference",
                       disabled=("!loaded.t2",))
                v.VBtn("error map", value="error", size="small", id="overlay-error", disabled=("!loaded.error_map",))
            html.Div("T2 window / level (acquired and synthetic)", classes="text-caption mt-2")
            v.VSlider(v_model=("t2_window",), min=0.1, max=150, density="compact", hide_details=True, label="W",
                      id="t2-window", disabled=("!loaded.t2 && !loaded.synthetic",))
            v.VSlider(v_model=("t2_level",), min=0, max=100, density="compact", hide_details=True, label="L",
                      id="t2-level", disabled=("!loaded.t2 && !loaded.synthetic",))

    def _results(self, v, html):
        with html.Div(classes="pa-3"):
            html.Div("4. Line profile", classes="text-subtitle-2")
            with html.Div(classes="d-flex ga-1 my-1 align-center"):
                v.VBtn("Place line", click=self.place_line, size="small", color="primary", id="place-line",
                       disabled=("!loaded.t1",))
                v.VBtn("Line across", click=self.default_line, size="small", id="default-line",
                       disabled=("!loaded.t1",))
                html.A("CSV", href="download/profile.csv", download="profile.csv", v_show="profile",
                       classes="v-btn v-btn--size-small v-btn--variant-text text-primary px-2", id="profile-csv")
            html.Div("Click both ends of the line on a slice view…", v_show="placing_line", classes="text-caption")
            html.Div(v_html=("profile_svg",), classes="t1t2-svg", id="profile-plot", v_show="profile_svg")
            v.VDivider(classes="my-2")
            html.Div("5. Metrics", classes="text-subtitle-2")
            v.VBtn("Compute metrics", click=self.compute_metrics, size="small", color="primary", classes="my-1",
                   disabled=("!loaded.synthetic || !loaded.t2",), id="compute-metrics")
            with v.VTable(density="compact", v_show="metrics_rows.length", classes="t1t2-table", id="metrics-table"):
                with html.Thead(), html.Tr():
                    for title in ("volume", "plane", "NRMSE", "PSNR (dB)", "SSIM"):
                        html.Th(title)
                with html.Tbody(), html.Tr(v_for="row in metrics_rows", key="row.volume + row.plane"):
                    for key in ("volume", "plane", "nrmse", "psnr", "ssim"):
                        html.Td(f"{{{{ row.{key} }}}}")
            html.Div("{{ metrics_explanation }}", classes="text-caption", id="metrics-explanation")
            v.VDivider(classes="my-2")
            html.Div("6. Export the synthetic T2", classes="text-subtitle-2")
            with html.Div(v_show="downloads_ready"), html.Div(classes="d-flex ga-2 my-1"):
                html.A("DICOM series (zip)", href="download/synthetic_t2_dicom.zip",
                       download="synthetic_t2_dicom.zip", id="download-dicom", classes="text-primary")
                html.A("NIfTI (.nii.gz)", href="download/synthetic_t2.nii.gz", download="synthetic_t2.nii.gz",
                       id="download-nifti", classes="text-primary")
            html.Div("Synthesize first.", v_show="!downloads_ready", classes="text-caption")


# --- the child process ---------------------------------------------------------------------------------
def _relay_only(key: str):
    """aiohttp middleware: refuse (403) every request without the launcher's relay header, so another user of this
    computer cannot reach a session by its loopback port, around its token."""
    import hmac

    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        if not hmac.compare_digest(request.headers.get(RELAY_HEADER, ""), key):
            return web.Response(status=403, text="open the session through t1tot2 serve's address")
        return await handler(request)

    return check


def build(work_dir, data_dir=None, model_path=None, upload_limit=DEFAULT_UPLOAD_LIMIT, device="auto", name=None,
          relay_key=None):
    """A trame server with a :class:`Page` over a fresh :class:`Session` (one per process)."""
    from trame.app import get_server

    from .session import Session

    server = get_server(name or f"t1tot2-{os.getpid()}", client_type="vue3")
    session = Session(work_dir, data_dir=data_dir, model_path=model_path, upload_limit=upload_limit, device=device)
    return Page(server, session, relay_key=relay_key)


def main(argv=None) -> int:
    """The session process: ``python -m T1ToT2Lib.web.page '{"work": DIR, "data": ..., "model": ...,
    "upload_limit": N, "device": ..., "idle": S}'`` (one JSON argument, written by the launcher)."""
    settings = json.loads((sys.argv[1:] if argv is None else argv)[0])
    import vtk

    vtk.vtkObject.GlobalWarningDisplayOff()  # VTK 9.6's deprecation notices on every view would drown the log
    logging.basicConfig(level=logging.WARNING, format="t1tot2 serve (session): %(message)s", stream=sys.stderr)
    LOG.setLevel(logging.INFO)
    page = build(settings["work"], data_dir=settings.get("data"), model_path=settings.get("model"),
                 upload_limit=int(settings.get("upload_limit", DEFAULT_UPLOAD_LIMIT)),
                 device=settings.get("device", "auto"), relay_key=os.environ.pop(RELAY_KEY_ENV, None))
    server = page.server

    def ready(**_):
        print(json.dumps({"event": "ready", "port": server.port}), flush=True)

    server.controller.on_server_ready.add(ready)

    def stop(_signum, _frame):  # the launcher ends the session: no synthesis child may outlive it
        page.session.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    server.start(port=int(settings.get("port", 0)), host="127.0.0.1", timeout=int(settings.get("idle", 600)), open_browser=False, show_connection_info=False,
                 disable_logging=True, backend="aiohttp")
    page.session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
