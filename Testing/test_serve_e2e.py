"""``t1tot2 serve`` end to end: the launcher on loopback, driven by headless Chromium with real clicks.

One server for the module (its own data folder, a 3 MB upload limit); each test opens its own browser
session.  The journey test loads the phantom, synthesizes with the bundled demo model, reads the three
slice views' pixels, toggles the error map, places a line with two clicks, reads the plotted series,
reads the metrics table and downloads the DICOM zip (checked with pydicom) and the NIfTI.

With ``T1TOT2_SCREENSHOTS=1`` the journey's pictures are also written, small, to ``Resources/Screenshots/``
(the README's "In a browser" section shows them).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install trame-slicer[standalone])")
pytest.importorskip("trame_slicer", reason="trame-slicer is not installed")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-quic"]
UPLOAD_LIMIT = 3 * 1024 ** 2
VIEWPORT = {"width": 1500, "height": 900}
SCREENSHOTS = ROOT / "Resources" / "Screenshots"

pytestmark = pytest.mark.slow
if not CHROMIUM.exists():
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason="chromium not found at /usr/bin/chromium "
                                                            "(scripts/setup.sh --system installs it)")]


# --- the server --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    from T1ToT2Lib.phantom.render import make_phantom

    return make_phantom("small", 0)


@pytest.fixture(scope="module")
def server(tmp_path_factory, phantom):
    """``t1tot2 serve --port 0`` (no --host: the default), with a data folder; yields (url, process, data)."""
    from T1ToT2Lib.io.files import write_volume

    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    data.mkdir()
    write_volume(phantom["right_t1"], data / "right_t1.nii.gz")
    write_volume(phantom["right_t2"], root / "secret_t2.nii.gz")  # beside the data folder, never reachable
    (data / "link_out.nii.gz").symlink_to(root / "secret_t2.nii.gz")
    log = open(root / "serve.log", "w+")
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    process = subprocess.Popen(
        [sys.executable, "-m", "T1ToT2Lib.cli", "serve", "--port", "0", "--data", str(data), "--upload-limit", "3M",
         "--model", str(ROOT / "Resources" / "demo_model.safetensors"), "--device", "cpu", "--idle-timeout", "120"],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env, start_new_session=True)
    line = process.stdout.readline()
    if not line:
        log.seek(0)
        pytest.fail(f"t1tot2 serve did not start:\n{log.read()[-3000:]}")
    url = json.loads(line)["url"]
    yield {"url": url, "process": process, "data": data, "root": root}
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text or "failed" in text, text[-3000:]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def open_session(browser, server):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.goto(server["url"])
    page.wait_for_selector("#load-phantom", timeout=180_000)
    page.wait_for_function("window.trame && window.trame.state && window.trame.state.get('loaded')",
                           timeout=60_000)
    return context, page


def state(page, key):
    return page.evaluate(f"window.trame.state.get({json.dumps(key)})")


def wait_state(page, expression, timeout=180_000):
    page.wait_for_function(f"(() => {{ const s = window.trame.state; return {expression}; }})()", timeout=timeout)


def view_pixels(page, index) -> np.ndarray:
    """The picture of view ``index`` (0 T1, 1 acquired T2, 2 synthetic T2, 3 the 3-D view), grey levels."""
    from PIL import Image

    png = page.locator("#views img.image-display-area").nth(index).screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    h, w = pixels.shape
    return pixels[int(0.1 * h):int(0.85 * h), int(0.15 * w):int(0.95 * w)]  # not the frame, icons, label, slider


def changed_view(page, index, reference, threshold=2.0, timeout=30.0) -> np.ndarray:
    """Wait until view ``index`` differs from ``reference`` by more than ``threshold`` grey levels on average."""
    end = time.monotonic() + timeout
    while True:
        pixels = view_pixels(page, index)
        if pixels.shape != reference.shape or np.abs(pixels - reference).mean() > threshold or time.monotonic() > end:
            return pixels
        page.wait_for_timeout(250)


def shown_view(page, index, spread=10.0, timeout=60.0) -> np.ndarray:
    """Wait until view ``index`` shows something (grey-level standard deviation over ``spread``)."""
    end = time.monotonic() + timeout
    while True:
        pixels = view_pixels(page, index)
        if pixels.std() > spread or time.monotonic() > end:
            return pixels
        page.wait_for_timeout(250)


def differs(a, b, threshold=2.0) -> bool:
    return a.shape != b.shape or np.abs(a - b).mean() > threshold


def settle(page, seconds=1.5):
    """Let the streamed views catch up with the scene."""
    page.wait_for_timeout(int(seconds * 1000))


def shoot(page, name, shots):
    """A page screenshot, palette-compressed; kept in ``shots`` (copied to Resources/Screenshots on request)."""
    from PIL import Image

    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
    image = image.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    shots[name] = buffer.getvalue()


# --- the journey ---------------------------------------------------------------------------------------------
def test_browser_journey(browser, server, tmp_path):
    import pydicom

    shots = {}
    context, page = open_session(browser, server)
    assert "/s/" in page.url and page.url.startswith("http://127.0.0.1:")

    page.click("#load-phantom")
    wait_state(page, "s.get('loaded').t1 && s.get('loaded').t2")
    t1, t2 = shown_view(page, 0), shown_view(page, 1)
    settle(page)
    t1, t2, empty = (view_pixels(page, i) for i in range(3))
    assert t1.std() > 10 and t2.std() > 10, "the T1 and acquired T2 views are blank"
    assert empty.std() < 5, "the synthetic view shows something before any synthesis"
    shoot(page, "web_01_phantom.png", shots)

    page.click("#synthesize")
    wait_state(page, "s.get('job_running')", timeout=30_000)
    page.wait_for_selector("#cancel", state="visible")
    try:
        wait_state(page, "s.get('job_fraction') > 10 || !s.get('job_running')", timeout=300_000)
        if state(page, "job_running"):
            shoot(page, "web_02_synthesizing.png", shots)
            assert "%" in state(page, "job_text")
            # The page answers while the job runs: another orientation is drawn before the job ends.
            page.click("#orientation button:has-text('Sagittal')")
            sagittal = changed_view(page, 0, t1)
            assert differs(sagittal, t1) and (state(page, "job_running") or state(page, "loaded")["synthetic"])
            page.click("#orientation button:has-text('Coronal')")
            changed_view(page, 0, sagittal)
    finally:
        wait_state(page, "!s.get('job_running')", timeout=900_000)
    assert state(page, "message_type") == "success", state(page, "message")
    assert state(page, "loaded")["synthetic"] and state(page, "loaded")["error_map"]
    shown_view(page, 2), shown_view(page, 3, 3.0)
    settle(page)
    t1, t2, synthetic = (view_pixels(page, i) for i in range(3))
    for name, pixels in (("T1", t1), ("acquired T2", t2), ("synthetic T2", synthetic)):
        assert pixels.std() > 10, f"the {name} view is blank"
    assert np.abs(t1 - t2).mean() > 5 and np.abs(t2 - synthetic).mean() > 1 and np.abs(t1 - synthetic).mean() > 5
    three_d = view_pixels(page, 3)
    assert three_d.std() > 3, "the 3-D view shows nothing"
    shoot(page, "web_03_compare.png", shots)

    # Linked views: moving the T1 view's slice moves the other two.
    before = {tag: state(page, f"{tag}__SliderState__value") for tag in ("Red", "Yellow", "Green")}
    box = page.locator("#views img.image-display-area").nth(0).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 400)
    wait_state(page, f"s.get('Red__SliderState__value') != {before['Red']}", timeout=30_000)
    settle(page, 1.0)
    after = {tag: state(page, f"{tag}__SliderState__value") for tag in ("Red", "Yellow", "Green")}
    assert after["Yellow"] == after["Red"] and after["Green"] == after["Red"], (before, after)
    page.mouse.wheel(0, -400)
    settle(page, 1.0)

    assert state(page, "overlay") == "none"
    page.click("#overlay-difference")
    wait_state(page, "s.get('overlay') === 'difference'")
    difference = changed_view(page, 2, synthetic)
    assert differs(difference, synthetic), "the difference overlay changed nothing"
    page.click("#overlay-error")
    wait_state(page, "s.get('overlay') === 'error'")
    error_overlay = changed_view(page, 2, difference)
    settle(page)
    error_overlay = view_pixels(page, 2)
    change = np.abs(error_overlay - synthetic).mean()
    assert change > 2, "the error map overlay changed nothing"
    # The T1 view only differs by the stream's compression noise.
    assert np.abs(view_pixels(page, 0) - t1).mean() < max(4.0, change / 3), "an overlay reached the T1 view"
    shoot(page, "web_04_error_map.png", shots)

    # Orientation for all three views at once, and one window/level for both T2 views.
    page.click("#orientation button:has-text('Axial')")
    wait_state(page, "s.get('orientation') === 'Axial'")
    axial = [changed_view(page, i, before) for i, before in enumerate((t1, t2, error_overlay))]
    assert all(differs(a, b) for a, b in zip(axial, (t1, t2, error_overlay))), "the orientation changed no view"
    page.click("#orientation button:has-text('Coronal')")
    wait_state(page, "s.get('orientation') === 'Coronal'")
    page.click("#overlay-none")
    wait_state(page, "s.get('overlay') === 'none'")
    changed_view(page, 0, axial[0])
    settle(page)
    wide = view_pixels(page, 1), view_pixels(page, 2)
    window = state(page, "t2_window")
    page.evaluate(f"window.trame.state.set('t2_window', {window / 4})")
    narrow = changed_view(page, 1, wide[0]), changed_view(page, 2, wide[1])
    assert differs(narrow[0], wide[0]) and differs(narrow[1], wide[1]), "the T2 window changed neither T2 view"
    page.evaluate(f"window.trame.state.set('t2_window', {window})")
    page.click("#overlay-error")
    wait_state(page, "s.get('overlay') === 'error'")
    settle(page)

    # A line with two clicks on the T1 view: across the hand, below the middle.
    page.click("#place-line")
    wait_state(page, "s.get('placing_line')")
    box = page.locator("#views img.image-display-area").nth(0).bounding_box()
    y = box["y"] + box["height"] * 0.45
    page.mouse.click(box["x"] + box["width"] * 0.25, y)
    page.wait_for_timeout(500)
    page.mouse.click(box["x"] + box["width"] * 0.75, y + 10)
    wait_state(page, "s.get('profile') && s.get('profile_svg')", timeout=60_000)
    profile = state(page, "profile")
    assert set(profile) == {"Distance (mm)", "T1", "acquired T2", "synthetic T2"}
    distances = np.asarray(profile["Distance (mm)"], dtype=float)
    assert len(distances) == 200 and distances[-1] > 10  # mm along the line
    plotted = page.evaluate("""Array.from(document.querySelectorAll('#profile-plot svg g[id^="profile-"]'))
        .map(g => [g.id, (g.querySelector('path').getAttribute('d').match(/[ML]/g) || []).length])""")
    assert dict(plotted) == {"profile-T1": 200, "profile-acquired-T2": 200, "profile-synthetic-T2": 200}
    synthetic_profile = np.asarray(profile["synthetic T2"], dtype=float)
    acquired_profile = np.asarray(profile["acquired T2"], dtype=float)
    assert np.nanstd(synthetic_profile) > 10 and np.corrcoef(synthetic_profile, acquired_profile)[0, 1] > 0.5
    # Dragging the second end half-way back shortens the line: the profile follows.
    page.mouse.move(box["x"] + box["width"] * 0.75, y + 10)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.75 - 0.025 * step), y + 10)
        page.wait_for_timeout(50)
    page.mouse.up()
    wait_state(page, f"s.get('profile')['Distance (mm)'][199] < {0.8 * distances[-1]}", timeout=60_000)
    shorter = np.asarray(state(page, "profile")["Distance (mm)"], dtype=float)
    assert 0.3 * distances[-1] < shorter[-1] < 0.8 * distances[-1]
    with page.expect_download() as download:
        page.click("#profile-csv")
    rows = list(csv.reader(open(download.value.path())))
    assert rows[0] == ["Distance (mm)", "T1", "acquired T2", "synthetic T2"] and len(rows) == 201
    shoot(page, "web_05_profile.png", shots)

    page.click("#compute-metrics")
    wait_state(page, "s.get('metrics_rows').length > 0", timeout=300_000)
    page.wait_for_selector("#metrics-table tbody tr")
    table = page.evaluate("""Array.from(document.querySelectorAll('#metrics-table tbody tr'))
        .map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim()))""")
    planes = [(row[0], row[1]) for row in table]
    assert planes[:4] == [("synthetic T2", p) for p in ("axial", "coronal", "sagittal", "all planes")]
    assert planes[4][0].startswith("oracle")
    psnr = float(table[3][3].split("±")[0])
    ssim = float(table[3][4].split("±")[0])
    assert 15 < psnr < table_value(table[4][3]) and 0.5 < ssim <= 1
    assert "inside the object" in page.inner_text("#metrics-explanation")
    shoot(page, "web_06_metrics.png", shots)

    with page.expect_download() as download:
        page.click("#download-dicom")
    archive = zipfile.ZipFile(download.value.path())
    names = [n for n in archive.namelist() if n.endswith(".dcm")]
    datasets = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in names]
    t1_shape = phantom_shape(server)
    assert len(datasets) == t1_shape[0]
    for ds in datasets[:3]:
        assert ds.Modality == "MR" and "SYNTHETIC" in list(ds.ImageType)
        assert "SYNTHETIC" in ds.SeriesDescription.upper()
        assert ds.pixel_array.shape == t1_shape[1:]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    with page.expect_download() as download:
        page.click("#download-nifti")
    path = tmp_path / "synthetic_t2.nii.gz"
    download.value.save_as(path)
    from T1ToT2Lib.io.files import read_volume

    assert read_volume(path).shape == t1_shape
    assert "Traceback" not in page.content()
    context.close()
    save_screenshots(shots, tmp_path)


def table_value(text: str) -> float:
    return float(text.split("±")[0])


def phantom_shape(server):
    from T1ToT2Lib.io.files import read_volume

    return read_volume(server["data"] / "right_t1.nii.gz").shape


def save_screenshots(shots: dict, tmp_path: Path):
    for name, data in shots.items():
        assert len(data) < 300 * 1024, f"{name} is {len(data) // 1024} KB"
        (tmp_path / name).write_bytes(data)
        if os.environ.get("T1TOT2_SCREENSHOTS", "") not in ("", "0"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / name).write_bytes(data)


# --- bad input -------------------------------------------------------------------------------------------------
def test_bad_uploads_and_path_traversal_get_one_line(browser, server, tmp_path, phantom):
    from T1ToT2Lib.io.files import write_volume

    context, page = open_session(browser, server)
    shots = {}

    notes = tmp_path / "notes.txt"
    notes.write_text("these are not the images you are looking for\n" * 20)
    page.set_input_files("#upload-t1", str(notes))
    wait_state(page, "s.get('message_type') === 'error'", timeout=60_000)
    message = state(page, "message")
    assert "'notes.txt' is not an image this server reads" in message and "\n" not in message
    assert page.locator("#message").is_visible() and "Traceback" not in page.inner_text("body")
    assert state(page, "loaded")["t1"] is None
    shoot(page, "web_07_bad_upload.png", shots)

    big = tmp_path / "big.nii"
    big.write_bytes(b"\x00" * (UPLOAD_LIMIT + 1024))
    page.evaluate("window.trame.state.set('message', '')")
    page.set_input_files("#upload-t2", str(big))
    wait_state(page, "s.get('message') !== ''", timeout=60_000)
    assert "upload limit of 3.0 MB" in state(page, "message") and state(page, "message_type") == "error"
    assert not list((server["root"]).rglob("*big.nii*"))  # nothing of it was kept

    good = write_volume(phantom["right_t2"], tmp_path / "my t2.nii.gz")
    assert good.stat().st_size < UPLOAD_LIMIT
    page.set_input_files("#upload-t2", str(good))
    wait_state(page, "s.get('loaded').t2", timeout=120_000)
    assert state(page, "loaded")["t2"] == "T2: my_t2.nii.gz"

    for name in ("../secret_t2.nii.gz", "link_out.nii.gz", str(server["root"] / "secret_t2.nii.gz")):
        page.evaluate(f"window.trame.state.set('data_file', {json.dumps(name)})")
        page.wait_for_timeout(300)
        page.click("#data-t1")
        wait_state(page, "s.get('message_type') === 'error'", timeout=60_000)
        assert "is not a file of the data folder" in state(page, "message"), state(page, "message")
        page.evaluate("window.trame.state.set('message_type', 'info')")
    assert state(page, "loaded")["t1"] is None
    assert state(page, "data_files") == ["right_t1.nii.gz"]  # the link out is not even listed
    context.close()
    save_screenshots(shots, tmp_path)


def test_two_sessions_at_once_are_isolated(browser, server):
    import urllib.error
    import urllib.request

    context_a, page_a = open_session(browser, server)
    context_b, page_b = open_session(browser, server)
    assert page_a.url != page_b.url
    token_a = page_a.url.rstrip("/").split("/")[-1]

    page_a.click(".v-select .v-field")  # the data folder's list, then its one file
    page_a.click(".v-list-item:has-text('right_t1.nii.gz')")
    page_a.click("#data-t1")
    wait_state(page_a, "s.get('loaded').t1", timeout=120_000)
    page_b.wait_for_timeout(1500)
    assert state(page_b, "loaded")["t1"] is None and "right_t1" not in page_b.inner_text("body")
    assert view_pixels(page_a, 0).std() > 10 and view_pixels(page_b, 0).std() < 5

    health = json.loads(urllib.request.urlopen(server["url"] + "healthz").read())
    assert health["sessions"] >= 2
    for url in (server["url"] + "s/not-a-token/", server["url"] + f"s/{token_a[:-2]}xx/download/profile.csv"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url)
        assert info.value.code == 404
    context_a.close()
    context_b.close()


def test_server_listens_on_loopback_only_by_default(server):
    psutil = pytest.importorskip("psutil", reason="psutil is not installed")
    assert server["url"].startswith("http://127.0.0.1:")
    port = int(server["url"].rstrip("/").rsplit(":", 1)[1])
    listening = [c for c in psutil.Process(server["process"].pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert port in {c.laddr.port for c in listening}
