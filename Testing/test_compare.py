"""`t1tot2 compare --budget tiny` trains every model on the phantom's left hand, scores the right hand
and writes a report that opens in Chromium with every figure."""

import csv
import json

import numpy as np
import pytest

from T1ToT2Lib.cli import main


@pytest.mark.slow
def test_tiny_comparison_writes_a_complete_report(tmp_path, capsys, few_trees):
    from test_report import check_report_in_browser

    from T1ToT2Lib.research import compare
    from T1ToT2Lib.networks.modelfile import read_metadata
    from T1ToT2Lib.phantom.render import make_phantom
    from T1ToT2Lib.io.files import read_volume

    out = tmp_path / "cmp"
    assert main(["compare", str(out), "--budget", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "Recommended vs paper Pix2Pix" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["metrics"]) == [compare.ORACLE_NAME, *compare.MODELS]
    for name, result in summary["metrics"].items():
        assert result["masked"] and result["overall"]["n_slices"] > 0
        assert np.isfinite(result["overall"]["psnr"]["mean"])
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * (1 + len(compare.MODELS)) and {r["model"] for r in rows} == {compare.ORACLE_NAME, *compare.MODELS}

    # The oracle row is the noise-free T2 scored by the same function as the models.
    from T1ToT2Lib.core import metrics

    hands = make_phantom(size="small", seed=0)
    oracle = metrics.evaluate_volumes(hands["right_t2_clean"], hands["right_t2"], mask=metrics.foreground_mask(hands["right_labels"]))
    assert summary["metrics"][compare.ORACLE_NAME]["overall"]["psnr"]["mean"] == pytest.approx(oracle["overall"]["psnr"]["mean"], abs=1e-9)
    best_model = max(r["overall"]["psnr"]["mean"] for n, r in summary["metrics"].items() if n != compare.ORACLE_NAME)
    assert oracle["overall"]["psnr"]["mean"] > best_model  # the ceiling is above every model

    right_t1 = hands["right_t1"]
    for name in compare.MODELS:
        slug = compare._slug(name)
        meta = read_metadata(out / "models" / f"{slug}.safetensors")
        assert meta["config"]["arch"] == compare.MODELS[name]["model"]
        volume = read_volume(out / "volumes" / f"{slug}_synthetic_t2.nii.gz")
        np.testing.assert_allclose(volume.ijk_to_ras, right_t1.ijk_to_ras, atol=1e-5)
    assert read_metadata(out / "models" / "recommended.safetensors")["in_channels"] == 3
    assert read_metadata(out / "models" / "recommended.safetensors")["prior"]["kind"] == "feature_regression"

    # figure 8, profiles, histograms, two occlusion plots, grid energy, rendering
    text, table_rows = check_report_in_browser(out / "index.html", expect_images=7)
    assert len(table_rows) == 2 + len(compare.MODELS)
    assert "SYNTHETIC" in text and "Table 2" in text
    assert not list(tmp_path.glob(".cmp.*"))  # no temporary folder left behind

    # The output folder is never overwritten silently.
    assert main(["compare", str(out), "--budget", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
