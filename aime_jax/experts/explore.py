"""An exploration agent for the `<domain>-explore-buffer` datasets: a Plan2Explore-style
disagreement objective on proprioceptive state, optimised by the SAC of `aime_jax.experts.sac`.

An ensemble of `ensemble_size` one-step models predicts the (normalised) change of the MDP state
from (state, action); each member is an MLP with its own initialisation, all trained on the same
batches (`nn.vmap` over the members). The intrinsic reward of a transition (s, a, s') is the
disagreement of the ensemble at (s, a): the variance over the members of their predictions,
averaged over the state dimensions. Where the agent has been often the members agree (they were
all fitted to the same data), on novel states they extrapolate differently, so maximising the
disagreement drives the agent to states it has not seen.

How it differs from the paper's Plan2Explore (Sekar et al. 2020), whose buffers the AIME paper
used: Plan2Explore learns a Dreamer world model from pixels, its ensemble predicts the next
image embedding from the latent state, and its policy is trained in imagination on the latent
model's predicted disagreement. Here the ensemble predicts the next proprioceptive state
directly, and the policy is a model-free SAC on real transitions whose rewards are relabelled
with the current ensemble at every update (the ensemble changes, so stored rewards would go
stale). No task reward enters training; the task reward of the environment is only recorded in
the episodes.

`Explorer.update_many(state, batches)` runs, per entry of the batches' leading axis and inside
one `lax.scan`: one ensemble update, the relabelling of the batch with the updated ensemble, one
SAC update. `train_explorer` runs it in the online loop of `aime_jax.experts.driver`, as
`sac.train_expert` does (checkpoints at episode boundaries with the replay buffer inside, a rerun
continues, every training episode written to `episode_dir` as `<i>.npz` with physics states and
no images).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Sequence

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aime_jax import envs
from aime_jax.atomic import remove_stale_temporaries, writable_dir, write_json
from aime_jax.envs.dmc import ACTION_DIM
from aime_jax.errors import AimeError, ConfigError
from aime_jax.experts import config as experts_config
from aime_jax.experts import driver
from aime_jax.experts.replay import ReplayBuffer
from aime_jax.experts.config import ConfigDict
from aime_jax.experts.sac import SAC, SIMULATOR_STEPS_PER_EPISODE, SACState, _episode_dir_meta, observation_vector
from aime_jax.logging import RunLogger
from aime_jax.nets.mlp import MLP

SUMMARY = ("episode_return", "intrinsic_return", "model_loss", "disagreement", "critic_loss", "temperature")
# The task whose simulator (and recorded reward) an exploration buffer uses: the embodiment
# datasets of the paper come from the domain's base task.
EXPLORE_TASK = {"walker": "walker-stand", "cheetah": "cheetah-run"}


class OneStepModel(nn.Module):
    hidden_sizes: Sequence[int]
    out_size: int

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return MLP(self.hidden_sizes, self.out_size, "relu", layer_norm=True)(jnp.concatenate([obs, action], -1))


class Ensemble(nn.Module):
    """`num` independently initialised one-step models as one batched network: -> (num, ..., out)."""

    hidden_sizes: Sequence[int]
    out_size: int
    num: int

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        members = nn.vmap(OneStepModel, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, out_axes=0, axis_size=self.num)
        return members(self.hidden_sizes, self.out_size, name="member")(obs, action)


def disagreement(predictions: jax.Array) -> jax.Array:
    """Variance over the members (axis 0), averaged over the last axis: (M, ..., D) -> (...)."""
    chex.assert_rank(predictions, {2, 3})
    return jnp.mean(jnp.var(predictions, axis=0), axis=-1)


def ensemble_loss(predictions: jax.Array, target: jax.Array) -> jax.Array:
    """Sum over the members of each one's mean squared error; predictions (M, B, D), target (B, D)."""
    chex.assert_rank(predictions, 3)
    chex.assert_shape(target, predictions.shape[1:])
    return jnp.sum(jnp.mean(jnp.square(predictions - target[None]), axis=(1, 2)))


@flax.struct.dataclass
class Normaliser:
    """Fixed input and target statistics, taken from the seed (random-action) transitions."""

    obs_mean: jax.Array
    obs_std: jax.Array
    delta_mean: jax.Array
    delta_std: jax.Array

    @classmethod
    def identity(cls, obs_dim: int) -> "Normaliser":
        zeros, ones = jnp.zeros(obs_dim, jnp.float32), jnp.ones(obs_dim, jnp.float32)
        return cls(zeros, ones, zeros, ones)

    @classmethod
    def fit(cls, obs: np.ndarray, next_obs: np.ndarray) -> "Normaliser":
        delta = next_obs - obs
        return cls(*(jnp.asarray(x, jnp.float32) for x in (
            obs.mean(0), obs.std(0) + 1e-3, delta.mean(0), delta.std(0) + 1e-3)))


@flax.struct.dataclass
class ExploreState:
    sac: SACState
    model_params: Any
    model_opt: Any
    norm: Normaliser


class Explorer:
    """The ensemble, its optimiser and the jitted pure functions; the policy is `self.sac`.

    `update_many(state, batches)` donates the state; batches are dicts of `sac.BATCH_KEYS`
    (the reward is replaced by the intrinsic one) with shapes (K, B, ...).
    """

    def __init__(self, config: ConfigDict, obs_dim: int, action_dim: int = ACTION_DIM):
        self.config = experts_config.validate_explore(config)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.sac = SAC(config.sac, obs_dim, action_dim)
        self.ensemble = Ensemble(tuple(config.model_hidden_sizes), obs_dim, config.ensemble_size)
        self.model_optimizer = optax.adam(config.model_lr)
        self._init = jax.jit(self._initial_state)
        self.update_many = jax.jit(self._update_many, donate_argnums=0)
        self.model_update_many = jax.jit(self._model_update_many, donate_argnums=0)
        self.disagreement = jax.jit(self._disagreement)

    def init(self, seed: int) -> ExploreState:
        return self._init(jax.random.PRNGKey(seed))

    def _initial_state(self, key: chex.PRNGKey) -> ExploreState:
        sac_key, model_key = jax.random.split(key)
        params = self.ensemble.init(model_key, jnp.zeros((1, self.obs_dim)), jnp.zeros((1, self.action_dim)))
        return ExploreState(
            sac=self.sac._initial_state(sac_key),
            model_params=params,
            model_opt=self.model_optimizer.init(params),
            norm=Normaliser.identity(self.obs_dim),
        )

    def _predict(self, params: Any, norm: Normaliser, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.ensemble.apply(params, (obs - norm.obs_mean) / norm.obs_std, action)

    def _disagreement(self, state: ExploreState, obs: jax.Array, action: jax.Array) -> jax.Array:
        """The unscaled disagreement at each (obs, action): (B,)."""
        return disagreement(self._predict(state.model_params, state.norm, obs, action))

    def _model_update(self, state: ExploreState, batch: dict[str, jax.Array]) -> tuple[ExploreState, jax.Array]:
        norm = state.norm
        target = (batch["next_obs"] - batch["obs"] - norm.delta_mean) / norm.delta_std

        def objective(params):
            return ensemble_loss(self._predict(params, norm, batch["obs"], batch["action"]), target)

        loss, grads = jax.value_and_grad(objective)(state.model_params)
        updates, opt = self.model_optimizer.update(grads, state.model_opt, state.model_params)
        return state.replace(model_params=optax.apply_updates(state.model_params, updates), model_opt=opt), loss

    def _model_update_many(self, state: ExploreState, batches: dict[str, jax.Array]) -> tuple[ExploreState, jax.Array]:
        """Ensemble updates only (one per leading entry); returns the mean loss."""
        state, losses = jax.lax.scan(self._model_update, state, batches)
        return state, jnp.mean(losses)

    def _update(self, state: ExploreState, batch: dict[str, jax.Array]) -> tuple[ExploreState, dict[str, jax.Array]]:
        state, model_loss = self._model_update(state, batch)
        intrinsic = self._disagreement(state, batch["obs"], batch["action"])
        sac_state, metrics = self.sac._update(state.sac, {**batch, "reward": self.config.intrinsic_scale * intrinsic})
        metrics = {**metrics, "model_loss": model_loss / self.config.ensemble_size,
                   "disagreement": jnp.mean(intrinsic)}
        return state.replace(sac=sac_state), metrics

    def _update_many(self, state: ExploreState, batches: dict[str, jax.Array]) -> tuple[ExploreState, dict[str, jax.Array]]:
        state, metrics = jax.lax.scan(self._update, state, batches)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def default_config(**overrides: Any) -> ConfigDict:
    """The settings of our explore buffers (`experts.config.explore()`); `overrides` replace any
    of them, `sac={...}` SAC ones (the SAC defaults are those of the experts)."""
    return experts_config.validate_explore(experts_config.override(experts_config.explore(), overrides, "exploration"))


@dataclasses.dataclass
class _Progress(driver.Progress):
    intrinsic_returns: list = dataclasses.field(default_factory=list)


def _obs_spec(domain: str) -> tuple[tuple[str, ...], int]:
    keys = envs.observation_keys(domain, "mdp")
    return keys, sum(envs.PROPRIO_KEYS[domain][k] for k in keys)


def train_explorer(
    domain: str,
    workdir: str,
    total_env_steps: int,
    seed: int = 0,
    config: ConfigDict | None = None,
    episode_dir: str | None = None,
    max_wall_s: float | None = None,
    on_episode: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes, or returns at once when complete) the exploration agent in `workdir`.

    Runs whole episodes of `EXPLORE_TASK[domain]` until `total_env_steps` agent steps are done (or
    `max_wall_s` passes). Episode i starts from `episode_seed(seed, i)` and, with `episode_dir`, is
    written there as `<i>.npz` when it ends; `on_episode(i)` is called after that. Checkpoints
    (every `sac.save_every` steps, at episode boundaries, and at the end) hold the agent, the
    replay buffer and the counters; a rerun continues from the last one and rewrites the same
    episodes. Returns (and writes to `workdir/summary.json`) counts and per-episode returns.
    """
    if domain not in envs.DOMAINS:
        raise AimeError(f"unknown domain {domain!r}; valid domains: {', '.join(envs.DOMAINS)}")
    config = experts_config.validate_explore(config or default_config())
    sac_cfg = config.sac
    if total_env_steps < 1:
        raise ConfigError(f"total_env_steps must be >= 1, got {total_env_steps}")
    env_name = EXPLORE_TASK[domain]
    obs_keys, obs_dim = _obs_spec(domain)
    episode_steps = math.ceil(SIMULATOR_STEPS_PER_EPISODE / sac_cfg.action_repeat)
    total = math.ceil(total_env_steps / episode_steps) * episode_steps
    if episode_dir is not None:
        _episode_dir_meta(episode_dir, env_name, seed, sac_cfg.action_repeat, policy="explore-training")
        remove_stale_temporaries(episode_dir)

    explorer = Explorer(config, obs_dim)
    state = explorer.init(seed)
    buffer = ReplayBuffer(min(sac_cfg.buffer_size, total), obs_dim)
    prog = _Progress()
    writable_dir(workdir, "--workdir")
    ckpt = driver.open_checkpoints(os.path.join(workdir, "checkpoints"))
    try:
        if ckpt.latest_step() is not None:
            meta = ckpt.restore_meta()
            if meta["seed"] != seed or meta["domain"] != domain or meta["config"] != experts_config.as_dict(config):
                raise AimeError(
                    f"{workdir} holds an exploration run with other settings (domain {meta['domain']}, seed "
                    f"{meta['seed']}); use a new workdir or the same settings"
                )
        restored = driver.restore_checkpoint(ckpt, state, buffer)
        if restored is not None:
            state, meta = restored
            # Checkpoints of earlier versions also said whether the seed steps were over, which
            # env_steps tells.
            prog = _Progress(**{k: v for k, v in meta["progress"].items() if k != "normalised"})
        if prog.env_steps < total:
            act_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

            def seeded(state):
                # The statistics of the seed transitions fix the scales of the ensemble's inputs and
                # targets for the rest of the run (saved with the state).
                data = buffer.chronological()
                return state.replace(norm=Normaliser.fit(data["obs"], data["next_obs"]))

            def update(state, updates):
                rng = np.random.default_rng([seed, 1, updates])
                return explorer.update_many(state, jax.device_put(buffer.sample(rng, (sac_cfg.updates_per_call,
                                                                                     sac_cfg.batch_size))))

            def intrinsic_return(state, trajectories, round_start, done):
                trajectory, value = trajectories[0], 0.0
                if prog.env_steps > sac_cfg.seed_steps:
                    actions = np.stack([s.action for s in trajectory[1:]])
                    states = np.stack([observation_vector(s.proprio, obs_keys) for s in trajectory[:-1]])
                    value = float(config.intrinsic_scale * np.sum(explorer.disagreement(state, states, actions)))
                prog.intrinsic_returns.append(value)

            def save(state):
                meta = {"domain": domain, "seed": seed, "config": experts_config.as_dict(config), "obs_keys": list(obs_keys),
                        "progress": dataclasses.asdict(prog)}
                driver.save_checkpoint(ckpt, prog.env_steps, state, buffer, meta)

            hooks = driver.Hooks(
                observe=lambda proprio: observation_vector(proprio, obs_keys),
                act=lambda state, obs, step: explorer.sac.sample_actions(state.sac.actor_params, obs, act_key, step),
                update=update,
                save=save,
                # No task reward enters training: the updates relabel every batch with the disagreement.
                reward=lambda steps: np.zeros(len(steps), np.float32),
                seeded=seeded,
                end_round=intrinsic_return,
            )
            with RunLogger(workdir, total, prog.env_steps, sac_cfg.log_every,
                           config={"domain": domain, "seed": seed, **experts_config.as_dict(config)}) as logger:
                driver.run(hooks, state, buffer, prog, env_name=env_name, seed=seed, total=total, config=sac_cfg,
                           logger=logger, summary=SUMMARY, episode_dir=episode_dir, max_wall_s=max_wall_s,
                           on_episode=on_episode)
    finally:
        ckpt.close()
    summary = {"domain": domain, "env": env_name, "seed": seed, "config": experts_config.as_dict(config),
               **dataclasses.asdict(prog)}
    write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
