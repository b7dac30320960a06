"""The World Models (Ha & Schmidhuber 2018) convolutional encoder and decoder for 64x64 RGB."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from aime_jax.nets import conv

Dtype = Any

IMAGE_SHAPE = (64, 64, 3)
EMBED_SIZE = 1024


def image_to_float(image: jax.Array, dtype: Dtype = jnp.float32) -> jax.Array:
    """uint8 pixels -> floats in [0, 1]. Images stay uint8 until here to keep host/device traffic
    and the data store four times smaller."""
    return image.astype(dtype) / 255.0


# Images per chunk when the GEMM convolutions run chunked (`chunk=0`, the default): on a CPU the
# im2col/col2im data movement, not the matrix products, bounds the step, and a chunk's
# intermediates stay in cache between the layers' products; the backward
# pass runs chunk by chunk too. `python benchmarks/cnn_chunk.py` times chunk sizes
# (benchmarks/results/cnn_chunk_cpu.json).
DEFAULT_CHUNK = 50


def _flatten_leading(x: jax.Array, event_ndim: int) -> tuple[jax.Array, tuple[int, ...]]:
    lead = x.shape[: x.ndim - event_ndim]
    return x.reshape((-1,) + x.shape[x.ndim - event_ndim :]), lead


def resolve_chunk(chunk: int, impl: str, backend: str | None = None) -> int:
    """Images per chunk from a `chunk` setting: 0 chooses (DEFAULT_CHUNK with the GEMM
    convolutions on a CPU, where it keeps a chunk in cache; none on accelerators, where it would
    only serialise the work), N > 0 is N images, -1 is never. `backend` defaults to JAX's."""
    if chunk < -1:
        raise ValueError(f"cnn chunk must be -1 (never), 0 (auto) or a number of images, got {chunk}")
    if chunk == 0:
        backend = backend or jax.default_backend()
        return DEFAULT_CHUNK if backend == "cpu" and conv.resolve_impl(impl, backend) == "gemm" else -1
    return chunk


def _map_chunks(module: nn.Module, fn, xs: tuple[jax.Array, ...], chunk: int) -> jax.Array:
    """fn(module, *xs) over chunks of about `chunk` images of the arrays' common leading axis, as
    an `nn.scan` with the parameters broadcast, so the parameter names are those of one call of fn
    on all images.

    Chunk i holds images i, i + m, i + 2m, ... (m chunks): with the images split over devices in
    contiguous blocks, every device then works on its own images in every iteration, where
    contiguous chunks would each live on one device. Inputs are zero-padded to m * chunk images.
    """
    n = xs[0].shape[0]
    if chunk < 0 or n <= chunk:
        return fn(module, *xs)
    m = -(-n // chunk)

    def split(x):
        x = jnp.pad(x, [(0, m * chunk - n)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape((chunk, m) + x.shape[1:])

    # The backward pass keeps only the layer outputs named conv.CONV_OUTPUT per chunk (every
    # layer's but the encoder's first, see ConvEncoder) and redoes the rest in cache (im2col,
    # activations, that first layer's small product): stacking the chunks' im2col columns for it
    # cost more than recomputing them.
    body = nn.remat(
        lambda mdl, carry, xc: (carry, fn(mdl, *xc)),
        policy=jax.checkpoint_policies.save_only_these_names(conv.CONV_OUTPUT),
        prevent_cse=False,
    )
    scan = nn.scan(
        body,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=1,
        out_axes=1,
    )
    _, y = scan(module, None, tuple(split(x) for x in xs))
    return y.reshape((-1,) + y.shape[2:])[:n]


class ConvEncoder(nn.Module):
    """(..., 64, 64, 3) uint8 -> (..., 1024): four VALID 4x4 stride-2 convs, 64->31->14->6->2.

    As in the authors' release, the last conv has no activation: the embedding feeds linear
    layers of the posterior and a ReLU there would only clip half of it. `impl` chooses the
    convolution kernels (aime_jax/nets/conv.py: "gemm" on CPUs and GPUs, XLA's on TPUs by default).
    """

    depth: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    chunk: int = 0

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        def convs(mdl, x):
            x = image_to_float(x, self.dtype)
            for i, mult in enumerate((1, 2, 4, 8)):
                # The first layer's output is the encoder's largest and the cheapest to recompute
                # (a K=48 product whose im2col the backward pass redoes anyway for the kernel
                # gradient): not saved.
                x = conv.Conv(self.depth * mult, 4, 2, self.impl, self.dtype, save_output=i > 0, name=f"Conv_{i}", parent=mdl)(x)
                if i < 3:
                    x = nn.relu(x)
            return x.reshape(x.shape[0], -1)

        x, lead = _flatten_leading(image, 3)
        return _map_chunks(self, convs, (x,), resolve_chunk(self.chunk, self.impl)).reshape(lead + (-1,))


def _decoded_image(hidden: jax.Array, image_layer) -> jax.Array:
    """The decoder's own head: the image layer and a sigmoid, NHWC means in [0, 1]."""
    return nn.sigmoid(checkpoint_name(image_layer(hidden), conv.CONV_OUTPUT))


class ConvDecoder(nn.Module):
    """(..., F) -> (..., 64, 64, 3) means in [0, 1]: linear to 1024, then transposed convs
    1->5->13->30->64 (kernels 5, 5, 6, 6, stride 2) and a sigmoid.

    With a `head`, the image layer is handed to it instead of applied: per chunk of images the
    decoder computes head(hidden, image_layer, target), hidden being the (n, 30, 30, depth)
    features before the image layer, image_layer that layer with its parameters bound
    (`conv.strided_conv`, pre-sigmoid) and target the chunk's rows of `target` ((..., *) with the
    features' leading shape); the (n, *) results come back as (..., *). The ELBO scores images
    this way (`image_loss.squared_error`), inside the chunk loop and its checkpoint policy, so
    that the decoded images and their gradient never exist at full size.
    """

    depth: int = 32
    dtype: Dtype = jnp.float32
    impl: str = "auto"
    chunk: int = 0

    @nn.compact
    def __call__(self, features: jax.Array, head: Callable[..., jax.Array] | None = None,
                 target: jax.Array | None = None) -> jax.Array:
        layers = ((4 * self.depth, 5), (2 * self.depth, 5), (self.depth, 6), (IMAGE_SHAPE[-1], 6))

        def convs(mdl, x, *target):
            for i, (channels, kernel) in enumerate(layers[1:-1], 1):
                x = nn.relu(conv.ConvTranspose(channels, kernel, 2, self.impl, self.dtype, name=f"ConvTranspose_{i}", parent=mdl)(x))
            channels, kernel = layers[-1]
            weights, bias = conv.ConvParams(channels, kernel, name=f"ConvTranspose_{len(layers) - 1}", parent=mdl)(x.shape[-1])
            image_layer = functools.partial(conv.strided_conv, kernel=weights, bias=bias, stride=2, transpose=True, impl=self.impl, dtype=self.dtype)
            return (head or _decoded_image)(x, image_layer, *target)

        x, lead = _flatten_leading(features, 1)
        targets = ()
        if target is not None:
            if target.shape[: len(lead)] != lead:
                raise ValueError(f"decoder target shape {target.shape} does not start with the features' leading shape {lead}")
            targets = (target.reshape((-1,) + target.shape[len(lead) :]),)
        # The first transposed convolution sees a 1x1 input: with Dense_0 it is a pair of dense
        # layers (F -> 1024 -> 5*5*128) with no im2col to keep in cache. Inside the chunk loop its
        # large kernel was re-laid-out and its gradient accumulated once per chunk; on all images
        # at once each is one large product.
        x = nn.Dense(32 * self.depth, dtype=self.dtype, name="Dense_0")(x).reshape((-1, 1, 1, 32 * self.depth))
        x = nn.relu(conv.ConvTranspose(*layers[0], 2, self.impl, self.dtype, name="ConvTranspose_0")(x))
        y = _map_chunks(self, convs, (x,) + targets, resolve_chunk(self.chunk, self.impl))
        return y.reshape(lead + y.shape[1:])
