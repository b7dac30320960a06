"""The recurrent state-space model, its scans over time and the phase-1 ELBO.

Shapes: B batch, T time, H deterministic size, Z stochastic size, E embedding size, A action size.
A latent state is a dict {"h": (B, H), "z": (B, Z)} in the compute dtype; its feature vector is
concat(h, z). Public arrays are batch-major (B, T, ...); scans run time-major inside.

Everything that advances the latent state goes through `WorldModel.step`, so phase 1 (dataset
actions, `observe`), imagination (`imagine`), phase 2 (policy actions, its own scan body) and
evaluation in the simulator (one step per call) share one transition.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aime_jax.errors import ConfigError
from aime_jax.nets import image_loss
from aime_jax.nets.cnn import IMAGE_SHAPE, ConvDecoder, ConvEncoder
from aime_jax.nets.mlp import MLP, GaussianMLP
from aime_jax.nets.policy import TanhGaussianPolicy, tanh_gaussian_log_prob, tanh_gaussian_mode
from aime_jax.world_model import distributions as D

IMAGE_KEY = "image"

Params = Any
State = dict[str, jax.Array]
ObsSpec = tuple[tuple[str, tuple[int, ...]], ...]


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    return jnp.dtype(config.dtype)


def _vector_keys(config: ml_collections.ConfigDict) -> list[str]:
    return [k for k in config.obs_keys if k != IMAGE_KEY]


class WorldModel(nn.Module):
    """Encoders, the RSSM transition, decoders, detached probes and an optional detached
    inverse-dynamics head. Build it with `init_world_model`."""

    config: ml_collections.FrozenConfigDict
    obs_spec: ObsSpec
    action_dim: int

    def setup(self) -> None:
        c = self.config
        dtype = compute_dtype(c)
        shapes = dict(self.obs_spec)
        if _vector_keys(c):
            self.vector_encoder = MLP(
                c.vector_encoder.hidden_sizes,
                None,
                c.vector_encoder.activation,
                c.vector_encoder.layer_norm,
                dtype,
            )
        if IMAGE_KEY in c.obs_keys:
            self.image_encoder = ConvEncoder(c.cnn_depth, dtype, c.get("cnn_impl", "auto"), c.get("cnn_chunk", 0))
        self.pre_gru = MLP(
            c.pre_gru.hidden_sizes, None, c.pre_gru.activation, c.pre_gru.layer_norm, dtype
        )
        self.gru = nn.GRUCell(c.deter_size, dtype=dtype)
        self.prior = self._latent_head()
        self.posterior = self._latent_head()
        self.decoders = {
            k: ConvDecoder(c.cnn_depth, dtype, c.get("cnn_impl", "auto"), c.get("cnn_chunk", 0))
            if k == IMAGE_KEY
            else GaussianMLP(shapes[k][-1], dtype=dtype, **c.vector_decoder)
            for k in c.obs_keys
        }
        self.probes = {
            k: MLP(
                c.probe.hidden_sizes, shapes[k][-1], c.probe.activation, c.probe.layer_norm, dtype
            )
            for k in c.probe_keys
        }
        if c.idm.enabled:
            self.idm = TanhGaussianPolicy(
                self.action_dim,
                c.idm.hidden_sizes,
                c.idm.activation,
                c.idm.layer_norm,
                c.idm.min_std,
                dtype,
            )

    def _latent_head(self) -> GaussianMLP:
        return GaussianMLP(
            self.config.stoch_size, dtype=compute_dtype(self.config), **self.config.latent
        )

    def embed(self, obs: Mapping[str, jax.Array]) -> jax.Array:
        """obs[key]: (..., d) float32 vectors, (..., 64, 64, 3) uint8 image -> (..., E)."""
        parts = []
        vector_keys = _vector_keys(self.config)
        if vector_keys:
            vectors = jnp.concatenate([obs[k] for k in vector_keys], axis=-1)
            parts.append(self.vector_encoder(vectors))
        if IMAGE_KEY in self.config.obs_keys:
            parts.append(self.image_encoder(obs[IMAGE_KEY]))
        return jnp.concatenate([p.astype(compute_dtype(self.config)) for p in parts], axis=-1)

    def step(
        self,
        state: State,
        action: jax.Array,
        embed: Optional[jax.Array],
        rng: chex.PRNGKey,
    ) -> tuple[State, dict[str, jax.Array]]:
        """One transition: (s_{t-1}, a_{t-1}, e_t) -> s_t.

        state: {"h": (B, H), "z": (B, Z)}; action: (B, A), the action that led to o_t; embed:
        (B, E) from `embed`, or None for a prior-only (imagination) step; rng: (B,) keys, one per
        row, or a single key (see `per_row_keys`).
        Returns the new state and float32 (B, Z) statistics "prior_mean", "prior_std" and, when
        `embed` is given, "post_mean", "post_std". z_t is drawn from the posterior when `embed`
        is given, else from the prior, with the reparameterisation trick so gradients flow
        through the sample (and through `action`, which is what phase 2 trains).

        Call it as `model.apply({"params": params}, state, action, embed, rng,
        method=WorldModel.step)`.
        """
        dtype = compute_dtype(self.config)
        x = self.pre_gru(jnp.concatenate([state["z"], action.astype(dtype)], axis=-1))
        h, _ = self.gru(state["h"], x)
        prior_mean, prior_std = self.prior(h)
        out = {"prior_mean": prior_mean, "prior_std": prior_std}
        mean, std = prior_mean, prior_std
        if embed is not None:
            mean, std = self.posterior(jnp.concatenate([h, embed.astype(dtype)], axis=-1))
            out.update(post_mean=mean, post_std=std)
        keys = per_row_keys(rng, mean.shape[0])
        noise = jax.vmap(lambda key: jax.random.normal(key, mean.shape[1:], jnp.float32))(keys).astype(dtype)
        z = (mean + std * noise).astype(dtype)
        return {"h": h.astype(dtype), "z": z}, {k: v.astype(jnp.float32) for k, v in out.items()}

    def decode(
        self, features: jax.Array, vectors_only: bool = False
    ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """(..., H + Z) -> {key: (mean, std)} over every observed key, or only the vector keys.
        Image means are in [0, 1] with unit std."""
        dists = {}
        for key, decoder in self.decoders.items():
            if key != IMAGE_KEY:
                dists[key] = decoder(features)
            elif not vectors_only:
                mean = decoder(features)
                dists[key] = (mean, jnp.ones_like(mean))
        return dists

    def image_squared_error(self, features: jax.Array, image: jax.Array) -> jax.Array:
        """(..., H + Z), (..., 64, 64, 3) uint8 -> (...,) float32: each decoded image's sum of
        squared errors over its pixels in [0, 1]. Decoded, then scored: the decoder's layers up to
        its image layer, then `image_loss.squared_error` (that layer and the error in one),
        chunk by chunk so that the decoded images are never materialised (see ConvDecoder)."""
        return self.decoders[IMAGE_KEY](features, head=image_loss.squared_error, target=image)

    def probe(self, features: jax.Array) -> dict[str, jax.Array]:
        """Predictions of the probe keys from detached features: probes measure what the latent
        state knows without shaping it."""
        features = jax.lax.stop_gradient(features)
        return {key: head(features) for key, head in self.probes.items()}

    def inverse_dynamics(
        self, features: jax.Array, next_embed: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(mean, std) of the tanh-Gaussian over a_t given detached [s_t, e_{t+1}]."""
        inputs = jnp.concatenate([features, next_embed.astype(features.dtype)], axis=-1)
        return self.idm(jax.lax.stop_gradient(inputs))

    def __call__(
        self, obs: Mapping[str, jax.Array], action: jax.Array, rng: chex.PRNGKey
    ) -> None:
        """Touches every submodule once on (B, T=1) inputs, for `init`."""
        embed = self.embed(obs)[:, 0]
        state = initial_state(self.config, action.shape[0])
        state, _ = self.step(state, action[:, 0], embed, rng)
        feat = features(state)
        self.decode(feat)
        self.probe(feat)
        if self.config.idm.enabled:
            self.inverse_dynamics(feat, embed)


def initial_state(config: ml_collections.ConfigDict, batch_size: int) -> State:
    """The all-zero state every window starts from."""
    dtype = compute_dtype(config)
    return {
        "h": jnp.zeros((batch_size, config.deter_size), dtype),
        "z": jnp.zeros((batch_size, config.stoch_size), dtype),
    }


def row_keys(rng: chex.PRNGKey, rows: jax.Array) -> jax.Array:
    """The keys of the batch rows `rows` (their indices in the global batch): fold_in(rng, i).

    Every window draws its noise from its own key, so its samples do not depend on which other
    windows share its batch or its device: a data-parallel step that hands each shard the keys
    of its global rows matches a one-device run of the whole batch.
    """
    return jax.vmap(jax.random.fold_in, (None, 0))(_typed_key(rng), rows)


def per_row_keys(rng: chex.PRNGKey, batch_size: int) -> jax.Array:
    """(B,) keys: as given when `rng` holds one key per row, else `row_keys` of rows 0..B-1."""
    keys = _typed_key(rng)
    if keys.ndim == 0:
        keys = row_keys(keys, jnp.arange(batch_size, dtype=jnp.int32))
    chex.assert_shape(keys, (batch_size,))
    return keys


def time_keys(rng: chex.PRNGKey, batch_size: int, steps: int) -> jax.Array:
    """(T, B) keys for a scan over T steps: row b's keys split from its `per_row_keys` key."""
    keys = per_row_keys(rng, batch_size)
    return jnp.swapaxes(jax.vmap(lambda key: jax.random.split(key, steps))(keys), 0, 1)


def _typed_key(rng: chex.PRNGKey) -> jax.Array:
    """Raw uint32 keys (..., 2), as train states store them, as typed keys (...)."""
    return rng if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)


def scan_unroll(config: ml_collections.ConfigDict) -> int:
    """Time steps per iteration of the filtering scans (`config.scan_unroll`, default 1)."""
    return int(config.get("scan_unroll", 1))


def features(state: State) -> jax.Array:
    """concat(h, z): the input of decoders, probes and policies. Works for (B,) and (B, T)."""
    return jnp.concatenate([state["h"], state["z"]], axis=-1)


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def _scan_steps(
    model: WorldModel,
    params: Params,
    state0: State,
    actions: jax.Array,
    embeds: Optional[jax.Array],
    rng: chex.PRNGKey,
) -> tuple[State, dict[str, jax.Array]]:
    rngs = time_keys(rng, actions.shape[0], actions.shape[1])
    xs = (_time_major(actions), None if embeds is None else _time_major(embeds), rngs)
    states, outs = _plain_scan(model, params, state0, xs)
    return jax.tree.map(_time_major, (states, outs))


def _plain_scan(model: WorldModel, params: Params, state0: State, xs) -> tuple[State, dict[str, jax.Array]]:
    def body(state, x):
        state, out = model.apply({"params": params}, state, *x, method=WorldModel.step)
        return state, (state, out)

    _, ys = jax.lax.scan(body, state0, xs, unroll=scan_unroll(model.config))
    return ys


def observe(
    model: WorldModel,
    params: Params,
    embeds: jax.Array,
    actions: jax.Array,
    rng: chex.PRNGKey,
    state0: Optional[State] = None,
) -> tuple[State, dict[str, jax.Array]]:
    """Filters a window: embeds (B, T, E), actions (B, T, A) with actions[:, t] = a_{t-1}.

    Starts from `state0` (default all zeros). `rng`: one key, or (B,) keys, one per window (see
    `per_row_keys`). Returns the posterior states {"h": (B, T, H), "z": (B, T, Z)} and the
    (B, T, Z) prior and posterior statistics of every step.
    """
    chex.assert_rank([embeds, actions], 3)
    chex.assert_equal_shape_prefix([embeds, actions], 2)
    if state0 is None:
        state0 = initial_state(model.config, actions.shape[0])
    return _scan_steps(model, params, state0, actions, embeds, rng)


def imagine(
    model: WorldModel,
    params: Params,
    state0: State,
    actions: jax.Array,
    rng: chex.PRNGKey,
) -> tuple[State, dict[str, jax.Array]]:
    """Rolls the prior forward from `state0` under open-loop actions (B, T, A): returns states
    (B, T, ...) and prior statistics. `rng` as in `observe`."""
    chex.assert_rank(actions, 3)
    return _scan_steps(model, params, state0, actions, None, rng)


def batch_mean(x: jax.Array, row_weight: Optional[jax.Array] = None) -> jax.Array:
    """The mean of x (B, ...) over all its axes, each row b weighted by row_weight[b] when given
    (a padded batch: `parallel.row_weights`, 0 on the padding rows)."""
    if row_weight is None:
        return jnp.mean(x)
    chex.assert_shape(row_weight, x.shape[:1])
    return jnp.mean(x * row_weight.reshape(row_weight.shape + (1,) * (x.ndim - 1)))


def _window_mean(x: jax.Array, row_weight: Optional[jax.Array] = None) -> jax.Array:
    """(B, T) -> scalar: sum over the window, (weighted) mean over the batch."""
    chex.assert_rank(x, 2)
    return batch_mean(jnp.sum(x, axis=1), row_weight)


def _sum_event(x: jax.Array) -> jax.Array:
    return jnp.sum(x.reshape(x.shape[:2] + (-1,)), axis=-1)


def negative_elbo(
    model: WorldModel,
    params: Params,
    obs: Mapping[str, jax.Array],
    states: State,
    outs: Mapping[str, jax.Array],
    loss_config: ml_collections.ConfigDict,
    row_weight: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training objective of a filtered window, per window and averaged over the batch.

    obs: (B, T, ...) targets of every observed key (images uint8); states, outs: from `observe`
    or any scan of `WorldModel.step` with embeddings (phase 2 passes its own). loss_config:
    free_nats, kl_balance, reweight, kl_scale, kl_only. row_weight: (B,) weights of the batch's
    windows in every mean over the batch (`batch_mean`), or None for a plain mean.

    With `reweight`, each dimension's log-likelihood is scaled by its detached std, and the
    per-step KL by the mean detached std over all output dims, so the two terms keep their
    balance. `kl_only` drops the reconstruction term, `kl_scale` scales the KL term.
    Metrics report the true, unweighted negative ELBO besides the optimised loss.
    """
    chex.assert_rank([states["h"], outs["post_mean"]], 3)
    chex.assert_equal_shape(
        [outs["post_mean"], outs["post_std"], outs["prior_mean"], outs["prior_std"]]
    )
    chex.assert_equal_shape_prefix([states["h"], outs["post_mean"]], 2)
    batch, steps = states["h"].shape[:2]
    w = row_weight
    feats = features(states)
    dists = model.apply({"params": params}, feats, vectors_only=True, method=WorldModel.decode)

    metrics = {}
    recon_loss = jnp.zeros((batch, steps), jnp.float32)
    true_recon = jnp.zeros((batch, steps), jnp.float32)
    std_sum = jnp.zeros((batch, steps), jnp.float32)
    num_dims = 0
    if IMAGE_KEY in model.config.obs_keys:
        # Unit std: the log-likelihood is -sse / 2 - const, its reweighting by the std is the
        # identity, and the sse is computed without materialising the prediction (the images'
        # shape is checked there too).
        sse = model.apply(
            {"params": params}, feats, obs[IMAGE_KEY], method=WorldModel.image_squared_error
        )
        dims = int(np.prod(IMAGE_SHAPE))
        log_prob = D.unit_gaussian_log_prob(sse, dims)
        recon_loss -= log_prob
        true_recon -= log_prob
        std_sum += dims
        num_dims += dims
        metrics[f"recon/{IMAGE_KEY}"] = _window_mean(-log_prob, w)
        metrics[f"mse/{IMAGE_KEY}"] = batch_mean(sse, w) / dims
    for key, (mean, std) in dists.items():
        target = obs[key]
        chex.assert_equal_shape([target, mean])
        log_prob = D.gaussian_log_prob(target, mean, std)
        weighted = D.reweighted_log_prob(target, mean, std) if loss_config.reweight else log_prob
        recon_loss -= _sum_event(weighted)
        true_recon -= _sum_event(log_prob)
        std_sum += _sum_event(jax.lax.stop_gradient(std.astype(jnp.float32)))
        num_dims += mean[0, 0].size
        metrics[f"recon/{key}"] = _window_mean(-_sum_event(log_prob), w)
        metrics[f"mse/{key}"] = batch_mean(jnp.square(mean.astype(jnp.float32) - target), w)

    kl = D.kl_per_step(
        outs["post_mean"],
        outs["post_std"],
        outs["prior_mean"],
        outs["prior_std"],
        loss_config.free_nats,
        loss_config.kl_balance,
    )
    kl_loss = kl * std_sum / num_dims if loss_config.reweight else kl
    kl_term = loss_config.kl_scale * _window_mean(kl_loss, w)
    loss = kl_term if loss_config.kl_only else _window_mean(recon_loss, w) + kl_term

    nelbo = _window_mean(true_recon, w) + _window_mean(kl, w)
    metrics.update(
        nelbo=nelbo,
        nelbo_per_step=nelbo / steps,
        recon=_window_mean(true_recon, w),
        recon_per_step=_window_mean(true_recon, w) / steps,
        kl=_window_mean(kl, w),
        kl_per_step=_window_mean(kl, w) / steps,
        prior_entropy=batch_mean(D.gaussian_entropy(outs["prior_std"]), w),
        post_entropy=batch_mean(D.gaussian_entropy(outs["post_std"]), w),
        prior_std=batch_mean(outs["prior_std"], w),
        post_std=batch_mean(outs["post_std"], w),
    )
    return loss, metrics


def _probe_loss(
    model: WorldModel, params: Params, obs: Mapping[str, jax.Array], feats: jax.Array,
    row_weight: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    # Step 0 is skipped: from the zero state and one first-order observation, velocities are
    # not identifiable, and fitting them there would only add noise (as in the release).
    preds = model.apply({"params": params}, feats[:, 1:], method=WorldModel.probe)
    loss = jnp.zeros((), jnp.float32)
    metrics = {}
    for key, pred in preds.items():
        err = jnp.square(pred.astype(jnp.float32) - obs[key][:, 1:])
        # Unit-variance Gaussian NLL without its constant: the gradient of MSE.
        loss += _window_mean(0.5 * jnp.sum(err, axis=-1), row_weight)
        metrics[f"probe_mse/{key}"] = batch_mean(err, row_weight)
    return loss, metrics


def _idm_loss(
    model: WorldModel,
    params: Params,
    feats: jax.Array,
    embeds: jax.Array,
    actions: jax.Array,
    row_weight: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    # actions[:, t + 1] is a_t, the action taken between s_t and o_{t+1}.
    mean, std = model.apply(
        {"params": params}, feats[:, :-1], embeds[:, 1:], method=WorldModel.inverse_dynamics
    )
    target = actions[:, 1:]
    loss = _window_mean(-tanh_gaussian_log_prob(mean, std, target), row_weight)
    mse = batch_mean(jnp.square(tanh_gaussian_mode(mean).astype(jnp.float32) - target), row_weight)
    return loss, {"idm_loss": loss, "idm_mse": mse}


def elbo_loss(
    model: WorldModel,
    params: Params,
    batch: Mapping[str, jax.Array],
    rng: chex.PRNGKey,
    config: ml_collections.ConfigDict,
    row_weight: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Phase-1 loss of a batch of windows: negative ELBO + probe and inverse-dynamics losses.

    batch: every key of `config.obs_keys` and `config.probe_keys` as (B, T, ...), and
    "pre_action" (B, T, A). rng: one key, or (B,) keys, one per window (see `per_row_keys`).
    row_weight: (B,) weights of the windows in every mean over the batch (a padded batch), or
    None for plain means.
    config: the world-model config; only its `loss` section may differ
    from the one the model was built with (e.g. for `kl_only` or `kl_scale` variants).
    Probes and the inverse-dynamics head read detached features, so their losses train only
    their own parameters.
    """
    actions = batch["pre_action"]
    chex.assert_rank(actions, 3)
    chex.assert_type(actions, jnp.floating)
    obs = {k: batch[k] for k in config.obs_keys}
    embeds = model.apply({"params": params}, obs, method=WorldModel.embed)
    states, outs = observe(model, params, embeds, actions, rng)
    loss, metrics = negative_elbo(model, params, obs, states, outs, config.loss, row_weight)
    metrics["elbo_loss"] = loss
    feats = features(states)
    if config.probe_keys:
        probe_loss, probe_metrics = _probe_loss(model, params, batch, feats, row_weight)
        loss += probe_loss
        metrics.update(probe_metrics, probe_loss=probe_loss)
    if config.idm.enabled:
        idm_loss, idm_metrics = _idm_loss(model, params, feats, embeds, actions, row_weight)
        loss += idm_loss
        metrics.update(idm_metrics)
    metrics["loss"] = loss
    return loss, metrics


def build_world_model(
    config: ml_collections.ConfigDict, obs_spec: Mapping[str, tuple[int, ...]], action_dim: int
) -> WorldModel:
    """The model object alone (no parameters), e.g. to restore trained parameters into."""
    missing = [k for k in (*config.obs_keys, *config.probe_keys) if k not in obs_spec]
    if not config.obs_keys or missing:
        raise ConfigError(
            f"world model needs non-empty obs_keys, all in obs_spec; obs_keys={config.obs_keys}, "
            f"missing from obs_spec: {missing}"
        )
    if IMAGE_KEY in config.probe_keys:
        raise ConfigError("image cannot be a probe key: probes are vector heads")
    spec = tuple((k, tuple(obs_spec[k])) for k in (*config.obs_keys, *config.probe_keys))
    return WorldModel(ml_collections.FrozenConfigDict(config), spec, action_dim)


def init_world_model(
    config: ml_collections.ConfigDict,
    obs_spec: Mapping[str, tuple[int, ...]],
    action_dim: int,
    rng: chex.PRNGKey,
) -> tuple[WorldModel, Params]:
    """Builds the model and its float32 parameters. obs_spec maps each key (observed and probed)
    to its per-step shape, e.g. {"orientations": (14,), "image": (64, 64, 3)}."""
    model = build_world_model(config, obs_spec, action_dim)
    obs = {
        k: jnp.zeros((1, 1) + shape, jnp.uint8 if k == IMAGE_KEY else jnp.float32)
        for k, shape in model.obs_spec
    }
    init_rng, sample_rng = jax.random.split(rng)
    # Jitted: eager initialisation dispatches op by op and is slow for the CNN.
    variables = jax.jit(model.init)(init_rng, obs, jnp.zeros((1, 1, action_dim)), sample_rng)
    return model, variables["params"]
