"""Stride-2 VALID convolutions and transposed convolutions written as matrix products.

On the CPU, XLA's convolution kernels are slow for the image model's shapes: the gradient of
`lax.conv_transpose` with respect to its kernel took 40-70 s per phase-1 step for the two middle
decoder layers at B*T = 2500 images (benchmarks/results/phase1_cpu_breakdown.json). The same
arithmetic as strided slices, one GEMM and cheap data movement runs 30-100x faster there, and its
gradients are GEMMs too. The functions compute exactly what `lax.conv_general_dilated` /
`lax.conv_transpose` (flax `nn.Conv` / `nn.ConvTranspose`, padding VALID, no kernel flip) compute,
with the same HWIO kernels, so parameters are interchangeable; `impl="lax"` keeps XLA's kernels,
which are the better choice on GPUs and TPUs (cuDNN / the MXU), and `impl="auto"` picks by backend.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
IMPLS = ("auto", "gemm", "lax")
_DIMS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"conv impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "gemm" if jax.default_backend() == "cpu" else "lax"
    return impl


def conv_gemm(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution (cross-correlation) of NHWC `x` with an HWIO kernel: im2col by k*k strided
    slices, then one (N*Ho*Wo, k*k*C) x (k*k*C, O) product."""
    kh, kw, c, o = kernel.shape
    _, h, w, _ = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = [
        x[:, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride, :]
        for a in range(kh)
        for b in range(kw)
    ]
    return jnp.concatenate(cols, axis=-1) @ kernel.reshape(kh * kw * c, o)


def conv_transpose_overlap(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Transposed convolution as one (N*H*W, C) x (C, k*k*O) product followed by overlap-add of the
    k*k shifted, dilated tap images. Cheapest when the input is small (the first decoder layers)."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    flipped = kernel[::-1, ::-1]  # lax.conv_transpose correlates the dilated input: out[s*i+m] += x[i] w[k-1-m]
    taps = (x @ jnp.transpose(flipped, (2, 0, 1, 3)).reshape(c, kh * kw * o)).reshape(n, h, w, kh, kw, o)
    zero = jnp.zeros((), taps.dtype)
    out = None
    for a in range(kh):
        for b in range(kw):
            pad = ((0, 0, 0), (a, kh - 1 - a, stride - 1), (b, kw - 1 - b, stride - 1), (0, 0, 0))
            term = lax.pad(taps[:, :, :, a, b, :], zero, pad)
            out = term if out is None else out + term
    return out


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
    y = (jnp.concatenate(cols, axis=-1) @ weights).reshape(n, qh, qw, stride, stride, o)
    y = jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(n, qh * stride, qw * stride, o)
    return y[:, : (h - 1) * stride + kh, : (w - 1) * stride + kw, :]


def conv_transpose_gemm(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    # Overlap-add moves k*k copies of the output; by phase wastes work on zero-padded taps when the
    # input is tiny. The crossover measured on the CPU lies between 5x5 (overlap 2-3x faster) and
    # 13x13 inputs (by phase 14x faster).
    if x.shape[1] * x.shape[2] <= 64:
        return conv_transpose_overlap(x, kernel, stride)
    return conv_transpose_subpixel(x, kernel, stride)


class _StridedConv(nn.Module):
    features: int
    kernel_size: int
    stride: int = 2
    transpose: bool = False
    impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        impl = resolve_impl(self.impl)
        if self.transpose:
            if impl == "lax":
                y = lax.conv_transpose(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
            else:
                y = conv_transpose_gemm(x, kernel, self.stride)
        elif impl == "lax":
            y = lax.conv_general_dilated(x, kernel, (self.stride,) * 2, "VALID", dimension_numbers=_DIMS)
        else:
            y = conv_gemm(x, kernel, self.stride)
        return y + bias


def Conv(features: int, kernel_size: int, stride: int = 2, impl: str = "auto", dtype: Dtype = jnp.float32, name=None):
    """VALID strided convolution with flax `nn.Conv`'s parameters (`kernel` HWIO, `bias`)."""
    return _StridedConv(features, kernel_size, stride, False, impl, dtype, name=name)


def ConvTranspose(features: int, kernel_size: int, stride: int = 2, impl: str = "auto", dtype: Dtype = jnp.float32, name=None):
    """VALID strided transposed convolution with flax `nn.ConvTranspose`'s parameters."""
    return _StridedConv(features, kernel_size, stride, True, impl, dtype, name=name)
