"""The online loop of the SAC experts and the exploration agent: one driver, small hooks.

A round resets `num_envs` environments together (training episode i from `episode_seed(seed, i)`)
and steps them in lockstep to the end of their episodes: uniform random actions for the first
`seed_steps` env steps, the learner's sampled actions after; every transition into the replay
buffer; `utd` updates per env step after the seed steps, run `updates_per_call` at a time (one
jitted call); metrics every `log_every` env steps. At the end of a round: the episodes written to
`episode_dir` (`<i>.npz`, physics states, no images), the learner's round hook (an evaluation),
and at the end of the run or every `save_every` env steps a checkpoint. The random actions, the
sampled actions and the update batches are functions of (seed, counters), so a run resumed from
a checkpoint continues exactly as an uninterrupted one.

What differs between learners is in `Hooks`; the loop's settings are SAC settings
(`experts.config.sac()`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import numpy as np

from aime_jax import envs
from aime_jax.checkpoint import CheckpointNotFoundError, Checkpointer
from aime_jax.data.episodes import episode_from_steps, save_episode
from aime_jax.envs.dmc import ACTION_DIM, Step
from aime_jax.envs.seeding import episode_seed
from aime_jax.errors import AimeError
from aime_jax.experts import replay
from aime_jax.experts.replay import ReplayBuffer
from aime_jax.logging import RunLogger


@dataclasses.dataclass
class Progress:
    """Host-side counters saved with every checkpoint (JSON); a learner may add its own."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    pending_updates: float = 0.0
    wall_s: float = 0.0
    train_returns: list = dataclasses.field(default_factory=list)


def task_reward(steps: Sequence[Step]) -> np.ndarray:
    return np.array([s.reward for s in steps], np.float32)


def _no_pitch(episode: int) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a learner adds to the loop.

    observe(proprio) -> the network input of one step's or a batch's proprioception;
    act(state, obs (n, D), env_step) -> sampled actions (n, A);
    update(state, updates done) -> (state after `updates_per_call` more updates, metrics);
    save(state) -> None: a checkpoint at `progress.env_steps` (`save_checkpoint`);
    reward(steps) -> the rewards stored in the replay buffer (default: the task's);
    start_pitch(episode) -> the initial pitch of a training episode (`Env.reset`), or None;
    seeded(state) -> state, once, at the first env step past the seed steps;
    end_round(state, trajectories, round_start, done): after a round's episodes are counted.
    """

    observe: Callable[[dict[str, np.ndarray]], np.ndarray]
    act: Callable[[Any, np.ndarray, int], Any]
    update: Callable[[Any, int], tuple[Any, dict[str, Any]]]
    save: Callable[[Any], None]
    reward: Callable[[Sequence[Step]], np.ndarray] = task_reward
    start_pitch: Callable[[int], float | None] = _no_pitch
    seeded: Callable[[Any], Any] | None = None
    end_round: Callable[[Any, list[list[Step]], int, bool], None] | None = None


def crossed(before: int, after: int, every: int) -> bool:
    return after // every > before // every


def open_checkpoints(directory: str) -> Checkpointer:
    """The checkpoints of an online run: the newest one only, the replay buffer inside it."""
    return Checkpointer(directory, max_to_keep=1, save_interval_steps=1, array_items=(replay.ITEM,))


def save_checkpoint(ckpt: Checkpointer, step: int, state: Any, buffer: ReplayBuffer, meta: dict) -> None:
    """The train state, the replay buffer and `meta` at `step`, in one atomic save; returns when
    they are on disk."""
    ckpt.save(step, state, meta, force=True, arrays={replay.ITEM: buffer.chronological()})
    ckpt.wait()
    replay.remove_legacy(os.path.dirname(str(ckpt.directory)))


def restore_checkpoint(ckpt: Checkpointer, state: Any, buffer: ReplayBuffer) -> tuple[Any, dict] | None:
    """(state, meta) of the latest checkpoint, the buffer filled as it was then; None without one.

    A checkpoint of an earlier version kept its buffer beside it (`<workdir>/replay/<step>/`):
    read from there (the next checkpoint holds it)."""
    step = ckpt.latest_step()
    if step is None:
        return None
    if ckpt.holds(step, replay.ITEM):
        state, meta, arrays = ckpt.restore_with_arrays(state, (replay.ITEM,), step)
        buffer.fill(arrays[replay.ITEM], f"in {ckpt.directory}/{step}")
        return state, meta
    workdir = os.path.dirname(str(ckpt.directory))
    saved = replay.read_legacy(workdir, step)
    if saved is None:
        raise AimeError(
            f"checkpoint step {step} in {ckpt.directory} holds no replay buffer (nor {workdir}/replay/{step}/), so "
            "the run cannot continue as it would have; start a new workdir"
        )
    state, meta = ckpt.restore(state, step)
    buffer.fill(saved, os.path.join(workdir, replay.LEGACY_DIR, str(step)))
    return state, meta


def read_replay(directory: str) -> dict[str, np.ndarray]:
    """The replay buffer (oldest first) saved in the latest checkpoint of an online run's
    checkpoints/ folder, read-only."""
    with Checkpointer(directory, read_only=True, array_items=(replay.ITEM,)) as ckpt:
        step = ckpt.latest_step()
        if step is None or not ckpt.holds(step, replay.ITEM):
            raise CheckpointNotFoundError(f"no checkpoint with a replay buffer in {directory}")
        return ckpt.restore_arrays(replay.ITEM, step)


def run(
    hooks: Hooks,
    state: Any,
    buffer: ReplayBuffer,
    progress: Progress,
    *,
    env_name: str,
    seed: int,
    total: int,
    config: Any,
    logger: RunLogger,
    summary: Sequence[str],
    episode_dir: str | None = None,
    max_wall_s: float | None = None,
    on_episode: Callable[[int], None] | None = None,
) -> Progress:
    """Runs rounds until `progress.env_steps` reaches `total` (or the run's wall time passes
    `max_wall_s`); `config` holds the loop's SAC settings. Updates `progress` in place,
    logs to `logger` (`summary`: the keys of its printed line), checkpoints through `hooks.save`,
    and calls `on_episode(i)` after each round's checkpoint decision. Returns `progress`."""
    prog, n, chunk = progress, config.num_envs, config.updates_per_call
    pool = [envs.make(env_name, "mdp", seed=None, action_repeat=config.action_repeat) for _ in range(n)]
    metrics: dict[str, Any] = {}
    start = time.perf_counter()
    wall0 = prog.wall_s
    mark = (prog.env_steps, prog.updates, start)
    recent = prog.train_returns[-n:]
    done = False
    while not done:
        first, round_start = prog.episodes, prog.env_steps
        steps = [env.reset(seed=episode_seed(seed, first + j), pitch=hooks.start_pitch(first + j))
                 for j, env in enumerate(pool)]
        trajectories = [[s] for s in steps]
        obs = np.stack([hooks.observe(s.proprio) for s in steps])
        returns = np.zeros(n)
        random_actions = np.random.default_rng([seed, 2, first])
        while True:
            before = prog.env_steps
            if before < config.seed_steps:
                action = random_actions.uniform(-1.0, 1.0, (n, ACTION_DIM)).astype(np.float32)
            else:
                action = np.asarray(hooks.act(state, obs, before))
            steps = [env.step(a) for env, a in zip(pool, action)]
            next_obs = np.stack([hooks.observe(s.proprio) for s in steps])
            buffer.add(
                obs=obs, action=np.clip(action, -1.0, 1.0), reward=hooks.reward(steps),
                discount=np.array([0.0 if s.is_terminal else 1.0 for s in steps], np.float32),
                next_obs=next_obs,
            )
            for traj, s in zip(trajectories, steps):
                traj.append(s)
            returns += task_reward(steps)
            obs = next_obs
            prog.env_steps += n
            if prog.env_steps > config.seed_steps:
                if before <= config.seed_steps and hooks.seeded is not None:
                    state = hooks.seeded(state)
                prog.pending_updates += n * config.utd
            while prog.pending_updates >= chunk:
                state, metrics = hooks.update(state, prog.updates)
                prog.updates += chunk
                prog.pending_updates -= chunk
            logger.advance(n)
            last = steps[0].is_last
            if crossed(before, prog.env_steps, config.log_every) or (last and prog.env_steps >= total):
                now = time.perf_counter()
                host = {
                    "episode_return": float(np.mean(recent)) if recent else float("nan"),
                    "env_steps_per_s": (prog.env_steps - mark[0]) / (now - mark[2]),
                    "updates_per_s": (prog.updates - mark[1]) / (now - mark[2]),
                    "updates": prog.updates,
                }
                logger.log(prog.env_steps, {**host, **metrics}, summary=tuple(summary))
                mark = (prog.env_steps, prog.updates, now)
            if last:
                break
        if episode_dir is not None:
            for j, traj in enumerate(trajectories):
                save_episode(os.path.join(episode_dir, f"{first + j}.npz"),
                             episode_from_steps(traj, include_image=False))
        prog.episodes += n
        recent = [float(r) for r in returns]
        prog.train_returns.extend(recent)
        out_of_time = max_wall_s is not None and wall0 + time.perf_counter() - start >= max_wall_s
        done = prog.env_steps >= total or out_of_time
        if hooks.end_round is not None:
            prog.wall_s = wall0 + time.perf_counter() - start
            hooks.end_round(state, trajectories, round_start, done)
        if done or crossed(round_start, prog.env_steps, config.save_every):
            prog.wall_s = wall0 + time.perf_counter() - start
            hooks.save(state)
        if on_episode is not None:
            for j in range(n):
                on_episode(first + j)
    # wall_s is the one saved with the last checkpoint, so a finished run reports the same on rerun.
    return prog
