"""Multi-scale SSIM between consecutive pairs of generated images (diversity; lower = more varied).

The official `metrics/ms_ssim.py` (the TF-models port): 11x11 Gaussian window with sigma 1.5,
k1 0.01, k2 0.03, max value 255, five scales with weights (0.0448, 0.2856, 0.3001, 0.2363,
0.1333), 2x2 box downsampling between scales, negative values clipped to zero.
"""

import numpy as np
from scipy import signal

WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])

MIN_SIZE = 2 ** (len(WEIGHTS) - 1)  # the coarsest scale keeps one pixel


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    x, y = np.mgrid[offset + start : stop, offset + start : stop]
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return g / g.sum()


def _ssim_and_contrast(a, b, max_val=255.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    """Per-image SSIM and contrast-structure terms of NHWC float images."""
    _, height, width, _ = a.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size
    window = _gaussian_window(size, sigma).reshape(1, size, size, 1)
    mu_a = signal.fftconvolve(a, window, mode="valid")
    mu_b = signal.fftconvolve(b, window, mode="valid")
    var_a = signal.fftconvolve(a * a, window, mode="valid") - mu_a * mu_a
    var_b = signal.fftconvolve(b * b, window, mode="valid") - mu_b * mu_b
    cov = signal.fftconvolve(a * b, window, mode="valid") - mu_a * mu_b
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1, v2 = 2.0 * cov + c2, var_a + var_b + c2
    ssim = np.mean(
        ((2.0 * mu_a * mu_b + c1) * v1) / ((mu_a**2 + mu_b**2 + c1) * v2), axis=(1, 2, 3)
    )
    return ssim, np.mean(v1 / v2, axis=(1, 2, 3))


def _box_downsample(x: np.ndarray) -> np.ndarray:
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean MS-SSIM of image pairs (a[i], b[i]), uint8 or float in [0, 255], NHWC."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(a.shape[1:3]) < MIN_SIZE:
        raise ValueError(
            f"MS-SSIM's {len(WEIGHTS)} scales need images of at least {MIN_SIZE}x{MIN_SIZE}, "
            f"got {a.shape[1]}x{a.shape[2]}"
        )
    ssims, contrasts = [], []
    for _ in range(len(WEIGHTS)):
        ssim, contrast = _ssim_and_contrast(a, b)
        ssims.append(ssim)
        contrasts.append(contrast)
        a, b = _box_downsample(a), _box_downsample(b)
    ssims = np.clip(np.asarray(ssims), 0.0, np.inf)
    contrasts = np.clip(np.asarray(contrasts), 0.0, np.inf)
    per_pair = np.prod(contrasts[:-1] ** WEIGHTS[:-1, None], axis=0) * ssims[-1] ** WEIGHTS[-1]
    return float(np.mean(per_pair))


def consecutive_pairs_ms_ssim(images: np.ndarray) -> float:
    """MS-SSIM between images 0-1, 2-3, ... of a generated set, as the paper reports it."""
    count = len(images) // 2 * 2
    return ms_ssim(images[0:count:2], images[1:count:2])
