"""Property-based tests (hypothesis) of the invariants everything else relies on.

* reslicing a volume along any plane and putting the slices back is the identity, for any direction;
  padding a slice to the network's multiple and cropping it back is the identity too;
* synthesis returns exactly the input's grid (shape, spacing, origin, direction) for random oblique,
  anisotropic, even left-handed grids, and a file round trip keeps it (the look-up baseline model is used: cheap);
* metric bounds and symmetries: SSIM <= 1 and symmetric, SSIM(x, x) = 1; PSNR is infinite exactly for identical
  images and symmetric; NRMSE >= 0 and 0 exactly for identical images.

Examples are few (``max_examples`` 25) and there is no deadline, so a slow or busy machine passes as well.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from T1ToT2Lib.core import metrics
from T1ToT2Lib.inference.slices import pad_to_multiple
from T1ToT2Lib.core.volume import PLANES, Volume, from_slices, plane_axes
from T1ToT2Lib.io.files import read_volume

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

angles = st.tuples(*[st.floats(-180.0, 180.0, allow_nan=False)] * 3)
shapes = st.tuples(*[st.integers(3, 11)] * 3)
spacings = st.tuples(*[st.floats(0.2, 6.0, allow_nan=False)] * 3)
origins = st.tuples(*[st.floats(-500.0, 500.0, allow_nan=False)] * 3)
seeds = st.integers(0, 2**32 - 1)


def direction_from(euler, flip: bool) -> np.ndarray:
    rotation = Rotation.from_euler("xyz", euler, degrees=True).as_matrix()
    return rotation @ np.diag([1.0, 1.0, -1.0]) if flip else rotation


def random_volume(shape, spacing, origin, euler, flip, seed) -> Volume:
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    array = 80.0 * (np.sqrt(k**2 + j**2 + i**2) < 0.7) + rng.uniform(1.0, 20.0, shape)
    return Volume.from_geometry(array, spacing=spacing, origin=origin, direction=direction_from(euler, flip))


# --------------------------------------------------------------------------- reslicing
@SETTINGS
@given(shape=shapes, euler=angles, flip=st.booleans(), seed=seeds)
def test_reslicing_along_any_plane_and_back_is_the_identity(shape, euler, flip, seed):
    volume = random_volume(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), euler, flip, seed)
    axes = plane_axes(volume.direction)
    assert sorted(axes.values()) == [0, 1, 2]  # the three planes take the three array axes, one each
    for plane in PLANES:
        axis = volume.plane_axis(plane)
        slices = volume.slices(plane)
        assert slices.shape[0] == volume.shape[axis]
        assert np.array_equal(from_slices(slices, axis), volume.array)
        # slice n of the plane is the array at index n along that axis
        n = int(np.random.default_rng(seed).integers(volume.shape[axis]))
        assert np.array_equal(slices[n], np.take(volume.array, n, axis=axis))


@SETTINGS
@given(h=st.integers(1, 40), w=st.integers(1, 40), multiple=st.sampled_from([1, 2, 4, 8, 16, 32]), seed=seeds)
def test_padding_to_the_network_multiple_and_cropping_back_is_the_identity(h, w, multiple, seed):
    batch = np.random.default_rng(seed).normal(size=(2, 3, h, w)).astype(np.float32)
    padded, crop = pad_to_multiple(batch, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - h < multiple and padded.shape[-1] - w < multiple
    assert np.array_equal(crop.apply(padded), batch)


# --------------------------------------------------------------------------- synthesis geometry
@functools.lru_cache(maxsize=1)
def lookup_model(folder: str):
    from T1ToT2Lib.research.analysis import save_lookup_model
    from T1ToT2Lib.networks.modelfile import load_model

    t1 = random_volume((8, 10, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), False, 0)
    t2 = t1.with_array(np.abs(150.0 - t1.array))
    return load_model(save_lookup_model(f"{folder}/lookup.safetensors", t1, t2, bins=32))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return lookup_model(str(tmp_path_factory.mktemp("lookup")))


@SETTINGS
@given(shape=shapes, spacing=spacings, origin=origins, euler=angles, flip=st.booleans(), seed=seeds,
       plane=st.sampled_from([*PLANES, "fuse"]))
def test_synthesis_keeps_the_input_grid_exactly(model, shape, spacing, origin, euler, flip, seed, plane):
    from T1ToT2Lib.inference.synthesize import synthesize_volume

    t1 = random_volume(shape, spacing, origin, euler, flip, seed)
    synthetic = synthesize_volume(model, t1, plane=plane, device="cpu")
    assert synthetic.shape == t1.shape
    assert np.array_equal(synthetic.ijk_to_ras, t1.ijk_to_ras)  # bit for bit, not approximately
    assert np.isfinite(synthetic.array).all() and synthetic.meta.get("synthetic") is True


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=shapes, spacing=spacings, origin=origins, euler=angles, flip=st.booleans(), seed=seeds,
       extension=st.sampled_from([".nii.gz", ".nrrd", ".mha"]))
def test_a_synthetic_file_has_the_input_files_geometry(model, tmp_path, shape, spacing, origin, euler, flip, seed, extension):
    from T1ToT2Lib.inference.synthesize import synthesize_file
    from T1ToT2Lib.io.files import write_volume

    t1 = random_volume(shape, spacing, origin, euler, flip, seed)
    t1_path = write_volume(t1, tmp_path / f"t1{extension}")
    out = synthesize_file(model, t1_path, tmp_path / f"syn{extension}", plane="fuse", device="cpu")
    source, written = read_volume(t1_path), read_volume(out)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.ijk_to_ras, source.ijk_to_ras, rtol=0, atol=1e-4 * max(1.0, np.abs(origin).max()))


# --------------------------------------------------------------------------- metrics
images = st.builds(
    lambda h, w, seed, scale, offset: (np.random.default_rng(seed).random((h, w)) * scale + offset),
    st.integers(7, 24), st.integers(7, 24), seeds, st.floats(0.01, 1e4), st.floats(0.0, 100.0),  # magnitudes
)


@SETTINGS
@given(image=images, seed=seeds, noise=st.floats(0.0, 2.0))
def test_metric_bounds_and_symmetries(image, seed, noise):
    other = image + noise * np.random.default_rng(seed).normal(size=image.shape) * (image.max() - image.min())
    identical = np.array_equal(other, image)

    s = metrics.ssim(other, image)
    assert s <= 1.0 + 1e-12 and s >= -1.0 - 1e-12
    assert math.isclose(s, metrics.ssim(image, other), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(metrics.ssim(image, image), 1.0, rel_tol=0, abs_tol=1e-9)

    p = metrics.psnr(other, image)
    assert math.isinf(p) == identical
    assert metrics.psnr(image, image) == math.inf
    assert p == metrics.psnr(image, other) or (math.isnan(p) and math.isnan(metrics.psnr(image, other)))

    n = metrics.nrmse(other, image)
    assert n >= 0.0 and (n == 0.0) == identical
    assert metrics.nrmse(image, image) == 0.0


@SETTINGS
@given(image=images, shift=st.floats(0.5, 50.0))
def test_psnr_of_different_images_is_never_infinite(image, shift):
    p = metrics.psnr(image + shift, image)
    assert p != math.inf and not math.isnan(p)


def test_psnr_without_a_positive_peak_is_a_one_line_error():
    from T1ToT2Lib.core.errors import T1ToT2Error

    with pytest.raises(T1ToT2Error, match="positive peak"):
        metrics.psnr(np.zeros((8, 8)), -np.ones((8, 8)))  # was ValueError: math domain error
