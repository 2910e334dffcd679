"""Metrics against NumPy transcriptions of the official code and closed forms."""

import numpy as np
import pytest
import scipy.ndimage

from progan_jax import sources, synthetic
from progan_jax.metrics import ms_ssim, swd

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
        dist_ours = swd.sliced_wasserstein(ours[0][lod], ours[1][lod], directions[:, perm])
        dist_theirs = _official_swd(theirs[0][lod], theirs[1][lod], directions)
        np.testing.assert_allclose(float(dist_ours), dist_theirs, rtol=1e-4)


def _faces(count, seed, resolution=32):
    return np.stack([synthetic.draw_face(i, resolution, seed) for i in range(count)])


def test_swd_is_at_the_noise_floor_for_the_same_distribution_and_grows_with_a_shift():
    """Two draws of the faces are as far apart as the noise floor; noisier draws (a shift of the
    local statistics, which is what SWD measures: the descriptors are normalised, so a global
    brightness change would not count) are further, the more so the noisier."""
    reals = _faces(64, seed=0)
    again = _faces(64, seed=1)  # another draw of the same distribution
    noise = np.random.default_rng(0).normal(size=again.shape)

    def describe(images, seed):
        return swd.describe([images[:32], images[32:]], 32, seed=seed)

    base = describe(reals, 10)
    floor = swd.distance(base, describe(again, 11))
    same = swd.distance(base, describe(reals, 12))
    shifted = [
        swd.distance(base, describe(np.clip(again + sigma * noise, 0, 255).astype(np.uint8), 13))
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


# ------------------------------------------------------------------------------ MS-SSIM


def test_ms_ssim_of_identical_images_is_one_and_drops_with_difference():
    images = _faces(8, seed=0, resolution=64)
    assert ms_ssim.ms_ssim(images, images) == pytest.approx(1.0, abs=1e-9)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 25, images.shape), 0, 255)
    value = ms_ssim.ms_ssim(images, noisy)
    assert 0.2 < value < 0.99
    different = ms_ssim.ms_ssim(images, images[::-1])
    assert different < value


def test_ms_ssim_needs_16_pixels_for_its_five_scales():
    images = _faces(4, seed=0, resolution=16)
    assert ms_ssim.ms_ssim(images, images) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 16x16, got 8x8"):
        ms_ssim.ms_ssim(images[:, ::2, ::2], images[:, ::2, ::2])


def test_consecutive_pairs():
    images = _faces(6, seed=0, resolution=64)
    repeated = np.repeat(images[:3], 2, axis=0)  # pairs of identical images
    assert ms_ssim.consecutive_pairs_ms_ssim(repeated) == pytest.approx(1.0)
    assert ms_ssim.consecutive_pairs_ms_ssim(images) < 0.9


def test_box_filtered_faces_stay_close_to_drawn_ones():
    big = _faces(4, seed=0, resolution=64)
    small = sources.box_downsample(big, 2)
    assert ms_ssim.ms_ssim(small.repeat(2, 1).repeat(2, 2), big) > 0.8
