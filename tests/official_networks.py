"""A clean-room NumPy reference of the official ProGAN networks, for the import tests.

Written from the paper and from what the official `networks.py` computes (G_paper, D_paper),
in its own layout (NCHW, HWIO weights named as the official variables) and its own
formulation: the fused resamplings as the official 4x4 kernels (a transposed convolution up,
a stride-2 convolution down), the recursive level-of-detail blending, nearest upscaling by
repetition. It shares nothing with progan_jax, so that an import which maps a variable wrongly
cannot agree with it. float64 throughout.

`random_variables` draws a network's variables (biases included: the official init leaves
them zero, which would hide a bias that went missing).
"""

import math

import numpy as np

SQRT2 = math.sqrt(2.0)


def nf(stage: int, kw: dict) -> int:
    return min(int(kw["fmap_base"] / 2.0 ** (stage * kw["fmap_decay"])), kw["fmap_max"])


# ------------------------------------------------------------------------------- NCHW ops


def leaky(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.2 * x)


def pixel_norm(x: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    return x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + eps)


def upscale(x: np.ndarray, factor: int) -> np.ndarray:
    return x.repeat(factor, axis=2).repeat(factor, axis=3)


def downscale(x: np.ndarray, factor: int) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


def conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'SAME' cross-correlation, stride 1; w is [k, k, in, out]."""
    k = w.shape[0]
    pad = k // 2
    h, wd = x.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = 0.0
    for i in range(k):
        for j in range(k):
            out = out + np.einsum("nchw,co->nohw", xp[:, :, i : i + h, j : j + wd], w[i, j])
    return out


def _widen(w: np.ndarray) -> np.ndarray:
    """A 3x3 kernel as the 4x4 one that samples every 2x2 of it (the fused resamplings)."""
    p = np.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
    return p[1:, 1:] + p[:-1, 1:] + p[1:, :-1] + p[:-1, :-1]


def conv_down_fused(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """A stride-2 'SAME' convolution with the widened kernel / 4 ([k, k, in, out])."""
    w4 = _widen(w) * 0.25
    h, wd = x.shape[2] // 2, x.shape[3] // 2
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # TF's SAME: (out-1)*2 + 4 - in = 2
    out = 0.0
    for i in range(4):
        for j in range(4):
            patch = xp[:, :, i : i + 2 * h : 2, j : j + 2 * wd : 2]
            out = out + np.einsum("nchw,co->nohw", patch, w4[i, j])
    return out


def conv_up_fused(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The transposed stride-2 'SAME' convolution with the widened kernel ([k, k, out, in]):
    each input pixel adds its kernel-weighted copy to a 4x4 window of the output."""
    w4 = _widen(w)
    n, _, h, wd = x.shape
    out = np.zeros((n, w.shape[2], 2 * h + 2, 2 * wd + 2))
    for i in range(4):
        for j in range(4):
            out[:, :, i : i + 2 * h : 2, j : j + 2 * wd : 2] += np.einsum(
                "nihw,oi->nohw", x, w4[i, j]
            )
    return out[:, :, 1 : 1 + 2 * h, 1 : 1 + 2 * wd]


def minibatch_stddev(x: np.ndarray, group: int) -> np.ndarray:
    """Groups are strided: sample i is in group i mod (N / G)."""
    n, _, h, w = x.shape
    g = min(group, n)
    y = x.reshape(g, n // g, *x.shape[1:])
    std = np.sqrt(((y - y.mean(axis=0)) ** 2).mean(axis=0) + 1e-8).mean(axis=(1, 2, 3))
    stat = np.tile(std, g)[:, None, None, None] * np.ones((n, 1, h, w))
    return np.concatenate([x, stat], axis=1)


# --------------------------------------------------------------------------------- layers


class _Layers:
    def __init__(self, variables: dict, use_wscale: bool):
        self.v = {k: np.asarray(a, np.float64) for k, a in variables.items()}
        self.use_wscale = use_wscale

    def weight(self, name: str, gain: float, fan_in: int | None = None) -> np.ndarray:
        w = self.v[f"{name}/weight"]
        fan_in = fan_in or int(np.prod(w.shape[:-1]))
        return w * (gain / math.sqrt(fan_in)) if self.use_wscale else w

    def bias(self, name: str, x: np.ndarray) -> np.ndarray:
        b = self.v[f"{name}/bias"]
        return x + (b if x.ndim == 2 else b[None, :, None, None])

    def conv(self, name: str, x: np.ndarray, gain: float = SQRT2) -> np.ndarray:
        return self.bias(name, conv_same(x, self.weight(name, gain)))

    def dense(self, name: str, x: np.ndarray, gain: float = SQRT2) -> np.ndarray:
        x = x.reshape(x.shape[0], -1)
        return x @ self.weight(name, gain)


# ------------------------------------------------------------------------------ networks


def generator(variables: dict, kw: dict, latents: np.ndarray, lod: float, labels=None):
    """The official G's images [N, C, R, R] at level of detail `lod` (always full size)."""
    L = _Layers(variables, kw["use_wscale"])
    top = int(math.log2(kw["resolution"]))
    norm = (lambda x: pixel_norm(x)) if kw["use_pixelnorm"] else (lambda x: x)
    x0 = latents if labels is None else np.concatenate([latents, labels], axis=1)

    def block(x: np.ndarray, res: int) -> np.ndarray:
        r = 2**res
        if res == 2:
            x = pixel_norm(x) if kw["normalize_latents"] else x
            x = L.dense("4x4/Dense", x, gain=SQRT2 / 4).reshape(-1, nf(1, kw), 4, 4)
            x = norm(leaky(L.bias("4x4/Dense", x)))
            return norm(leaky(L.conv("4x4/Conv", x)))
        if kw.get("fused_scale", True):
            name = f"{r}x{r}/Conv0_up"
            w = L.weight(name, SQRT2, fan_in=9 * x.shape[1])
            x = norm(leaky(L.bias(name, conv_up_fused(x, w))))
        else:
            x = norm(leaky(L.conv(f"{r}x{r}/Conv0", upscale(x, 2))))
        return norm(leaky(L.conv(f"{r}x{r}/Conv1", x)))

    def to_rgb(x: np.ndarray, res: int) -> np.ndarray:
        return L.conv(f"ToRGB_lod{top - res}", x, gain=1.0)

    def grow(x: np.ndarray, res: int, level: int) -> np.ndarray:
        y = block(x, res)
        if level > 0 and lod < level:  # a finer level is (partly) shown: go on
            return grow(y, res + 1, level - 1)
        image = to_rgb(y, res)
        if res > 2 and lod > level:  # this level is fading in over the coarser one
            image = image + (upscale(to_rgb(x, res - 1), 2) - image) * (lod - level)
        return upscale(image, 2**level)

    return grow(x0, 2, top - 2)


def critic(variables: dict, kw: dict, images: np.ndarray, lod: float):
    """The official D's output [N, 1 + label_size] of full-size images at `lod`."""
    L = _Layers(variables, kw["use_wscale"])
    top = int(math.log2(kw["resolution"]))

    def from_rgb(x: np.ndarray, res: int) -> np.ndarray:
        return leaky(L.conv(f"FromRGB_lod{top - res}", x))

    def block(x: np.ndarray, res: int) -> np.ndarray:
        r = 2**res
        if res >= 3:
            x = leaky(L.conv(f"{r}x{r}/Conv0", x))
            if kw.get("fused_scale", True):
                name = f"{r}x{r}/Conv1_down"
                return leaky(L.bias(name, conv_down_fused(x, L.weight(name, SQRT2))))
            return downscale(leaky(L.conv(f"{r}x{r}/Conv1", x)), 2)
        if kw.get("mbstd_group_size", 4) > 1:
            x = minibatch_stddev(x, kw.get("mbstd_group_size", 4))
        x = leaky(L.conv("4x4/Conv", x))
        x = leaky(L.bias("4x4/Dense0", L.dense("4x4/Dense0", x)))
        return L.bias("4x4/Dense1", L.dense("4x4/Dense1", x, gain=1.0))

    def grow(res: int, level: int) -> np.ndarray:
        if level > 0 and lod < level:
            x = grow(res + 1, level - 1)
        else:
            x = from_rgb(downscale(images, 2**level), res)
        x = block(x, res)
        if res > 2 and lod > level:
            coarser = from_rgb(downscale(images, 2 ** (level + 1)), res - 1)
            x = x + (coarser - x) * (lod - level)
        return x

    return grow(2, top - 2)


# ----------------------------------------------------------------------------- variables


def generator_shapes(kw: dict) -> dict[str, tuple]:
    top = int(math.log2(kw["resolution"]))
    shapes = {
        "4x4/Dense": (kw["latent_size"] + kw.get("label_size", 0), nf(1, kw) * 16),
        "4x4/Conv": (3, 3, nf(1, kw), nf(1, kw)),
    }
    for res in range(3, top + 1):
        r, fin, fout = 2**res, nf(res - 2, kw), nf(res - 1, kw)
        if kw.get("fused_scale", True):
            shapes[f"{r}x{r}/Conv0_up"] = (3, 3, fout, fin)
        else:
            shapes[f"{r}x{r}/Conv0"] = (3, 3, fin, fout)
        shapes[f"{r}x{r}/Conv1"] = (3, 3, fout, fout)
    for res in range(2, top + 1):
        shapes[f"ToRGB_lod{top - res}"] = (1, 1, nf(res - 1, kw), kw["num_channels"])
    return {**{f"{k}/weight": v for k, v in shapes.items()}, **_biases(shapes, "4x4/Dense", kw)}


def critic_shapes(kw: dict) -> dict[str, tuple]:
    top = int(math.log2(kw["resolution"]))
    shapes = {}
    for res in range(top, 1, -1):
        shapes[f"FromRGB_lod{top - res}"] = (1, 1, kw["num_channels"], nf(res - 1, kw))
    for res in range(top, 2, -1):
        r = 2**res
        shapes[f"{r}x{r}/Conv0"] = (3, 3, nf(res - 1, kw), nf(res - 1, kw))
        down = f"{r}x{r}/Conv1_down" if kw.get("fused_scale", True) else f"{r}x{r}/Conv1"
        shapes[down] = (3, 3, nf(res - 1, kw), nf(res - 2, kw))
    extra = 1 if kw.get("mbstd_group_size", 4) > 1 else 0
    shapes["4x4/Conv"] = (3, 3, nf(1, kw) + extra, nf(1, kw))
    shapes["4x4/Dense0"] = (nf(1, kw) * 16, nf(0, kw))
    shapes["4x4/Dense1"] = (nf(0, kw), 1 + kw.get("label_size", 0))
    return {**{f"{k}/weight": v for k, v in shapes.items()}, **_biases(shapes, None, kw)}


def _biases(shapes: dict, per_map: str | None, kw: dict) -> dict[str, tuple]:
    """One bias per output feature map (G's dense layer: per map, not per unit)."""
    return {
        f"{k}/bias": (nf(1, kw),) if k == per_map else (v[-1] if "Conv0_up" not in k else v[2],)
        for k, v in shapes.items()
    }


def random_variables(shapes: dict[str, tuple], rng: np.random.Generator) -> dict:
    """N(0, 1) weights and N(0, 0.5) biases, float32."""
    return {
        name: rng.normal(0.0, 0.5 if name.endswith("bias") else 1.0, shape).astype(np.float32)
        for name, shape in shapes.items()
    }
