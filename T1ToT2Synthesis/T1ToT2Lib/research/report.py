"""A self-contained HTML report of a model comparison: the paper's Tables 1 and 2, grid-artefact
energies and the figures, written as ``index.html`` next to its PNGs (relative links), or with
the images embedded as base64 so that the one file can be mailed around.

Plain string templating with ``html.escape``: the page is small and fixed, so a template
engine would be one more dependency for no gain.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
from pathlib import Path

from .. import __version__
from ..core.about import CITATION
from ..core.atomic import atomic_path
from ..core.metrics import GRID_PERIODS

SYNTHETIC_BANNER = (
    "Every T2 image produced by a model in this report is SYNTHETIC: computed from a T1 VIBE image, "
    "not acquired. Not for diagnosis."
)

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
.banner { background: #fff3cd; border: 1px solid #e0b400; padding: .6em 1em; font-weight: bold; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.best td { font-weight: bold; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; }
.gain { font-size: 1.1em; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _pm(stat, digits) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    if math.isinf(stat["mean"]):
        return "∞"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def table1(results: dict) -> str:
    """Table 1 layout: one row per model, mean ± std over the slices of all planes."""
    rows = []
    best = _best_model(results)
    for name, r in results.items():
        o = r["overall"]
        rows.append(
            f"<tr{' class=best' if name == best else ''}><td>{html.escape(name)}</td><td>{_pm(o['nrmse'], 4)}</td>"
            f"<td>{_pm(o['psnr'], 2)}</td><td>{_pm(o['ssim'], 4)}</td><td>{o['n_slices']}</td></tr>"
        )
    return (
        "<table id=table1><caption>Table 1: synthetic T2 vs acquired T2, all planes (mean ± std over slices)</caption>"
        "<tr><th>model</th><th>NRMSE</th><th>PSNR (dB)</th><th>SSIM</th><th>slices</th></tr>" + "".join(rows) + "</table>"
    )


def table2(results: dict) -> str:
    """Table 2 layout: one row per model and plane."""
    rows = []
    for name, r in results.items():
        for plane, e in r["per_plane"].items():
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{plane}</td><td>{_pm(e['nrmse'], 4)}</td>"
                f"<td>{_pm(e['psnr'], 2)}</td><td>{_pm(e['ssim'], 4)}</td><td>{e['n_slices']}</td></tr>"
            )
    return (
        "<table id=table2><caption>Table 2: per plane (mean ± std over that plane's slices)</caption>"
        "<tr><th>model</th><th>plane</th><th>NRMSE</th><th>PSNR (dB)</th><th>SSIM</th><th>slices</th></tr>"
        + "".join(rows) + "</table>"
    )


def grid_table(results: dict) -> str:
    """E_p (share of the residual variance in a p x p periodic pattern; worst plane)."""
    head = "".join(f"<th>E<sub>{p}</sub></th>" for p in GRID_PERIODS)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{r['grid_energy'][str(p)]:.4f}</td>" for p in GRID_PERIODS) + "</tr>"
        for name, r in results.items()
    )
    return (
        "<table id=grid><caption>Grid-artefact energy of the residual (synthetic − acquired), worst plane</caption>"
        f"<tr><th>model</th>{head}</tr>{rows}</table>"
    )


def _best_model(results: dict):
    scored = [(r["overall"]["psnr"]["mean"], name) for name, r in results.items() if r["overall"]["psnr"]["mean"] is not None]
    return max(scored)[1] if scored else None


def gain_summary(results: dict, recommended: str, baseline: str) -> str:
    """One sentence: PSNR / SSIM gain and E_2 ratio of ``recommended`` over ``baseline``."""
    if recommended not in results or baseline not in results:
        return ""
    rec, base = results[recommended], results[baseline]
    d_psnr = rec["overall"]["psnr"]["mean"] - base["overall"]["psnr"]["mean"]
    d_ssim = rec["overall"]["ssim"]["mean"] - base["overall"]["ssim"]["mean"]
    e_rec, e_base = rec["grid_energy"]["2"], base["grid_energy"]["2"]
    ratio = f"{e_rec / e_base:.3f}" if e_base > 0 else "n/a"
    return (
        f"<p class=gain id=gain>{html.escape(recommended)} vs {html.escape(baseline)}: PSNR {d_psnr:+.2f} dB, "
        f"SSIM {d_ssim:+.4f}, E<sub>2</sub> {e_rec:.4f} vs {e_base:.4f} (ratio {ratio}).</p>"
    )


def _image_src(path: Path, out_dir: Path, embed: bool) -> str:
    if embed:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return Path(path).resolve().relative_to(out_dir.resolve()).as_posix()


def tissue_html(tissues: dict) -> str:
    """Per-tissue table: for each model, mean acquired and synthetic T2 per tissue label and the relative error."""
    if not tissues:
        return ""
    names = list(tissues)
    labels = [(r["label"], r["tissue"], r["voxels"], r["acquired_mean"]) for r in next(iter(tissues.values()))]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for label, tissue, voxels, acquired in labels:
        cells = []
        for n in names:
            row = next((r for r in tissues[n] if r["label"] == label), None)
            cells.append("<td>n/a</td>" if row is None else
                         f"<td>{row['synthetic_mean']:.0f} ({100 * row['relative_error']:+.0f}%)</td>")
        body.append(f"<tr><td>{html.escape(tissue)}</td><td>{voxels}</td><td>{acquired:.0f}</td>{''.join(cells)}</tr>")
    return ("<h3>Per tissue: mean T2, synthetic (relative error)</h3><table id=tissues><tr><th>tissue</th><th>voxels</th>"
            f"<th>acquired</th>{head}</tr>{''.join(body)}</table>")


def write_report(out_dir, results: dict, figures=(), settings=None, title="T1ToT2 model comparison",
                 recommended=None, baseline=None, notes=(), embed_images=False, tissues=None) -> Path:
    """Write ``out_dir/index.html``.

    ``results``: model name -> :func:`T1ToT2Lib.core.metrics.evaluate_volumes` result.
    ``figures``: (caption, PNG path inside ``out_dir``) pairs, shown in order.
    ``settings``: a dict shown as a table (data, budget, timings...).
    ``tissues``: model name -> :func:`T1ToT2Lib.core.metrics.tissue_table` rows (optional).
    """
    out_dir = Path(out_dir)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=banner>{SYNTHETIC_BANNER}</p>",
    ]
    if settings:
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items())
        parts.append(f"<h2>Set-up</h2><table id=settings>{rows}</table>")
    parts += ["<h2>Metrics</h2>", table1(results), table2(results), grid_table(results), tissue_html(tissues)]
    if recommended and baseline:
        parts.append(gain_summary(results, recommended, baseline))
    for note in notes:
        parts.append(f"<p>{html.escape(note)}</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
    for caption, path in figures:
        src = _image_src(Path(path), out_dir, embed_images)
        parts.append(f"<figure><img src=\"{html.escape(src)}\" alt=\"{html.escape(caption)}\"><figcaption>{html.escape(caption)}</figcaption></figure>")
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    parts.append(f"<hr><p><small>T1ToT2 {__version__}, {stamp}. Metrics as {html.escape(CITATION)}: "
                 "NRMSE = RMSE / (max I − min I); PSNR with the larger image maximum as peak; SSIM 7×7 window, "
                 "C1 = (0.01 L)², C2 = (0.03 L)².</small></p></body></html>")
    path = out_dir / "index.html"
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")
    return path
