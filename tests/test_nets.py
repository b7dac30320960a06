"""MLP, Gaussian heads, the World Models CNN and the tanh-Gaussian policy."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aime_jax.errors import ConfigError
from aime_jax.nets import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    GaussianMLP,
    TanhGaussianPolicy,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)
from aime_jax.nets import image_loss
from aime_jax.nets.cnn import EMBED_SIZE, IMAGE_SHAPE


def _init_apply(module, *inputs):
    # Jitted: eager Flax dispatches (and compiles) op by op, which is slower on CPU.
    params = jax.jit(module.init)(jax.random.key(0), *inputs)
    return params, jax.jit(module.apply)(params, *inputs)


def test_mlp_shapes_layer_norm_and_identity():
    x = jnp.ones((2, 3, 5))
    params, y = _init_apply(MLP((7, 7), 4, "silu", layer_norm=True), x)
    assert y.shape == (2, 3, 4)
    assert "LayerNorm_0" in params["params"]
    _, trunk = _init_apply(MLP((7,), None, "elu"), x)
    assert trunk.shape == (2, 3, 7)
    _, same = _init_apply(MLP((), None), x)
    np.testing.assert_array_equal(same, x)
    with pytest.raises(ConfigError):
        _init_apply(MLP((3,), 2, "gelu"), x)


@pytest.mark.parametrize(
    "std, separate, low, high",
    [("softplus", True, 1e-6, np.inf), ("sigmoid2", False, 0.1, 2.1), ("unit", True, 1.0, 1.0)],
)
def test_gaussian_mlp_std_parameterisations(std, separate, low, high):
    x = 10.0 * jax.random.normal(jax.random.key(1), (4, 6))
    head = GaussianMLP(3, (8,), separate=separate, std=std, min_std=low if std != "unit" else 0.0)
    params, (mean, scale) = _init_apply(head, x)
    assert mean.shape == scale.shape == (4, 3)
    assert np.all(np.asarray(scale) >= low) and np.all(np.asarray(scale) <= high)
    expected_nets = {"unit": {"mean"}, "softplus": {"mean", "std"}, "sigmoid2": {"mean_std"}}[std]
    assert set(params["params"]) == expected_nets


def test_conv_encoder_embeds_uint8_images_to_1024():
    image = jax.random.randint(jax.random.key(2), (2, 3) + IMAGE_SHAPE, 0, 256).astype(jnp.uint8)
    _, embed = _init_apply(ConvEncoder(), image)
    assert embed.shape == (2, 3, EMBED_SIZE)
    assert embed.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(embed)))


def test_conv_decoder_outputs_64x64x3_in_unit_range():
    feats = 5.0 * jax.random.normal(jax.random.key(3), (2, 3, 24))
    _, image = _init_apply(ConvDecoder(depth=8), feats)
    assert image.shape == (2, 3) + IMAGE_SHAPE
    assert np.all((np.asarray(image) >= 0) & (np.asarray(image) <= 1))


def _normal_cdf(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_tanh_gaussian_log_prob_matches_numerical_change_of_variables():
    mean, std = 0.3, 0.7
    actions = np.linspace(-0.95, 0.95, 19)
    eps = 1e-5
    # Density of a = tanh(u), u ~ N(mean, std), as the derivative of its CDF P(a' <= a).
    cdf = lambda a: _normal_cdf((math.atanh(a) - mean) / std)  # noqa: E731
    reference = [math.log((cdf(a + eps) - cdf(a - eps)) / (2 * eps)) for a in actions]
    ones = jnp.ones((len(actions), 1))
    log_prob = tanh_gaussian_log_prob(mean * ones, std * ones, jnp.asarray(actions)[:, None])
    assert log_prob.shape == (len(actions),)
    np.testing.assert_allclose(log_prob, reference, rtol=1e-3, atol=1e-3)


def test_tanh_gaussian_log_prob_sums_dims_and_stays_finite_at_the_bounds():
    mean, std = jnp.zeros((2, 3)), jnp.ones((2, 3))
    action = jnp.array([[1.0, -1.0, 0.0], [0.5, 0.5, 0.5]])
    log_prob = tanh_gaussian_log_prob(mean, std, action)
    assert log_prob.shape == (2,) and np.all(np.isfinite(np.asarray(log_prob)))
    per_dim = [
        tanh_gaussian_log_prob(mean[:, i : i + 1], std[:, i : i + 1], action[:, i : i + 1])
        for i in range(3)
    ]
    np.testing.assert_allclose(log_prob, sum(per_dim), rtol=1e-6)


def test_tanh_gaussian_sample_is_bounded_and_reparameterised():
    mean, std = jnp.full((1000, 2), 0.5), jnp.full((1000, 2), 0.3)
    sample = tanh_gaussian_sample(mean, std, jax.random.key(4))
    assert np.all(np.abs(np.asarray(sample)) < 1)
    assert abs(float(jnp.mean(jnp.arctanh(sample))) - 0.5) < 0.05
    grad = jax.grad(lambda m: jnp.sum(tanh_gaussian_sample(m, std, jax.random.key(4))))(mean)
    assert np.all(np.asarray(grad) > 0)
    np.testing.assert_allclose(tanh_gaussian_mode(mean), np.tanh(0.5), rtol=1e-6)


def test_tanh_gaussian_policy_methods():
    policy = TanhGaussianPolicy(action_dim=6, hidden_sizes=(16, 16))
    feats = jnp.ones((4, 10))
    params = policy.init(jax.random.key(5), feats)
    assert set(params["params"]["GaussianMLP_0"]) == {"mean", "std"}
    mean, std = policy.apply(params, feats)
    assert mean.shape == std.shape == (4, 6) and np.all(np.asarray(std) > 0)
    action = policy.apply(params, feats, jax.random.key(6), method=TanhGaussianPolicy.sample)
    assert action.shape == (4, 6)
    mode = policy.apply(params, feats, method=TanhGaussianPolicy.mode)
    np.testing.assert_allclose(mode, jnp.tanh(mean), rtol=1e-6)
    log_prob = policy.apply(params, feats, action, method=TanhGaussianPolicy.log_prob)
    np.testing.assert_allclose(log_prob, tanh_gaussian_log_prob(mean, std, action), rtol=1e-6)


# The GEMM convolutions must compute what XLA's convolutions compute, values and gradients, for
# the model's layer shapes and for odd ones (non-square inputs, kernels that stride does not divide).
CONV_CASES = [  # (height, width, in, out, kernel, transpose)
    (64, 64, 3, 4, 4, False), (31, 31, 4, 5, 4, False), (9, 7, 3, 2, 3, False), (6, 6, 5, 3, 4, False),
    (1, 1, 16, 6, 5, True), (5, 5, 6, 4, 5, True), (13, 13, 4, 3, 6, True), (30, 30, 3, 3, 6, True),
    (4, 7, 2, 3, 3, True), (3, 5, 2, 3, 3, True),
    # The decoder's real layers (the chooser in conv_transpose_gemm picks col2im, col2im, by
    # phase, channel-major).
    (1, 1, 1024, 128, 5, True), (5, 5, 128, 64, 5, True), (13, 13, 64, 32, 6, True), (30, 30, 32, 3, 6, True),
]


@pytest.mark.parametrize("h,w,c,o,k,transpose", CONV_CASES)
def test_gemm_convolutions_equal_xla_convolutions_with_gradients(h, w, c, o, k, transpose):
    from aime_jax.nets import conv

    rng = np.random.default_rng(h * 100 + k)
    x = jnp.asarray(rng.normal(size=(3, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, c, o)) / k, jnp.float32)
    layer = conv.ConvTranspose if transpose else conv.Conv
    params = {"params": {"kernel": kernel, "bias": jnp.asarray(rng.normal(size=o), jnp.float32)}}
    out = {}
    for impl in ("lax", "gemm"):
        module = layer(o, k, 2, impl)
        y = jax.jit(module.apply)(params, x)
        probe = jnp.asarray(rng.normal(size=y.shape), jnp.float32) if impl == "lax" else probe
        grads = jax.jit(jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * probe), argnums=(0, 1)))(params, x)
        out[impl] = (y, grads)
        if transpose:  # the (O, N, H, W) output the decoder's fused loss uses: same values and gradients
            planar = layer(o, k, 2, impl, channel_major_output=True)
            np.testing.assert_allclose(jax.jit(planar.apply)(params, x), jnp.transpose(y, (3, 0, 1, 2)), rtol=1e-5, atol=1e-5)
            probe_cm = jnp.transpose(probe, (3, 0, 1, 2))
            grads_cm = jax.jit(jax.grad(lambda p, x: jnp.sum(planar.apply(p, x) * probe_cm), argnums=(0, 1)))(params, x)
            for a, b in zip(jax.tree.leaves(grads_cm), jax.tree.leaves(grads)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["gemm"][0], out["lax"][0], rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(out["gemm"][1]), jax.tree.leaves(out["lax"][1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if transpose:  # flax's own layer agrees too (same parameter layout, no kernel flip)
        import flax.linen as nn

        ref = nn.ConvTranspose(o, (k, k), (2, 2), padding="VALID").apply(params, x)
        np.testing.assert_allclose(out["gemm"][0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv_matmul_has_the_gradients_of_a_plain_product(dtype):
    """conv.matmul and conv.matmul_channel_major only change how their gradients are written;
    values and both gradients are those of the plain products, for a with several leading axes
    and in bfloat16."""
    from aime_jax.nets import conv

    rng = np.random.default_rng(7)
    a = jnp.asarray(rng.normal(size=(2, 3, 5, 8)), dtype)
    b = jnp.asarray(rng.normal(size=(8, 6)), dtype)
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    cases = [  # (ours, the plain product, its arguments)
        (conv.matmul, lambda a, b: a @ b, (a, b)),
        (conv.matmul_channel_major, lambda x, w: (x @ w).T, (a.reshape(30, 8), b)),
    ]
    for fn, plain, args in cases:
        probe = jnp.asarray(rng.normal(size=plain(*args).shape), dtype)
        np.testing.assert_allclose(np.float32(jax.jit(fn)(*args)), np.float32(plain(*args)), rtol=tol, atol=tol)
        got = jax.jit(jax.grad(lambda *args: jnp.sum(fn(*args) * probe), argnums=(0, 1)))(*args)
        want = jax.grad(lambda *args: jnp.sum(plain(*args) * probe), argnums=(0, 1))(*args)
        for x, y in zip(got, want):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_allclose(np.float32(x), np.float32(y), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("h,w,c,o,k", [(h, w, c, o, k) for h, w, c, o, k, t in CONV_CASES if t and c < 100])
@pytest.mark.parametrize("formulation", ["conv_transpose_col2im", "conv_transpose_subpixel", "conv_transpose_planar"])
def test_every_transposed_formulation_equals_xla_with_gradients(formulation, h, w, c, o, k):
    """conv_transpose_gemm picks one formulation per shape; each must be right on every shape."""
    from jax import lax

    from aime_jax.nets import conv

    rng = np.random.default_rng(h * 100 + k + c)
    x = jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, c, o)) / k, jnp.float32)

    def ref(x, kernel):
        return lax.conv_transpose(x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fn = functools.partial(getattr(conv, formulation), stride=2)
    probe = jnp.asarray(rng.normal(size=ref(x, kernel).shape), jnp.float32)
    np.testing.assert_allclose(jax.jit(fn)(x, kernel), ref(x, kernel), rtol=1e-4, atol=1e-4)
    got = jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) * probe), argnums=(0, 1)))(x, kernel)
    want = jax.grad(lambda x, k: jnp.sum(ref(x, k) * probe), argnums=(0, 1))(x, kernel)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cnn_parameters_do_not_depend_on_the_convolution_impl():
    images = jnp.zeros((2,) + IMAGE_SHAPE, jnp.uint8)
    for module, x in ((ConvEncoder(8), images), (ConvDecoder(8), jnp.ones((2, 10)))):
        trees = [jax.jit(module.clone(impl=impl).init)(jax.random.key(0), x) for impl in ("gemm", "lax")]
        assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
        for a, b in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(trees[1])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("module_name", ["encoder", "decoder"])
def test_chunked_cnn_equals_unchunked_with_gradients(module_name):
    # 2 x 7 = 14 images in chunks of 4: four chunks, the last padded with two zero images.
    if module_name == "encoder":
        module, x = ConvEncoder(8), jax.random.randint(jax.random.key(4), (2, 7) + IMAGE_SHAPE, 0, 256).astype(jnp.uint8)
    else:
        module, x = ConvDecoder(8), jax.random.normal(jax.random.key(4), (2, 7, 20))
    whole, chunked = module.clone(chunk=-1), module.clone(chunk=4)
    params = jax.jit(whole.init)(jax.random.key(0), x)
    chunked_params = jax.jit(chunked.init)(jax.random.key(0), x)
    # Same parameter names and initial values: checkpoints do not depend on the chunking.
    assert jax.tree.structure(params) == jax.tree.structure(chunked_params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(chunked_params)):
        np.testing.assert_array_equal(a, b)
    target = jax.random.uniform(jax.random.key(5), whole.apply(params, x).shape)

    def loss(module, p):
        return jnp.sum((module.apply(p, x) - target) ** 2)

    np.testing.assert_allclose(jax.jit(chunked.apply)(params, x), jax.jit(whole.apply)(params, x), rtol=1e-5, atol=1e-5)
    grads = [jax.jit(jax.grad(functools.partial(loss, m)))(params) for m in (whole, chunked)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))


@pytest.mark.parametrize("chunk", [-1, 4])
def test_decoder_squared_error_equals_the_decoded_images_with_gradients(chunk):
    # The fused per-image sum of squared errors the ELBO uses, against the decoded means.
    decoder = ConvDecoder(8, chunk=chunk)
    x = jax.random.normal(jax.random.key(4), (2, 7, 20))
    image = jax.random.randint(jax.random.key(5), (2, 7) + IMAGE_SHAPE, 0, 256).astype(jnp.uint8)
    params = jax.jit(decoder.init)(jax.random.key(0), x)

    def fused(p):
        return decoder.apply(p, x, head=image_loss.squared_error, target=image)

    def decoded(p):
        error = decoder.apply(p, x) - image.astype(jnp.float32) / 255.0
        return jnp.sum(jnp.square(error), axis=(2, 3, 4))

    got, want = jax.jit(fused)(params), jax.jit(decoded)(params)
    assert got.shape == (2, 7) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    weights = jnp.arange(14.0).reshape(2, 7)  # a different weight per image catches a mix-up
    grads = [jax.jit(jax.grad(lambda p, f=f: jnp.sum(f(p) * weights)))(params) for f in (fused, decoded)]
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.abs(a).max()))
    with pytest.raises(ValueError, match="target shape"):
        decoder.apply(params, x, head=image_loss.squared_error, target=image[:, :3])


def test_conv_impl_setting():
    from aime_jax.nets.conv import resolve_impl

    # GEMM convolutions on CPUs and GPUs (measured faster on both), XLA's on TPUs.
    assert [resolve_impl("auto", b) for b in ("cpu", "gpu", "tpu")] == ["gemm", "gemm", "lax"]
    assert resolve_impl("lax", "cpu") == "lax" and resolve_impl("gemm", "tpu") == "gemm"
    with pytest.raises(ValueError, match="conv impl"):
        resolve_impl("cudnn")


def test_cnn_chunk_setting():
    from aime_jax.nets.cnn import DEFAULT_CHUNK, resolve_chunk

    assert resolve_chunk(0, "gemm", "cpu") == DEFAULT_CHUNK
    assert resolve_chunk(0, "auto", "cpu") == DEFAULT_CHUNK
    assert resolve_chunk(0, "lax", "cpu") == -1
    # On accelerators the images are never chunked by default.
    assert resolve_chunk(0, "gemm", "gpu") == -1
    assert resolve_chunk(0, "auto", "tpu") == -1
    assert resolve_chunk(7, "lax") == 7
    with pytest.raises(ValueError, match="chunk"):
        resolve_chunk(-2, "gemm")
