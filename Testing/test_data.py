"""Normalisation and the slice data set: robust scales, 2.5-D stacks, padding, plane batches, sharding."""

import numpy as np
import pytest
from test_train import tiny_pair

from T1ToT2Lib.training.data import SliceDataset
from T1ToT2Lib.inference.slices import context_stack, foreground_scale, pad_to_multiple
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.core.volume import PLANES, Volume


def test_foreground_scale_ignores_how_much_background_there_is(rng):
    obj = rng.uniform(100, 200, (10, 10, 10)).astype(np.float32)
    small = np.pad(obj, 2)
    large = np.pad(obj, 20)
    small += rng.uniform(0, 5, small.shape).astype(np.float32)
    large += rng.uniform(0, 5, large.shape).astype(np.float32)
    s_small, s_large = foreground_scale(small), foreground_scale(large)
    assert 195 < s_small < 206 and 195 < s_large < 206
    assert s_large == pytest.approx(s_small, rel=0.02)
    # the plain percentile of the whole volume would be dragged down by the background
    assert np.percentile(large, 99.5) < 0.9 * s_large


def test_foreground_scale_is_never_zero():
    sparse = np.zeros((8, 8, 8), np.float32)
    sparse[0, 0, 0] = 3.0
    assert foreground_scale(sparse) == pytest.approx(3.0)
    with pytest.raises(T1ToT2Error, match="all zeros"):
        foreground_scale(np.zeros((4, 4, 4)))
    with pytest.raises(T1ToT2Error, match="percentile"):
        foreground_scale(sparse, percentile=0)


def test_context_stack_uses_neighbours_and_replicates_the_ends():
    slices = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    stack = context_stack(slices, [0, 2, 4], 3)
    assert stack.shape == (3, 3, 2, 3)
    np.testing.assert_array_equal(stack[:, :, 0, 0], [[0, 0, 1], [1, 2, 3], [3, 4, 4]])
    with pytest.raises(T1ToT2Error, match="odd"):
        context_stack(slices, [0], 2)


def test_padding_reaches_the_multiple_and_the_crop_undoes_it(rng):
    batch = rng.normal(size=(2, 3, 13, 30)).astype(np.float32)
    padded, crop = pad_to_multiple(batch, 8)
    assert padded.shape == (2, 3, 16, 32)
    np.testing.assert_array_equal(crop.apply(padded), batch)


def test_dataset_skips_empty_slices_and_normalises():
    t1, t2 = tiny_pair()
    t1.array[:3] = 0  # three empty axial slices at the bottom
    t2.array[:3] = 0
    dataset = SliceDataset(t1, t2, ["axial"], multiple=8)
    axis = t1.plane_axis("axial")
    assert axis == 0
    kept = dataset.slice_indices["axial"]
    assert not set(range(3)) & set(kept) and len(kept) > 10
    a, b = dataset.arrays(dataset.epoch_batches(1, seed=0, epoch=0)[0])
    assert a.shape == (1, 1, 32, 40) and b.shape == (1, 1, 32, 40)
    assert dataset.t2_scale == pytest.approx(foreground_scale(t2.array))
    assert 0.5 < np.percentile(dataset.t1, 99.9) < 1.5


def test_batches_are_per_plane_seeded_and_sharded():
    t1, t2 = tiny_pair(shape=(16, 24, 40))
    dataset = SliceDataset(t1, t2, PLANES, context=3, multiple=8)
    batches = dataset.epoch_batches(4, seed=7, epoch=0)
    assert batches == dataset.epoch_batches(4, seed=7, epoch=0)
    assert batches != dataset.epoch_batches(4, seed=7, epoch=1)
    assert {b.plane for b in batches} == set(PLANES)
    # every kept slice of every plane appears exactly once per epoch
    for plane in PLANES:
        seen = sorted(i for b in batches if b.plane == plane for i in b.indices)
        assert seen == sorted(dataset.slice_indices[plane])
    for batch in batches[:6]:
        a, b = dataset.arrays(batch)
        assert a.shape[1] == 3 and b.shape[1] == 1 and a.shape[0] == b.shape[0] == len(batch.indices)
        assert a.shape[2] % 8 == 0 and a.shape[3] % 8 == 0
    shards = [dataset.epoch_batches(4, seed=7, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(batches) // 2
    assert not set(shards[0]) & set(shards[1])


def test_augmentation_flips_input_and_target_together():
    t1, t2 = tiny_pair()
    plain = SliceDataset(t1, t2, ["axial"])
    flipped = SliceDataset(t1, t2, ["axial"], augment=True)
    batch = plain.epoch_batches(1, seed=0, epoch=0)[0]
    a0, b0 = plain.arrays(batch)
    changed = 0
    for seed in range(8):
        a1, b1 = flipped.arrays(batch, np.random.default_rng(seed))
        for flip in (lambda x: x, lambda x: x[..., ::-1], lambda x: x[..., ::-1, :], lambda x: x[..., ::-1, ::-1]):
            if np.array_equal(flip(a0), a1):
                assert np.array_equal(flip(b0), b1)
                break
        else:
            pytest.fail("augmentation produced something other than a flip")
        changed += not np.array_equal(a0, a1)
    assert changed > 0


def test_mismatched_pairs_are_refused():
    t1, t2 = tiny_pair()
    with pytest.raises(T1ToT2Error, match="resample"):
        SliceDataset(t1, Volume(t2.array[:, :, :-1], t2.ijk_to_ras), ["axial"])
    moved = t2.ijk_to_ras.copy()
    moved[0, 3] += 5
    with pytest.raises(T1ToT2Error, match="geometry"):
        SliceDataset(t1, Volume(t2.array, moved), ["axial"])
    with pytest.raises(T1ToT2Error, match="plane"):
        SliceDataset(t1, t2, ["oblique"])


def test_otsu_threshold_counted_in_chunks_equals_scikit_images(monkeypatch):
    from skimage.filters import threshold_otsu

    import T1ToT2Lib.inference.slices as slices

    monkeypatch.setattr(slices, "_HISTOGRAM_CHUNK", 997)  # many chunks, the last one short
    rng = np.random.default_rng(3)
    for array in (rng.random((20, 30, 40), dtype=np.float32) * 300,
                  np.concatenate([rng.normal(20, 5, 30_000), rng.normal(400, 60, 9_000)]).astype(np.float32),
                  rng.integers(0, 4000, (10, 20, 30)).astype(np.int16)):
        assert slices.foreground_threshold(array) == float(threshold_otsu(np.asarray(array, np.float32)))
