"""Feature regression (boosted trees on multi-scale T1 features) and the refiner network built on it."""

import json

import numpy as np
import pytest
import torch

from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.feature_regression import FeatureRegressor, TreeEnsemble, fit_feature_regressor
from T1ToT2Lib.networks.features import DEFAULT_SPEC, feature_names, feature_slabs, feature_volume, margin

CHEAP_FIT = {"max_iter": 30, "max_samples": 20_000}


@pytest.fixture
def quicker_trees(monkeypatch):
    """A third of the default fit's trees at a larger rate, on fewer voxels: the tests that compare the trees with
    another method keep their margins at a quarter of the fitting time."""
    from T1ToT2Lib.networks import feature_regression

    for key, value in {"max_iter": 120, "learning_rate": 0.25, "max_samples": 60_000}.items():
        monkeypatch.setitem(feature_regression.DEFAULT_FIT, key, value)


@pytest.fixture(scope="module")
def fitted_sklearn():
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.normal(size=len(X))
    model = HistGradientBoostingRegressor(loss="absolute_error", max_iter=40, early_stopping=False, random_state=0).fit(X, y)
    return model, rng.normal(size=(2500, 5)).astype(np.float32)


@pytest.mark.parametrize("engine", ["sklearn", "numpy"])
def test_stored_trees_predict_exactly_what_scikit_learn_predicts(fitted_sklearn, engine):
    model, X = fitted_sklearn
    trees = TreeEnsemble.from_sklearn(model)
    again = TreeEnsemble.from_tensors(trees.to_tensors("t"), "t", trees.metadata(), 5)
    np.testing.assert_allclose(again.predict(X, engine=engine), model.predict(X), rtol=0, atol=1e-9)


@pytest.mark.parametrize("damage", ["child", "feature", "offsets", "missing"])
def test_damaged_tree_arrays_are_refused_in_one_line(fitted_sklearn, damage):
    model, _ = fitted_sklearn
    trees = TreeEnsemble.from_sklearn(model)
    tensors = trees.to_tensors("t")
    internal = int(np.flatnonzero(trees.fields["is_leaf"] == 0)[0])
    if damage == "child":
        tensors["t.left"][internal] = 10_000_000
    elif damage == "feature":
        tensors["t.feature_idx"][internal] = 99
    elif damage == "offsets":
        tensors["t.offsets"][-1] += 5
    else:
        del tensors["t.value"]
    with pytest.raises(T1ToT2Error) as info:
        TreeEnsemble.from_tensors(tensors, "t", trees.metadata(), 5)
    assert "damaged" in str(info.value) and "\n" not in str(info.value)


def test_features_are_the_named_scipy_filters_and_slabs_match_the_whole_volume():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    x = ndimage.gaussian_filter(rng.random((70, 23, 31)).astype(np.float32), 1.5)
    whole = feature_volume(x)
    names = feature_names()
    assert whole.shape == x.shape + (len(names),)
    np.testing.assert_array_equal(whole[..., names.index("intensity")], x)
    np.testing.assert_allclose(whole[..., names.index("gaussian_2.0")], ndimage.gaussian_filter(x, 2.0), atol=1e-6)
    np.testing.assert_array_equal(whole[..., names.index("maximum_5")], ndimage.maximum_filter(x, 5))
    # The edge-preserving ones: a Gaussian along one array axis only, and the median over a cube.
    np.testing.assert_allclose(whole[..., names.index("line_2.0_axis1")], ndimage.gaussian_filter(x, (0, 2.0, 0)), atol=1e-6)
    np.testing.assert_array_equal(whole[..., names.index("median_3")], ndimage.median_filter(x, 3))
    # Slabs of 16 slices with their margins give the same features as filtering the whole volume at once.
    for k0, k1, block in feature_slabs(x, DEFAULT_SPEC, slab=16):
        np.testing.assert_allclose(block, whole[k0:k1], atol=1e-5)


def test_model_files_from_before_the_line_and_median_features_keep_their_33_features():
    from T1ToT2Lib.networks.features import check_spec

    before = {key: DEFAULT_SPEC[key] for key in ("gaussian_scales", "extreme_sizes", "texture_scales")}
    names = feature_names(check_spec(before))
    assert len(names) == 33 and not any(n.startswith(("line_", "median_")) for n in names)
    assert len(feature_names()) == 33 + 3 * len(DEFAULT_SPEC["line_scales"]) + len(DEFAULT_SPEC["median_sizes"])


def test_trees_predict_the_mean_where_the_t2_is_uncertain():
    """Squared-error trees: where one feature value leads to T2 0 or 1 (30% of the time) they predict 0.3,
    the value with the least squared error (absolute-error trees would predict the median, 0)."""
    from T1ToT2Lib.networks.feature_regression import DEFAULT_FIT, _fit_trees

    rng = np.random.default_rng(2)
    X = rng.integers(0, 2, size=(20_000, 1)).astype(np.float32)
    y = np.where(X[:, 0] == 1, rng.random(len(X)) < 0.3, 0.5).astype(np.float32)
    trees = _fit_trees(X, y, 0, {**DEFAULT_FIT, "max_iter": 50})
    assert abs(trees.predict(np.array([[1.0]], np.float32))[0] - np.mean(y[X[:, 0] == 1])) < 0.01
    assert abs(trees.predict(np.array([[0.0]], np.float32))[0] - 0.5) < 0.01


def test_each_split_of_the_default_fit_draws_a_subset_of_the_features():
    """``max_features``: a split may only choose among a random fifth of the features (as a random forest draws
    them), so a strong feature cannot win every split; with all features drawn every tree's root splits on it."""
    from T1ToT2Lib.networks.feature_regression import DEFAULT_FIT, _fit_trees

    rng = np.random.default_rng(3)
    X = rng.normal(size=(5000, 10)).astype(np.float32)
    y = (3 * X[:, 0] + 0.1 * X[:, 1:].sum(1)).astype(np.float32)
    cheap = {**DEFAULT_FIT, "max_iter": 25, "early_stopping": False}

    def roots(fit):
        trees = _fit_trees(X, y, 0, fit)
        return trees.fields["feature_idx"][trees.offsets[:-1]]

    assert np.all(roots({**cheap, "max_features": 1.0}) == 0)
    subsampled = roots(cheap)
    assert 0 < DEFAULT_FIT["max_features"] < 1 and np.any(subsampled != 0) and np.any(subsampled == 0)


def test_error_trees_that_read_only_the_features_still_load_and_predict(hands):
    """Model files written before the error trees read the T2 estimate as a column keep their error maps."""
    import dataclasses

    from T1ToT2Lib.inference.slices import foreground_scale
    from T1ToT2Lib.networks.feature_regression import DEFAULT_FIT, _fit_trees

    x = hands["left_t1"].array / np.float32(foreground_scale(hands["left_t1"].array))
    y = hands["left_t2"].array / np.float32(foreground_scale(hands["left_t2"].array))
    mask = hands["left_labels"].array > 0
    regressor, _ = fit_feature_regressor(x, y, mask, fit=CHEAP_FIT)
    assert regressor.error_reads_estimate and regressor.error_trees.n_features == len(feature_names()) + 1
    X = feature_volume(x).reshape(-1, len(feature_names()))
    rows = np.flatnonzero(mask.ravel())[::5]
    older = dataclasses.replace(regressor, error_trees=_fit_trees(X[rows], np.abs(y.ravel()[rows] - 0.5), 0, {**DEFAULT_FIT, **CHEAP_FIT}))
    again = FeatureRegressor.from_tensors(older.to_tensors(), json.loads(json.dumps(older.metadata())))
    assert not again.error_reads_estimate
    _, error = again.predict_volume(x, with_error=True)
    expected = np.maximum(again.predict_rows(X, again.error_trees, error=True), 0).reshape(x.shape)
    np.testing.assert_allclose(error, expected, rtol=1e-6)
    assert error[mask].std() > 0


@pytest.fixture(scope="module")
def hands():
    from T1ToT2Lib.phantom.render import make_phantom

    return make_phantom("small", seed=0)


def test_feature_baseline_round_trips_through_its_model_file_and_beats_the_look_up(hands, tmp_path, quicker_trees):
    from T1ToT2Lib.research import analysis
    from T1ToT2Lib.core import metrics
    from T1ToT2Lib.networks.modelfile import load_model, read_metadata
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    path = tmp_path / "trees.safetensors"
    analysis.save_feature_baseline(path, hands["left_t1"], hands["left_t2"], seed=0)
    meta = read_metadata(path)
    assert meta["config"]["arch"] == "feature_regression" and meta["prior"]["n_trees"] > 0
    # A safetensors file: header JSON plus raw tensors, read without unpickling.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert all(k.startswith("prior.") for k in f.keys())
    loaded = load_model(path)
    synthetic = synthesize_volume(loaded, hands["right_t1"], plane="axial")
    assert synthetic.same_geometry(hands["right_t1"], tol=0) and synthetic.meta["synthetic"]
    # What the file predicts is the regressor applied to the T1 normalised as the file records, in T2 units.
    from T1ToT2Lib.inference.slices import foreground_scale

    x = hands["right_t1"].array / np.float32(foreground_scale(hands["right_t1"].array, loaded.t1_percentile))
    direct = np.maximum(loaded.prior.predict_volume(x) * loaded.t2_scale, 0)
    np.testing.assert_allclose(synthetic.array, direct, rtol=1e-5, atol=1e-2)

    mask = metrics.foreground_mask(hands["right_labels"])
    lookup = synthesize_volume(analysis.save_lookup_model(tmp_path / "lut.safetensors", hands["left_t1"], hands["left_t2"],
                                                          mask=hands["left_labels"].array > 0), hands["right_t1"])
    trees_score = metrics.evaluate_volumes(synthetic, hands["right_t2"], mask=mask)["overall"]
    lookup_score = metrics.evaluate_volumes(lookup, hands["right_t2"], mask=mask)["overall"]
    assert trees_score["psnr"]["mean"] > lookup_score["psnr"]["mean"] + 3
    assert trees_score["ssim"]["mean"] > lookup_score["ssim"]["mean"]


def test_cross_fitted_training_prior_is_out_of_fold(hands):
    """Each fold of the training volume is predicted by trees that never saw it: its error is larger than in-sample."""
    from T1ToT2Lib.inference.slices import foreground_scale

    t1, t2 = hands["left_t1"].array, hands["left_t2"].array
    x, y = t1 / foreground_scale(t1), t2 / foreground_scale(t2)
    mask = hands["left_labels"].array > 0
    regressor, in_sample = fit_feature_regressor(x, y, mask, fit=CHEAP_FIT)
    _, out_of_fold = fit_feature_regressor(x, y, mask, fit=CHEAP_FIT, cross_fit=True)
    in_error = np.abs(in_sample - y)[mask].mean()
    out_error = np.abs(out_of_fold - y)[mask].mean()
    assert out_error > in_error
    assert isinstance(regressor, FeatureRegressor)


def test_the_out_of_fold_prior_errs_on_the_training_hand_as_the_trees_err_on_the_other_hand(hands):
    """The out-of-fold estimate is there to err as the final trees err on a new hand (the auto-context stage and the
    CNN learn from it).  Its folds must each see the whole hand: trees fitted on the wrist half and asked for the
    fingers err a third more than the final trees err on the other hand, which the stage after them then corrects
    for."""
    from T1ToT2Lib.inference.slices import foreground_scale
    from T1ToT2Lib.networks.feature_regression import fold_slabs

    def normalised(name):
        array = hands[name].array
        return array / np.float32(foreground_scale(array))

    x, y = normalised("left_t1"), normalised("left_t2")
    mask, right_mask = hands["left_labels"].array > 0, hands["right_labels"].array > 0
    regressor, out_of_fold = fit_feature_regressor(x, y, mask, fit=CHEAP_FIT, cross_fit=True)
    on_the_other_hand = np.abs(regressor.predict_volume(normalised("right_t1")) - normalised("right_t2"))[right_mask].mean()
    assert 0.85 < np.abs(out_of_fold - y)[mask].mean() / on_the_other_hand < 1.2
    folds = fold_slabs(x.shape[0])
    covered = sorted(span for spans in folds for span in spans)
    assert covered[0][0] == 0 and covered[-1][1] == x.shape[0]
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))  # every slice in exactly one fold
    extents = [(spans[0][0], spans[-1][1]) for spans in folds]
    assert all(stop - start > 0.8 * x.shape[0] for start, stop in extents)  # each fold spans the hand's length


def test_trees_are_skipped_only_in_air_far_from_the_hand(hands):
    """The air rule never changes a prediction near the hand, and gives air the acquired air's level."""
    import dataclasses

    from scipy import ndimage

    from T1ToT2Lib.inference.slices import foreground_scale

    def normalised(name):
        array = hands[name].array
        return array / np.float32(foreground_scale(array))

    mask = ndimage.binary_dilation(hands["left_labels"].array > 0, iterations=2)
    regressor, _ = fit_feature_regressor(normalised("left_t1"), normalised("left_t2"), mask, fit=CHEAP_FIT)
    assert regressor.air is not None
    x = normalised("right_t1")
    with_air = regressor.predict_volume(x)
    everywhere = dataclasses.replace(regressor, air=None).predict_volume(x)
    hand = hands["right_labels"].array > 0
    near = ndimage.binary_dilation(hand, iterations=3)
    np.testing.assert_array_equal(with_air[near], everywhere[near])
    assert (with_air != everywhere).mean() > 0.2  # a real saving: a fifth of the volume or more is air
    far = ~ndimage.binary_dilation(hand, iterations=10)
    assert abs(regressor.air.value - float(np.median(normalised("right_t2")[far]))) < 0.005
    again = FeatureRegressor.from_tensors(regressor.to_tensors(), json.loads(json.dumps(regressor.metadata())))
    assert again.air == regressor.air
    damaged = {**regressor.metadata(), "air": {**regressor.air.metadata(), "feature": 999}}
    with pytest.raises(T1ToT2Error, match="air settings are out of range"):
        FeatureRegressor.from_tensors(regressor.to_tensors(), damaged)


def test_trees_fitted_on_one_hand_learn_the_air_beside_it(hands):
    """The trees are fitted on the hand and a 2-voxel rim, and the air rule takes only voxels with nothing bright
    within its cube: the air between is what the trees are asked about without having seen it unless it is sampled
    too.  Fitted on one hand, the air 3 to 12 voxels from the other hand comes out at the acquired air's level."""
    from scipy import ndimage

    from T1ToT2Lib.inference.slices import foreground_scale

    def normalised(name):
        array = hands[name].array
        return array / np.float32(foreground_scale(array))

    mask = ndimage.binary_dilation(hands["left_labels"].array > 0, iterations=2)
    regressor, _ = fit_feature_regressor(normalised("left_t1"), normalised("left_t2"), mask, fit=CHEAP_FIT)
    hand = hands["right_labels"].array > 0
    beside = ndimage.binary_dilation(hand, iterations=12) & ~ndimage.binary_dilation(hand, iterations=3)
    synthetic, acquired = regressor.predict_volume(normalised("right_t1"))[beside], normalised("right_t2")[beside]
    assert synthetic.mean() < 3 * acquired.mean(), (synthetic.mean(), acquired.mean())  # 7-8 times before


def test_an_untrained_refiner_returns_its_prior_and_its_model_file_carries_the_trees(hands, tmp_path):
    from T1ToT2Lib import networks

    config = networks.default_config("refiner", in_channels=3, ngf=8, n_layers=3)
    generator = networks.build_generator(config)
    x = torch.rand(2, 6, 20, 24)
    np.testing.assert_array_equal(generator(x).detach().numpy(), x[:, 4:5].numpy())
    assert networks.required_multiple(config) == 1 and networks.uses_prior(config)


def test_a_trained_refiner_corrects_the_object_and_its_rim_and_leaves_the_air_to_the_prior():
    """The CNN's L1 loss covers the object and a 2-pixel rim around it, so its correction is trained there only:
    elsewhere the output is the prior exactly, whatever the head learnt (before, an untrained correction in the air
    made a held-out volume worse where nobody had asked the CNN anything)."""
    from scipy import ndimage

    from T1ToT2Lib import networks

    config = networks.default_config("refiner", in_channels=3, ngf=8, n_layers=3)
    generator = networks.build_generator(config).eval()
    torch.nn.init.normal_(generator.head.weight)
    torch.nn.init.constant_(generator.head.bias, 0.3)
    x = torch.rand(1, 6, 40, 44) * 0.01  # T1 and prior slices at the air's normalised level
    x[:, :, 10:20, 12:22] = 0.5
    x[:, :, 30, 35] = 0.5  # one voxel of object alone
    prior = x[0, 4].numpy()
    changed = (generator(x)[0, 0].detach().numpy() != prior)
    region = ndimage.binary_dilation(prior > 0.05, structure=np.ones((5, 5), bool))
    assert not changed[~region].any()
    assert changed[region].mean() > 0.99


@pytest.mark.slow
def test_a_short_refiner_training_beats_the_look_up_baseline(hands, tmp_path, quicker_trees):
    """Acceptance: one short training run beats the look-up baseline on PSNR and SSIM (right hand, never seen)."""
    from T1ToT2Lib.research import analysis
    from T1ToT2Lib.core import metrics
    from T1ToT2Lib.networks.modelfile import read_metadata
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.training.train import TrainConfig, train

    out = tmp_path / "refiner.safetensors"
    train(TrainConfig(t1=hands["left_t1"], t2=hands["left_t2"], out=out, model="refiner", context=3,
                      network={"ngf": 8, "n_layers": 4}, planes=("axial",), epochs=1, lr=2e-3, betas=(0.9, 0.999),
                      batch_size=8, max_steps_per_epoch=12, checkpoint_dir=tmp_path / "ck"))
    meta = read_metadata(out)
    assert meta["prior"]["kind"] == "feature_regression" and meta["config"]["arch"] == "refiner"
    synthetic, errors = synthesize_volume(out, hands["right_t1"], plane="axial", uncertainty=True)
    assert errors.same_geometry(hands["right_t1"], tol=0) and np.all(errors.array >= 0)
    mask = metrics.foreground_mask(hands["right_labels"])
    # The error map predicts the synthesis's own error (acquisition noise excluded: against the noise-free T2).
    from scipy.stats import spearmanr

    real_error = np.abs(synthetic.array - hands["right_t2_clean"].array)
    assert spearmanr(errors.array[mask], real_error[mask]).statistic >= 0.5
    lookup = synthesize_volume(analysis.save_lookup_model(tmp_path / "lut.safetensors", hands["left_t1"], hands["left_t2"],
                                                          mask=hands["left_labels"].array > 0), hands["right_t1"])
    ours = metrics.evaluate_volumes(synthetic, hands["right_t2"], mask=mask)["overall"]
    base = metrics.evaluate_volumes(lookup, hands["right_t2"], mask=mask)["overall"]
    assert ours["psnr"]["mean"] > base["psnr"]["mean"] and ours["ssim"]["mean"] > base["ssim"]["mean"]
    json.dumps(meta["prior"])  # metadata is plain JSON


@pytest.mark.slow
def test_auto_context_stage_from_the_command_line_round_trips_and_beats_one_stage(hands, tmp_path, quicker_trees):
    """`analyze feature-baseline --auto-context`: a second stage of trees reads features of the first
    stage's T2 estimate; its model file predicts what the fitted regressor predicts, and on the right
    hand (never seen) it beats the one-stage trees on PSNR and NRMSE."""
    from T1ToT2Lib.core import metrics
    from T1ToT2Lib.cli import main
    from T1ToT2Lib.networks.modelfile import load_model, read_metadata
    from T1ToT2Lib.inference.synthesize import synthesize_volume
    from T1ToT2Lib.io.files import write_volume

    paths = {}
    for name in ("left_t1", "left_t2"):
        paths[name] = write_volume(hands[name], tmp_path / f"{name}.nii.gz")
    for flag, out in (([], "one.safetensors"), (["--auto-context"], "two.safetensors")):
        assert main(["analyze", "feature-baseline", str(paths["left_t1"]), str(paths["left_t2"]), str(tmp_path / out), *flag]) == 0
    meta = read_metadata(tmp_path / "two.safetensors")["prior"]
    assert "context" not in read_metadata(tmp_path / "one.safetensors")["prior"]
    assert meta["context"]["n_features"] == meta["n_features"] + len(feature_names(meta["context"]["features"]))
    mask = metrics.foreground_mask(hands["right_labels"])
    scores = {}
    for out in ("one.safetensors", "two.safetensors"):
        synthetic = synthesize_volume(tmp_path / out, hands["right_t1"], plane="axial")
        scores[out] = metrics.evaluate_volumes(synthetic, hands["right_t2"], mask=mask)["overall"]
    assert scores["two.safetensors"]["psnr"]["mean"] > scores["one.safetensors"]["psnr"]["mean"] + 0.3
    assert scores["two.safetensors"]["nrmse"]["mean"] < scores["one.safetensors"]["nrmse"]["mean"]
    # The stored stage is the fitted one: reloading gives the same volume; a damaged feature count is refused.
    loaded = load_model(tmp_path / "two.safetensors")
    prior = loaded.prior
    again = FeatureRegressor.from_tensors(prior.to_tensors(), json.loads(json.dumps(prior.metadata())))
    x = hands["right_t1"].array[:20] / np.float32(300)
    np.testing.assert_array_equal(again.predict_volume(x), prior.predict_volume(x))
    damaged = {**prior.metadata(), "context": {**prior.metadata()["context"], "n_features": 7}}
    with pytest.raises(T1ToT2Error, match="auto-context"):
        FeatureRegressor.from_tensors(prior.to_tensors(), damaged)


def _smooth_field(spacing_mm: float, shape_mm=(60.0, 48.0, 54.0)) -> np.ndarray:
    """One smooth analytic field (a sum of broad Gaussian blobs, mm) sampled at voxel centres ``spacing_mm`` apart."""
    axes = [np.arange(int(round(n / spacing_mm))) * spacing_mm for n in shape_mm]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    field = np.zeros(z.shape)
    for (cz, cy, cx), width, amplitude in (((30, 24, 27), 9.0, 1.0), ((18, 30, 20), 6.0, 0.6), ((42, 16, 36), 7.5, -0.4)):
        field += amplitude * np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return field.astype(np.float32)


def test_zoom_one_is_the_unzoomed_features_exactly():
    from scipy import ndimage

    x = ndimage.gaussian_filter(np.random.default_rng(2).random((30, 20, 24)).astype(np.float32), 1.0)
    np.testing.assert_array_equal(feature_volume(x, zoom=(1.0, 1.0, 1.0)), feature_volume(x))
    assert margin(zoom=(1.0, 1.0, 1.0)) == margin() and margin(zoom=2.0) > margin()


@pytest.mark.parametrize("fine_mm", [0.75, 0.5])
def test_zoomed_features_of_a_finer_sampling_are_the_same_lengths_in_mm(fine_mm):
    """The same physical field sampled at 1.5 mm and at a finer voxel: with zoom = 1.5 / fine, each Gaussian feature
    (smoothing, gradient and Laplacian per 1.5 mm voxel, Hessian extremes, line smoothings) agrees at the shared points.
    Unzoomed, the fine sampling's scales are shorter in mm and its derivatives per voxel smaller: they disagree."""
    coarse, fine = _smooth_field(1.5), _smooth_field(fine_mm)
    step = int(round(1.5 / fine_mm))
    names = feature_names()
    a = feature_volume(coarse)
    b = feature_volume(fine, zoom=1.5 / fine_mm)[::step, ::step, ::step][: coarse.shape[0], : coarse.shape[1], : coarse.shape[2]]
    plain = feature_volume(fine)[::step, ::step, ::step][: coarse.shape[0], : coarse.shape[1], : coarse.shape[2]]
    inner = (slice(12, -12),) * 3  # away from the "reflect" borders, whose reach differs in mm
    for name in ("gaussian_2.0", "gradient_2.0", "laplacian_2.0", "gaussian_4.0", "gradient_1.0", "hessian_max_2.0",
                 "hessian_min_2.0", "line_2.0_axis1"):
        f = names.index(name)
        scale = float(np.abs(a[inner + (f,)]).max())
        assert np.abs(b[inner + (f,)] - a[inner + (f,)]).max() < 0.02 * scale, name
        if name.startswith(("gradient", "laplacian", "hessian")):
            assert np.abs(plain[inner + (f,)] - a[inner + (f,)]).max() > 0.2 * scale, name


def test_anisotropic_zoom_scales_each_axis_on_its_own():
    from scipy import ndimage

    x = np.zeros((21, 21, 21), np.float32)
    x[10, 10, 10] = 1.0
    names = feature_names()
    features = feature_volume(x, zoom=(2.0, 1.0, 0.5))
    np.testing.assert_allclose(features[..., names.index("gaussian_2.0")], ndimage.gaussian_filter(x, (4.0, 2.0, 1.0)), atol=1e-6)
    window = features[..., names.index("maximum_5")]
    assert window[10, 10, 10] == 1.0 and window.sum() == 9 * 5 * 3  # odd windows nearest 10, 5 and 2.5 voxels


def test_two_stage_prediction_does_not_depend_on_the_slab_size(monkeypatch):
    """The T1's and the first estimate's features have different widths, so their own slab sizes differ on large
    volumes (98 and 172 slices on the 0.6 mm phantom); the second stage must read both over the same slices."""
    from scipy import ndimage

    from T1ToT2Lib.networks import features

    rng = np.random.default_rng(3)
    t1 = ndimage.gaussian_filter(rng.random((40, 18, 20)).astype(np.float32), 1.5)
    t2 = np.sqrt(t1) + 0.01 * rng.normal(size=t1.shape).astype(np.float32)
    regressor, _ = fit_feature_regressor(t1, t2, np.ones(t1.shape, bool), fit={**CHEAP_FIT, "context_stage": True})
    whole = regressor.predict_volume(t1, with_error=True)
    per_slice = 18 * 20 * len(feature_names(regressor.context_spec)) * 4
    monkeypatch.setattr(features, "_SLAB_BYTES", 7 * per_slice)  # context slabs of 7 slices, the T1's fewer
    monkeypatch.setattr(features, "_MIN_SLAB", 1)
    assert features.slab_size(t1.shape, regressor.spec) != features.slab_size(t1.shape, regressor.context_spec)
    slabbed = regressor.predict_volume(t1, with_error=True)
    np.testing.assert_allclose(slabbed[0], whole[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(slabbed[1], whole[1], rtol=0, atol=1e-6)
