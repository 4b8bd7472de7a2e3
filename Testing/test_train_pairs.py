"""Training on several pairs (--pairs, repeated --t1/--t2) on different grids, and the refiner's CNN gate."""

import csv
import json

import numpy as np
import pytest

from T1ToT2Lib.cli import main
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.io.files import read_volume, write_volume
from T1ToT2Lib.networks.modelfile import read_metadata
from T1ToT2Lib.phantom import render as P


def _coarse(seed, voxel):
    acq = P.Acquisition(voxel_mm=voxel, fov_mm=(240.0, 48.0, 120.0))
    return P.make_phantom("small", seed=seed, acquisition=acq)


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    """Two T1/T2 pairs of different subjects on different grids (3 mm and 2.5 x 3.5 x 2 mm), and a CSV listing them."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = []
    for n, (seed, voxel) in enumerate(((1, (3.0, 3.0, 3.0)), (2, (2.5, 3.5, 2.0)))):
        vols = _coarse(seed, voxel)
        for kind in ("t1", "t2"):
            write_volume(vols[f"left_{kind}"], folder / f"p{n}_{kind}.nii.gz")
        rows.append((f"p{n}_t1.nii.gz", f"p{n}_t2.nii.gz"))
    with open(folder / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("t1", "t2"))
        writer.writerows(rows)
    return folder


#: Small tree ensembles (conftest): these tests check the plumbing of several pairs, not the trees' quality.
pytestmark = pytest.mark.usefixtures("few_trees")


QUICK = ["--epochs", "1", "--epochs-decay", "0", "--max-steps-per-epoch", "2", "--batch-size", "4", "--correction", "train",
         "--progress", "none"]


def test_pairs_csv_trains_one_model_on_two_grids(two_grids, tmp_path):
    out = tmp_path / "m.safetensors"
    assert main(["train", "--pairs", str(two_grids / "pairs.csv"), "--out", str(out), *QUICK]) == 0
    meta = read_metadata(out)
    training = meta["training"] if isinstance(meta["training"], dict) else json.loads(meta["training"])
    pairs = training["pairs"]
    assert len(pairs) == 2
    # Both pairs sit on the first T1's voxel size; the second was resampled from its own.
    assert all(np.allclose(p["spacing_mm"], [3.0, 3.0, 3.0]) for p in pairs)
    assert pairs[1]["meta"]["resampled_from_mm"] == [2.5, 3.5, 2.0]
    prep = meta["preprocessing"] if isinstance(meta["preprocessing"], dict) else json.loads(meta["preprocessing"])
    assert np.allclose(prep["voxel_mm"], [3.0, 3.0, 3.0])
    assert prep["interpolated_from_mm"] is None  # rendered on their grids: the trees learnt acquired T1s
    # The model synthesises a third subject on yet another grid, back on that grid.
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    other = _coarse(3, (2.0, 3.0, 2.5))["right_t1"]
    synthetic = synthesize_volume(str(out), other, plane="fuse")
    assert synthetic.same_geometry(other, tol=1e-6) and np.isfinite(synthetic.array).all()


def test_repeated_t1_t2_is_the_same_as_the_csv(two_grids, tmp_path):
    args = []
    for n in range(2):
        args += ["--t1", str(two_grids / f"p{n}_t1.nii.gz"), "--t2", str(two_grids / f"p{n}_t2.nii.gz")]
    assert main(["train", *args, "--out", str(tmp_path / "a.safetensors"), *QUICK]) == 0
    assert main(["train", "--pairs", str(two_grids / "pairs.csv"), "--out", str(tmp_path / "b.safetensors"), *QUICK]) == 0
    from safetensors.numpy import load_file

    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,message", [
    (["--t1", "a.nii.gz"], "give one --t2 for every --t1"),
    (["--randomize", "--t1", "a", "--t2", "b"], "--randomize applies to --phantom-subjects"),
    ([], "no training data"),
    (["--pairs", "missing.csv"], "does not exist"),
    (["--phantom-subjects", "1", "--model", "pix2pix"], "train the refiner only"),
    (["--phantom-subjects", "1", "--voxel-mm", "1,2"], "one or three positive numbers"),
])
def test_bad_pair_options_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["train", *args, "--out", str(tmp_path / "m.safetensors"), "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


# --- the gate: a correction that hurts a held-out subject is not kept -----------------------------------
class _FixedPrior:
    """A prior that predicts a known array (normalised T2 units) whatever the T1."""

    error_trees = None

    def __init__(self, array):
        self.array = array

    def predict_volume(self, normalised, with_error=False, progress=None):
        return (self.array, np.zeros_like(self.array)) if with_error else self.array


@pytest.mark.parametrize("offset,kept", [(0.2, True), (-0.2, False)])
def test_gate_keeps_a_helpful_correction_and_drops_a_harmful_one(offset, kept):
    import torch

    from T1ToT2Lib import networks
    from T1ToT2Lib.inference.slices import foreground_scale
    from T1ToT2Lib.training.train import TrainConfig, correction_gate

    vols = _coarse(4, (3.0, 3.0, 3.0))
    t1, t2 = vols["right_t1"], vols["right_t2"]
    scale = foreground_scale(t2.array)
    truth = t2.array / np.float32(scale)
    prior = _FixedPrior((truth - 0.2).astype(np.float32))  # the prior is 0.2 too dark everywhere
    config = networks.default_config("refiner", in_channels=3)
    generator = networks.build_generator(config).eval()
    generator.reset_head()
    with torch.no_grad():
        generator.head.bias.fill_(offset)  # +0.2 repairs the prior exactly, -0.2 doubles its error
    train_config = TrainConfig(t1=t1, t2=t2, model="refiner", context=3)
    record = correction_gate(generator, config, (t1, t2), ["axial", "coronal", "sagittal"], scale,
                             train_config, torch.device("cpu"), prior)
    assert record["kept"] is kept
    better = record["refined"]["psnr"] > record["prior"]["psnr"]
    assert better is kept
    head = torch.cat([generator.head.weight.flatten(), generator.head.bias.flatten()])
    if kept:
        assert float(generator.head.bias.detach()) == pytest.approx(offset)
    else:
        assert torch.count_nonzero(head) == 0  # the model is its prior again


def test_the_trees_learn_each_pair_on_its_own_grid_at_the_models_lengths_in_mm(two_grids, tmp_path, monkeypatch):
    """The second pair (2.5 x 3.5 x 2 mm) is not resampled for the trees: its feature rows come from its own grid with a
    zoom of the model's 3 mm over its voxel per array axis (k, j, i = S, A, R = 2.0, 3.5, 2.5 mm)."""
    from T1ToT2Lib.networks import features

    seen = []
    rows = features.feature_rows

    def recording(normalised, spec, indices, zoom=None):
        seen.append((normalised.shape, None if zoom is None else np.round(np.asarray(zoom), 6).tolist()))
        return rows(normalised, spec, indices, zoom=zoom)

    monkeypatch.setattr(features, "feature_rows", recording)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--pairs", str(two_grids / "pairs.csv"), "--out", str(out), *QUICK]) == 0
    first, second = (read_volume(two_grids / f"p{n}_t1.nii.gz") for n in range(2))
    assert seen[0] == (first.shape, [1.0, 1.0, 1.0])
    assert seen[1] == (second.shape, np.round([3.0 / 2.0, 3.0 / 3.5, 3.0 / 2.5], 6).tolist())


def test_a_model_file_records_the_fit_its_trees_were_made_with(two_grids, tmp_path):
    """Trees fitted on several pairs with a chosen fit: the baseline file states that fit (not the one-pair default),
    and the loaded regressor carries it again."""
    from T1ToT2Lib.networks.modelfile import load_model
    from T1ToT2Lib.research.analysis import save_feature_baseline
    from T1ToT2Lib.training.prior import fit_prior_pairs

    pairs = [(read_volume(two_grids / f"p{n}_t1.nii.gz"), read_volume(two_grids / f"p{n}_t2.nii.gz")) for n in range(2)]
    chosen = {"max_iter": 5, "learning_rate": 0.37, "max_leaf_nodes": 9}
    regressor, _ = fit_prior_pairs(pairs, seed=0, percentile=50.0, cross_fit=False, fit=chosen, voxel_mm=(3.0, 3.0, 3.0))
    path = save_feature_baseline(tmp_path / "trees.safetensors", *pairs[0], regressor=regressor)
    meta = read_metadata(path)
    training = meta["training"] if isinstance(meta["training"], dict) else json.loads(meta["training"])
    assert {k: training["fit"][k] for k in chosen} == chosen
    loaded = load_model(path).prior
    assert {k: loaded.fit[k] for k in chosen} == chosen
    assert loaded.trees.metadata()["n_trees"] <= chosen["max_iter"]
