"""Phase 2 of AIME: infer the expert's actions from observation-only demonstrations.

The world model is frozen. Inside the same filtering recursion as phase 1, the dataset action
a_{t-1} is replaced by a reparameterised sample from the policy at the previous latent state, and
the policy is trained to maximise the ELBO of the demonstration observations; gradients flow
through the sampled actions into the GRU, prior and posterior. Every window starts from the
all-zero state, and its first action also comes from the policy.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from aime_jax import parallel
from aime_jax.agents.loop import LoopConfig, train_loop
from aime_jax.agents.phase1 import ACTION_KEY, load_world_model
from aime_jax.checkpoint import Checkpointer
from aime_jax.data import EpisodeStore, WindowSampler
from aime_jax.errors import ConfigError, DatasetError
from aime_jax.nets.policy import TanhGaussianPolicy, tanh_gaussian_mode, tanh_gaussian_sample
from aime_jax.world_model import rssm

SUMMARY = ("loss", "nelbo_per_step", "recon_per_step", "kl_per_step", "action_mse", "grad_norm")


@flax.struct.dataclass
class PolicyState:
    """The phase-2 train state: only the policy has parameters and optimiser state."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def make_policy(policy_config: ml_collections.ConfigDict, action_dim: int, dtype=jnp.float32) -> TanhGaussianPolicy:
    return TanhGaussianPolicy(
        action_dim, tuple(policy_config.hidden_sizes), policy_config.activation,
        policy_config.layer_norm, policy_config.min_std, dtype,
    )


def phase2_loss_config(wm_config: ml_collections.ConfigDict, phase2: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The phase-1 loss terms with phase 2's settings: no free nats, no KL balancing (PAPER.md)."""
    loss = ml_collections.ConfigDict(wm_config.loss.to_dict())
    loss.free_nats = 0.0
    loss.kl_balance = None
    loss.kl_only = phase2.kl_only
    loss.kl_scale = phase2.kl_scale
    return loss


def infer_actions(model: rssm.WorldModel, wm_params, policy: TanhGaussianPolicy, policy_params, embeds, rng):
    """Filters embeds (B, T, E) with actions sampled from the policy at the previous state.

    `rng`: one key, or (B,) keys, one per window (see `rssm.per_row_keys`). Returns states
    (B, T, ...), step statistics, and the sampled and mode actions (B, T, A); action t is the one
    that led to observation t.
    """
    batch = embeds.shape[0]
    state0 = rssm.initial_state(model.config, batch)
    keys = rssm.time_keys(rng, batch, embeds.shape[1])

    def body(state, x):
        embed, keys_t = x
        act_keys, step_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys_t), 1, 0)
        mean, std = policy.apply({"params": policy_params}, rssm.features(state))
        # Each window samples its action from its own key, as the world model's step does.
        action = jax.vmap(tanh_gaussian_sample)(mean, std, act_keys)
        state, out = model.apply(
            {"params": wm_params}, state, action, embed, step_keys, method=rssm.WorldModel.step
        )
        return state, (state, out, action, tanh_gaussian_mode(mean))

    _, outputs = jax.lax.scan(body, state0, (jnp.swapaxes(embeds, 0, 1), keys), unroll=rssm.scan_unroll(model.config))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), outputs)


def phase2_loss(model, wm_params, policy, policy_params, batch: Mapping[str, jax.Array], rng, loss_config,
                row_weight=None):
    """Negative ELBO of the demonstration observations under policy-inferred actions.

    Every metric is a mean over the batch's windows (weighted by `row_weight`, (B,), when the
    batch is padded), so that a data-parallel step can average them over its shards; the sampled
    actions' std comes as their first two moments (see `with_action_std`).
    """
    obs = {k: batch[k] for k in model.config.obs_keys}
    embeds = model.apply({"params": wm_params}, obs, method=rssm.WorldModel.embed)
    states, outs, actions, modes = infer_actions(model, wm_params, policy, policy_params, embeds, rng)
    loss, metrics = rssm.negative_elbo(model, wm_params, obs, states, outs, loss_config, row_weight)
    metrics["loss"] = loss
    metrics["action_mean"] = rssm.batch_mean(actions, row_weight)
    metrics["action_mean_square"] = rssm.batch_mean(jnp.square(actions), row_weight)
    if ACTION_KEY in batch:
        # For analysis only (a real user's demonstrations carry no actions). Step 0 is skipped:
        # its action precedes the window and is guessed from the zero state.
        true = batch[ACTION_KEY][:, 1:].astype(jnp.float32)
        metrics["action_mse"] = rssm.batch_mean(jnp.square(modes[:, 1:].astype(jnp.float32) - true), row_weight)
        # What a uniform random policy would score: E[(u - a)^2] = 1/3 + a^2 for u ~ U[-1, 1].
        metrics["action_mse_random"] = 1.0 / 3.0 + rssm.batch_mean(jnp.square(true), row_weight)
    return loss, metrics


def with_action_std(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """`metrics` with the sampled actions' std in place of their first two moments: unlike the
    std, the moments of the whole batch are the mean of its shards' moments."""
    metrics = dict(metrics)
    mean, mean_square = metrics.pop("action_mean"), metrics.pop("action_mean_square")
    metrics["action_std"] = jnp.sqrt(jnp.maximum(mean_square - jnp.square(mean), 0.0))
    return metrics


def make_optimizer(phase2: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(phase2.grad_clip), optax.adam(phase2.lr))


def shard_grads(model, policy, loss_config, params, wm_params, rng, batch, batch_size: int | None = None):
    """The policy's gradients and metrics on this device's shard of the batch (inside
    `parallel.data_parallel`): every window draws its noise from the step key folded with its
    row in the global batch, so the result does not depend on the number of devices. A global
    batch of `batch_size` windows padded to the devices weighs its padding rows 0."""
    rows = next(iter(batch.values())).shape[0]
    keys = rssm.row_keys(rng, parallel.shard_rows(rows))
    weights = None if batch_size is None else parallel.shard_row_weights(rows, batch_size)

    def loss_fn(params):
        return phase2_loss(model, wm_params, policy, params, batch, keys, loss_config, weights)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, metrics


def make_train_step(model, policy, loss_config, optimizer, mesh: Mesh, batch_size: int | None = None):
    """(state, wm_params, batch) -> (state, metrics) over `mesh`; only the policy is
    differentiated. Jit it with the batch split over 'data' (see `jit_train_step`); `batch_size`
    as in `shard_grads`."""

    def local(replicated, batch):
        params, wm_params, rng = replicated
        return shard_grads(model, policy, loss_config, params, wm_params, rng, batch, batch_size)

    mean_grads = parallel.data_parallel(local, mesh)

    def train_step(state: PolicyState, wm_params, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = mean_grads((state.params, wm_params, rng), batch)
        metrics = with_action_std(metrics)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(model, policy, loss_config, optimizer, mesh: Mesh, batch_size: int | None = None):
    """The phase-2 step as training runs it: jitted over `mesh`, the policy state replicated and
    donated, the world model's parameters replicated, the batch (of `batch_size` real windows,
    padded to the devices) split over 'data'."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        make_train_step(model, policy, loss_config, optimizer, mesh, batch_size),
        in_shardings=(repl, repl, data), out_shardings=(repl, repl), donate_argnums=0,
    )


def create_policy_state(policy, features_size: int, optimizer, seed: int) -> PolicyState:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed + 1_000_003))
    params = policy.init(init_rng, jnp.zeros((1, features_size)))["params"]
    return PolicyState(jnp.zeros((), jnp.int32), params, optimizer.init(params), train_rng)


def demos_store(demos_dir: str, num_demos: int, obs_spec: Mapping[str, tuple[int, ...]]) -> EpisodeStore:
    """The first `num_demos` demonstrations (in file order) of a folder, refused unless every
    observation the world model reads has the shape it was trained on."""
    store = EpisodeStore(demos_dir)
    store.check_keys(obs_spec)
    wrong = {k: tuple(store.arrays[k].shape[1:]) for k, shape in obs_spec.items()
             if tuple(store.arrays[k].shape[1:]) != tuple(shape)}
    if wrong:
        expected = {k: tuple(obs_spec[k]) for k in wrong}
        raise DatasetError(
            f"demonstrations {demos_dir!r} have observations of shape {wrong}, but the world model was "
            f"trained on {expected}; use demonstrations of this domain and modality (images of the same size)"
        )
    if num_demos < 1:
        raise ConfigError(f"config.data.num_demos must be >= 1, got {num_demos}")
    if num_demos > store.num_episodes:
        raise ConfigError(
            f"config.data.num_demos={num_demos}, but {demos_dir!r} holds {store.num_episodes} "
            "demonstrations; lower num_demos or add demonstrations"
        )
    return store.select(range(num_demos))


def demo_sampler(store: EpisodeStore, config: ml_collections.ConfigDict, keys, data_devices: int = 1) -> WindowSampler:
    """The run's stream of demonstration windows: a function of (seed, step) alone, each batch
    padded to a multiple of the `data_devices` devices that split it."""
    return WindowSampler(
        store, config.data.window, config.data.batch_size, config.seed + 2, keys,
        jax.process_index(), jax.process_count(), parallel.padded_batch(config.data.batch_size, data_devices),
    )


def initial_carry(wm_config, episode_seeds):
    """The zero latent state and one key per episode, from its episode seed."""
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(np.asarray(episode_seeds) % (2**31), jnp.uint32))
    return rssm.initial_state(wm_config, len(episode_seeds)), keys


class AimeAgent:
    """Acts in the simulator: filter the latent state with the real observation and the previous
    action, then take the mode of the policy; one jitted call per step for a batch of envs.

    Each episode draws its posterior samples from its own key (from its episode seed), so its
    actions do not depend on which batch it ran in (see `aime_jax.evaluate`).
    """

    CHUNK = 16

    def __init__(self, model, wm_params, policy, policy_params):
        self.model, self.policy = model, policy
        # Each process acts on its own episodes: the parameters must not span the global mesh.
        self.wm_params, self.policy_params = parallel.host_local((wm_params, policy_params))
        self._act = jax.jit(functools.partial(act_step, model, policy))

    def initial_carry(self, episode_seeds):
        return initial_carry(self.model.config, episode_seeds)

    def act(self, carry, observation, prev_action, is_first):
        state, keys = carry
        n = len(keys)
        obs = {k: np.asarray(observation[k]) for k in self.model.config.obs_keys}
        inputs = (state, keys, obs, np.asarray(prev_action, np.float32))
        states, key_parts, actions = [], [], []
        # Always in chunks of CHUNK rows (the last one padded): every episode then goes through
        # the same compiled shapes, so its float results (and its trajectory) do not depend on
        # how many environments were evaluated together.
        for start in range(0, n, self.CHUNK):
            rows = min(self.CHUNK, n - start)
            chunk = jax.tree.map(lambda x: _pad_rows(x[start : start + self.CHUNK], self.CHUNK), inputs)
            state_c, keys_c, action_c = self._act(self.wm_params, self.policy_params, *chunk)
            states.append(jax.tree.map(lambda x: x[:rows], state_c))
            key_parts.append(keys_c[:rows])
            actions.append(action_c[:rows])
        state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)
        keys, action = jnp.concatenate(key_parts), jnp.concatenate(actions)
        return (state, keys), np.asarray(action, np.float32)


def act_step(model, policy, wm_params, policy_params, state, keys, observation, prev_action):
    """One acting step of a batch of episodes: filter the latent state with the observation and
    the previous action, then the policy's mode; returns (state, keys, action)."""
    embed = model.apply({"params": wm_params}, observation, method=rssm.WorldModel.embed)
    keys, subkeys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)

    def one(state, action, embed, key):
        add_batch = functools.partial(jax.tree.map, lambda x: x[None])
        # The episode's key is its row's key: its noise is drawn from it directly.
        new, _ = model.apply(
            {"params": wm_params}, add_batch(state), action[None], embed[None], key[None],
            method=rssm.WorldModel.step,
        )
        return jax.tree.map(lambda x: x[0], new)

    state = jax.vmap(one)(state, prev_action, embed, subkeys)
    mean, _ = policy.apply({"params": policy_params}, rssm.features(state))
    return state, keys, tanh_gaussian_mode(mean)


def _pad_rows(x, rows: int):
    x = jnp.asarray(x)
    return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def load_agent(config: ml_collections.ConfigDict, workdir: str, world_model_dir: str, mesh=None) -> AimeAgent:
    """The agent of the latest phase-2 checkpoint in `workdir` (its world model from
    `world_model_dir`), restored into an abstract target."""
    model, wm_params, _ = load_world_model(world_model_dir, mesh, config)
    policy = make_policy(config.phase2.policy, model.action_dim)
    optimizer = make_optimizer(config.phase2)
    features_size = model.config.deter_size + model.config.stoch_size
    target = jax.eval_shape(lambda: create_policy_state(policy, features_size, optimizer, config.seed))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        state, _ = ckpt.restore(target)
    return AimeAgent(model, wm_params, policy, state.params)


def train_aime(
    config: ml_collections.ConfigDict,
    workdir: str,
    world_model_dir: str,
    demos_dir: str,
    mesh=None,
    evaluate_agent=None,
):
    """Runs (or resumes) phase 2 in `workdir`; returns (agent, final policy state).

    `evaluate_agent(agent, episodes) -> dict` scores an agent in the simulator; when given, it
    runs with `config.phase2.eval_episodes` episodes every `phase2.eval_every` steps.
    """
    mesh = mesh or parallel.make_mesh(config.mesh.num_devices or None)
    model, wm_params, _ = load_world_model(world_model_dir, mesh, config)
    obs_keys = tuple(model.config.obs_keys)
    store = demos_store(demos_dir, config.data.num_demos, {k: dict(model.obs_spec)[k] for k in obs_keys})
    keys = obs_keys + ((ACTION_KEY,) if ACTION_KEY in store.keys else ())
    sampler = demo_sampler(store, config, keys, mesh.shape[parallel.DATA_AXIS])
    p = config.phase2
    policy = make_policy(p.policy, model.action_dim)
    optimizer = make_optimizer(p)
    features_size = model.config.deter_size + model.config.stoch_size
    state = parallel.replicate(create_policy_state(policy, features_size, optimizer, config.seed), mesh)
    step_fn = jit_train_step(model, policy, phase2_loss_config(model.config, p), optimizer, mesh, config.data.batch_size)

    def train_step(state, batch):
        return step_fn(state, wm_params, batch)

    def evaluate(state, step, logger):
        if evaluate_agent is None:
            return
        agent = AimeAgent(model, wm_params, policy, state.params)
        logger.log(step, evaluate_agent(agent, p.eval_episodes), prefix="eval",
                   summary=("return_mean", "return_std", "normalised", "normalised_paper"))

    meta = {"stage": "phase2", "demos_dir": os.path.abspath(demos_dir), "data_fingerprint": store.fingerprint_of(keys),
            "data_fingerprint_files": store.fingerprint,
            "world_model_dir": os.path.abspath(world_model_dir), "config": config.to_dict()}
    state = train_loop(
        name="phase 2", workdir=workdir, state=state, train_step=train_step, batches=sampler.iterate,
        mesh=mesh, loop=LoopConfig.from_config(p, config.data), meta=meta,
        evaluate=evaluate, summary=SUMMARY, data_dir=demos_dir,
    )
    return AimeAgent(model, wm_params, policy, state.params), state
