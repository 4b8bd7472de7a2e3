"""The HTML report opens in headless Chromium with every image loaded and the tables holding the metrics."""

import numpy as np
import pytest

from T1ToT2Lib.research import analysis, report
from T1ToT2Lib.core import metrics
from T1ToT2Lib.core.volume import Volume

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]


def _results(rng):
    actual = Volume.from_geometry(rng.random((8, 24, 24)).astype(np.float32) * 100 + 10, spacing=(0.6, 0.6, 0.6))
    good = actual.with_array(actual.array + rng.standard_normal(actual.shape).astype(np.float32))
    yy, xx = np.mgrid[:24, :24]
    checker = np.where((yy + xx) % 2 == 0, 4.0, -4.0).astype(np.float32)
    bad = actual.with_array(actual.array + 10 * rng.standard_normal(actual.shape).astype(np.float32) + checker)
    results = {"paper pix2pix": metrics.evaluate_volumes(bad, actual), "recommended": metrics.evaluate_volumes(good, actual)}
    return actual, good, results


def open_page(path):
    sync_api = pytest.importorskip("playwright.sync_api")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
    except Exception as exc:  # noqa: BLE001 - no browser on this machine
        playwright.stop()
        pytest.skip(f"headless Chromium unavailable: {exc}")
    page = browser.new_page()
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return playwright, browser, page


def check_report_in_browser(index, expect_images):
    """Open ``index`` in Chromium; assert every image decoded; return (image count, page text, table1 rows)."""
    playwright, browser, page = open_page(index)
    try:
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        text = page.inner_text("body")
        rows = page.eval_on_selector_all("#table1 tr", "rows => rows.map(r => r.innerText)")
    finally:
        browser.close()
        playwright.stop()
    assert len(widths) == expect_images
    assert all(w > 0 for w in widths), widths
    return text, rows


@pytest.mark.parametrize("embed", [False, True])
def test_report_opens_with_every_image_and_the_tables(tmp_path, rng, embed):
    actual, good, results = _results(rng)
    figures = [
        ("Difference map", analysis.write_difference(good, actual, tmp_path / "figures")["png"]),
        ("SYNTHETIC T2 rendering", analysis.render_volume(good, tmp_path / "figures" / "render.png")),
    ]
    index = report.write_report(tmp_path, results, figures, settings={"budget": "test"}, recommended="recommended",
                                baseline="paper pix2pix", embed_images=embed)
    html_text = index.read_text()
    assert ("data:image/png;base64," in html_text) == embed
    assert ('src="figures/difference.png"' in html_text) == (not embed)

    text, rows = check_report_in_browser(index, expect_images=2)
    assert "SYNTHETIC" in text
    assert len(rows) == 3  # header + two models
    psnr = results["recommended"]["overall"]["psnr"]
    assert f"{psnr['mean']:.2f} ± {psnr['std']:.2f}" in rows[2]
    # The model without the checkerboard has the higher PSNR, the far lower E_2, and the report says so.
    gain = psnr["mean"] - results["paper pix2pix"]["overall"]["psnr"]["mean"]
    assert gain > 1 and f"PSNR {gain:+.2f} dB" in text
    assert results["recommended"]["grid_energy"]["2"] < 0.1 * results["paper pix2pix"]["grid_energy"]["2"]
