"""The feature-regression stage: gradient-boosted trees from local T1 features to T2.

scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingRegressor` does the fitting, with the
squared-error loss: the metrics are squared errors, and where the T1's noise leaves a voxel's T2
uncertain (at edges) the mean is the best guess, not the median (absolute error gave 22.5 dB on the
phantom, squared error 23.6 with the same trees).  The fitted trees are kept as plain arrays (node feature,
threshold, children, leaf value) so a model file stores them as safetensors tensors: nothing is
pickled, and loading executes no code.  Prediction rebuilds scikit-learn's own tree predictors
from those arrays when the installed version uses the same node layout, and otherwise walks the
arrays with numpy (same result; the tests check both against ``HistGradientBoostingRegressor.predict``).

:class:`FeatureRegressor` is used two ways: alone, as the ``feature_regression`` baseline model
(`t1tot2 analyze feature-baseline`), and as the prior that the recommended ``refiner`` network
corrects (see :mod:`T1ToT2Lib.networks.refiner`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import T1ToT2Error
from .features import check_spec, feature_arrays, feature_names, feature_rows, slab_size

#: Tree fields stored in a model file, with their dtypes.
_FIELDS = {"value": np.float64, "feature_idx": np.int64, "num_threshold": np.float64,
           "missing_go_to_left": np.uint8, "left": np.int64, "right": np.int64, "is_leaf": np.uint8}
#: Bounds checked before any array from a file is used (a hostile file cannot make us allocate more).
MAX_TREES, MAX_NODES = 5000, 5_000_000
#: Early stopping on a held-out 10% keeps the trees from learning one hand's noise: the out-of-fold prior the
#: refiner trains on then errs the way the final trees err on a new hand.  The held-out voxels lie beside training
#: voxels, so the stop rarely comes; what keeps the trees general is the smaller rate over more trees and a fifth of the
#: features per split (``max_features``, as a random forest draws them): trees that cannot always reach for the same
#: fine-scale feature lean less on one hand's noise and more on the smoother scales (README, "What the demo does").
#: ``context_stage``: fit the auto-context stage too (see :func:`fit_feature_regressor`).
DEFAULT_FIT = {"max_iter": 400, "max_leaf_nodes": 127, "learning_rate": 0.1, "max_features": 0.2, "max_samples": 160_000,
               "early_stopping": True, "loss": "squared_error", "context_stage": False}
#: The error trees (the learned part of the error map) stay small: they learn a typical error, not the noise.
ERROR_FIT = {"max_leaf_nodes": 31, "learning_rate": 0.1, "max_features": 1.0, "loss": "absolute_error"}
#: Features of the first stage's T2 estimate that the auto-context stage reads beside the T1's
#: (the T2 estimate's smoothings, edges and extremes: where the first stage put fat, bone, tendon).
CONTEXT_SPEC = {"gaussian_scales": [1.0, 2.0, 4.0], "extreme_sizes": [3, 5], "texture_scales": [1.0],
                "line_scales": [1.0, 2.0], "median_sizes": []}
_ERROR_CHUNK = 1 << 20  # rows per error-tree call
#: Rows per tree call in :meth:`FeatureRegressor.predict_volume` (a progress event after each), and the row
#: count from which ``auto`` builds an ONNX Runtime session (about a second) rather than use scikit-learn's.
_ROWS_CHUNK, _ONNX_ROWS = 1 << 17, 50_000
#: Air is recognised by the local maximum over this cube (voxels): no tissue within 7 voxels.
AIR_WINDOW = 15
#: The cross-fit's two folds alternate slabs of this many slices along the first axis, so each fold's trees see every
#: part of the hand and err on the other fold's slabs as the final trees err on a new hand.  Folds of one half each
#: (the wrist's trees predicting the fingers) erred more than that, and the auto-context stage trained on their
#: estimate learned to distrust a first estimate that is better on a new hand (README, "What the demo does").
FOLD_SLAB = 16


def _as_array(value) -> np.ndarray:
    """A torch tensor (model file) or numpy array (ONNX metadata) as numpy."""
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


@dataclass
class TreeEnsemble:
    """Additive regression trees as flat arrays: ``fields[name]`` over all nodes, ``offsets`` per tree."""

    fields: dict
    offsets: np.ndarray  # (n_trees + 1,) start of each tree's nodes
    baseline: float
    n_features: int
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # built engines

    @classmethod
    def from_sklearn(cls, estimator) -> "TreeEnsemble":
        nodes = [predictors[0].nodes for predictors in estimator._predictors]
        offsets = np.cumsum([0] + [len(n) for n in nodes]).astype(np.int64)
        fields = {name: np.concatenate([n[name] for n in nodes]).astype(dtype) for name, dtype in _FIELDS.items()}
        if np.any(np.concatenate([n["is_categorical"] for n in nodes])):
            raise T1ToT2Error("categorical splits are not supported in feature regression")
        return cls(fields, offsets, float(np.ravel(estimator._baseline_prediction)[0]), int(estimator.n_features_in_))

    # --- safetensors ------------------------------------------------------------------------
    def to_tensors(self, prefix: str) -> dict:
        import torch

        out = {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(values)) for name, values in self.fields.items()}
        out[f"{prefix}.offsets"] = torch.from_numpy(self.offsets)
        return out

    def metadata(self) -> dict:
        return {"baseline": self.baseline, "n_features": self.n_features, "n_trees": len(self.offsets) - 1}

    @classmethod
    def from_tensors(cls, tensors: dict, prefix: str, meta: dict, n_features: int) -> "TreeEnsemble":
        try:
            offsets = _as_array(tensors[f"{prefix}.offsets"]).astype(np.int64)
            fields = {name: _as_array(tensors[f"{prefix}.{name}"]).astype(dtype) for name, dtype in _FIELDS.items()}
            n_trees, baseline = int(meta["n_trees"]), float(meta["baseline"])
        except (KeyError, TypeError, ValueError):
            raise T1ToT2Error("the model file's tree arrays are incomplete: the file is damaged, re-export it") from None
        n_nodes = len(fields["value"])
        ok = (0 < n_trees <= MAX_TREES and n_nodes <= MAX_NODES and len(offsets) == n_trees + 1
              and offsets[0] == 0 and offsets[-1] == n_nodes and np.all(np.diff(offsets) > 0)
              and all(len(v) == n_nodes for v in fields.values()) and np.isfinite(baseline))
        if ok:
            internal = fields["is_leaf"] == 0
            tree_of = np.repeat(np.arange(n_trees), np.diff(offsets))
            size = np.diff(offsets)[tree_of]
            for child in ("left", "right"):
                c = fields[child][internal]
                ok &= bool(np.all((c > 0) & (c < size[internal])))
            f = fields["feature_idx"][internal]
            ok &= bool(np.all((f >= 0) & (f < n_features))) and bool(np.all(np.isfinite(fields["value"])))
        if not ok:
            raise T1ToT2Error("the model file's trees are inconsistent (sizes, children or features out of range): the file is damaged, re-export it")
        return cls(fields, offsets, baseline, n_features)

    # --- prediction ---------------------------------------------------------------------------
    def _engine(self, name: str):
        """The cached evaluator of ``name`` (see :mod:`.tree_engines`), or None where it is unavailable."""
        if name not in self._cache:
            from . import tree_engines

            try:
                if name == "onnxruntime":
                    self._cache[name] = tree_engines.OnnxTrees(self.fields, self.offsets, self.baseline, self.n_features)
                else:
                    self._cache[name] = tree_engines.sklearn_predictors(self.fields, self.offsets)
            except ImportError:
                self._cache[name] = None
        return self._cache[name]

    def predict(self, X: np.ndarray, engine: str = "auto") -> np.ndarray:
        """Sum of the trees' leaf values plus the baseline, for feature rows ``X`` (n, n_features).

        ``engine``: one of :data:`.tree_engines.ENGINES`.  ``auto`` takes ONNX Runtime for large inputs (or once
        its session is built), else scikit-learn's predictor, else the numpy walk.
        """
        from . import tree_engines

        if engine not in tree_engines.ENGINES:
            raise T1ToT2Error(f"unknown tree engine {engine!r}: use one of {', '.join(tree_engines.ENGINES)}")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise T1ToT2Error(f"feature rows have shape {X.shape}, the trees need {self.n_features} features")
        if engine == "auto":
            big = len(X) >= _ONNX_ROWS or self._cache.get("onnxruntime") is not None
            engine = "onnxruntime" if big and self._engine("onnxruntime") is not None else "sklearn"
        if engine in ("onnxruntime", "sklearn") and self._engine(engine) is None:
            engine = "numpy" if engine == "sklearn" else "sklearn"
        if engine == "onnxruntime":
            return self._engine(engine).predict(X)
        if engine == "sklearn" and self._engine("sklearn") is not None:
            return tree_engines.predict_sklearn(self._engine("sklearn"), X, self.baseline, self.n_features)
        return tree_engines.predict_numpy(self.fields, self.offsets, X, self.baseline)


@dataclass
class Air:
    """Where the trees are not asked: voxels whose ``feature`` (a local maximum of the T1) is below
    ``level`` lie in air, far from anything the trees were fitted on (they see the object, a rim and the air
    nearer the object than that: :func:`air_band_samples`).  They get the air's typical normalised T2 ``value``
    and its typical |error| ``error`` instead of a tree walk: about a third of the phantom's volume, which
    synthesis and the cross-fitted training prior then skip (the trees' own guess there was ~80 T2 units, air is ~14)."""

    feature: int
    level: float
    value: float
    error: float

    def tissue(self, rows: np.ndarray) -> np.ndarray:
        return rows[:, self.feature] >= self.level

    def metadata(self) -> dict:
        return {"feature": self.feature, "level": self.level, "value": self.value, "error": self.error}

    @classmethod
    def from_metadata(cls, meta, n_features: int) -> "Air | None":
        if meta is None:
            return None
        try:
            air = cls(int(meta["feature"]), float(meta["level"]), float(meta["value"]), float(meta["error"]))
        except (KeyError, TypeError, ValueError):
            raise T1ToT2Error("the model file's air settings are incomplete: the file is damaged, re-export it") from None
        if not (0 <= air.feature < n_features and all(np.isfinite([air.level, air.value, air.error]))):
            raise T1ToT2Error("the model file's air settings are out of range: the file is damaged, re-export it")
        return air


def air_feature(spec: dict) -> tuple[int, int]:
    """(index in :func:`feature_names`, cube size) of the local maximum that tells air from tissue."""
    size = min(spec["extreme_sizes"], key=lambda w: (abs(w - AIR_WINDOW), -w))
    return feature_names(spec).index(f"maximum_{size}"), int(size)


def air_rule(column: np.ndarray, feature: int, y: np.ndarray, mask: np.ndarray) -> Air | None:
    """The air rule of a training volume, from the air feature's values ``column`` over the whole volume (flat):
    half the lowest local maximum met on the object (0.1st percentile inside ``mask``), and the air's median T2
    and median |T2 - that| beyond it."""
    level = 0.5 * float(np.percentile(column[mask.ravel()], 0.1))
    air = column < level
    if level <= 0 or not air.any():
        return None
    value = float(np.median(y[air]))
    return Air(feature, level, value, float(np.median(np.abs(y[air] - value))))


@dataclass
class FeatureRegressor:
    """Features of the normalised T1 → boosted trees → normalised T2.

    ``error_trees`` (optional) predict the typical absolute error of the T2 trees: the learned part
    of the error map.  They read the features and, as one more column, the trees' own T2 estimate
    (files written before that read the features only: :attr:`error_reads_estimate` tells which).
    ``air`` (optional; older model files have none) skips the trees in air.

    ``context_trees`` (optional; older files have none) are a second, *auto-context* stage: they
    read the T1's features and the :attr:`context_spec` features of the first stage's T2 estimate,
    so where the first stage put fat, bone and tendon around a voxel informs its T2 (the auto-context
    of forest-based MR-to-CT synthesis).

    ``fit`` (optional; older files have none): the settings the trees were fitted with, kept with them so a model
    file says how it was made whichever path fitted it (one pair, several pairs).
    """

    spec: dict
    trees: TreeEnsemble
    error_trees: TreeEnsemble | None = None
    air: Air | None = None
    context_spec: dict | None = None
    context_trees: TreeEnsemble | None = None
    fit: dict | None = None

    @property
    def error_reads_estimate(self) -> bool:
        return self.error_trees is not None and self.error_trees.n_features == self.trees.n_features + 1

    def predict_error_rows(self, rows: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """The error trees' typical |error| for feature rows whose T2 estimate is ``estimate``, never negative."""
        if self.error_trees is None:
            return np.zeros(len(rows))
        if not self.error_reads_estimate:
            return np.maximum(self.predict_rows(rows, self.error_trees, error=True), 0.0)
        out = np.empty(len(rows))
        for start in range(0, len(rows), _ERROR_CHUNK):  # the extra column costs a copy: keep it small
            chunk = slice(start, start + _ERROR_CHUNK)
            extended = np.column_stack([rows[chunk], estimate[chunk]]).astype(np.float32, copy=False)
            out[chunk] = self.predict_rows(extended, self.error_trees, error=True)
        return np.maximum(out, 0.0)

    def predict_rows(self, rows: np.ndarray, trees: TreeEnsemble | None = None, error: bool = False) -> np.ndarray:
        """Predictions of ``trees`` (default: the T2 trees) for feature rows, the air's value (or, for the
        error trees, its typical error) where :attr:`air` says there is no tissue."""
        trees = self.trees if trees is None else trees
        if self.air is None:
            return trees.predict(rows)
        out = np.full(len(rows), self.air.error if error else self.air.value, dtype=np.float64)
        tissue = self.air.tissue(rows)
        if tissue.any():
            out[tissue] = trees.predict(rows[tissue])
        return out

    def _tissue_rows(self, arrays: list):
        """Feature rows (n, n_features) of the voxels the trees are asked about, and their flat indices
        (None: all voxels), from per-feature arrays: air voxels are never copied."""
        pick = None if self.air is None else np.flatnonzero(arrays[self.air.feature].ravel() >= self.air.level)
        rows = np.empty((arrays[0].size if pick is None else len(pick), len(arrays)), np.float32)
        for f, array in enumerate(arrays):
            rows[:, f] = array.ravel() if pick is None else array.ravel()[pick]
        return rows, pick

    def _predict_slab(self, x, k0: int, k1: int, first: np.ndarray, error: np.ndarray | None, tick, zoom=None) -> None:
        """Slices ``k0..k1`` of ``first`` (and ``error``): features once, then the trees on tissue rows in chunks."""
        started, span = time.perf_counter(), k1 - k0
        rows, pick = self._tissue_rows(feature_arrays(x, self.spec, k0, k1, progress=lambda f: tick(k0 + 0.5 * f * span),
                                                      zoom=zoom))
        self.timings["features_s"] += time.perf_counter() - started
        estimate_out = first[k0:k1].reshape(-1)  # views: writing them writes the volumes
        estimate_out[:] = self.air.value if self.air is not None else 0.0
        error_out = None if error is None else error[k0:k1].reshape(-1)
        if error_out is not None:
            error_out[:] = self.air.error if self.air is not None else 0.0
        for start in range(0, len(rows), _ROWS_CHUNK):
            chunk = rows[start:start + _ROWS_CHUNK]
            where = slice(start, start + len(chunk)) if pick is None else pick[start:start + len(chunk)]
            started = time.perf_counter()
            estimate = self.trees.predict(chunk)
            estimate_out[where] = estimate
            self.timings["trees_s"] += time.perf_counter() - started
            if error_out is not None:
                started = time.perf_counter()
                error_out[where] = self.predict_error_rows(chunk, estimate)
                self.timings["error_trees_s"] += time.perf_counter() - started
            tick(k0 + span * (0.5 + 0.5 * (start + len(chunk)) / max(1, len(rows))))
        tick(k1)

    def predict_volume(self, normalised_t1: np.ndarray, with_error: bool = False, progress=None, zoom=None):
        """Normalised T2 prediction on the same grid, computed slab by slab (bounded memory).

        With ``with_error`` also the predicted absolute error of that prediction (zeros without error trees).
        ``progress(done, total)`` is called as features and tree chunks finish, in slices of all passes over
        the volume (``done`` may be fractional).  :attr:`timings` then holds the seconds spent in each part.
        ``zoom``: training voxel size over this volume's, per axis (k, j, i), for a T1 of another voxel size.
        """
        x = np.asarray(normalised_t1, dtype=np.float32)
        passes = 1 if self.context_trees is None else 2
        tick = (lambda done: progress(done, passes * x.shape[0])) if progress is not None else (lambda done: None)
        first = np.empty(x.shape, np.float32)
        error = np.zeros(x.shape, np.float32) if with_error else None
        errors_now = with_error and self.error_trees is not None and self.context_trees is None
        self.timings = {"features_s": 0.0, "trees_s": 0.0, "error_trees_s": 0.0}
        slab = slab_size(x.shape, self.spec)
        for k0 in range(0, x.shape[0], slab):
            self._predict_slab(x, k0, min(x.shape[0], k0 + slab), first, error if errors_now else None, tick, zoom)
        out = first
        if self.context_trees is not None:
            out = np.empty(x.shape, np.float32)
            # The T1's features are computed again, slab by slab beside the first estimate's: keeping
            # them would cost tens of GB on a 512x512x491 scan.
            self._predict_context(x, first, 0, x.shape[0], out, error if with_error else None, zoom,
                                  lambda k1: tick(x.shape[0] + k1))
        return (out, error) if with_error else out

    def _predict_context(self, x, first, k_start: int, k_stop: int, out, error=None, zoom=None, tick=None) -> None:
        """The auto-context stage's estimate (and error) of slices ``k_start..k_stop`` into ``out``, slab by slab:
        the T1's features and those of ``first`` (the first stage's estimate) over the same slices."""
        for k0 in range(k_start, k_stop, slab_size(x.shape, self.spec)):
            k1 = min(k_stop, k0 + slab_size(x.shape, self.spec))
            block = np.stack(feature_arrays(x, self.spec, k0, k1, zoom=zoom), axis=-1)
            rows = block.reshape(-1, block.shape[-1])
            context = np.stack(feature_arrays(first, self.context_spec, k0, k1, zoom=zoom), axis=-1).reshape(len(rows), -1)
            estimate = self.predict_rows(np.concatenate([rows, context], 1), self.context_trees)
            out[k0:k1] = estimate.reshape(block.shape[:-1])
            if error is not None and self.error_trees is not None:
                error[k0:k1] = self.predict_error_rows(rows, estimate).reshape(block.shape[:-1])
            if tick is not None:
                tick(k1)

    def to_tensors(self, prefix: str = "prior") -> dict:
        tensors = self.trees.to_tensors(prefix)
        if self.error_trees is not None:
            tensors.update(self.error_trees.to_tensors(f"{prefix}.error"))
        if self.context_trees is not None:
            tensors.update(self.context_trees.to_tensors(f"{prefix}.context"))
        return tensors

    def metadata(self) -> dict:
        meta = {"kind": "feature_regression", "features": self.spec, **self.trees.metadata()}
        if self.error_trees is not None:
            meta["error_trees"] = self.error_trees.metadata()
        if self.air is not None:
            meta["air"] = self.air.metadata()
        if self.context_trees is not None:
            meta["context"] = {"features": self.context_spec, **self.context_trees.metadata()}
        if self.fit is not None:
            meta["fit"] = dict(self.fit)
        return meta

    @classmethod
    def from_tensors(cls, tensors: dict, meta: dict, prefix: str = "prior") -> "FeatureRegressor":
        if not isinstance(meta, dict) or meta.get("kind") != "feature_regression":
            raise T1ToT2Error("the model file's prior is not a feature regression this T1ToT2 knows: upgrade T1ToT2")
        spec = check_spec(meta.get("features"))
        n_features = len(feature_names(spec))
        if int(meta.get("n_features", -1)) != n_features:
            raise T1ToT2Error("the model file's trees and feature list disagree: the file is damaged, re-export it")
        error_trees = None
        if meta.get("error_trees") is not None:
            reads_estimate = int(meta["error_trees"].get("n_features", -1)) == n_features + 1
            error_trees = TreeEnsemble.from_tensors(tensors, f"{prefix}.error", meta["error_trees"], n_features + reads_estimate)
        context_spec, context_trees = None, None
        if meta.get("context") is not None:
            if not isinstance(meta["context"], dict):
                raise T1ToT2Error("the model file's auto-context stage is not readable: the file is damaged, re-export it")
            context_spec = check_spec(meta["context"].get("features"))
            n_context = n_features + len(feature_names(context_spec))
            if int(meta["context"].get("n_features", -1)) != n_context:
                raise T1ToT2Error("the model file's auto-context trees and feature lists disagree: the file is damaged, re-export it")
            context_trees = TreeEnsemble.from_tensors(tensors, f"{prefix}.context", meta["context"], n_context)
        return cls(spec, TreeEnsemble.from_tensors(tensors, prefix, meta, n_features), error_trees,
                   Air.from_metadata(meta.get("air"), n_features), context_spec, context_trees,
                   meta.get("fit") if isinstance(meta.get("fit"), dict) else None)


#: The air beside the object that the air rule leaves to the trees (outside the object's mask, its local maximum at or
#: above this fraction of the rule's level: pooled over several pairs the rule takes the lowest pair's level) gives
#: each fit this share of its object voxels more; fitted on the object and its rim alone, the trees' guess there was
#: unconstrained (a six-subject model brightened it; one pair left it at two to three times the acquired air's level).
AIR_BAND_SHARE, AIR_BAND_LEVEL = 0.1, 0.5


def air_band_samples(mask: np.ndarray, reach: np.ndarray, air: Air | None, object_samples: int, seed: int,
                     restrict=None) -> np.ndarray:
    """Flat indices of up to :data:`AIR_BAND_SHARE` × ``object_samples`` voxels of the air beside the object: outside
    ``mask`` (and inside ``restrict``), where the air feature ``reach`` (shaped like ``mask``) is at least
    :data:`AIR_BAND_LEVEL` × ``air.level``; none without an air rule or such voxels."""
    if air is None:
        return np.empty(0, np.int64)
    near = ~mask & (reach >= AIR_BAND_LEVEL * air.level)
    if restrict is not None:
        near &= restrict
    if not near.any():
        return np.empty(0, np.int64)
    return training_samples(near, max(1, int(AIR_BAND_SHARE * object_samples)), seed)


def training_samples(mask: np.ndarray, max_samples: int, seed: int, restrict=None) -> np.ndarray:
    """Flat voxel indices to fit on: inside ``mask`` (and ``restrict``), at most ``max_samples``, seeded."""
    selection = mask if restrict is None else (mask & restrict)
    candidates = np.flatnonzero(selection.ravel())
    if candidates.size == 0:
        raise T1ToT2Error("no foreground voxels to fit the feature regression on: check that T1 and T2 contain the object")
    rng = np.random.default_rng(seed)
    if candidates.size > max_samples:
        candidates = np.sort(rng.choice(candidates, int(max_samples), replace=False))
    return candidates


def _fit_trees(X, y, seed: int, fit: dict) -> TreeEnsemble:
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(
        loss=fit.get("loss", "squared_error"), max_iter=int(fit["max_iter"]), max_leaf_nodes=int(fit["max_leaf_nodes"]),
        learning_rate=float(fit["learning_rate"]), max_features=float(fit.get("max_features", 1.0)),
        early_stopping=bool(fit.get("early_stopping", True)),
        validation_fraction=0.1, n_iter_no_change=10, random_state=int(seed))
    model.fit(X, y)
    return TreeEnsemble.from_sklearn(model)


def fit_feature_regressor(normalised_t1: np.ndarray, normalised_t2: np.ndarray, mask: np.ndarray,
                          spec: dict | None = None, seed: int = 0, fit: dict | None = None,
                          cross_fit: bool = False):
    """Fit the trees on voxels of ``mask``; returns ``(regressor, training_prior)``.

    ``training_prior`` is the prediction on the training volume itself.  With ``cross_fit`` it is
    *out-of-fold*: the volume's slabs along its first axis alternate between two folds (:func:`fold_slabs`), each
    fold is predicted by trees fitted on the other, so a network trained to correct the prior learns to correct the
    errors it will meet on unseen hands, not the smaller in-sample errors.

    With ``fit["context_stage"]`` a second, auto-context stage is fitted on the T1's features and
    those of the first stage's *out-of-fold* estimate, which errs as the first stage errs on a new
    hand.  It is off in :data:`DEFAULT_FIT`; the recommended refiner asks for it (``TrainConfig.prior_stages``), and
    ``t1tot2 analyze feature-baseline --auto-context`` writes the two-stage baseline.  Both paths hold feature rows of
    the sampled voxels only, never the volume's features.
    """
    spec = check_spec(spec)
    fit = {**DEFAULT_FIT, **(fit or {})}
    return _fit_sampled(np.asarray(normalised_t1, np.float32), np.asarray(normalised_t2, np.float32).ravel(),
                        np.asarray(mask, bool), spec, seed, fit, cross_fit)


def _fit_sampled(x, y, mask, spec: dict, seed: int, fit: dict, cross_fit: bool):
    """:func:`fit_feature_regressor`, never holding the volume's features: the voxels every fit samples get
    their feature rows slab by slab, and volumes (the out-of-fold first estimate, the training prior) are
    predicted slab by slab like a synthesis."""
    from scipy import ndimage

    context = bool(fit.get("context_stage"))
    folds = fold_slabs(mask.shape[0])
    feature, size = air_feature(spec)
    reach = ndimage.maximum_filter(x, size)  # = the air feature, over the volume
    air = air_rule(reach.ravel(), feature, y, mask)

    def sampled(count: int, seed_: int, restrict=None):
        """Object voxels and the air beside the object, in proportion."""
        band = air_band_samples(mask, reach, air, count, seed_ + 7, restrict)
        return np.union1d(training_samples(mask, count, seed_, restrict=restrict), band)

    samples = {"trees": sampled(fit["max_samples"], seed), "errors": sampled(fit["max_samples"], seed + 3)}
    if cross_fit or context:
        for fold, spans in enumerate(folds):
            trained_on = np.ones(mask.shape, bool)
            for k_start, k_stop in spans:
                trained_on[k_start:k_stop] = False
            samples[fold] = sampled(fit["max_samples"] // 2, seed + 1 + fold, restrict=trained_on)
    del reach
    union = np.unique(np.concatenate(list(samples.values())))
    X = feature_rows(x, spec, union)
    rows = {name: np.searchsorted(union, idx) for name, idx in samples.items()}
    regressor = FeatureRegressor(spec, _fit_trees(X[rows["trees"]], y[samples["trees"]], seed, fit), air=air, fit=fit)
    inputs, first = X, None
    if context:
        # The second stage learns from the first stage's out-of-fold estimate, which errs as it errs on a new hand.
        first = np.empty(x.shape, np.float32)
        for fold, spans in enumerate(folds):
            fold_model = FeatureRegressor(spec, _fit_trees(X[rows[fold]], y[samples[fold]], seed, fit), air=air)
            for k_start, k_stop in spans:
                _predict_range(fold_model, x, k_start, k_stop, first)
        regressor.context_spec = check_spec(CONTEXT_SPEC)
        inputs = np.concatenate([X, feature_rows(first, regressor.context_spec, union)], 1)
        regressor.context_trees = _fit_trees(inputs[rows["trees"]], y[samples["trees"]], seed, fit)
    final = regressor.trees if regressor.context_trees is None else regressor.context_trees
    # The error model: the typical |T2 - estimate| of the final stage on its own training voxels, from the T1's
    # features and the estimate itself (bright tissue errs more in T2 units); out-of-fold residuals ranked worse.
    estimate = regressor.predict_rows(inputs[rows["errors"]], final)
    error_fit = {**fit, **ERROR_FIT, "max_iter": max(20, int(fit["max_iter"]) // 2)}
    regressor.error_trees = _fit_trees(np.column_stack([X[rows["errors"]], estimate]).astype(np.float32),
                                       np.abs(y[samples["errors"]] - estimate), seed, error_fit)
    if not cross_fit:
        return regressor, regressor.predict_volume(x)
    prior = np.empty(x.shape, np.float32)
    for fold, spans in enumerate(folds):
        trees = _fit_trees(inputs[rows[fold]], y[samples[fold]], seed, fit)
        if context:
            fold_model = FeatureRegressor(spec, regressor.trees, air=air, context_spec=regressor.context_spec,
                                          context_trees=trees)
        else:
            fold_model = FeatureRegressor(spec, trees, air=air)
        for k_start, k_stop in spans:
            _predict_range(fold_model, x, k_start, k_stop, prior, first=first)
    return regressor, prior


def fold_slabs(n_slices: int, slab: int = FOLD_SLAB) -> list:
    """The cross-fit's two folds as lists of ``(k_start, k_stop)`` slice ranges along the first axis: slabs of
    ``slab`` slices, alternating between the folds (:data:`FOLD_SLAB`); a volume of fewer than two slabs is split in
    halves."""
    slab = max(1, min(int(slab), n_slices // 2))
    starts = list(range(0, n_slices, slab))
    return [[(k, min(n_slices, k + slab)) for k in starts[fold::2]] for fold in (0, 1)]


def _predict_range(model: FeatureRegressor, x, k_start: int, k_stop: int, out: np.ndarray, first=None) -> None:
    """``model``'s estimate of slices ``k_start..k_stop`` of ``x`` into ``out``, slab by slab; with ``first`` (a
    first-stage estimate of the whole volume) its auto-context stage reads that estimate's features."""
    if first is None:
        model.timings = {"features_s": 0.0, "trees_s": 0.0, "error_trees_s": 0.0}
        slab = slab_size(x.shape, model.spec)
        for k0 in range(k_start, k_stop, slab):
            model._predict_slab(x, k0, min(k_stop, k0 + slab), out, None, lambda done: None)
        return
    model._predict_context(x, first, k_start, k_stop, out)
