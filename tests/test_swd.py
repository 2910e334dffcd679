"""Sliced Wasserstein distance (progan_jax.metrics.swd) against a NumPy transcription of the
official code, the previous (all in memory) implementation, and the noise floor."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from progan_jax.data import synthetic
from progan_jax.metrics import swd

# ------------------------------------------------------------------ SWD, official in NumPy

_GAUSS = np.float32([[1, 4, 6, 4, 1], [4, 16, 24, 16, 4], [6, 24, 36, 24, 6],
                     [4, 16, 24, 16, 4], [1, 4, 6, 4, 1]]) / 256.0  # fmt: skip


def _pyr_down(x):  # NCHW, official
    return scipy.ndimage.convolve(x, _GAUSS[None, None], mode="mirror")[:, :, ::2, ::2]


def _pyr_up(x):
    n, c, h, w = x.shape
    res = np.zeros((n, c, 2 * h, 2 * w), x.dtype)
    res[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(res, _GAUSS[None, None] * 4.0, mode="mirror")


def _official_pyramid(minibatch, num_levels):
    pyramid = [np.float32(minibatch)]
    for _ in range(1, num_levels):
        pyramid.append(_pyr_down(pyramid[-1]))
        pyramid[-2] -= _pyr_up(pyramid[-1])
    return pyramid


def _official_descriptors(level, centres):  # level NCHW, centres [N*128, 2] (row, col)
    n = centres.shape[0]
    h = 3
    nhood, chan, x, y = np.ogrid[0:n, 0 : level.shape[1], -h : h + 1, -h : h + 1]
    img = nhood // 128
    x = x + centres[:, 1].reshape(n, 1, 1, 1)
    y = y + centres[:, 0].reshape(n, 1, 1, 1)
    s = level.shape
    idx = ((img * s[1] + chan) * s[2] + y) * s[3] + x
    return level.flat[idx]


def _official_finalize(desc):
    desc = desc - np.mean(desc, axis=(0, 2, 3), keepdims=True)
    desc /= np.std(desc, axis=(0, 2, 3), keepdims=True)
    return desc.reshape(desc.shape[0], -1)


def _official_swd(a, b, directions):
    results = []
    for dirs in directions:
        proj_a = np.sort(np.matmul(a, dirs), axis=0)
        proj_b = np.sort(np.matmul(b, dirs), axis=0)
        results.append(np.mean(np.abs(proj_a - proj_b)))
    return np.mean(results)


def test_pyramid_matches_scipy_mirror_convolution():
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    ours = swd.laplacian_pyramid(images, 2)
    theirs = _official_pyramid(images.transpose(0, 3, 1, 2), 2)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-3)


def test_swd_equals_the_official_algorithm_on_fixed_inputs():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    levels = swd.level_resolutions(32)
    assert levels == [32, 16]
    ours, theirs = [], []
    draw = np.random.default_rng(7)
    for images in (a, b):
        pyramid = _official_pyramid(images.transpose(0, 3, 1, 2), len(levels))
        per_level_ours, per_level_theirs = [], []
        for level in pyramid:
            centres = swd.sample_centres(draw, len(images), level.shape[2])
            per_level_theirs.append(_official_finalize(_official_descriptors(level, centres)))
            nhwc = level.transpose(0, 2, 3, 1)
            per_level_ours.append(swd.normalize_descriptors(swd.extract_descriptors(nhwc, centres)))
        ours.append(per_level_ours)
        theirs.append(per_level_theirs)
    directions = swd.sample_directions(np.random.default_rng(3), 7 * 7 * 3)
    for lod in range(len(levels)):
        # Same descriptors up to layout (ours row-col-channel; the official code's ogrid makes
        # its neighbourhoods channel-column-row) ...
        np.testing.assert_allclose(
            ours[0][lod].reshape(-1, 7, 7, 3).transpose(0, 3, 2, 1).reshape(len(ours[0][lod]), -1),
            theirs[0][lod],
            rtol=1e-4,
            atol=1e-4,
        )
        # ... and the same distance on the same directions (permuted to our layout).
        perm = np.arange(147).reshape(3, 7, 7).transpose(2, 1, 0).ravel()
        dist_ours = swd.sliced_wasserstein(ours[0][lod], (ours[1][lod],), directions[:, perm])[0]
        dist_theirs = _official_swd(theirs[0][lod], theirs[1][lod], directions)
        np.testing.assert_allclose(float(dist_ours), dist_theirs, rtol=1e-4)


def _faces(count, seed, resolution=32):
    return np.stack([synthetic.draw_face(i, resolution, seed) for i in range(count)])


@pytest.mark.slow
def test_swd_is_at_the_noise_floor_for_the_same_distribution_and_grows_with_a_shift():
    """Two draws of the faces are as far apart as the noise floor; noisier draws (a shift of the
    local statistics, which is what SWD measures: the descriptors are normalised, so a global
    brightness change would not count) are further, the more so the noisier."""
    reals = _faces(64, seed=0)
    again = _faces(64, seed=1)  # another draw of the same distribution
    noise = np.random.default_rng(0).normal(size=again.shape)

    def distance(base, images, seed):
        with swd.describe([images[:32], images[32:]], 32, seed=seed) as other:
            return swd.distances(base, [other])[0]

    with swd.describe([reals[:32], reals[32:]], 32, seed=10) as base:
        floor = distance(base, again, 11)
        same = distance(base, reals, 12)
        shifted = [
            distance(base, np.clip(again + sigma * noise, 0, 255).astype(np.uint8), 13)
            for sigma in (8, 32)
        ]
    assert same["swd_x1e3_avg"] < 1.5 * floor["swd_x1e3_avg"]
    assert shifted[0]["swd_x1e3_avg"] > 1.5 * floor["swd_x1e3_avg"]
    assert shifted[1]["swd_x1e3_avg"] > 1.5 * shifted[0]["swd_x1e3_avg"]
    for level in ("swd_x1e3_32", "swd_x1e3_16"):
        assert shifted[1][level] > floor[level]


def test_swd_needs_16_pixels():
    with pytest.raises(ValueError, match="at least 16x16"):
        swd.describe([np.zeros((2, 8, 8, 3), np.uint8)], 8, seed=0)


# ------------------------------------------------- SWD, the previous in-memory implementation


def _previous_normalize(descriptors):
    """As the previous `normalize_descriptors`, but with float64 sums: NumPy's float32 mean
    over the leading axes adds sequentially and drifts (by ~1e-4 already on these small sets)."""
    d = np.asarray(descriptors, np.float64)
    d = d - d.mean(axis=(0, 1, 2), keepdims=True)
    d = d / d.std(axis=(0, 1, 2), keepdims=True)
    return d.astype(np.float32).reshape(d.shape[0], -1)


def _previous_describe(images, resolution, seed):
    """Every level's normalised descriptors of every image, held in memory."""
    resolutions = swd.level_resolutions(resolution)
    rng = np.random.default_rng(seed)
    per_level = [[] for _ in resolutions]
    for batch in images:
        pyramid = swd.laplacian_pyramid(jnp.asarray(batch), len(resolutions))
        for lod, level in enumerate(pyramid):
            centres = swd.sample_centres(rng, batch.shape[0], level.shape[1])
            per_level[lod].append(np.asarray(swd.extract_descriptors(level, jnp.asarray(centres))))
    return [_previous_normalize(np.concatenate(d)) for d in per_level], resolutions


@jax.jit
def _previous_sliced_wasserstein(a, b, directions):
    def one_repeat(dirs):
        proj_a = jnp.sort(a @ dirs, axis=0)
        proj_b = jnp.sort(b @ dirs, axis=0)
        return jnp.mean(jnp.abs(proj_a - proj_b))

    return jnp.mean(jax.lax.map(one_repeat, directions))


def _previous_distance(a, b, seed=0):
    (levels_a, resolutions), (levels_b, _) = a, b
    rng = np.random.default_rng(seed)
    result = {}
    for res, da, db in zip(resolutions, levels_a, levels_b, strict=True):
        n = min(len(da), len(db))
        directions = jnp.asarray(swd.sample_directions(rng, da.shape[1]))
        swd_value = _previous_sliced_wasserstein(
            jnp.asarray(da[:n]), jnp.asarray(db[:n]), directions
        )
        result[f"swd_x1e3_{res}"] = float(swd_value) * 1e3
    result["swd_x1e3_avg"] = float(np.mean(list(result.values())))
    return result


def _batches(images, size):
    return [images[i : i + size] for i in range(0, len(images), size)]


@pytest.mark.slow
@pytest.mark.parametrize(("resolution", "count", "batch"), [(32, 24, 10), (64, 12, 5)])
def test_streamed_swd_equals_the_previous_implementation(resolution, count, batch):
    """Level files compared one level at a time, with the reference's sorted projections
    shared by the others (one of them shorter): the numbers of the previous code, which held
    every level of every set and compared pairs."""
    reals = _faces(count, seed=0, resolution=resolution)
    again = _faces(count, seed=1, resolution=resolution)
    noisy = np.random.default_rng(0).normal(0, 16, again.shape)
    noisy = np.clip(again + noisy, 0, 255).astype(np.uint8)[: count - 3]  # a shorter set
    sets = [(reals, 1), (again, 2), (noisy, 3)]
    previous = [_previous_describe(_batches(x, batch), resolution, seed) for x, seed in sets]
    expected = [_previous_distance(previous[0], other) for other in previous[1:]]
    described = [swd.describe(_batches(x, batch), resolution, seed) for x, seed in sets]
    try:
        got = swd.distances(described[0], described[1:])
    finally:
        for d in described:
            d.close()
    assert [sorted(g) for g in got] == [sorted(e) for e in expected]
    for g, e in zip(got, expected, strict=True):
        for key in e:
            assert g[key] == pytest.approx(e[key], rel=1e-5), key


def test_descriptor_normalisation_stays_accurate_over_a_large_set():
    """A coarse level's descriptors (pixel values around 128) of 200 images: a float32 sum
    that adds sequentially is already off by 2e-3 here; ours must match float64 sums."""
    rng = np.random.default_rng(0)
    raw = (128 + 40 * rng.standard_normal((200 * 128, 7, 7, 3))).astype(np.float32)
    expected = _previous_normalize(raw)
    got = np.asarray(swd.normalize_descriptors(jnp.asarray(raw))).reshape(len(raw), -1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_descriptor_files_are_removed_on_close():
    images = _faces(2, seed=0)
    with swd.describe([images], 32, seed=0) as described:
        directory = described.directory.name
        assert sorted(os.listdir(directory)) == ["level_16.f32", "level_32.f32"]
        assert os.path.getsize(os.path.join(directory, "level_16.f32")) == 2 * 128 * 147 * 4
    assert not os.path.exists(directory)
