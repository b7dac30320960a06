"""Gaussian densities, KL, free nats, KL balancing and likelihood reweighting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aime_jax.world_model import distributions as D


def _gaussians(seed, shape=(3, 4, 5)):
    rng = np.random.default_rng(seed)
    mean_q, mean_p, x = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    std_q, std_p = (rng.uniform(0.3, 2.0, size=shape).astype(np.float32) for _ in range(2))
    return x, mean_q, std_q, mean_p, std_p


def test_gaussian_log_prob_matches_closed_form():
    x, mean, std, _, _ = _gaussians(0)
    expected = -0.5 * ((x - mean) / std) ** 2 - np.log(std * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(D.gaussian_log_prob(x, mean, std), expected, rtol=1e-5, atol=1e-6)


def test_unit_gaussian_log_prob_of_a_squared_error_matches_scipy():
    from scipy import stats

    x, mean, _, _, _ = _gaussians(0)
    sse = np.sum((x - mean) ** 2, axis=(1, 2))
    expected = stats.norm.logpdf(x, mean, 1.0).sum(axis=(1, 2))
    np.testing.assert_allclose(D.unit_gaussian_log_prob(jnp.asarray(sse), 20), expected, rtol=1e-5)


def test_gaussian_log_prob_rejects_mismatched_shapes():
    with pytest.raises(AssertionError):
        D.gaussian_log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((3,)))


def test_gaussian_kl_matches_closed_form_and_is_zero_on_itself():
    _, mean_q, std_q, mean_p, std_p = _gaussians(1)
    expected = (
        np.log(std_p / std_q) + (std_q**2 + (mean_q - mean_p) ** 2) / (2 * std_p**2) - 0.5
    )
    kl = D.gaussian_kl(mean_q, std_q, mean_p, std_p)
    np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(kl) >= -1e-6)
    np.testing.assert_allclose(D.gaussian_kl(mean_q, std_q, mean_q, std_q), 0.0, atol=1e-6)


def test_gaussian_entropy_matches_closed_form():
    _, _, std, _, _ = _gaussians(2)
    expected = np.sum(0.5 * np.log(2 * np.pi * np.e * std**2), axis=-1)
    np.testing.assert_allclose(D.gaussian_entropy(std), expected, rtol=1e-5)


def test_kl_balancing_keeps_the_value_and_splits_the_gradient():
    _, mean_q, std_q, mean_p, std_p = _gaussians(3)
    alpha = 0.8

    def total(params, balance):
        return jnp.sum(D.balanced_kl(*params, balance))

    params = (mean_q, std_q, mean_p, std_p)
    np.testing.assert_allclose(total(params, alpha), total(params, None), rtol=1e-5)
    plain = jax.grad(total)(params, None)
    balanced = jax.grad(total)(params, alpha)
    for i, weight in enumerate((1 - alpha, 1 - alpha, alpha, alpha)):
        np.testing.assert_allclose(balanced[i], weight * plain[i], rtol=1e-4, atol=1e-6)


def test_free_nats_keep_the_value_and_cut_the_gradient_below_the_threshold():
    kl = jnp.array([0.2, 0.9, 1.5, 3.0])
    np.testing.assert_allclose(D.free_nats(kl, 1.0), kl)
    grad = jax.grad(lambda k: jnp.sum(D.free_nats(k, 1.0)))(kl)
    np.testing.assert_allclose(grad, [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(jax.grad(lambda k: jnp.sum(D.free_nats(k, 0.0)))(kl), 1.0)


def test_kl_per_step_sums_dims_before_free_nats():
    _, mean_q, std_q, mean_p, std_p = _gaussians(4)
    kl = D.kl_per_step(mean_q, std_q, mean_p, std_p, nats=0.0)
    assert kl.shape == mean_q.shape[:2]
    np.testing.assert_allclose(
        kl, np.sum(D.gaussian_kl(mean_q, std_q, mean_p, std_p), axis=-1), rtol=1e-5
    )
    # A per-step KL summed over dims is far above 1e-3 nats, so no step is clipped...
    grad = jax.grad(lambda m: jnp.sum(D.kl_per_step(m, std_q, mean_p, std_p, nats=1e-3)))
    assert np.all(np.abs(np.asarray(grad(mean_q))) > 0)
    # ...while a huge threshold clips every step.
    grad = jax.grad(lambda m: jnp.sum(D.kl_per_step(m, std_q, mean_p, std_p, nats=1e6)))
    np.testing.assert_allclose(grad(mean_q), 0.0)


def test_reweighted_log_prob_scales_value_and_gradient_by_detached_std():
    x, mean, std, _, _ = _gaussians(5)
    log_prob = D.gaussian_log_prob(x, mean, std)
    np.testing.assert_allclose(D.reweighted_log_prob(x, mean, std), log_prob * std, rtol=1e-5)

    def grads(fn):
        return jax.grad(lambda m, s: jnp.sum(fn(x, m, s)), argnums=(0, 1))(mean, std)

    plain_mean, plain_std = grads(D.gaussian_log_prob)
    weighted_mean, weighted_std = grads(D.reweighted_log_prob)
    np.testing.assert_allclose(weighted_mean, plain_mean * std, rtol=1e-4)
    # The weight is a constant: no d(std)/d(std) * log_prob term.
    np.testing.assert_allclose(weighted_std, plain_std * std, rtol=1e-4)


def test_low_precision_inputs_are_evaluated_in_float32():
    x, mean, std, _, _ = _gaussians(6)
    bf16 = [jnp.asarray(a, jnp.bfloat16) for a in (x, mean, std)]
    assert D.gaussian_log_prob(*bf16).dtype == jnp.float32
    assert D.gaussian_kl(bf16[1], bf16[2], bf16[1], bf16[2]).dtype == jnp.float32
