"""Soft actor-critic experts on proprioceptive state: the demonstrators and the `<task>-buffer`
embodiment datasets.

SAC (Haarnoja et al. 2018, with the learned temperature of the second paper): a tanh-Gaussian
actor, twin Q critics with Polyak-averaged targets, the temperature tuned towards the target
entropy -action_dim, Adam for all three. `SAC.update_many(state, batches)` runs one update per
entry of the batches' leading axis inside one `lax.scan`, so the host samples and transfers the
batches of several updates at once and dispatches one call.

`train_expert` runs the online loop of `aime_jax.experts.driver`: `num_envs` in-process
environments stepped in lockstep (one jitted actor call for all of them), a numpy ring replay
buffer, checkpoints at episode boundaries (one Orbax save of the train state and the buffer) so
that a rerun with the same workdir continues from the last checkpoint with the same buffer,
periodic evaluation of the mode policy (the checkpoint of the best evaluation so far kept in
`workdir/best/`), and, optionally, every training episode saved in the authors' layout.
`load_expert_policy` restores the actor (latest or best) from the Orbax checkpoint alone.

The observation is the concatenation of the MDP keys of `envs.observation_keys(domain, 'mdp')`,
taken from `Step.proprio`, so the same expert acts in every modality. Env steps are agent steps
(action repeat 2: 500 per episode).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Sequence

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aime_jax import envs
from aime_jax.atomic import remove_stale_temporaries, writable_dir
from aime_jax.checkpoint import CheckpointNotFoundError, Checkpointer, restore_params_tree
from aime_jax.data.collect import Policy, random_policy
from aime_jax.data.episodes import list_episodes, load_episode
from aime_jax.envs.dmc import ACTION_DIM
from aime_jax.errors import AimeError, ConfigError
from aime_jax.evaluate import PAPER_EXPERT_RETURNS, evaluate, normalised, write_results
from aime_jax.experts import config as experts_config
from aime_jax.experts import driver
from aime_jax.experts.config import ConfigDict
from aime_jax.experts.replay import ReplayBuffer
from aime_jax.logging import RunLogger
from aime_jax.nets.mlp import MLP
from aime_jax.nets.policy import tanh_gaussian_mode, tanh_gaussian_sample, tanh_gaussian_sample_with_log_prob

SUMMARY = ("episode_return", "critic_loss", "actor_loss", "temperature", "entropy", "q", "updates_per_s")
# dm_control's walker and cheetah episodes last 1000 physics steps.
SIMULATOR_STEPS_PER_EPISODE = 1000
# Evaluation episodes start from episode_seed(EVAL_SEED, i) whatever the training seed, so every
# expert is scored on the same initial states (training episodes use small seeds).
EVAL_SEED = 1_000_000


def default_config(env_name: str, **overrides: Any) -> ConfigDict:
    """The settings we train experts with (`experts.config.sac()`, the same for every task; the
    dataset builder's per-task ones are `experts.config.tasks()`); `overrides` replace any of them.

    On a CPU the updates cost nearly all of the wall time (a 256 x 2, batch-256 update costs as
    much as ~30 walker env steps), and the cost grows with width x batch while, on walker-stand,
    128 x 2 networks at batch 128 learned about as fast per env step as 256 x 2 at batch 128 or
    256 (single seeds: level over 60k steps, within the seed spread at 20k; benchmarks/sac.py):
    so 128 x 2, batch 128, one update per env step, ~300 updates/s on 2 cores. LayerNorm in
    every hidden layer, as in recent fast SAC variants, with lr 1e-3: on cheetah-run
    (LayerNorm in both) lr 1e-3 scored 374 / 424 at 50k / 60k steps against 246 / 323 for 3e-4
    (one seed each); on walker-stand single-seed runs of 1e-3 with LayerNorm and the classic 3e-4
    without it were level. Wider networks are one override away (`hidden_sizes=(256, 256)`)
    where the asymptote matters more than the hours.
    """
    envs.domain_of(env_name)  # an unknown task fails here, with the valid names
    return config_from_dict(overrides)


def config_from_dict(values: dict[str, Any]) -> ConfigDict:
    """The default settings with `values` (e.g. a checkpoint's JSON) in place, validated."""
    return experts_config.validate_sac(experts_config.override(experts_config.sac(), values, "SAC"))


class Actor(nn.Module):
    """observation -> (mean, std) of the pre-tanh Gaussian of `nets.policy`'s tanh-Gaussian; log std
    squashed into [log_std_min, log_std_max] with a tanh so the entropy stays bounded both ways."""

    action_dim: int
    hidden_sizes: Sequence[int]
    layer_norm: bool
    log_std_min: float
    log_std_max: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MLP(self.hidden_sizes, 2 * self.action_dim, "relu", self.layer_norm)(obs)
        mean, raw = jnp.split(out, 2, axis=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(raw) + 1.0)
        return mean, jnp.exp(log_std)


class Critic(nn.Module):
    hidden_sizes: Sequence[int]
    layer_norm: bool

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        return MLP(self.hidden_sizes, 1, "relu", self.layer_norm)(x)[..., 0]


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one batched network: (obs, action) -> (2, ...)."""

    hidden_sizes: Sequence[int]
    layer_norm: bool
    num: int = 2

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num,
        )
        return ensemble(self.hidden_sizes, self.layer_norm, name="q")(obs, action)


def critic_loss(q: jax.Array, target: jax.Array) -> jax.Array:
    """Sum over the critics of each one's mean squared TD error; q is (num_critics, B)."""
    chex.assert_rank(q, 2)
    chex.assert_shape(target, q.shape[1:])
    return jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))


def soft_target(
    reward: jax.Array,
    discount: jax.Array,
    next_q: jax.Array,
    next_log_prob: jax.Array,
    gamma: float,
    temperature: jax.Array,
) -> jax.Array:
    """r + gamma * discount * (min_i Q_i'(s', a') - alpha log pi(a'|s')); next_q is (2, B)."""
    chex.assert_rank(next_q, 2)
    chex.assert_equal_shape([reward, discount, next_log_prob, next_q[0]])
    return reward + gamma * discount * (jnp.min(next_q, axis=0) - temperature * next_log_prob)


def temperature_loss(log_temperature: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """alpha * (H(pi) - target): lowers alpha while the entropy is above the target, raises it below."""
    chex.assert_rank(log_temperature, 0)
    return jnp.exp(log_temperature) * jnp.mean(jax.lax.stop_gradient(-log_prob) - target_entropy)


@flax.struct.dataclass
class SACState:
    step: jax.Array  # updates done
    actor_params: Any
    critic_params: Any
    target_critic_params: Any
    log_temperature: jax.Array
    actor_opt: Any
    critic_opt: Any
    temperature_opt: Any
    rng: jax.Array


class SAC:
    """The networks, optimisers and jitted pure functions of one SAC learner.

    `update(state, batch)` and `update_many(state, batches)` donate the state; batches are dicts
    of `replay.BATCH_KEYS` with shapes (B, ...) and (K, B, ...) respectively.
    """

    def __init__(self, config: ConfigDict, obs_dim: int, action_dim: int = ACTION_DIM):
        self.config = config
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.target_entropy = -float(action_dim) if config.target_entropy is None else float(config.target_entropy)
        hidden = tuple(config.hidden_sizes)
        self.actor = Actor(action_dim, hidden, config.layer_norm, config.log_std_min, config.log_std_max)
        self.critic = TwinCritic(hidden, config.layer_norm)
        self.actor_optimizer = optax.adam(config.actor_lr)
        self.critic_optimizer = optax.adam(config.critic_lr)
        self.temperature_optimizer = optax.adam(config.temperature_lr)
        # Jitted: op by op, initialising the networks and optimisers takes seconds on a CPU.
        self._init = jax.jit(self._initial_state)
        self.update = jax.jit(self._update, donate_argnums=0)
        self.update_many = jax.jit(self._update_many, donate_argnums=0)
        self.sample_actions = jax.jit(self._sample_actions)
        self.mode_actions = jax.jit(self._mode_actions)

    def init_actor(self, rng: chex.PRNGKey) -> Any:
        return self.actor.init(rng, jnp.zeros((1, self.obs_dim), jnp.float32))

    def init(self, seed: int) -> SACState:
        return self._init(jax.random.PRNGKey(seed))

    def _initial_state(self, key: chex.PRNGKey) -> SACState:
        actor_key, critic_key, rng = jax.random.split(key, 3)
        actor_params = self.init_actor(actor_key)
        critic_params = self.critic.init(
            critic_key, jnp.zeros((1, self.obs_dim), jnp.float32), jnp.zeros((1, self.action_dim), jnp.float32)
        )
        log_temperature = jnp.asarray(math.log(self.config.init_temperature), jnp.float32)
        return SACState(
            step=jnp.zeros((), jnp.int32),
            actor_params=actor_params,
            critic_params=critic_params,
            # A copy, not the same buffers: the state is donated as a whole.
            target_critic_params=jax.tree.map(jnp.copy, critic_params),
            log_temperature=log_temperature,
            actor_opt=self.actor_optimizer.init(actor_params),
            critic_opt=self.critic_optimizer.init(critic_params),
            temperature_opt=self.temperature_optimizer.init(log_temperature),
            rng=rng,
        )

    def _update(self, state: SACState, batch: dict[str, jax.Array]) -> tuple[SACState, dict[str, jax.Array]]:
        cfg = self.config
        chex.assert_rank(batch["obs"], 2)
        chex.assert_shape([batch["reward"], batch["discount"]], batch["obs"].shape[:1])
        rng, next_key, actor_key = jax.random.split(state.rng, 3)
        temperature = jnp.exp(state.log_temperature)

        next_action, next_log_prob = tanh_gaussian_sample_with_log_prob(
            *self.actor.apply(state.actor_params, batch["next_obs"]), next_key)
        next_q = self.critic.apply(state.target_critic_params, batch["next_obs"], next_action)
        target = jax.lax.stop_gradient(
            soft_target(batch["reward"], batch["discount"], next_q, next_log_prob, cfg.discount, temperature)
        )

        def critic_objective(params):
            q = self.critic.apply(params, batch["obs"], batch["action"])
            return critic_loss(q, target), q

        (c_loss, q), grads = jax.value_and_grad(critic_objective, has_aux=True)(state.critic_params)
        updates, critic_opt = self.critic_optimizer.update(grads, state.critic_opt, state.critic_params)
        critic_params = optax.apply_updates(state.critic_params, updates)

        def actor_objective(params):
            action, log_prob = tanh_gaussian_sample_with_log_prob(*self.actor.apply(params, batch["obs"]), actor_key)
            q_pi = jnp.min(self.critic.apply(critic_params, batch["obs"], action), axis=0)
            return jnp.mean(temperature * log_prob - q_pi), log_prob

        (a_loss, log_prob), grads = jax.value_and_grad(actor_objective, has_aux=True)(state.actor_params)
        updates, actor_opt = self.actor_optimizer.update(grads, state.actor_opt, state.actor_params)
        actor_params = optax.apply_updates(state.actor_params, updates)

        t_loss, grad = jax.value_and_grad(temperature_loss)(state.log_temperature, log_prob, self.target_entropy)
        updates, temperature_opt = self.temperature_optimizer.update(grad, state.temperature_opt, state.log_temperature)
        log_temperature = optax.apply_updates(state.log_temperature, updates)

        target_critic_params = optax.incremental_update(critic_params, state.target_critic_params, cfg.tau)
        new_state = SACState(
            step=state.step + 1,
            actor_params=actor_params,
            critic_params=critic_params,
            target_critic_params=target_critic_params,
            log_temperature=log_temperature,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            temperature_opt=temperature_opt,
            rng=rng,
        )
        metrics = {
            "critic_loss": c_loss,
            "actor_loss": a_loss,
            "temperature_loss": t_loss,
            "temperature": temperature,
            "entropy": -jnp.mean(log_prob),
            "q": jnp.mean(q),
            "target": jnp.mean(target),
        }
        return new_state, metrics

    def _update_many(self, state: SACState, batches: dict[str, jax.Array]) -> tuple[SACState, dict[str, jax.Array]]:
        """K updates in one scan over the batches' leading axis; metrics averaged over them."""
        state, metrics = jax.lax.scan(self._update, state, batches)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    def _sample_actions(self, actor_params: Any, obs: jax.Array, rng: chex.PRNGKey, step: jax.Array) -> jax.Array:
        return tanh_gaussian_sample(*self.actor.apply(actor_params, obs), jax.random.fold_in(rng, step))

    def _mode_actions(self, actor_params: Any, obs: jax.Array) -> jax.Array:
        return tanh_gaussian_mode(self.actor.apply(actor_params, obs)[0])


def observation_vector(observation: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """The MDP keys concatenated on the last axis, float32 (works batched or for one step)."""
    return np.concatenate([np.asarray(observation[k], np.float32) for k in keys], axis=-1)


def periodic_pitch(vector: np.ndarray, index: int | None) -> np.ndarray:
    """Replaces entry `index` of the last axis (an angle) by its sine and cosine; None: unchanged."""
    if index is None:
        return vector
    angle = vector[..., index:index + 1]
    return np.concatenate([vector[..., :index], np.sin(angle), np.cos(angle), vector[..., index + 1:]], axis=-1)


class SACAgent:
    """The mode (deterministic) policy of a SAC actor.

    Both an evaluation agent (`initial_carry` / `act`, see aime_jax.evaluate) and a collection
    policy (`policy(observation, proprio, rng) -> action`, see aime_jax.data.collect): it reads the
    MDP keys from the observation when acting in `evaluate` (MDP modality) and from `proprio`
    when collecting, so it serves every modality there.
    """

    def __init__(self, sac: SAC, actor_params: Any, obs_keys: Sequence[str], name: str = "sac-expert",
                 pitch_index: int | None = None):
        self.sac, self.actor_params, self.obs_keys, self.name = sac, actor_params, tuple(obs_keys), name
        self.pitch_index = pitch_index

    def initial_carry(self, episode_seeds: Sequence[int]) -> None:
        return None

    def act(self, carry: None, observation: dict[str, np.ndarray], prev_action: np.ndarray, is_first: np.ndarray):
        missing = [k for k in self.obs_keys if k not in observation]
        if missing:
            raise AimeError(f"the SAC expert needs the MDP observation keys {list(self.obs_keys)}; missing {missing}")
        obs = periodic_pitch(observation_vector(observation, self.obs_keys), self.pitch_index)
        return carry, np.asarray(self.sac.mode_actions(self.actor_params, obs))

    def __call__(self, observation: dict, proprio: dict, rng: np.random.Generator) -> np.ndarray:
        obs = periodic_pitch(observation_vector(proprio, self.obs_keys), self.pitch_index)[None]
        return np.asarray(self.sac.mode_actions(self.actor_params, obs))[0]


def _checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "checkpoints")


def _best_dir(workdir: str) -> str:
    return os.path.join(workdir, "best")


def _obs_spec(env_name: str, periodic: bool = False) -> tuple[tuple[str, ...], int, int | None]:
    """The MDP keys, the size of the networks' input and, with `periodic` on cheetah, the index of
    the root's pitch in the concatenated keys (cheetah's `position` is qpos without rootx:
    rootz, rooty, ...); walker observes its orientations as cosines and sines already."""
    domain = envs.domain_of(env_name)
    keys = envs.observation_keys(domain, "mdp")
    size = sum(envs.PROPRIO_KEYS[domain][k] for k in keys)
    if not periodic or domain != "cheetah":
        return keys, size, None
    offset = sum(envs.PROPRIO_KEYS[domain][k] for k in keys[:keys.index("position")])
    return keys, size + 1, offset + 1


@dataclasses.dataclass
class _Progress(driver.Progress):
    eval_wall_s: float = 0.0
    evals: list = dataclasses.field(default_factory=list)
    # The evaluation with the highest mean return so far ({"env_steps", "return"}); its state is
    # the one checkpoint in workdir/best/.
    best: dict | None = None


def _episode_dir_meta(episode_dir: str, env_name: str, seed: int, action_repeat: int,
                      policy: str = "sac-training") -> None:
    """meta.json as `collect` writes it, so the folder reads like any collected dataset; a folder
    that already holds another run's episodes is refused."""
    meta = {"env": env_name, "modality": "mdp", "policy": policy, "seed": seed,
            "action_repeat": action_repeat, "image_size": None}
    path = os.path.join(episode_dir, "meta.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        clash = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if clash:
            raise AimeError(
                f"episode folder {episode_dir} holds episodes of another run {clash} (old, new); choose another folder"
            )
        return
    writable_dir(episode_dir, "episode folder")
    write_results(path, meta)


def _prune_best(best: Checkpointer, prog: _Progress) -> None:
    """Keeps in best/ only the checkpoint of `prog.best`: the ones a run saved after its last main
    checkpoint (killed before it) and the ones a later best replaced."""
    keep = None if prog.best is None else prog.best["env_steps"]
    for step in best.all_steps():
        if step != keep:
            best.delete(step)


def _check_resume(meta: dict, env_name: str, seed: int, config: ConfigDict, workdir: str) -> None:
    if meta["seed"] != seed:
        raise AimeError(
            f"{workdir} holds a SAC run with seed {meta['seed']}, not {seed}; use a new workdir or that seed"
        )
    saved_cfg = config_from_dict(meta["config"])
    network = ("hidden_sizes", "layer_norm", "log_std_min", "log_std_max", "periodic_pitch")
    changed = [k for k in network if getattr(saved_cfg, k) != getattr(config, k)]
    if meta["env"] != env_name or changed or saved_cfg.num_envs != config.num_envs:
        raise AimeError(
            f"{workdir} holds a SAC run of {meta['env']} with other networks or num_envs "
            f"({ {k: getattr(saved_cfg, k) for k in (*network, 'num_envs')} }); use a new workdir or the same settings"
        )


def train_expert(
    env_name: str,
    workdir: str,
    total_env_steps: int,
    seed: int = 0,
    config: ConfigDict | None = None,
    episode_dir: str | None = None,
    max_wall_s: float | None = None,
) -> dict[str, Any]:
    """Trains (or resumes, or returns at once when complete) a SAC expert in `workdir`.

    Runs whole episodes until `total_env_steps` agent steps are done (rounded up to whole rounds
    of `num_envs` episodes), or until the run's wall time passes `max_wall_s`, checkpointing
    there (a rerun without it continues). Training episode i starts from `episode_seed(seed, i)`; with
    `episode_dir` it is written there as `<i>.npz` (proprioception, actions, rewards, physics
    states; no images) as soon as it ends. Returns (and writes to `workdir/summary.json`) the
    counts, wall time and evaluation curve.
    """
    config = experts_config.validate_sac(config or default_config(env_name))
    task = envs.tasks.get_task(env_name)
    if config.shaped_reward and task.shaped is None:
        shaped = [name for name in envs.ENV_NAMES if envs.tasks.get_task(name).shaped is not None]
        raise ConfigError(f"{env_name} has no shaped reward (shaped_reward=True); tasks with one: {', '.join(shaped)}")
    if total_env_steps < 1:
        raise ConfigError(f"total_env_steps must be >= 1, got {total_env_steps}")
    obs_keys, obs_dim, pitch_index = _obs_spec(env_name, config.periodic_pitch)
    n = config.num_envs
    episode_steps = math.ceil(SIMULATOR_STEPS_PER_EPISODE / config.action_repeat)
    round_steps = n * episode_steps
    total = math.ceil(total_env_steps / round_steps) * round_steps

    if episode_dir is not None:
        _episode_dir_meta(episode_dir, env_name, seed, config.action_repeat)
        remove_stale_temporaries(episode_dir)
    sac = SAC(config, obs_dim)
    state = sac.init(seed)
    buffer = ReplayBuffer(min(config.buffer_size, total), obs_dim)
    prog = _Progress()
    writable_dir(workdir, "--workdir")
    ckpt = driver.open_checkpoints(_checkpoint_dir(workdir))
    best = Checkpointer(_best_dir(workdir), max_to_keep=None, save_interval_steps=1)
    try:
        if ckpt.latest_step() is not None:
            _check_resume(ckpt.restore_meta(), env_name, seed, config, workdir)
        restored = driver.restore_checkpoint(ckpt, state, buffer)
        if restored is not None:
            state, meta = restored
            prog = _Progress(**meta["progress"])
        _prune_best(best, prog)
        if prog.env_steps < total:
            demos = load_demos(config, env_name, obs_keys, pitch_index)
            act_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
            shaped = task.shaped if config.shaped_reward else None

            def observe(proprio):
                return periodic_pitch(observation_vector(proprio, obs_keys), pitch_index)

            def update(state, updates):
                return sac.update_many(state, jax.device_put(_sample(buffer, demos, config, seed, updates)))

            def meta():
                return {"env": env_name, "seed": seed, "config": experts_config.as_dict(config), "obs_keys": list(obs_keys),
                        "pitch_index": pitch_index, "obs_dim": sac.obs_dim, "action_dim": sac.action_dim,
                        "progress": dataclasses.asdict(prog)}

            def evaluate_round(state, trajectories, round_start, done):
                if not (done or driver.crossed(round_start, prog.env_steps, config.eval_every)):
                    return
                t0 = time.perf_counter()
                agent = SACAgent(sac, state.actor_params, obs_keys, pitch_index=pitch_index)
                result = evaluate(env_name, "mdp", agent, config.eval_episodes, num_envs=config.eval_episodes,
                                  seed=EVAL_SEED, action_repeat=config.action_repeat)
                prog.eval_wall_s += time.perf_counter() - t0
                prog.wall_s += time.perf_counter() - t0
                prog.evals.append({"env_steps": prog.env_steps, "return": result.mean, "return_std": result.std,
                                   "wall_s": prog.wall_s})
                logger.log(prog.env_steps, {"return": result.mean, "return_std": result.std}, prefix="eval")
                if prog.best is None or result.mean > prog.best["return"]:
                    # Saved now, committed (older bests removed) with the next main checkpoint; a run
                    # killed in between drops it on resume and evaluates that state again.
                    prog.best = {"env_steps": prog.env_steps, "return": result.mean}
                    best.save(prog.env_steps, state, meta(), force=True)
                    best.wait()

            def save(state):
                driver.save_checkpoint(ckpt, prog.env_steps, state, buffer, meta())
                _prune_best(best, prog)

            hooks = driver.Hooks(
                observe=observe,
                act=lambda state, obs, step: sac.sample_actions(state.actor_params, obs, act_key, step),
                update=update,
                save=save,
                reward=driver.task_reward if shaped is None else (
                    lambda steps: np.array([shaped(s.proprio, s.reward) for s in steps], np.float32)),
                start_pitch=lambda episode: _start_pitch(config, seed, episode),
                end_round=evaluate_round,
            )
            with RunLogger(workdir, total, prog.env_steps, config.log_every,
                           config={"env": env_name, "seed": seed, **experts_config.as_dict(config)}) as logger:
                driver.run(hooks, state, buffer, prog, env_name=env_name, seed=seed, total=total, config=config,
                           logger=logger, summary=SUMMARY, episode_dir=episode_dir, max_wall_s=max_wall_s)
    finally:
        ckpt.close()
        best.close()
    summary = _summary(env_name, seed, config, prog)
    write_results(os.path.join(workdir, "summary.json"), summary)
    return summary


def _summary(env_name: str, seed: int, config: ConfigDict, prog: _Progress) -> dict[str, Any]:
    last = prog.evals[-1] if prog.evals else None
    summary = {
        "env": env_name,
        "seed": seed,
        "config": experts_config.as_dict(config),
        "env_steps": prog.env_steps,
        "episodes": prog.episodes,
        "updates": prog.updates,
        "wall_s": prog.wall_s,
        "eval_wall_s": prog.eval_wall_s,
        "eval_return": last["return"] if last else None,
        # The best evaluation so far: the policy in workdir/best/ (load_expert_policy(best=True)).
        "best_eval": prog.best,
        "eval_curve": prog.evals,
        "train_returns": prog.train_returns,
    }
    if last and env_name in PAPER_EXPERT_RETURNS:
        summary["paper_expert_return"] = PAPER_EXPERT_RETURNS[env_name]
        summary["eval_normalised_paper"] = normalised(last["return"], PAPER_EXPERT_RETURNS[env_name])
    return summary


def _start_pitch(config: ConfigDict, seed: int, episode: int) -> float | None:
    if config.start_pitch == 0.0:
        return None
    return float(np.random.default_rng([seed, 3, episode]).uniform(-config.start_pitch, config.start_pitch))


def load_demos(config: ConfigDict, env_name: str, obs_keys: Sequence[str], pitch_index: int | None) -> ReplayBuffer | None:
    """The demonstration buffer of `config.demo_dir` (None without one): each episode's
    transitions, with the reward training uses (the task's stored one, or the shaped one)."""
    if not config.demo_dir:
        return None
    task = envs.tasks.get_task(env_name)
    shaped = task.shaped if config.shaped_reward else None
    sizes = envs.PROPRIO_KEYS[task.domain]
    episodes = []
    for path in list_episodes(config.demo_dir):
        ep = load_episode(path)
        need = (*obs_keys, "pre_action", "reward", "is_terminal")
        missing = [k for k in need if k not in ep]
        wrong = [k for k in obs_keys if k in ep and ep[k].shape[-1:] != (sizes[k],)]
        if missing or wrong:
            raise ConfigError(
                f"demo_dir episode {path} is not a {env_name} episode: missing {missing}, wrong sizes {wrong}; "
                f"give demo_dir a folder of {task.domain} episodes (e.g. from experiments/collect.py)"
            )
        vec = periodic_pitch(observation_vector(ep, obs_keys), pitch_index)
        reward = ep["reward"][1:].astype(np.float32)
        if shaped is not None:
            reward = np.asarray(shaped({k: ep[k][1:] for k in sizes if k in ep}, reward), np.float32)
        episodes.append(dict(obs=vec[:-1], action=np.clip(ep["pre_action"][1:], -1.0, 1.0), reward=reward,
                             discount=1.0 - ep["is_terminal"][1:].astype(np.float32), next_obs=vec[1:]))
    if not episodes:
        raise ConfigError(f"demo_dir {config.demo_dir} holds no episodes (<i>.npz)")
    demos = ReplayBuffer(sum(len(e["obs"]) for e in episodes), episodes[0]["obs"].shape[-1])
    for e in episodes:
        demos.add(**e)
    return demos


def _sample(buffer: ReplayBuffer, demos: ReplayBuffer | None, config: ConfigDict, seed: int, updates: int):
    """The update batches (updates_per_call, batch_size): indices are a pure function of (seed,
    update count), so a resumed run draws the batches an uninterrupted one would have."""
    rng = np.random.default_rng([seed, 1, updates])
    chunk, size = config.updates_per_call, config.batch_size
    n_demo = 0 if demos is None else max(1, min(size - 1, round(size * config.demo_fraction)))
    kw = dict(n_step=config.n_step, gamma=config.discount)
    batch = buffer.sample(rng, (chunk, size - n_demo), stride=config.num_envs, **kw)
    if not n_demo:
        return batch
    demo = demos.sample(rng, (chunk, n_demo), stride=1, **kw)
    return {k: np.concatenate([batch[k], demo[k]], axis=1) for k in batch}


def _read_meta(directory: str) -> tuple[dict, int]:
    """The latest checkpoint's metadata and step, read-only (safe while a trainer is writing)."""
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(
            f"no SAC expert at {directory}: the folder does not exist; train one with "
            "`python experiments/train_expert.py --config=configs/expert.py:<task> --workdir=...`"
        )
    with Checkpointer(path, read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            raise CheckpointNotFoundError(f"no complete checkpoint in {path}; the expert has not saved yet")
        meta = ckpt.restore_meta()
    if "progress" not in meta or "config" not in meta:
        raise AimeError(f"{path} does not hold a SAC expert checkpoint (its metadata has {sorted(meta)})")
    # Checkpoints are saved at env steps (the newest intact one, if the newest is damaged).
    return meta, int(meta["progress"]["env_steps"])


def checkpoint_eval(directory: str) -> dict[str, Any]:
    """{"env_steps", "return"} of the latest checkpoint in a checkpoint folder (`best/`, a builder's
    `policy-<steps>/` snapshot): its step and the evaluation made there (None if there was none)."""
    meta, step = _read_meta(directory)
    at_step = [e["return"] for e in meta["progress"]["evals"] if e["env_steps"] == step]
    return {"env_steps": step, "return": at_step[-1] if at_step else None}


def load_expert_policy(workdir: str, best: bool = False) -> SACAgent:
    """The mode policy of the latest checkpoint of a `train_expert` run (its workdir or the
    checkpoints/ folder in it), or with `best` of its best evaluation so far (workdir/best/),
    restored from the Orbax checkpoint alone.

    The result is a collection policy `policy(observation, proprio, rng) -> action` (mode actions,
    `rng` unused) for `aime_jax.data.collect.collect(policy=...)`, and an evaluation agent.
    """
    if best:
        directory = _best_dir(workdir)
        if not os.path.isdir(directory) or not os.listdir(directory):
            raise CheckpointNotFoundError(
                f"{workdir} has no best/ checkpoint: the run has not evaluated yet (or predates best/); "
                "load its latest checkpoint instead (best=False), or train it on"
            )
    else:
        directory = _checkpoint_dir(workdir) if os.path.isdir(_checkpoint_dir(workdir)) else workdir
    meta, step = _read_meta(directory)
    sac = SAC(config_from_dict(meta["config"]), int(meta["obs_dim"]), int(meta["action_dim"]))
    abstract = jax.eval_shape(sac.init_actor, jax.random.PRNGKey(0))
    params = restore_params_tree(directory, {"actor_params": abstract}, step)["actor_params"]
    return SACAgent(sac, params, meta["obs_keys"], name=f"sac-expert:{meta['env']}@{step}",
                    pitch_index=meta.get("pitch_index"))


def load_policy(spec: str) -> Policy:
    """'random', the run directory of an expert trained with experiments/train_expert.py (its
    latest checkpoint), or one of its checkpoint folders (`RUN/best`: its best evaluation; a
    dataset build's `policy-<steps>` snapshot)."""
    if spec == "random":
        return random_policy
    if os.path.isdir(spec):  # load_expert_policy says what is wrong with a folder it cannot read
        return load_expert_policy(spec)
    raise AimeError(
        f"unknown policy {spec!r}: use --policy=random, the run directory of an expert trained "
        "with experiments/train_expert.py (it holds checkpoints/), or its best/ folder"
    )
