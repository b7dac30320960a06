"""Stride-2 VALID convolutions and transposed convolutions written as matrix products.

On the CPU, XLA's convolution kernels are slow for the image model's shapes (the kernel gradient
of `lax.conv_transpose` for the two middle decoder layers dominated the Visual phase-1 step; see
benchmarks/results/phase1_cpu.json and docs/benchmarks.md). Here the same arithmetic is
im2col/col2im data movement around one GEMM per layer, and every gradient is a GEMM too (im2col
and col2im are each other's transpose, written as a custom_vjp pair so that neither gradient
becomes k*k padded copies), run in cache-sized chunks by cnn.py. The functions compute what
`lax.conv_general_dilated` / `lax.conv_transpose` (flax `nn.Conv` / `nn.ConvTranspose`, padding
VALID, no kernel flip) compute, with the same HWIO kernels, so parameters are interchangeable.
On a GPU the matrix products win too: cuDNN's kernel gradient of the last transposed convolution
(32 -> 3 channels) alone took longer than the whole float32 Visual step with the GEMM form
(benchmarks/results/profile_phase1_visual_lax_gpu.json, phase1_gpu.json).
`impl="lax"` keeps XLA's kernels (the choice for TPUs' MXU); `impl="auto"` picks by backend.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

Dtype = Any
IMPLS = ("auto", "gemm", "lax")
_DIMS = ("NHWC", "HWIO", "NHWC")
# The name of every layer's output for `jax.checkpoint` policies (see cnn._map_chunks).
CONV_OUTPUT = "conv_output"


def resolve_impl(impl: str, backend: str | None = None) -> str:
    """"auto" -> "gemm" on CPUs and GPUs, "lax" elsewhere (TPUs); `backend` defaults to JAX's."""
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "gemm" if (backend or jax.default_backend()) in ("cpu", "gpu") else "lax"
    return impl


@jax.custom_vjp
def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b for a (..., K) and b (K, N), with the weight gradient written as one product that
    contracts a's and the output gradient's leading (row) axes as they lie in memory. Same values
    and gradients as `a @ b`; what differs is XLA's CPU layout choice: from autodiff of `@` it
    copied the output gradient into column-major order first, a strided copy that, fused with the
    phase interleave of the 13->30 transposed convolution, cost more than the product itself."""
    return a @ b


def _matmul_fwd(a, b):
    return a @ b, (a, b)


def _matmul_bwd(res, g):
    a, b = res
    rows = lax.dot_general(a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return g @ b.T, rows


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _plain_product(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b kept as written on a CPU: XLA otherwise folds a transpose of the result into the
    product, turning it into one with transposed operands, which its CPU backend runs on a slower
    path than the plain product (Eigen rather than YNNPACK)."""
    y = a @ b
    return lax.optimization_barrier(y) if jax.default_backend() == "cpu" else y


@jax.custom_vjp
def matmul_channel_major(x: jax.Array, w: jax.Array) -> jax.Array:
    """(x @ w).T for x (M, C) and w (C, N): the product straight into channel-major (N, M) order,
    with both gradients as plain products, w @ g and g @ x, and only their small results
    transposed. From autodiff, XLA copied the (N, M) output gradient back to (M, N) (for the image
    layer, a copy the size of the chunk's images) and ran the kernel gradient with transposed
    operands."""
    return w.T @ x.T


def _channel_major_fwd(x, w):
    return w.T @ x.T, (x, w)


def _channel_major_bwd(res, g):
    x, w = res
    return _plain_product(w, g).T, _plain_product(g, x).T


matmul_channel_major.defvjp(_channel_major_fwd, _channel_major_bwd)


def conv_transpose_subpixel(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Transposed convolution by output phase: output row s*q+p only sees kernel taps p, p+s, ...,
    so all s*s phases are one stride-1 im2col product with J = ceil(k/s) taps per axis
    ((N*Q*Q, J*J*C) x (J*J*C, s*s*O)), then depth-to-space. Cheapest for the large layers."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    jh, jw = -(-kh // stride), -(-kw // stride)
    flipped = kernel[::-1, ::-1]
    flipped = jnp.pad(flipped, ((0, jh * stride - kh), (0, jw * stride - kw), (0, 0), (0, 0)))
    # [j, p, j2, p2, c, o]: tap (s*j + p, s*j2 + p2) of the flipped kernel.
    flipped = flipped.reshape(jh, stride, jw, stride, c, o)
    weights = jnp.transpose(flipped, (0, 2, 4, 1, 3, 5)).reshape(jh * jw * c, stride * stride * o)
    xp = jnp.pad(x, ((0, 0), (jh - 1, jh - 1), (jw - 1, jw - 1), (0, 0)))
    qh, qw = h + jh - 1, w + jw - 1
    cols = [
        xp[:, jh - 1 - j : jh - 1 - j + qh, jw - 1 - j2 : jw - 1 - j2 + qw, :]
        for j in range(jh)
        for j2 in range(jw)
    ]
    y = matmul(jnp.concatenate(cols, axis=-1), weights).reshape(n, qh, qw, stride, stride, o)
    y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, qh * stride, qw * stride, o)
    return y[:, : (h - 1) * stride + kh, : (w - 1) * stride + kw, :]


# im2col and col2im are each other's transpose, so each one's gradient is the other: written as
# a custom_vjp pair, neither gradient becomes a sum of k*k padded copies (which XLA's CPU backend
# runs slowly and, for the large layers, materialises).


def _im2col(x: jax.Array, kh: int, kw: int, s: int) -> jax.Array:
    """(n, h, w, c) -> (n, ho, wo, kh, kw, c): the VALID stride-s patches."""
    n, h, w, c = x.shape
    ho, wo = (h - kh) // s + 1, (w - kw) // s + 1
    cols = [x[:, a : a + s * (ho - 1) + 1 : s, b : b + s * (wo - 1) + 1 : s, :] for a in range(kh) for b in range(kw)]
    return jnp.stack(cols, axis=3).reshape(n, ho, wo, kh, kw, c)


def _overlap_add(tap, kh: int, kw: int, s: int, h: int, w: int, h_out: int, w_out: int, axis: int) -> jax.Array:
    """Sums tap(a, b) (spatial dims h x w at `axis`, `axis` + 1) into out[s*i + a, s*j + b].

    Output phase (p, p2) (rows s*q + p, columns s*q2 + p2) receives the taps a = p, p + s, ...
    shifted by (a - p) / s; the phases are summed separately and interleaved at the end.
    """
    qh, qw = -(-h_out // s), -(-w_out // s)
    rows = []
    for p in range(s):
        row = []
        for p2 in range(s):
            acc = None
            for a in range(p, kh, s):
                for b in range(p2, kw, s):
                    j, j2 = (a - p) // s, (b - p2) // s
                    term = tap(a, b)
                    pad = [(0, 0)] * term.ndim
                    pad[axis], pad[axis + 1] = (j, qh - j - h), (j2, qw - j2 - w)
                    term = jnp.pad(term, pad)
                    acc = term if acc is None else acc + term
            if acc is None:
                shape = list(tap(0, 0).shape)
                shape[axis], shape[axis + 1] = qh, qw
                acc = jnp.zeros(shape, tap(0, 0).dtype)
            row.append(acc)
        rows.append(jnp.stack(row, axis=axis + 2))  # (..., qh, qw, s, ...)
    out = jnp.stack(rows, axis=axis + 1)  # (..., qh, s, qw, s, ...)
    out = out.reshape(out.shape[:axis] + (qh * s, qw * s) + out.shape[axis + 4 :])
    return lax.slice_in_dim(lax.slice_in_dim(out, 0, h_out, axis=axis), 0, w_out, axis=axis + 1)


def _col2im(cols: jax.Array, s: int, h: int, w: int) -> jax.Array:
    """(n, ho, wo, kh, kw, c) -> (n, h, w, c) with out[s*i + a, s*j + b] += cols[i, j, a, b]."""
    _, ho, wo, kh, kw, _ = cols.shape
    return _overlap_add(lambda a, b: cols[:, :, :, a, b, :], kh, kw, s, ho, wo, h, w, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def im2col(x: jax.Array, kh: int, kw: int, s: int) -> jax.Array:
    return _im2col(x, kh, kw, s)


def _im2col_fwd(x, kh, kw, s):
    return _im2col(x, kh, kw, s), jnp.zeros(x.shape[1:3], jnp.int8)


def _im2col_bwd(kh, kw, s, shape_carrier, g):
    return (_col2im(g, s, *shape_carrier.shape),)


im2col.defvjp(_im2col_fwd, _im2col_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def col2im(cols: jax.Array, s: int, h: int, w: int) -> jax.Array:
    return _col2im(cols, s, h, w)


def _col2im_fwd(cols, s, h, w):
    return _col2im(cols, s, h, w), jnp.zeros(cols.shape[3:5], jnp.int8)


def _col2im_bwd(s, h, w, kernel_carrier, g):
    return (_im2col(g, *kernel_carrier.shape, s),)


col2im.defvjp(_col2im_fwd, _col2im_bwd)


# Channel-major ("planar") versions for layers with few output channels (the decoder's last,
# 3 channels): in NHWC each tap's slice of the (N, H, W, k*k*O) taps reads O of every k*k*O
# floats, i.e. every cache line of the whole tensor once per tap; with the taps leading, each
# slice is one contiguous block and the overlap-add runs over wide spatial rows.


def _col2im_planar(taps: jax.Array, s: int, h_out: int, w_out: int) -> jax.Array:
    """(kh, kw, o, n, h, w) -> (o, n, h_out, w_out) with out[..., s*i + a, s*j + b] += taps[a, b, ..., i, j]."""
    kh, kw, _, _, h, w = taps.shape
    return _overlap_add(lambda a, b: taps[a, b], kh, kw, s, h, w, h_out, w_out, axis=2)


def _im2col_planar(g: jax.Array, s: int, kh: int, kw: int, h: int, w: int) -> jax.Array:
    """(o, n, H, W) -> (kh, kw, o, n, h, w) with taps[a, b, ..., i, j] = g[..., s*i + a, s*j + b]."""
    cols = [g[:, :, a : a + s * (h - 1) + 1 : s, b : b + s * (w - 1) + 1 : s] for a in range(kh) for b in range(kw)]
    return jnp.stack(cols, axis=0).reshape(kh, kw, *g.shape[:2], h, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def col2im_planar(taps: jax.Array, s: int, h_out: int, w_out: int) -> jax.Array:
    return _col2im_planar(taps, s, h_out, w_out)


def _col2im_planar_fwd(taps, s, h_out, w_out):
    return _col2im_planar(taps, s, h_out, w_out), jnp.zeros(taps.shape[:2] + taps.shape[4:], jnp.int8)


def _col2im_planar_bwd(s, h_out, w_out, shape_carrier, g):
    kh, kw, h, w = shape_carrier.shape
    return (_im2col_planar(g, s, kh, kw, h, w),)


col2im_planar.defvjp(_col2im_planar_fwd, _col2im_planar_bwd)


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution (cross-correlation) of NHWC `x` with an HWIO kernel: im2col, then one
    (N*Ho*Wo, k*k*C) x (k*k*C, O) product."""
    kh, kw, c, o = kernel.shape
    cols = im2col(x, kh, kw, stride)
    return matmul(cols.reshape(cols.shape[:3] + (kh * kw * c,)), kernel.reshape(kh * kw * c, o))


def _tap_weights(kernel: jax.Array) -> jax.Array:
    """HWIO kernel -> (C, k*k*O): the spatially flipped taps of a transposed convolution."""
    kh, kw, c, o = kernel.shape
    return jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(c, kh * kw * o)


def conv_transpose_col2im(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Transposed convolution as one (N*H*W, C) x (C, k*k*O) product and col2im."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    taps = matmul(x, _tap_weights(kernel)).reshape(n, h, w, kh, kw, o)
    return col2im(taps, stride, (h - 1) * stride + kh, (w - 1) * stride + kw)


def conv_transpose_planar(x: jax.Array, kernel: jax.Array, stride: int, channel_major: bool = False) -> jax.Array:
    """Transposed convolution as one product into channel-major taps (k*k*O, N, H, W), planar
    col2im, and one transpose of the (small) output back to NHWC, or none with `channel_major`
    (output (O, N, H, W))."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    taps = matmul_channel_major(x.reshape(n * h * w, c), _tap_weights(kernel)).reshape(kh, kw, o, n, h, w)
    out = col2im_planar(taps, stride, (h - 1) * stride + kh, (w - 1) * stride + kw)
    return out if channel_major else jnp.transpose(out, (1, 2, 3, 0))


def conv_transpose_gemm(x: jax.Array, kernel: jax.Array, stride: int, channel_major: bool = False) -> jax.Array:
    """Transposed convolution as matrix products, in the formulation that moves the least memory
    (all are memory-bound on a CPU): for a few output channels (the image layer) the channel-major
    col2im; otherwise whichever materialises the smaller intermediate, col2im's (N, H, W, k*k*O)
    taps or the phase formulation's (N, Q, Q, J*J*C) columns. Timed forward and backward on the
    phase-1 batch, that rule picked the fastest of the three for every decoder layer: planar for
    30x30x32 -> 64x64x3, by phase for 13x13x64 -> 30x30x32, col2im for the 1x1 and 5x5 inputs.
    NHWC output, or (O, N, H, W) with `channel_major` (the planar formulation's own layout)."""
    kh, kw, c, o = kernel.shape
    _, h, w, _ = x.shape
    if o <= 4:
        return conv_transpose_planar(x, kernel, stride, channel_major)
    jh, jw = -(-kh // stride), -(-kw // stride)
    taps = h * w * kh * kw * o
    phase_cols = (h + jh - 1) * (w + jw - 1) * jh * jw * c
    if taps <= phase_cols:
        y = conv_transpose_col2im(x, kernel, stride)
    else:
        y = conv_transpose_subpixel(x, kernel, stride)
    return jnp.transpose(y, (3, 0, 1, 2)) if channel_major else y


def strided_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int = 2, transpose: bool = False,
                 impl: str = "auto", dtype: Dtype = jnp.float32, channel_major_output: bool = False) -> jax.Array:
    """The VALID strided (transposed) convolution of NHWC `x` with an HWIO `kernel`, plus `bias`,
    in `dtype`; `channel_major_output` gives (O, N, H, W) instead of NHWC: the planar transposed
    convolution's own layout, for a consumer that reduces over channels and pixels anyway (the
    ELBO's image term, aime_jax/nets/image_loss.py)."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
    impl = resolve_impl(impl)
    if transpose and impl != "lax":
        y = conv_transpose_gemm(x, kernel, stride, channel_major_output)
    else:
        if transpose:
            y = lax.conv_transpose(x, kernel, (stride,) * 2, "VALID", dimension_numbers=_DIMS)
        elif impl == "lax":
            y = lax.conv_general_dilated(x, kernel, (stride,) * 2, "VALID", dimension_numbers=_DIMS)
        else:
            y = conv_im2col(x, kernel, stride)
        if channel_major_output:
            y = jnp.transpose(y, (3, 0, 1, 2))
    return y + (bias[:, None, None, None] if channel_major_output else bias)


def _declare_params(module: nn.Module, in_channels: int, features: int, kernel_size: int) -> tuple[jax.Array, jax.Array]:
    """flax `nn.Conv`'s parameters, names and initialisers (`kernel` HWIO, then `bias`), declared
    in `module`'s compact method."""
    k = kernel_size
    kernel = module.param("kernel", nn.initializers.lecun_normal(), (k, k, in_channels, features), jnp.float32)
    bias = module.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
    return kernel, bias


class _StridedConv(nn.Module):
    features: int
    kernel_size: int
    stride: int = 2
    transpose: bool = False
    impl: str = "auto"
    dtype: Dtype = jnp.float32
    # Whether the output carries the CONV_OUTPUT name that the chunked CNN's checkpoint policy
    # saves for the backward pass (False: recomputed there instead).
    save_output: bool = True
    # Output (O, N, H, W) instead of NHWC: see `strided_conv`.
    channel_major_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _declare_params(self, x.shape[-1], self.features, self.kernel_size)
        y = strided_conv(x, kernel, bias, self.stride, self.transpose, self.impl, self.dtype, self.channel_major_output)
        return checkpoint_name(y, CONV_OUTPUT) if self.save_output else y


class ConvParams(nn.Module):
    """The parameters of a strided (transposed) convolution, as `Conv` and `ConvTranspose` name
    and initialise them, for a caller that applies them itself with `strided_conv`: called with
    the input's channel count, returns (kernel, bias)."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, in_channels: int) -> tuple[jax.Array, jax.Array]:
        return _declare_params(self, in_channels, self.features, self.kernel_size)


def Conv(features: int, kernel_size: int, stride: int = 2, impl: str = "auto", dtype: Dtype = jnp.float32,
         save_output: bool = True, **module_kw):
    """VALID strided convolution with flax `nn.Conv`'s parameters (`kernel` HWIO, `bias`).
    `save_output`: see `_StridedConv`; `module_kw`: flax's `name`, `parent`."""
    return _StridedConv(features, kernel_size, stride, False, impl, dtype, save_output, **module_kw)


def ConvTranspose(features: int, kernel_size: int, stride: int = 2, impl: str = "auto", dtype: Dtype = jnp.float32, **module_kw):
    """VALID strided transposed convolution with flax `nn.ConvTranspose`'s parameters."""
    return _StridedConv(features, kernel_size, stride, True, impl, dtype, **module_kw)
