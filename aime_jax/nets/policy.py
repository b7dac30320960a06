"""Tanh-squashed diagonal Gaussian: the AIME policy and the inverse-dynamics head.

The distribution is represented by the (mean, std) of the Gaussian before the tanh; the pure
functions below sample, take the mode and evaluate log-densities of the squashed actions.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from aime_jax.nets.mlp import GaussianMLP

Dtype = Any

# Dataset actions sit on the boundary of [-1, 1] where atanh is infinite; evaluating them
# slightly inside keeps the log-density finite (the release clips at the same value).
TANH_CLIP = 0.999
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def _noise(mean: jax.Array, std: jax.Array, rng: chex.PRNGKey) -> jax.Array:
    chex.assert_equal_shape([mean, std])
    return jax.random.normal(rng, mean.shape, jnp.float32).astype(mean.dtype)


def tanh_gaussian_sample(mean: jax.Array, std: jax.Array, rng: chex.PRNGKey) -> jax.Array:
    """Reparameterised sample: gradients flow through mean and std into whatever produced them."""
    return jnp.tanh(mean + std * _noise(mean, std, rng))


def tanh_gaussian_sample_with_log_prob(
    mean: jax.Array, std: jax.Array, rng: chex.PRNGKey
) -> tuple[jax.Array, jax.Array]:
    """The sample of `tanh_gaussian_sample` and its log-density, summed over the last axis.

    The change of variables uses the pre-tanh sample u: log(1 - tanh(u)^2) = 2 (log 2 - u -
    softplus(-2u)), exact and finite where tanh(u) rounds to +-1, so no clipping of the action
    (`tanh_gaussian_log_prob`, for actions given without their u, has to clip).
    """
    noise = _noise(mean, std, rng)
    pre_tanh = mean + std * noise
    gaussian = -0.5 * jnp.square(noise) - jnp.log(std) - _LOG_SQRT_2PI
    log_det = 2.0 * (_LOG_2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh))
    return jnp.tanh(pre_tanh), jnp.sum(gaussian - log_det, axis=-1)


def tanh_gaussian_mode(mean: jax.Array) -> jax.Array:
    """tanh of the Gaussian mean; not the exact mode of the squashed density, but the action the
    release evaluates with."""
    return jnp.tanh(mean)


def tanh_gaussian_log_prob(mean: jax.Array, std: jax.Array, action: jax.Array) -> jax.Array:
    """log pi(action), summed over the last axis, with the change of variables
    log p(a) = log N(atanh(a); mean, std) - sum log(1 - a^2). Computed in float32."""
    chex.assert_equal_shape([mean, std, action])
    mean, std = mean.astype(jnp.float32), std.astype(jnp.float32)
    action = jnp.clip(action.astype(jnp.float32), -TANH_CLIP, TANH_CLIP)
    pre_tanh = jnp.arctanh(action)
    base = -0.5 * jnp.square((pre_tanh - mean) / std) - jnp.log(std) - _LOG_SQRT_2PI
    return jnp.sum(base - jnp.log1p(-jnp.square(action)), axis=-1)


class TanhGaussianPolicy(nn.Module):
    """features -> (mean, std) of the pre-tanh Gaussian; separate mean and std MLPs,
    std = softplus + min_std."""

    action_dim: int
    hidden_sizes: Sequence[int] = (128, 128)
    activation: str = "elu"
    layer_norm: bool = False
    min_std: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        return GaussianMLP(
            self.action_dim,
            self.hidden_sizes,
            self.activation,
            self.layer_norm,
            separate=True,
            std="softplus",
            min_std=self.min_std,
            dtype=self.dtype,
        )(features)

    def sample(self, features: jax.Array, rng: chex.PRNGKey) -> jax.Array:
        return tanh_gaussian_sample(*self(features), rng)

    def mode(self, features: jax.Array) -> jax.Array:
        return tanh_gaussian_mode(self(features)[0])

    def log_prob(self, features: jax.Array, action: jax.Array) -> jax.Array:
        return tanh_gaussian_log_prob(*self(features), action)
