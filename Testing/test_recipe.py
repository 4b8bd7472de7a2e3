"""The recommended recipe's two choices: a two-stage (auto-context) prior, and a CNN stage trained only when a
held-out pair can judge it (``t1tot2 train --prior-stages``, ``--correction``), as a user drives them."""

import json

import numpy as np
import pytest

from T1ToT2Lib.cli import main
from T1ToT2Lib.io.files import read_volume, write_volume
from T1ToT2Lib.networks.modelfile import load_model, read_metadata
from T1ToT2Lib.phantom import render as P
from T1ToT2Lib.training.presets import RECOMMENDED, training_defaults


def _coarse(seed, voxel):
    acq = P.Acquisition(voxel_mm=voxel, fov_mm=(240.0, 48.0, 120.0))
    return P.make_phantom("small", seed=seed, acquisition=acq)


#: Small tree ensembles (conftest): these tests check what is trained and written, not the trees' quality.
pytestmark = pytest.mark.usefixtures("few_trees")


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    """One subject's left hand (training) and right hand (validation) at 3 mm, and a second subject at 2.5 mm."""
    folder = tmp_path_factory.mktemp("hands")
    for name, (seed, voxel) in {"a": (1, (3.0, 3.0, 3.0)), "b": (2, (2.5, 2.5, 2.5))}.items():
        vols = _coarse(seed, voxel)
        for side in ("left", "right"):
            for kind in ("t1", "t2"):
                write_volume(vols[f"{side}_{kind}"], folder / f"{name}_{side}_{kind}.nii.gz")
    return folder


def _train(hands, out, *extra):
    return main(["train", "--t1", str(hands / "a_left_t1.nii.gz"), "--t2", str(hands / "a_left_t2.nii.gz"),
                 "--out", str(out), "--progress", "none", *extra])


def test_the_recommended_recipe_is_two_stages_and_a_judged_cnn():
    assert RECOMMENDED["training"]["prior_stages"] == 2 and RECOMMENDED["training"]["correction"] == "auto"
    assert training_defaults("refiner")["correction"] == "auto"
    assert training_defaults("pix2pix")["correction"] == "train"  # the GANs have no prior to fall back on


def test_one_pair_alone_gives_the_trees_and_says_why(hands, tmp_path, capsys):
    """No held-out pair: no epoch runs, the CNN's head is zero, so the synthetic is the trees' prior exactly."""
    import torch

    from T1ToT2Lib.inference.preprocess import n4_correct
    from T1ToT2Lib.inference.slices import foreground_scale
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    out = tmp_path / "m.safetensors"
    assert _train(hands, out) == 0
    meta = read_metadata(out)
    assert meta["correction"]["trained"] is False and "held-out" in meta["correction"]["reason"]
    assert meta["training"]["epochs"] == 0 and meta["training"]["prior_stages"] == 2
    assert meta["prior"]["context"]["n_trees"] >= 1  # the auto-context stage is in the file
    assert not (tmp_path / "m.checkpoints").exists()  # no epoch, no checkpoint
    model = load_model(out)
    head = torch.cat([model.generator.head.weight.flatten(), model.generator.head.bias.flatten()])
    assert torch.count_nonzero(head) == 0
    t1 = read_volume(hands / "a_right_t1.nii.gz")
    synthetic = synthesize_volume(str(out), t1, plane="fuse")
    corrected = n4_correct(t1).array  # the recipe's trees learnt N4-corrected T1s, and synthesis corrects its T1
    normalised = corrected / np.float32(foreground_scale(corrected, model.t1_percentile))
    prior = model.prior.predict_volume(normalised) * model.t2_scale
    np.testing.assert_allclose(synthetic.array, np.maximum(prior, 0), rtol=1e-4, atol=1e-3 * float(prior.max()))


def test_trees_that_no_cnn_will_correct_are_fitted_once_and_are_the_same_trees(hands, tmp_path, monkeypatch):
    """The out-of-fold training prior is what the CNN learns from; with no CNN to train (one pair, ``auto``) the
    two cross-fitted context stages are not fitted: five tree fits (first stage, its two folds that give the context
    stage its input, context stage, error trees) instead of seven, and the model's trees are the same trees."""
    from T1ToT2Lib.networks import feature_regression

    fits = []
    real = feature_regression._fit_trees

    def counting(X, y, seed, fit):
        fits.append(len(y))
        return real(X, y, seed, fit)

    monkeypatch.setattr(feature_regression, "_fit_trees", counting)
    alone, trained = tmp_path / "alone.safetensors", tmp_path / "trained.safetensors"
    assert _train(hands, alone) == 0
    assert len(fits) == 5, fits
    fits.clear()
    assert _train(hands, trained, "--correction", "train", "--epochs", "1", "--epochs-decay", "0",
                  "--max-steps-per-epoch", "1", "--batch-size", "2") == 0
    assert len(fits) == 7, fits
    t1 = read_volume(hands / "a_right_t1.nii.gz").array / np.float32(10.0)
    np.testing.assert_array_equal(load_model(alone).prior.predict_volume(t1), load_model(trained).prior.predict_volume(t1))


def test_the_recipe_corrects_the_t1s_coil_field_in_training_and_in_synthesis(hands, tmp_path):
    """N4 on every T1 is the refiner's default: the model file says so and synthesis corrects its T1 the same way, so
    a smooth coil field on the T1 (the physics a correction is for) moves the synthetic T2 far less than it moves
    that of trees fitted on uncorrected T1s."""
    from T1ToT2Lib.inference.preprocess import model_preprocessing, n4_correct
    from T1ToT2Lib.inference.slices import foreground_threshold
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    corrected, plain = tmp_path / "n4.safetensors", tmp_path / "plain.safetensors"
    assert _train(hands, corrected) == 0 and _train(hands, plain, "--n4", "none") == 0
    assert model_preprocessing(read_metadata(corrected))["n4"] is True
    assert model_preprocessing(read_metadata(plain))["n4"] is False
    t1 = read_volume(hands / "a_right_t1.nii.gz")
    inside = t1.array > foreground_threshold(t1.array)
    synthetic = synthesize_volume(str(corrected), t1, plane="fuse").array
    # An already corrected T1 is not corrected twice, and gives the same synthetic.
    np.testing.assert_allclose(synthesize_volume(str(corrected), n4_correct(t1), plane="fuse").array, synthetic,
                               rtol=1e-5, atol=1e-3)
    field = P.bias_field(t1.shape, np.random.default_rng(3), amplitude=0.3)
    shaded = t1.with_array(t1.array * field)

    def moved(model, unshaded):
        return float(np.abs(synthesize_volume(str(model), shaded, plane="fuse").array - unshaded)[inside].mean())

    assert moved(corrected, synthetic) < 0.5 * moved(plain, synthesize_volume(str(plain), t1, plane="fuse").array)


def test_n4_of_both_volumes_keeps_the_synthetic_t2_at_the_acquired_t2s_level(hands, tmp_path, monkeypatch):
    """``--n4 both`` (a bare ``--n4``) trains on corrected T2s too; a correction removes a field, not the scale, so
    the synthetic T2 of the other hand keeps the acquired T2's level (24% above it while N4's field kept its own
    level).  Trees of 60 iterations: the 8 of ``few_trees`` stop short of the T2's level."""
    from T1ToT2Lib.inference.slices import foreground_threshold
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.networks import feature_regression

    monkeypatch.setitem(feature_regression.DEFAULT_FIT, "max_iter", 60)
    monkeypatch.setitem(feature_regression.DEFAULT_FIT, "learning_rate", 0.3)
    out = tmp_path / "both.safetensors"
    assert _train(hands, out, "--n4") == 0
    t1, t2 = read_volume(hands / "a_right_t1.nii.gz"), read_volume(hands / "a_right_t2.nii.gz")
    inside = t1.array > foreground_threshold(t1.array)
    synthetic = synthesize_volume(str(out), t1, plane="fuse")
    assert abs(float(synthetic.array[inside].mean()) / float(t2.array[inside].mean()) - 1.0) < 0.06  # measured 0.027


def test_an_unknown_n4_mode_is_refused_in_one_line(hands, tmp_path, capsys):
    from T1ToT2Lib.core.errors import T1ToT2Error
    from T1ToT2Lib.training.train import TrainConfig, train

    with pytest.raises(SystemExit) as exit_info:
        _train(hands, tmp_path / "m.safetensors", "--n4", "t2")
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(T1ToT2Error, match="unknown N4 mode 'T1': use one of none, t1, both"):
        train(TrainConfig(t1=hands / "a_left_t1.nii.gz", t2=hands / "a_left_t2.nii.gz", out=tmp_path / "m.safetensors",
                          model="refiner", n4="T1"))
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("option", [["--epochs", "3"], ["--lr", "1e-3"], ["--max-steps-per-epoch", "2"], ["--resume"]])
def test_cnn_options_without_a_cnn_are_refused_in_one_line(hands, tmp_path, capsys, option):
    out = tmp_path / "m.safetensors"
    assert _train(hands, out, *option) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option[0] in err and "--correction train" in err, err
    assert not out.exists()


def test_gan_options_refuse_the_refiners_recipe(hands, tmp_path, capsys):
    assert _train(hands, tmp_path / "m.safetensors", "--model", "pix2pix", "--prior-stages", "2") == 2
    assert "refiner only" in capsys.readouterr().err


@pytest.mark.slow
def test_a_validation_pair_trains_the_cnn_and_judges_it(hands, tmp_path):
    """With --val-t1/--val-t2 on one pair the CNN trains and the gate scores it against its own trees on that pair;
    the record's numbers are the validation pair's, scored again here by the metrics module."""
    from T1ToT2Lib.core.metrics import evaluate_volumes
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    out = tmp_path / "m.safetensors"
    assert _train(hands, out, "--val-t1", str(hands / "a_right_t1.nii.gz"), "--val-t2", str(hands / "a_right_t2.nii.gz"),
                  "--epochs", "1", "--epochs-decay", "0", "--max-steps-per-epoch", "3", "--batch-size", "4") == 0
    meta = read_metadata(out)
    record = meta["correction"]
    assert record["trained"] is not False and isinstance(record["kept"], bool)
    assert meta["training"]["epochs"] == 1
    t1, t2 = read_volume(hands / "a_right_t1.nii.gz"), read_volume(hands / "a_right_t2.nii.gz")
    scored = evaluate_volumes(synthesize_volume(str(out), t1, plane="fuse"), t2)["overall"]["psnr"]["mean"]
    expected = record["refined"]["psnr"] if record["kept"] else record["prior"]["psnr"]
    assert scored == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("stages", [1, 2])
def test_prior_stages_on_two_pairs_of_different_grids(hands, tmp_path, stages):
    """Two subjects on their own grids: the auto-context stage is fitted (or not) over both, and the model
    synthesises a third grid."""
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    out = tmp_path / "m.safetensors"
    assert main(["train", "--t1", str(hands / "a_left_t1.nii.gz"), "--t2", str(hands / "a_left_t2.nii.gz"),
                 "--t1", str(hands / "b_left_t1.nii.gz"), "--t2", str(hands / "b_left_t2.nii.gz"),
                 "--prior-stages", str(stages), "--correction", "none", "--out", str(out), "--progress", "none"]) == 0
    meta = read_metadata(out)
    assert ("context" in meta["prior"]) is (stages == 2)
    other = _coarse(3, (2.0, 3.0, 2.5))["right_t1"]
    synthetic = synthesize_volume(str(out), other, plane="fuse")
    assert synthetic.same_geometry(other, tol=1e-6) and np.isfinite(synthetic.array).all()


def test_the_two_stage_training_prior_of_a_pair_comes_from_trees_that_never_saw_it(monkeypatch):
    """Out-of-fold by pair, for both stages: every tree fit that predicts pair n's training prior (its first-stage
    estimate and its context stage) saw none of pair n's voxels."""
    from T1ToT2Lib.networks import feature_regression
    from T1ToT2Lib.networks.features import check_spec
    from T1ToT2Lib.training import prior as prior_module

    pairs = [(v["left_t1"], v["left_t2"]) for v in (_coarse(s, (3.0, 3.0, 3.0)) for s in (1, 2, 3))]
    fits = []
    real = feature_regression._fit_trees

    def recording(X, y, seed, fit):
        trees = real(X, y, seed, fit)
        fits.append((len(y), trees))
        return trees

    monkeypatch.setattr(feature_regression, "_fit_trees", recording)
    rows, _, _ = prior_module._sampled_rows(pairs, check_spec(None), 20_000, 0, 50.0)
    counts = [len(r[1]) for r in rows]
    regressor, priors = prior_module.fit_prior_pairs(pairs, 0, 50.0, cross_fit=True, fit={"context_stage": True})
    assert regressor.context_trees is not None and len(priors) == 3
    sizes = [n for n, _ in fits]
    # all voxels (first stage), then folds {0, 2} and {1} each fitted without the other, twice (per stage)
    fold_sizes = {counts[1], counts[0] + counts[2]}
    assert sizes[0] == sum(counts) and set(sizes[1:3]) == fold_sizes and sizes[3] == sum(counts)
    assert set(sizes[-2:]) == fold_sizes
    for prior, (t1, _) in zip(priors, pairs):
        assert prior.shape == t1.shape and np.isfinite(prior).all()


def test_validation_scores_the_held_out_pair_with_one_prior_estimate(hands, tmp_path, monkeypatch):
    """The trees do not change while the CNN trains: the validation T1's prior is estimated once for every epoch's
    score and the gate, not once per epoch (on a 0.8 mm held-out hand that estimate is most of an epoch)."""
    from T1ToT2Lib.networks.feature_regression import FeatureRegressor

    val_shape = read_volume(hands / "b_right_t1.nii.gz").shape
    calls = []
    real = FeatureRegressor.predict_volume

    def counting(self, normalised_t1, *args, **kwargs):
        calls.append(tuple(np.shape(normalised_t1)))
        return real(self, normalised_t1, *args, **kwargs)

    monkeypatch.setattr(FeatureRegressor, "predict_volume", counting)
    out = tmp_path / "m.safetensors"
    assert _train(hands, out, "--val-t1", str(hands / "b_right_t1.nii.gz"), "--val-t2", str(hands / "b_right_t2.nii.gz"),
                  "--epochs", "2", "--epochs-decay", "1", "--max-steps-per-epoch", "1", "--batch-size", "2") == 0
    meta = read_metadata(out)
    assert len(meta["training"]["losses"]) >= 1 and meta["correction"]["trained"] is not False
    assert calls.count(tuple(val_shape)) == 1, calls


def test_the_training_panel_says_what_became_of_the_cnn_stage(hands, tmp_path, capsys):
    """The events ``t1tot2 train --progress json`` prints (what the Slicer job reads) tell the panel's status line."""
    from T1ToT2Lib.slicer import panel

    assert main(["train", "--t1", str(hands / "a_left_t1.nii.gz"), "--t2", str(hands / "a_left_t2.nii.gz"),
                 "--out", str(tmp_path / "m.safetensors"), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "correction" for e in events)
    outcome = panel.cnn_stage_outcome(events)
    assert outcome.startswith("CNN stage not trained") and "held-out" in outcome
    assert panel.cnn_stage_outcome([{"event": "gate", "kept": False}]).startswith("CNN stage not kept")


def test_several_pairs_sample_the_air_that_the_air_rule_leaves_to_the_trees():
    """The trees learn from the hand and a 2-voxel rim; the air rule takes only voxels with no tissue within its cube.
    The air between is sampled too, so the trees have seen what they will be asked there (a model fitted without it
    brightened that air): each pair's rows include voxels outside its mask, all of them where the air rule (at half
    its level, as pooling the pairs' rules lowers it) leaves them to the trees."""
    from T1ToT2Lib.networks.features import check_spec
    from T1ToT2Lib.training import prior as prior_module

    pairs = [(v["left_t1"], v["left_t2"]) for v in (_coarse(s, (3.0, 3.0, 3.0)) for s in (1, 2))]
    rows, airs, _ = prior_module._sampled_rows(pairs, check_spec(None), 20_000, 0, 50.0)
    assert len(airs) == len(pairs)
    for (t1, t2), (X, _, take), air in zip(pairs, rows, airs):
        mask = prior_module.pair_scales(t1, t2, 50.0)[2].ravel()
        outside = ~mask[take]
        assert 0 < outside.sum() <= 0.1 * (~outside).sum() + 1
        assert np.all(X[outside, air.feature] >= 0.5 * air.level)


def test_the_demos_trees_baseline_is_its_model_when_the_model_is_its_trees(tmp_path):
    """On one hand the demo's model is its trees, and its 'feature-regression baseline' row is those trees saved alone:
    the two rows must agree.  The trees learnt N4-corrected T1s, so the baseline's file must say so (before it did,
    the baseline ran them on an uncorrected T1, 0.09 dB below the model with the default fit)."""
    from T1ToT2Lib.inference.preprocess import model_preprocessing
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.research import demo

    data = demo._phantom(tmp_path, "small", 0)
    model_path, _, _ = demo._train(tmp_path, data, None, "cpu", 0)
    synthetic, error_map = synthesize_volume(model_path, data["right_t1"], plane=RECOMMENDED["synthesis_plane"],
                                             device="cpu", uncertainty=True)
    results, _, _ = demo._evaluate(tmp_path, data, model_path, synthetic, error_map, "cpu", 0)
    assert model_preprocessing(read_metadata(tmp_path / "feature_baseline.safetensors"))["n4"] is True
    for metric in ("psnr", "ssim", "nrmse"):
        assert results["feature-regression baseline"]["overall"][metric]["mean"] == pytest.approx(
            results["recommended"]["overall"][metric]["mean"], rel=1e-4)
