"""The World Models (Ha & Schmidhuber 2018) convolutional encoder and decoder for 64x64 RGB."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aime_jax.nets import conv

Dtype = Any

IMAGE_SHAPE = (64, 64, 3)
EMBED_SIZE = 1024


def image_to_float(image: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
    """uint8 pixels -> floats in [0, 1]. Images stay uint8 until here to keep host/device traffic
    and the data store four times smaller."""
    return image.astype(dtype) / 255.0


def _flatten_leading(x: jax.Array, event_ndim: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - event_ndim]
    return x.reshape((-1,) + x.shape[x.ndim - event_ndim :]), lead


class ConvEncoder(nn.Module):
    """(..., 64, 64, 3) uint8 -> (..., 1024): four VALID 4x4 stride-2 convs, 64->31->14->6->2.

    As in the authors' release, the last conv has no activation: the embedding feeds linear
    layers of the posterior and a ReLU there would only clip half of it. `impl` chooses the
    convolution kernels (aime_jax/nets/conv.py: "gemm" on CPUs, XLA's on accelerators by default).
    """

    depth: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        x, lead = _flatten_leading(image_to_float(image, self.dtype), 3)
        for i, mult in enumerate((1, 2, 4, 8)):
            x = conv.Conv(self.depth * mult, 4, 2, self.impl, self.dtype, name=f"Conv_{i}")(x)
            if i < 3:
                x = nn.relu(x)
        return x.reshape(lead + (-1,))


class ConvDecoder(nn.Module):
    """(..., F) -> (..., 64, 64, 3) means in [0, 1]: linear to 1024, then transposed convs
    1->5->13->30->64 (kernels 5, 5, 6, 6, stride 2) and a sigmoid."""

    depth: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x, lead = _flatten_leading(features, 1)
        x = nn.Dense(32 * self.depth, dtype=self.dtype)(x)
        x = x.reshape((-1, 1, 1, 32 * self.depth))
        layers = ((4 * self.depth, 5), (2 * self.depth, 5), (self.depth, 6), (IMAGE_SHAPE[-1], 6))
        for i, (channels, kernel) in enumerate(layers):
            x = conv.ConvTranspose(channels, kernel, 2, self.impl, self.dtype, name=f"ConvTranspose_{i}")(x)
            if i < len(layers) - 1:
                x = nn.relu(x)
        return nn.sigmoid(x).reshape(lead + IMAGE_SHAPE)
