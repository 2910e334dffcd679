"""A NumPy reference of pytorch_GAN_zoo's PGAN networks (GNet, DNet), for the import tests.

Written from what its `progressive_conv_net.py`, `custom_layers.py` and
`mini_batch_stddev_module.py` compute, in its own layout: state-dict names, OIHW kernels,
`Linear` weights [out, in], `c * (W x + b)` with c = sqrt(2 / fan_in) on every layer, alpha
weighting the old branch. float64, NCHW; shares nothing with progan_jax.
"""

import math

import numpy as np

from tests.official_networks import conv_same, downscale, leaky, pixel_norm, upscale


class _Layers:
    def __init__(self, state: dict):
        self.s = {k: np.asarray(v, np.float64) for k, v in state.items()}

    def _c(self, w: np.ndarray) -> float:
        return math.sqrt(2.0 / np.prod(w.shape[1:]))

    def conv(self, name: str, x: np.ndarray) -> np.ndarray:
        w, b = self.s[f"{name}.module.weight"], self.s[f"{name}.module.bias"]
        return self._c(w) * (conv_same(x, w.transpose(2, 3, 1, 0)) + b[None, :, None, None])

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        w, b = self.s[f"{name}.module.weight"], self.s[f"{name}.module.bias"]
        return self._c(w) * (x @ w.T + b)


def generator(state: dict, scales: int, z: np.ndarray, alpha: float) -> np.ndarray:
    L = _Layers(state)
    x = leaky(L.linear("formatLayer", pixel_norm(z)))
    x = pixel_norm(x.reshape(x.shape[0], -1, 4, 4))
    x = pixel_norm(leaky(L.conv("groupScale0.0", x)))
    previous = x
    for i in range(scales):
        previous = x
        x = upscale(x, 2)
        x = pixel_norm(leaky(L.conv(f"scaleLayers.{i}.0", x)))
        x = pixel_norm(leaky(L.conv(f"scaleLayers.{i}.1", x)))
    out = L.conv(f"toRGBLayers.{scales}", x)
    if alpha > 0 and scales > 0:
        old = upscale(L.conv(f"toRGBLayers.{scales - 1}", previous), 2)
        out = alpha * old + (1 - alpha) * out
    return out


def minibatch_stddev(x: np.ndarray) -> np.ndarray:
    """Groups of 4 consecutive samples, the unbiased variance."""
    n, _, h, w = x.shape
    g = min(n, 4)
    g = n if n % g else g
    y = x.reshape(n // g, g, *x.shape[1:])
    std = np.sqrt(y.var(axis=1, ddof=1) + 1e-8).mean(axis=(1, 2, 3))
    stat = np.repeat(std, g)[:, None, None, None] * np.ones((n, 1, h, w))
    return np.concatenate([x, stat], axis=1)


def critic(state: dict, scales: int, images: np.ndarray, alpha: float) -> np.ndarray:
    L = _Layers(state)
    x = images
    if alpha > 0 and scales > 0:
        old = leaky(L.conv(f"fromRGBLayers.{scales - 1}", downscale(x, 2)))
    x = leaky(L.conv(f"fromRGBLayers.{scales}", x))
    for i in reversed(range(scales)):
        x = leaky(L.conv(f"scaleLayers.{i}.0", x))
        x = downscale(leaky(L.conv(f"scaleLayers.{i}.1", x)), 2)
        if i == scales - 1 and alpha > 0 and scales > 1:
            x = alpha * old + (1 - alpha) * x
    x = leaky(L.conv("groupScaleZero.0", minibatch_stddev(x)))
    x = leaky(L.linear("groupScaleZero.1", x.reshape(x.shape[0], -1)))
    return L.linear("decisionLayer", x)


def state_shapes(depths: list[int], latent: int, channels: int = 3) -> tuple[dict, dict]:
    """(G's, D's) state-dict shapes for scale depths `depths` (depthScale0 first)."""
    d0 = depths[0]
    g = {"formatLayer": (16 * d0, latent), "groupScale0.0": (d0, d0, 3, 3)}
    d = {
        "groupScaleZero.0": (d0, d0 + 1, 3, 3),
        "groupScaleZero.1": (d0, 16 * d0),
        "decisionLayer": (1, d0),
    }
    for k, depth in enumerate(depths):
        g[f"toRGBLayers.{k}"] = (channels, depth, 1, 1)
        d[f"fromRGBLayers.{k}"] = (depth, channels, 1, 1)
        if k:
            g[f"scaleLayers.{k - 1}.0"] = (depth, depths[k - 1], 3, 3)
            g[f"scaleLayers.{k - 1}.1"] = (depth, depth, 3, 3)
            d[f"scaleLayers.{k - 1}.0"] = (depth, depth, 3, 3)
            d[f"scaleLayers.{k - 1}.1"] = (depths[k - 1], depth, 3, 3)

    def with_biases(shapes: dict) -> dict:
        out = {}
        for name, shape in shapes.items():
            out[f"{name}.module.weight"] = shape
            out[f"{name}.module.bias"] = (shape[0],)
        return out

    return with_biases(g), with_biases(d)


def random_state(shapes: dict, rng: np.random.Generator) -> dict:
    return {
        name: rng.normal(0.0, 0.5 if name.endswith("bias") else 1.0, shape).astype(np.float32)
        for name, shape in shapes.items()
    }


def random_networks(depths: list[int], latent: int, rng: np.random.Generator) -> dict:
    """A checkpoint's three state dicts ('netG', 'netD', 'avgG'), random."""
    g_shapes, d_shapes = state_shapes(depths, latent)
    return {
        "netG": random_state(g_shapes, rng),
        "netD": random_state(d_shapes, rng),
        "avgG": random_state(g_shapes, rng),
    }
