"""Diagonal-Gaussian densities and the KL / likelihood terms of the ELBO.

Every function is elementwise or reduces only the last (event) axis, so it works for any leading
(batch, time) shape. Inputs may be in a low-precision compute dtype; everything is evaluated in
float32.
"""
from __future__ import annotations

import math
from typing import Optional

import chex
import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def _f32(*xs: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(x.astype(jnp.float32) for x in xs)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Elementwise log N(x; mean, std^2); the caller decides which axes form the event."""
    chex.assert_equal_shape([x, mean, std])
    x, mean, std = _f32(x, mean, std)
    return -0.5 * jnp.square((x - mean) / std) - jnp.log(std) - 0.5 * _LOG_2PI


def unit_gaussian_log_prob(sse: jax.Array, dims: int) -> jax.Array:
    """log N(x; mean, I) of a `dims`-dimensional event from its sum of squared errors
    |x - mean|^2: the sum over the event of `gaussian_log_prob` with unit std."""
    return -0.5 * sse.astype(jnp.float32) - 0.5 * dims * _LOG_2PI


def gaussian_entropy(std: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian, summed over the last axis."""
    (std,) = _f32(std)
    return jnp.sum(jnp.log(std) + 0.5 * (1.0 + _LOG_2PI), axis=-1)


def gaussian_kl(
    mean_q: jax.Array, std_q: jax.Array, mean_p: jax.Array, std_p: jax.Array
) -> jax.Array:
    """Elementwise KL(N(mean_q, std_q^2) || N(mean_p, std_p^2))."""
    chex.assert_equal_shape([mean_q, std_q, mean_p, std_p])
    mean_q, std_q, mean_p, std_p = _f32(mean_q, std_q, mean_p, std_p)
    var_ratio = jnp.square(std_q / std_p)
    return 0.5 * (var_ratio + jnp.square((mean_q - mean_p) / std_p) - 1.0 - jnp.log(var_ratio))


def balanced_kl(
    post_mean: jax.Array,
    post_std: jax.Array,
    prior_mean: jax.Array,
    prior_std: jax.Array,
    balance: Optional[float],
) -> jax.Array:
    """Elementwise KL(q || p), with DreamerV2's KL balancing when `balance` is a float:
    balance * KL(sg(q) || p) + (1 - balance) * KL(q || sg(p)).

    The value is always KL(q || p); balancing only splits the gradient so that the prior is
    pulled towards the posterior faster than the posterior is regularised towards the prior.
    """
    chex.assert_equal_shape([post_mean, post_std, prior_mean, prior_std])
    if balance is None:
        return gaussian_kl(post_mean, post_std, prior_mean, prior_std)
    sg = jax.lax.stop_gradient
    to_prior = gaussian_kl(sg(post_mean), sg(post_std), prior_mean, prior_std)
    to_post = gaussian_kl(post_mean, post_std, sg(prior_mean), sg(prior_std))
    return balance * to_prior + (1.0 - balance) * to_post


def free_nats(kl: jax.Array, nats: float) -> jax.Array:
    """Free nats with a straight-through value, on per-step KLs already summed over dims.

    The gradient is that of max(kl, nats) -- zero while a step's KL is below `nats`, so the
    posterior is free to carry that much information -- but the value stays the true KL, so the
    reported ELBO is the real bound (the release does the same).
    """
    (kl,) = _f32(kl)
    clipped = jnp.maximum(kl, nats)
    return clipped + jax.lax.stop_gradient(kl - clipped)


def kl_per_step(
    post_mean: jax.Array,
    post_std: jax.Array,
    prior_mean: jax.Array,
    prior_std: jax.Array,
    nats: float = 0.0,
    balance: Optional[float] = None,
) -> jax.Array:
    """The KL term of one step: (balanced) KL summed over latent dims, then free nats. (...,)"""
    chex.assert_equal_shape([post_mean, post_std, prior_mean, prior_std])
    chex.assert_rank(post_mean, {2, 3})
    kl = jnp.sum(balanced_kl(post_mean, post_std, prior_mean, prior_std, balance), axis=-1)
    return free_nats(kl, nats)


def reweighted_log_prob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Elementwise log-likelihood times the detached std (Seitzer et al. 2022, beta-NLL with
    beta = 1/2).

    Without it, a Gaussian with learned variance can explain hard dimensions away by inflating
    their std, which shrinks their mean gradients; scaling by sg(std) restores MSE-like
    gradients for the mean while the std is still learned.
    """
    chex.assert_equal_shape([x, mean, std])
    return gaussian_log_prob(x, mean, std) * jax.lax.stop_gradient(std.astype(jnp.float32))
