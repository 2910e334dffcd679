"""MS-SSIM (progan_jax.metrics.ms_ssim) against closed forms and the previous SciPy
implementation."""

import numpy as np
import pytest
from scipy import signal

from progan_jax.data import sources, synthetic
from progan_jax.metrics import ms_ssim


def _faces(count, seed, resolution=32):
    return np.stack([synthetic.draw_face(i, resolution, seed) for i in range(count)])


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
    assert ms_ssim.consecutive_pairs_ms_ssim([repeated]) == pytest.approx(1.0)
    assert ms_ssim.consecutive_pairs_ms_ssim([images]) < 0.9


def test_box_filtered_faces_stay_close_to_drawn_ones():
    big = _faces(4, seed=0, resolution=64)
    small = sources.box_downsample(big, 2)
    assert ms_ssim.ms_ssim(small.repeat(2, 1).repeat(2, 2), big) > 0.8


# ----------------------------------------------- MS-SSIM, the previous SciPy implementation

_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _previous_gaussian_window(size, sigma):
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    x, y = np.mgrid[offset + start : stop, offset + start : stop]
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return g / g.sum()


def _previous_ssim_and_contrast(a, b, max_val=255.0, filter_size=11, filter_sigma=1.5):
    _, height, width, _ = a.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = _previous_gaussian_window(size, sigma).reshape(1, size, size, 1)
    mu_a = signal.fftconvolve(a, window, mode="valid")
    mu_b = signal.fftconvolve(b, window, mode="valid")
    var_a = signal.fftconvolve(a * a, window, mode="valid") - mu_a * mu_a
    var_b = signal.fftconvolve(b * b, window, mode="valid") - mu_b * mu_b
    cov = signal.fftconvolve(a * b, window, mode="valid") - mu_a * mu_b
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    v1, v2 = 2.0 * cov + c2, var_a + var_b + c2
    ssim = np.mean(
        ((2.0 * mu_a * mu_b + c1) * v1) / ((mu_a**2 + mu_b**2 + c1) * v2), axis=(1, 2, 3)
    )
    return ssim, np.mean(v1 / v2, axis=(1, 2, 3))


def _previous_box_downsample(x):
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25


def _previous_ms_ssim(a, b):
    """The previous module's `ms_ssim`: float64, every pair at once, SciPy on the host."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ssims, contrasts = [], []
    for _ in range(len(_WEIGHTS)):
        ssim, contrast = _previous_ssim_and_contrast(a, b)
        ssims.append(ssim)
        contrasts.append(contrast)
        a, b = _previous_box_downsample(a), _previous_box_downsample(b)
    ssims = np.clip(np.asarray(ssims), 0.0, np.inf)
    contrasts = np.clip(np.asarray(contrasts), 0.0, np.inf)
    per_pair = np.prod(contrasts[:-1] ** _WEIGHTS[:-1, None], axis=0) * ssims[-1] ** _WEIGHTS[-1]
    return float(np.mean(per_pair))


def _ms_ssim_cases():
    rng = np.random.default_rng(0)
    faces = _faces(6, seed=0, resolution=64)
    flat = lambda level: np.clip(level + rng.normal(0, 1, faces.shape), 0, 255)
    return {
        "different faces": (faces, faces[::-1]),
        "noisy faces": (faces, np.clip(faces + rng.normal(0, 25, faces.shape), 0, 255)),
        "nearly flat grey": (flat(128), flat(128)),
        "nearly flat white": (flat(250), flat(251)),
        "uniform noise": tuple(rng.integers(0, 256, (2, *faces.shape), dtype=np.uint8)),
        "16x16, window 11 to 1": (faces[:, ::4, ::4], faces[::-1, ::4, ::4]),
        "32x48": (faces[:, :32, :48], faces[::-1, :32, :48]),
    }


@pytest.mark.parametrize("case", list(_ms_ssim_cases()))
def test_jax_ms_ssim_equals_the_previous_scipy_implementation(case):
    a, b = _ms_ssim_cases()[case]
    assert ms_ssim.ms_ssim(a, b) == pytest.approx(_previous_ms_ssim(a, b), rel=1e-5)


def test_consecutive_pairs_stream_over_batches_of_any_size():
    """Pairs that straddle two batches count, and an odd last image does not."""
    images = _faces(13, seed=2, resolution=32)
    batches = [images[:3], images[3:7], images[7:8], images[8:13]]
    expected = _previous_ms_ssim(images[0:12:2], images[1:12:2])
    assert ms_ssim.consecutive_pairs_ms_ssim(batches) == pytest.approx(expected, rel=1e-5)
    assert ms_ssim.consecutive_pairs_ms_ssim(iter(batches)) == pytest.approx(expected, rel=1e-5)
