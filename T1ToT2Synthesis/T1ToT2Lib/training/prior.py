"""The refiner's prior (boosted trees on T1 features) fitted on several pairs, with bounded memory.

Each pair gives the feature rows of its share of the sampled voxels, computed slab by slab; predictions are
made slab by slab (:meth:`FeatureRegressor.predict_volume`), so memory grows with the
sampled voxels, not with the number or size of the pairs.  The CNN's training prior is out-of-fold *by
pair*: pairs alternate between two folds and each fold is predicted by trees fitted on the other, so the
network learns the errors the trees make on another subject (on one pair, alternating slabs of the volume are
the folds, as :func:`~T1ToT2Lib.networks.feature_regression.fit_feature_regressor` does).

With ``fit["context_stage"]`` the auto-context stage is fitted too, as on one pair: it reads the features of each
pair's *out-of-fold* first-stage estimate (by pair folds), which errs as the first stage errs on another subject.
Those estimates are held as one volume per pair until the fit ends.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.errors import T1ToT2Error

#: Several pairs: each gives as many voxels as one pair alone would (the fit's ``max_samples``), up to this total, and
#: the trees may grow longer, for they learn several acquisitions (splitting one pair's sample between the pairs cost
#: every acquisition accuracy).  The bundled recipe's eleven hands fit within two million; with one million shared
#: between them every robustness row was lower (README, robustness).
PAIRS_MAX_SAMPLES = 2_000_000
#: The trees' settings over several pairs: those the bundled model was fitted and measured with.  The one-pair fit's
#: smaller rate and feature subsampling (:data:`~T1ToT2Lib.networks.feature_regression.DEFAULT_FIT`) do not carry
#: over: the bundled recipe refitted with them moved its robustness rows both ways, lost SSIM on most of them and
#: needs a third more trees (README, robustness).
PAIRS_FIT = {"max_iter": 300, "learning_rate": 0.2, "max_features": 1.0}


def pair_scales(t1, t2, percentile: float):
    """(T1's foreground scale, T2's, object mask dilated by two voxels): each volume's Otsu threshold, computed once,
    gives both its foreground scale and its part of the mask."""
    from scipy import ndimage

    from ..inference.slices import foreground_scale, foreground_threshold

    scales, objects = [], []
    for volume in (t1, t2):
        threshold = foreground_threshold(volume.array)
        scales.append(foreground_scale(volume.array, percentile, threshold))
        objects.append(volume.array > threshold)
    return scales[0], scales[1], ndimage.binary_dilation(objects[0] | objects[1], iterations=2)


def normalised_pair(t1, t2, percentile: float):
    """(t1 / its foreground scale, t2 / its foreground scale, object mask dilated by two voxels)."""
    t1_scale, t2_scale, mask = pair_scales(t1, t2, percentile)
    return t1.array / np.float32(t1_scale), t2.array / np.float32(t2_scale), mask


def _sampled_rows(pairs, spec, per_pair: int, seed: int, percentile: float, voxel_mm=None):
    """Per pair: (feature rows, T2 values, flat voxel indices) of up to ``per_pair`` object voxels and the air beside
    it (:func:`~T1ToT2Lib.networks.feature_regression.air_band_samples`); the pairs' air rules; and each pair's T1
    scale (what its T1 is divided by).

    Rows come slab by slab (:func:`~T1ToT2Lib.networks.features.feature_rows`): no pair's whole feature volume is held.
    With ``voxel_mm`` (the model's voxel size) a pair of another voxel size has its features zoomed to the same mm."""
    from scipy import ndimage

    from ..networks.feature_regression import air_band_samples, air_feature, air_rule, training_samples
    from ..inference.preprocess import feature_zoom
    from ..networks.features import feature_rows, zoomed_window

    feature, size = air_feature(spec)
    rows, airs, t1_scales = [], [], []
    for n, (t1, t2) in enumerate(pairs):
        t1_scale, t2_scale, mask = pair_scales(t1, t2, percentile)
        t1n = t1.array / np.float32(t1_scale)
        y = (t2.array / np.float32(t2_scale)).ravel()
        t1_scales.append(t1_scale)
        take = training_samples(mask, per_pair, seed + 101 * n)
        zoom = feature_zoom(voxel_mm, t1)
        reach = ndimage.maximum_filter(t1n, zoomed_window(size, zoom)).ravel()
        air = air_rule(reach, feature, y, mask)  # the air feature
        if air is not None:
            airs.append(air)
            take = np.union1d(take, air_band_samples(mask, reach.reshape(mask.shape), air, per_pair, seed + 101 * n + 7))
        rows.append((feature_rows(t1n, spec, take, zoom=zoom), y[take], take))
    return rows, airs, t1_scales


def _pooled_air(airs):
    """One air rule for all pairs: the lowest level (never calls a pair's tissue air), median value and error."""
    from ..networks.feature_regression import Air

    if not airs:
        return None
    return Air(airs[0].feature, float(min(a.level for a in airs)), float(np.median([a.value for a in airs])),
               float(np.median([a.error for a in airs])))


def fit_prior_pairs(pairs: list, seed: int, percentile: float, cross_fit: bool = True, emit=None, spec=None, fit=None,
                    voxel_mm=None):
    """Trees fitted on the voxels of all ``pairs``; returns (regressor, [training prior of each pair]).

    With ``cross_fit`` each pair's prior comes from trees that never saw it (two folds of alternating pairs).  With
    ``voxel_mm`` (the model's voxel size, i, j, k) pairs keep their own grids: features are zoomed to its lengths in mm.
    With ``fit["context_stage"]`` the model has the auto-context stage (module docstring)."""
    from ..inference.preprocess import feature_zoom
    from ..networks.feature_regression import CONTEXT_SPEC, DEFAULT_FIT, ERROR_FIT, FeatureRegressor, _fit_trees
    from ..networks.features import check_spec, feature_rows

    if len(pairs) < 2:
        raise T1ToT2Error("fit_prior_pairs needs at least two pairs: fit one pair with fit_feature_regressor")
    emit = emit or (lambda event: None)
    tick = time.perf_counter()
    spec = check_spec(spec)
    fit = {**DEFAULT_FIT, **PAIRS_FIT, **(fit or {})}
    per_pair = max(1000, min(int(fit["max_samples"]), PAIRS_MAX_SAMPLES // len(pairs)))
    rows, airs, t1_scales = _sampled_rows(pairs, spec, per_pair, seed, percentile, voxel_mm)
    y = np.concatenate([r[1] for r in rows])
    normalised = lambda n: pairs[n][0].array / np.float32(t1_scales[n])  # noqa: E731 - one volume at a time
    zooms = [feature_zoom(voxel_mm, t1) for t1, _ in pairs]
    fold_of = np.arange(len(pairs)) % 2

    def fold_trees(fold: int, inputs: list):
        """Trees fitted on the pairs outside ``fold``."""
        other = [n for n in range(len(pairs)) if fold_of[n] != fold]
        return _fit_trees(np.concatenate([inputs[n] for n in other]), np.concatenate([rows[n][1] for n in other]), seed, fit)

    inputs = [r[0] for r in rows]
    regressor = FeatureRegressor(spec, _fit_trees(np.concatenate(inputs), y, seed, fit), air=_pooled_air(airs), fit=fit)
    firsts = None
    if fit.get("context_stage"):
        first_stage = {fold: FeatureRegressor(spec, fold_trees(fold, inputs), air=regressor.air) for fold in (0, 1)}
        firsts = [first_stage[fold_of[n]].predict_volume(normalised(n), zoom=zooms[n]) for n in range(len(pairs))]
        regressor.context_spec = check_spec(CONTEXT_SPEC)
        inputs = [np.concatenate([r[0], feature_rows(first, regressor.context_spec, r[2], zoom=z)], 1)
                  for r, first, z in zip(rows, firsts, zooms)]
        regressor.context_trees = _fit_trees(np.concatenate(inputs), y, seed, fit)
    final = regressor.trees if regressor.context_trees is None else regressor.context_trees
    X = np.concatenate(inputs)
    estimate = regressor.predict_rows(X, final)
    error_fit = {**fit, **ERROR_FIT, "max_iter": max(20, int(fit["max_iter"]) // 2)}
    t1_rows = np.concatenate([r[0] for r in rows])
    regressor.error_trees = _fit_trees(np.column_stack([t1_rows, estimate]).astype(np.float32), np.abs(y - estimate),
                                       seed, error_fit)
    del X, t1_rows
    priors = []
    predictors = {fold: FeatureRegressor(spec, fold_trees(fold, inputs), air=regressor.air) if cross_fit else None
                  for fold in (0, 1)}
    for n, (z, f) in enumerate(zip(zooms, fold_of)):
        x = normalised(n)
        if not cross_fit:
            priors.append(regressor.predict_volume(x, zoom=z).astype(np.float32))
        elif firsts is None:
            priors.append(predictors[f].predict_volume(x, zoom=z).astype(np.float32))
        else:
            stage = FeatureRegressor(spec, regressor.trees, air=regressor.air, context_spec=regressor.context_spec,
                                     context_trees=predictors[f].trees)
            prior = np.empty(x.shape, np.float32)
            stage._predict_context(x, firsts[n], 0, x.shape[0], prior, zoom=z)
            priors.append(prior)
    emit({"event": "prior", "kind": "feature_regression", "pairs": len(pairs), "voxels": int(len(y)),
          "trees": regressor.trees.metadata()["n_trees"], "stages": 1 if firsts is None else 2,
          "seconds": round(time.perf_counter() - tick, 1)})
    return regressor, priors
