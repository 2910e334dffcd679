"""Convolutions of the networks: plain 'SAME' convs and the fused resampling convs.

The fused forms follow the official code's `fused_scale` (`upscale2d_conv2d`,
`conv2d_downscale2d`), rewritten for XLA as stride-1 convolutions over the low-resolution grid:

* upsample-then-3x3-conv == a 2x2 conv producing the four output phases (sub-pixel layout)
  followed by a depth-to-space shuffle;
* 3x3-conv-then-2x2-avgpool == a space-to-depth shuffle followed by a 2x2 conv.

Every convolution takes its gradient rules explicitly (`gradients`, one of `GRADIENT_RULES`):
'xla' differentiates XLA's convolution as JAX does (cuDNN / TPU kernels, fast there); 'matmul'
uses this module's rules below, built from forward convolutions and matrix products, which
XLA:CPU runs several times faster. The maths is the same; a run picks one when its networks are
built (`config.model.conv_gradients`, 'auto': by platform), never at trace time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ("NHWC", "HWIO", "NHWC")

# Row maps from a 3-tap kernel to the 2-tap kernels of the upsampling phases: phase 0 of output
# row 2i sees (x[i-1], x[i]) through (w0, w1 + w2); phase 1 of row 2i+1 sees (x[i], x[i+1])
# through (w0 + w1, w2).
_UP_PHASES = np.array(
    [[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=np.float32
)  # [phase, tap, k]
# Row map from a 3-tap kernel followed by a 2-average to the 4-tap stride-2 kernel.
_DOWN_TAPS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=np.float32) / 2


Padding = tuple[tuple[int, int], tuple[int, int]]
GRADIENT_RULES = ("matmul", "xla")


def gradient_rules_for(platform: str) -> str:
    """The faster rules on `platform` ('cpu', 'gpu', 'tpu'): 'matmul' on CPU, else 'xla'."""
    return "matmul" if platform == "cpu" else "xla"


def _same(w: jax.Array) -> Padding:
    kh, kw = w.shape[:2]
    return ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2))


def conv(x: jax.Array, w: jax.Array, gradients: str, padding: Padding | None = None) -> jax.Array:
    """Stride-1 convolution differentiated by `gradients`' rules; 'SAME' padding unless given
    as ((top, bottom), (left, right))."""
    padding = _same(w) if padding is None else padding
    if gradients == "matmul":
        return _conv(x, w, padding)
    if gradients == "xla":
        return _xla_conv(x, w, padding)
    raise ValueError(f"gradients must be one of {GRADIENT_RULES}, got {gradients!r}")


def _xla_conv(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DIMS)


def _transpose_kernel(w: jax.Array) -> jax.Array:
    """The kernel whose convolution is the adjoint (input gradient) of convolving with `w`."""
    return jnp.flip(w, (0, 1)).swapaxes(2, 3)


def _transpose_padding(w: jax.Array, padding: Padding) -> Padding:
    return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:2], padding, strict=True))


# XLA's CPU backend differentiates these convolutions slowly: the weight gradients of the fused 2x2
# convs, and the second derivatives of all of them (docs/performance.md, "Convolution gradients").
# `conv` therefore has its own VJP: the input gradient is the forward convolution with the
# transposed kernel, and the weight gradient is `weight_grad`. Both are again built from forward
# convolutions and `weight_grad`, so second derivatives (the gradient penalty) stay on the fast
# paths too.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, w: jax.Array, padding: Padding) -> jax.Array:
    return _xla_conv(x, w, padding)


def _conv_fwd(x, w, padding):
    # Calls `_conv`, not XLA, so that differentiating this rule again uses the custom VJP.
    return _conv(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, dy):
    x, w = residuals
    dx = _conv(dy, _transpose_kernel(w), _transpose_padding(w, padding))
    return dx, weight_grad(x, dy, w.shape[:2], padding)


_conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def weight_grad(
    x: jax.Array, dy: jax.Array, kernel: tuple[int, int], padding: Padding
) -> jax.Array:
    """The gradient of `<conv(x, w, padding), dy>` with respect to `w`, by whichever form
    XLA:CPU runs fastest for the shape: its own filter-gradient convolution for the 3x3 'SAME' convs
    (docs/performance.md, "Convolution gradients": 16-17% off the whole step), per-tap matrix
    products for the rest (the fused resampling convs' 2x2 kernels and the 1x1 RGB layers),
    where XLA's form is several times slower. Either way its own derivatives are forward
    convolutions."""
    if kernel == (3, 3) and padding == ((1, 1), (1, 1)):
        return _xla_weight_grad(x, dy, kernel, padding)
    return _per_tap_weight_grad(x, dy, kernel, padding)


def _xla_weight_grad(x: jax.Array, dy: jax.Array, kernel: tuple[int, int], padding: Padding):
    # The convolution is linear in w: its transpose applied to dy is XLA's filter gradient.
    w = jax.ShapeDtypeStruct((*kernel, x.shape[-1], dy.shape[-1]), x.dtype)
    return jax.linear_transpose(lambda w: _xla_conv(x, w, padding), w)(dy)[0]


def _per_tap_weight_grad(x: jax.Array, dy: jax.Array, kernel: tuple[int, int], padding: Padding):
    """`dW[u, v] = sum_{n,p,q} xpad[n, p+u, q+v]^T dy[n, p, q]` as one matrix product per tap.

    With the padded input flattened to rows and `dy` laid out on the same padded grid (zeros
    outside the output), tap (u, v) reads one contiguous block of input rows, shifted by
    `u * padded_width + v`.
    """
    (kh, kw), ((top, bottom), (left, right)) = kernel, padding
    n, h, wd, cin = x.shape
    ho, wo, cout = dy.shape[1:]
    hp, wp = h + top + bottom, wd + left + right
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).reshape(n * hp * wp, cin)
    rows = ((n - 1) * hp + ho - 1) * wp + wo  # up to the last output position
    dyp = jnp.pad(dy, ((0, 0), (0, hp - ho), (0, wp - wo), (0, 0))).reshape(n * hp * wp, cout)[
        :rows
    ]
    offsets = jnp.asarray([u * wp + v for u in range(kh) for v in range(kw)], jnp.int32)

    def tap(offset):  # one loop body for all taps keeps the compiled program small
        rows_x = jax.lax.dynamic_slice_in_dim(xp, offset, rows)
        return jax.lax.dot_general(rows_x, dyp, (((0,), (0,)), ((), ())))

    taps = jax.lax.map(tap, offsets)
    return taps.reshape(kh, kw, cin, cout)


def _weight_grad_fwd(x, dy, kernel, padding):
    return weight_grad(x, dy, kernel, padding), (x, dy)


def _weight_grad_bwd(kernel, padding, residuals, dw_bar):
    # weight_grad is bilinear with <dw_bar, weight_grad(x, dy)> = <conv(x, dw_bar), dy>.
    x, dy = residuals
    dx = _conv(dy, _transpose_kernel(dw_bar), _transpose_padding(dw_bar, padding))
    return dx, _conv(x, dw_bar, padding)


weight_grad.defvjp(_weight_grad_fwd, _weight_grad_bwd)


# The 4-tap kernel rows of both fused forms: [w0, w0 + w1, w1 + w2, w2] (halved for the
# average of the downsampling form), as the official `upscale2d_conv2d` / `conv2d_downscale2d`
# pad and sum their kernels.
_SUMMED_TAPS = _DOWN_TAPS * 2


def _summed_kernel(w: jax.Array, taps: np.ndarray) -> jax.Array:
    return jnp.einsum("ur,vc,rcio->uvio", taps, taps, w).astype(w.dtype)


def upsample_conv(x: jax.Array, w: jax.Array, gradients: str) -> jax.Array:
    """conv(upsample2x(x), w) for a 3x3 kernel, without forming the upsampled input.

    With XLA's rules (GPUs, TPUs) it is their native form, as the official code's: a stride-2
    transposed convolution with the summed 4x4 kernel. The CPU-fast rules take the sub-pixel
    form below (four 2x2 phases of a stride-1 convolution), which XLA:CPU runs faster.
    """
    if gradients == "xla":
        return jax.lax.conv_general_dilated(
            x, _summed_kernel(w, _SUMMED_TAPS), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
            dimension_numbers=_DIMS,
        )  # fmt: skip
    n, h, wd, _ = x.shape
    cin, cout = w.shape[2:]
    # k[a, u, b, v] = sum_{r,c} P[a,u,r] P[b,v,c] w[r,c]: the 2x2 kernel of output phase (a, b).
    k = jnp.einsum("aur,bvc,rcio->uviabo", _UP_PHASES, _UP_PHASES, w).astype(w.dtype)
    z = conv(x, k.reshape(2, 2, cin, 4 * cout), gradients, ((1, 1), (1, 1)))  # [n, h+1, w+1, 4o]
    z = z.reshape(n, h + 1, wd + 1, 2, 2, cout)
    phases = [[z[:, a : a + h, b : b + wd, a, b] for b in range(2)] for a in range(2)]
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # [n, h, 2, w, 2, o]
    return y.reshape(n, 2 * h, 2 * wd, cout)


def conv_downsample(x: jax.Array, w: jax.Array, gradients: str) -> jax.Array:
    """downsample2x(conv(x, w)) for a 3x3 kernel, computed on the output grid: a stride-2
    convolution with the summed and averaged 4x4 kernel. XLA's rules take it as it is; the
    CPU-fast ones as a stride-1 2x2 convolution over a space-to-depth shuffle of the input."""
    k = _summed_kernel(w, _DOWN_TAPS)  # [4, 4, i, o]
    if gradients == "xla":
        return jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=_DIMS)
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    # Space-to-depth of the padded input turns the stride-2 4x4 conv into a stride-1 2x2 conv.
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    xs = xp.reshape(n, h // 2 + 1, 2, wd // 2 + 1, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    xs = xs.reshape(n, h // 2 + 1, wd // 2 + 1, 4 * cin)
    ks = k.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)
    return conv(xs, ks, gradients, ((0, 0), (0, 0)))
