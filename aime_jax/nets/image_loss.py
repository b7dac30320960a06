"""The ELBO's image term: the decoder's image layer and the unit-std Gaussian likelihood of the
target images as one computation, run by `ConvDecoder` chunk by chunk as its `head`, so that the
decoded images and their gradient never exist at full size."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from aime_jax.nets.cnn import IMAGE_SHAPE, image_to_float


def squared_error(hidden: jax.Array, image_layer: Callable[..., jax.Array], target: jax.Array) -> jax.Array:
    """Each image's sum of squared errors over its pixels in [0, 1], (N,) float32: all that the
    unit-std Gaussian log-likelihood needs (`distributions.unit_gaussian_log_prob`).

    hidden: (N, h, w, C) the decoder's features before its image layer; image_layer: that layer
    with its parameters bound (`conv.strided_conv`, pre-sigmoid); target: (N, 64, 64, 3) uint8.
    The prediction stays in the image layer's channel-major (3, N, 64, 64) layout and the uint8
    target is transposed to it instead: in NHWC, XLA fused the planar col2im with the transpose
    into one slow loop. Nothing here is named for the chunk loop's checkpoint policy, so the
    backward pass recomputes the layer's output (one small product and the col2im) rather than
    keeping it per chunk: XLA fused the col2im into that stacking too, and the stack would be as
    large as the decoded images.
    """
    if target.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"image target shape {target.shape[1:]} per image is not {IMAGE_SHAPE}")
    prediction = nn.sigmoid(image_layer(hidden, channel_major_output=True))
    image = image_to_float(jnp.transpose(target, (3, 0, 1, 2)))
    return jnp.sum(jnp.square(prediction.astype(jnp.float32) - image), axis=(0, 2, 3))
