"""The refiner's intensity normalisation must not move with the acquisition: its trees read absolute normalised T1."""

import numpy as np

from T1ToT2Lib.inference.slices import DEFAULT_PERCENTILE, foreground_scale
from T1ToT2Lib.phantom.render import TISSUES, make_phantom
from T1ToT2Lib.research.robustness import variants
from T1ToT2Lib.training.presets import normalisation_percentile


def _normalised_muscle(vols, percentile):
    t1, labels = vols["right_t1"].array, vols["right_labels"].array
    return float(np.median(t1[labels == TISSUES["muscle"]])) / foreground_scale(t1, percentile)


def test_the_refiners_normalised_muscle_stays_put_when_the_hand_is_turned():
    """The same hand, straight and turned against the array axes: muscle's T1 is the same tissue either way, so its
    normalised value should be too.  The 99.5th percentile of the foreground is set by small bright structures
    whose partial volume changes with the pose; the refiner's percentile is set by the bulk of the tissue."""
    rows = {name: (seed, acquisition) for name, seed, acquisition in variants()}
    straight = make_phantom("small", seed=0, acquisition=rows["demo configuration"][1])
    turned = make_phantom("small", seed=0, acquisition=rows["oblique pose"][1])
    refiner = normalisation_percentile("refiner")
    moved = abs(_normalised_muscle(turned, refiner) / _normalised_muscle(straight, refiner) - 1.0)
    moved_before = abs(_normalised_muscle(turned, DEFAULT_PERCENTILE) / _normalised_muscle(straight, DEFAULT_PERCENTILE) - 1.0)
    assert moved < 0.05
    assert moved_before > 0.10  # the old normalisation: the trees saw another tissue


def test_gans_keep_a_scale_that_bounds_their_targets():
    # tanh outputs need targets within [-1, 1]: the 99.5th percentile keeps almost every voxel below 1
    assert normalisation_percentile("pix2pix") == DEFAULT_PERCENTILE
    assert normalisation_percentile("refiner") <= 50.0
