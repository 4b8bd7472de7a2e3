"""The fast paths give the reference results (no timings here: the bench measures those)."""

import numpy as np
import pytest

from T1ToT2Lib.networks.feature_regression import TreeEnsemble


@pytest.fixture(scope="module")
def fitted():
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 6)).astype(np.float32)
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2] + np.abs(X[:, 3]) + 0.05 * rng.normal(size=len(X))
    model = HistGradientBoostingRegressor(max_iter=60, max_leaf_nodes=63, early_stopping=False, random_state=0).fit(X, y)
    # Rows that sit exactly on the training values, where float32 rounding of a threshold would flip a split.
    test = np.concatenate([X[:30_000], rng.normal(size=(40_000, 6)).astype(np.float32)])
    return model, test


@pytest.mark.parametrize("engine", ["onnxruntime", "numpy", "auto"])
def test_fast_tree_engines_predict_what_scikit_learn_predicts(fitted, engine):
    pytest.importorskip("onnxruntime")
    model, X = fitted
    stored = TreeEnsemble.from_sklearn(model)
    trees = TreeEnsemble.from_tensors(stored.to_tensors("t"), "t", stored.metadata(), 6)  # as a model file holds them
    expected = model.predict(X)
    got = trees.predict(X, engine=engine)
    # Same leaves everywhere: the only difference is the float32 sum of 60 leaf values.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_peak_memory_of_a_fresh_child_is_its_own_and_not_its_parents():
    """A child that allocates 400 MiB reports 400 MiB above its start (within 10%), although this parent
    holds 600 MiB more: getrusage's ru_maxrss would report the parent's high-water mark through exec."""
    from T1ToT2Lib.research.product_bench import run_child

    parent = np.ones(600 * 2**20 // 8)
    parent[::512] += 1.0
    child = run_child("allocate", {"mib": 400})
    grown = child["peak_rss_gb"] - child["rss_after_imports_gb"]
    assert abs(grown - 400 / 1024) <= 0.1 * 400 / 1024, child
    assert child["peak_rss_gb"] < 0.5 + 400 / 1024  # an interpreter with numpy, not the parent's 600 MiB on top
    del parent


def test_slab_tissue_only_prior_equals_every_voxel_through_scikit_learn(monkeypatch):
    """predict_volume (features per slab, trees only where the air rule says tissue, ONNX Runtime in chunks)
    gives what scikit-learn's predictor gives on every voxel's features, with the air's values in air."""
    from scipy import ndimage

    from T1ToT2Lib.networks import feature_regression as fr
    from T1ToT2Lib.networks.features import feature_names, feature_volume

    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    x = np.zeros((40, 36, 40), np.float32)
    x[10:30, 10:26, 10:30] = ndimage.gaussian_filter(rng.random((20, 16, 20)).astype(np.float32), 1.0) * 4 + 0.5  # object in air
    y = np.sqrt(x) + 0.01 * rng.random(x.shape).astype(np.float32)
    regressor, _ = fr.fit_feature_regressor(x, y, x > 0.5, fit={"max_iter": 20, "max_samples": 8000})
    assert regressor.air is not None
    monkeypatch.setattr(fr, "_ROWS_CHUNK", 4096)  # several chunks per slab
    monkeypatch.setattr(fr, "_ONNX_ROWS", 0)  # ONNX Runtime from the first chunk
    events = []
    estimate, error = regressor.predict_volume(x, with_error=True, progress=lambda done, total: events.append((done, total)))
    X = feature_volume(x).reshape(-1, len(feature_names()))
    tissue = regressor.air.tissue(X)
    expected = np.where(tissue, regressor.trees.predict(X, engine="sklearn"), regressor.air.value)
    np.testing.assert_allclose(estimate.ravel(), expected, rtol=1e-6, atol=1e-7)
    extended = np.column_stack([X, expected.astype(np.float32)]).astype(np.float32)
    expected_error = np.where(tissue, np.maximum(regressor.error_trees.predict(extended, engine="sklearn"), 0), regressor.air.error)
    np.testing.assert_allclose(error.ravel(), expected_error, rtol=1e-6, atol=1e-7)
    assert len(events) > 2 and events[-1][0] == events[-1][1] == x.shape[0]
    assert [d for d, _ in events] == sorted(d for d, _ in events)
