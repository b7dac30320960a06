"""A sampling planner on the true simulator (MPPI, Williams et al. 2017) that records episodes.

Its use: demonstrations for SAC where SAC alone does not find the behaviour. On the flip tasks
SAC settles on rocking back and forth (docs/experts.md); this planner, which may reset the
simulator to any state, finds continuous rotation, and a few of its episodes in SAC's
`demo_dir` lead SAC there. The experts stay SAC policies; the planner is never an expert itself.

At every agent step: draw `samples` action sequences of `horizon` agent steps around the current
plan (Gaussian noise of std `noise`, clipped to [-1, 1]), simulate each from the current physics
state with `mujoco.rollout` (in C, all samples in one call, the action repeat applied), score
them with the task's reward (tasks whose reward reads the velocity alone,
`envs.tasks.Task.velocity_reward`), average the sequences with weights
exp((return - max) / temperature), act with the first action and shift the plan by one step.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from aime_jax import envs
from aime_jax.atomic import check_local_path
from aime_jax.data.collect import run_episode
from aime_jax.data.episodes import save_episode
from aime_jax.envs.seeding import episode_seed
from aime_jax.errors import ConfigError
from aime_jax.experts import config as experts_config
from aime_jax.experts.config import ConfigDict


def default_config(**overrides: Any) -> ConfigDict:
    """The planner's settings (`experts.config.mppi()`) with `overrides` in place."""
    return experts_config.validate_mppi(experts_config.override(experts_config.mppi(), overrides, "planner"))


def plannable_tasks() -> tuple[str, ...]:
    return tuple(n for n in envs.ENV_NAMES if envs.tasks.get_task(n).velocity_reward)


def _check_task(env_name: str) -> envs.tasks.Task:
    task = envs.tasks.get_task(env_name)
    if not task.velocity_reward:
        raise ConfigError(
            f"the planner scores rollouts by a reward of the velocity alone; {env_name} has none. "
            f"Plannable tasks: {', '.join(plannable_tasks())}"
        )
    return task


class Planner:
    """MPPI for one environment; `act(env, rng)` plans from `env`'s current physics state."""

    def __init__(self, env_name: str, config: ConfigDict | None = None):
        import mujoco
        from mujoco import rollout

        self.task = _check_task(env_name)
        self.config = experts_config.validate_mppi(config or default_config())
        self._mujoco, self._rollout = mujoco, rollout
        self._spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.plan: np.ndarray | None = None
        self._scratch = None

    def reset(self) -> None:
        self.plan = None

    def returns(self, env: envs.Env, sequences: np.ndarray) -> np.ndarray:
        """The task return of each action sequence (S, H, A) simulated from env's current state."""
        mj, model, data = self._mujoco, env.physics.model.ptr, env.physics.data.ptr
        if self._scratch is None:
            self._scratch = mj.MjData(model)
        state = np.empty(mj.mj_stateSize(model, self._spec))
        mj.mj_getState(model, data, state, self._spec)
        repeat = self.config.action_repeat
        controls = np.repeat(sequences, repeat, axis=1)
        states, _ = self._rollout.rollout(model, self._scratch, np.tile(state, (len(sequences), 1)), controls)
        # FULLPHYSICS state: time, qpos, qvel, ...; the reward is read after each agent step.
        qvel = states[:, repeat - 1::repeat, 1 + model.nq:1 + model.nq + model.nv]
        return np.asarray(self.task.reward({"velocity": qvel}, 0.0)).sum(axis=1)

    def act(self, env: envs.Env, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if self.plan is None:
            self.plan = np.zeros((c.horizon, env.action_dim))
        sequences = np.clip(self.plan[None] + rng.normal(0.0, c.noise, (c.samples,) + self.plan.shape), -1.0, 1.0)
        returns = self.returns(env, sequences)
        weights = np.exp((returns - returns.max()) / c.temperature)
        weights /= weights.sum()
        self.plan = np.clip(np.tensordot(weights, sequences, axes=1), -1.0, 1.0)
        action = self.plan[0].astype(np.float32)
        self.plan = np.concatenate([self.plan[1:], self.plan[-1:]])
        return action


def plan_episodes(
    env_name: str,
    out: str,
    episodes: int,
    seed: int = 0,
    config: ConfigDict | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Writes `episodes` planner episodes `<i>.npz` to `out` (the aime-jax layout, MDP keys, physics
    states, no images), skipping those already there; episode i starts from episode_seed(seed, i).
    Returns [{"episode": i, "return": R}] of the episodes planned in this call."""
    config = experts_config.validate_mppi(config or default_config())
    _check_task(env_name)
    check_local_path(out, "--out")
    os.makedirs(out, exist_ok=True)
    have = set(os.listdir(out))
    todo = [i for i in range(episodes) if f"{i}.npz" not in have]
    env = envs.make(env_name, "mdp", seed=None, action_repeat=config.action_repeat)
    planner = Planner(env_name, config)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"plan {env_name}", unit="ep")
    results = []
    try:
        for i in todo:
            planner.reset()
            episode = run_episode(env, lambda observation, proprio, rng: planner.act(env, rng), episode_seed(seed, i))
            save_episode(os.path.join(out, f"{i}.npz"), episode)
            results.append({"episode": i, "return": float(episode["reward"].sum())})
            if bar is not None:
                bar.update(1)
                bar.write(f"[plan] {env_name} episode {i}: return {results[-1]['return']:.1f}")
    finally:
        if bar is not None:
            bar.close()
    return results
