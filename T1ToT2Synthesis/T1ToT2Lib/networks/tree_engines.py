"""Engines that evaluate a :class:`~T1ToT2Lib.networks.feature_regression.TreeEnsemble` on feature rows.

* ``onnxruntime``: the trees as one ONNX ``TreeEnsembleRegressor`` (``ai.onnx.ml``) built directly from the
  stored arrays (no skl2onnx needed) and run by ONNX Runtime, which walks all trees for a block of rows at
  once on every core.  The default wherever ONNX Runtime imports.
* ``sklearn``: scikit-learn's own compiled tree predictor, rebuilt from the arrays (one pass over the rows
  per tree, float64 rows).
* ``numpy``: a vectorised walk of the arrays, everywhere.

All three take the same branches as ``HistGradientBoostingRegressor.predict`` (tested): ONNX Runtime compares
in float64 like scikit-learn; the numpy walk compares float32 features with ``t32``, the largest float32 not
above the float64 threshold, which is exact because a float32 ``x`` satisfies ``x <= threshold`` exactly when
``x <= t32``.
"""

from __future__ import annotations

import os

import numpy as np

ENGINES = ("auto", "onnxruntime", "sklearn", "numpy")


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def float32_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """For each float64 threshold the largest float32 not above it (see the module docstring)."""
    t = np.asarray(thresholds, np.float64)
    t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def onnx_model_bytes(fields: dict, offsets: np.ndarray, baseline: float, n_features: int) -> bytes:
    """The serialised ONNX model (input ``X`` float64 (n, n_features), output ``Y`` float32 (n, 1)).

    Thresholds, leaf values and the sum are float64 as in scikit-learn, so ``Y`` is scikit-learn's prediction
    rounded to float32 (a float32 sum could differ in the last bit, and the error trees, which read the
    estimate as a feature, would then take the other branch at a few voxels).
    """
    from onnx import TensorProto, helper

    sizes = np.diff(offsets)
    tree_ids = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    node_ids = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], sizes)
    leaf = fields["is_leaf"].astype(bool)

    def doubles(name, values):
        values = np.asarray(values, np.float64)
        return helper.make_tensor(name, TensorProto.DOUBLE, [len(values)], values.tolist())

    node = helper.make_node(
        "TreeEnsembleRegressor", ["X"], ["Y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=tree_ids.tolist(), nodes_nodeids=node_ids.tolist(),
        nodes_featureids=np.where(leaf, 0, fields["feature_idx"]).astype(np.int64).tolist(),
        nodes_modes=np.where(leaf, "LEAF", "BRANCH_LEQ").tolist(),
        nodes_values_as_tensor=doubles("thresholds", np.where(leaf, 0.0, fields["num_threshold"])),
        nodes_truenodeids=np.where(leaf, 0, fields["left"]).astype(np.int64).tolist(),
        nodes_falsenodeids=np.where(leaf, 0, fields["right"]).astype(np.int64).tolist(),
        nodes_missing_value_tracks_true=fields["missing_go_to_left"].astype(np.int64).tolist(),
        target_treeids=tree_ids[leaf].tolist(), target_nodeids=node_ids[leaf].tolist(), target_ids=[0] * int(leaf.sum()),
        target_weights_as_tensor=doubles("leaves", fields["value"][leaf]), base_values_as_tensor=doubles("baseline", [baseline]),
        aggregate_function="SUM", post_transform="NONE")
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model.SerializeToString()


class OnnxTrees:
    """An ONNX Runtime session over the trees; ``predict(X)`` for float32 rows."""

    def __init__(self, fields: dict, offsets: np.ndarray, baseline: float, n_features: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_model_bytes(fields, offsets, baseline, n_features), options,
                                            providers=["CPUExecutionProvider"])

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        return self.session.run(None, {"X": X})[0][:, 0].astype(np.float64)


def sklearn_predictors(fields: dict, offsets: np.ndarray):
    """scikit-learn's TreePredictor per tree, or None where its node layout differs from the stored one."""
    try:
        from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    except ImportError:
        return None
    names = set(PREDICTOR_RECORD_DTYPE.names or ())
    if not set(fields) <= names or {"is_categorical", "bitset_idx"} - names:
        return None
    predictors = []
    empty = np.zeros((0, 8), dtype=np.uint32)
    for start, stop in zip(offsets[:-1], offsets[1:]):
        nodes = np.zeros(stop - start, dtype=PREDICTOR_RECORD_DTYPE)
        for name in fields:
            nodes[name] = fields[name][start:stop]
        predictors.append(TreePredictor(nodes, empty, empty))
    return predictors


def predict_sklearn(predictors, X: np.ndarray, baseline: float, n_features: int) -> np.ndarray:
    X64 = np.ascontiguousarray(X, dtype=np.float64)
    out = np.full(len(X), baseline, dtype=np.float64)
    known = np.zeros((0, 8), dtype=np.uint32)
    f_idx_map = np.zeros(n_features, dtype=np.uint32)
    threads = cpu_threads()
    for predictor in predictors:
        out += predictor.predict(X64, known, f_idx_map, threads)
    return out


def predict_numpy(fields: dict, offsets: np.ndarray, X: np.ndarray, baseline: float) -> np.ndarray:
    f = fields
    X = np.ascontiguousarray(X, dtype=np.float32)
    thresholds = float32_thresholds(f["num_threshold"])
    out = np.full(len(X), baseline, dtype=np.float64)
    for start in offsets[:-1]:
        node = np.full(len(X), start, dtype=np.int64)
        active = np.flatnonzero(f["is_leaf"][node] == 0)
        while active.size:
            n = node[active]
            value = X[active, f["feature_idx"][n]]
            left = np.where(np.isnan(value), f["missing_go_to_left"][n] == 1, value <= thresholds[n])
            node[active] = start + np.where(left, f["left"][n], f["right"][n])
            active = active[f["is_leaf"][node[active]] == 0]
        out += f["value"][node]
    return out
