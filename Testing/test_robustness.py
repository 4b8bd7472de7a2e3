"""t1tot2 analyze robustness: every variant row, scored against its own oracle, written as JSON, table and figure."""

import json

import numpy as np
import pytest

from T1ToT2Lib.cli import main
from T1ToT2Lib.phantom import render as P
from T1ToT2Lib.research import robustness as R
from T1ToT2Lib.research.analysis import save_lookup_model

#: Coarse voxels and a short field of view keep each variant's render to about a second.
BASE = P.Acquisition(voxel_mm=(3.0, 3.0, 3.0), fov_mm=(240.0, 48.0, 120.0))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The one-to-one look-up baseline, fitted on a coarse phantom's left hand: a model in a fraction of a second."""
    vols = P.make_phantom("small", seed=0, acquisition=BASE)
    path = tmp_path_factory.mktemp("robust") / "lookup.safetensors"
    return save_lookup_model(path, vols["left_t1"], vols["left_t2"], mask=vols["left_labels"].array > 0)


def test_matrix_has_every_row_scored_against_its_oracle(tiny_model):
    result = R.robustness_matrix(tiny_model, base=BASE, resolutions=(2.0, 3.0, 4.0), seeds=(1, 2), device="cpu")
    names = [r["variant"] for r in result["rows"]]
    assert names == ["demo configuration", "seed 1", "seed 2", "2 mm", "4 mm", "noise x0.5", "noise x1.5",
                     "oblique pose", "other VIBE", "other SPACE"]
    for row in result["rows"]:
        for who in ("model", "oracle"):
            assert all(np.isfinite(row[who][k]) for k in ("psnr", "ssim", "nrmse")), row
        assert row["gap_db"] == pytest.approx(row["oracle"]["psnr"] - row["model"]["psnr"], abs=0.011)
    by = {r["variant"]: r for r in result["rows"]}
    # Each variant is rendered as named: its recorded acquisition says so.
    assert by["2 mm"]["acquisition"]["voxel_mm_RAS"] == [2.0, 2.0, 2.0]
    assert by["oblique pose"]["acquisition"]["pose_deg_xyz"] == list(R.OBLIQUE_POSE)
    assert by["other VIBE"]["acquisition"]["vibe"]["TE"] == R.OTHER_SEQUENCE["vibe"]["TE"]
    assert by["other VIBE"]["acquisition"]["space"] == by["demo configuration"]["acquisition"]["space"]
    assert by["other SPACE"]["acquisition"]["space"]["TE"] == R.OTHER_SEQUENCE["space"]["TE"]
    # Physics: the noise-free T2 is closer to a less noisy acquisition.
    assert by["noise x0.5"]["oracle"]["psnr"] > by["demo configuration"]["oracle"]["psnr"] > by["noise x1.5"]["oracle"]["psnr"]
    assert result["worst_gap_db"] == max(r["gap_db"] for r in result["rows"])
    text = R.table(result)
    assert all(name in text for name in names) and len(text.splitlines()) == len(names) + 1
    assert "largest gap to the oracle" in R.one_line(result)


def test_cli_writes_json_table_and_figure(tiny_model, tmp_path, capsys):
    code = main(["analyze", "robustness", str(tiny_model), "-o", str(tmp_path), "--only", "noise x0.5", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "noise x0.5" in out and "largest gap to the oracle" in out
    data = json.loads((tmp_path / "robustness.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["noise x0.5"]
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_unknown_variant_is_a_one_line_error(tiny_model, tmp_path, capsys):
    code = main(["analyze", "robustness", str(tiny_model), "-o", str(tmp_path), "--only", "moon landing"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown robustness variant" in err
