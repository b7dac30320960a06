"""Scoring a policy in the real simulator: batched rollouts, returns, normalised returns, results.

An agent is anything with two methods (see `Agent`):

    carry = agent.initial_carry(episode_seeds)          # one entry per episode of the batch
    carry, action = agent.act(carry, observation, prev_action, is_first)

`initial_carry` receives the seeds the batch's episodes were reset with, so that a stochastic
agent can draw its randomness per episode (an episode's actions then do not depend on which
batch it ran in, or its size); deterministic agents use only `len(episode_seeds)`. `act` sees the
modality's observation batched (float32 vectors, uint8 images), the previous action (zero at an
episode's first step, as `pre_action` in the datasets) and `is_first`, and returns `(N, 6)`
float32 actions. A world-model agent filters its latent state in `carry`.

Episode i is reset with `episode_seed(seed, i)`, whatever `num_envs` and `workers` are, so every
policy evaluated with the same seed is scored on the same initial states.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol, Sequence

import jax
import numpy as np

from aime_jax import parallel
from aime_jax.atomic import write_json
from aime_jax.envs.dmc import ACTION_DIM
from aime_jax.envs.seeding import episode_seed
from aime_jax.envs.vector import VectorEnv
from aime_jax.errors import AimeError

# Expert returns of the authors' release, the denominators of the paper's normalised returns.
PAPER_EXPERT_RETURNS: dict[str, float] = {
    "walker-stand": 957.87,
    "walker-walk": 943.79,
    "walker-run": 604.10,
    "cheetah-run": 888.65,
    "cheetah-runbackward": 218.50,
    "cheetah-flip": 485.79,
    "cheetah-flipbackward": 379.91,
}


class Agent(Protocol):
    def initial_carry(self, episode_seeds: Sequence[int]) -> Any: ...

    def act(
        self,
        carry: Any,
        observation: dict[str, np.ndarray],
        prev_action: np.ndarray,
        is_first: np.ndarray,
    ) -> tuple[Any, np.ndarray]: ...


class RandomAgent:
    """Uniform actions in [-1, 1]; episode e's actions depend only on (seed, e's reset seed)."""

    def __init__(self, seed: int = 0, action_dim: int = ACTION_DIM):
        self.seed = seed
        self.action_dim = action_dim

    def initial_carry(self, episode_seeds: Sequence[int]) -> list[np.random.Generator]:
        return [np.random.default_rng([self.seed, int(s)]) for s in episode_seeds]

    def act(
        self,
        carry: list[np.random.Generator],
        observation: dict[str, np.ndarray],
        prev_action: np.ndarray,
        is_first: np.ndarray,
    ) -> tuple[list[np.random.Generator], np.ndarray]:
        action = np.stack([rng.uniform(-1.0, 1.0, self.action_dim) for rng in carry])
        return carry, action.astype(np.float32)


@dataclasses.dataclass
class EvalResult:
    """Per-episode returns and lengths in episode order; `elapsed_s` covers the rollouts only
    (not starting the environments), `frames` is episode 0's video (T+1, H, W, 3) uint8 if asked."""

    env_name: str
    modality: str
    seed: int
    returns: list[float]
    lengths: list[int]
    mean: float
    std: float
    elapsed_s: float
    episodes_per_s: float
    frames: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the frames, JSON-ready."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frames"}


def evaluate(
    env_name: str,
    modality: str,
    agent: Agent,
    episodes: int,
    num_envs: int = 10,
    seed: int = 0,
    workers: int = 1,
    record_video: bool = False,
    action_repeat: int = 2,
    image_size: int = 64,
) -> EvalResult:
    """Runs `episodes` episodes in batches of `num_envs` (the last may be smaller).

    `workers` processes share the environments (see `VectorEnv`); both are capped at what the
    episodes need. In a multi-process run every process calls it, runs its share of the episodes
    and receives all the returns. With `record_video`, episode 0's frames come back in `frames`: its
    observations in the visual modality, otherwise renders of camera 0 at `image_size`.
    """
    return evaluate_runs(env_name, modality, agent, 1, episodes, num_envs, seed, workers, record_video,
                         action_repeat, image_size)[0]


def evaluate_runs(
    env_name: str,
    modality: str,
    agent: Agent,
    runs: int,
    episodes: int,
    num_envs: int = 10,
    seed: int = 0,
    workers: int = 1,
    record_video: bool = False,
    action_repeat: int = 2,
    image_size: int = 64,
) -> list[EvalResult]:
    """`evaluate` of `runs` policies at once, acting as one agent: each batch holds `num_envs`
    episodes of every run (run-major: rows [r * n, (r + 1) * n) are run r's), so one call of
    `agent.act` serves every run's environments. Run r's episode i is reset with the same seed as
    in `evaluate`, so each run is scored on the initial states a run evaluated alone would meet.
    Returns one result per run; `elapsed_s` and `episodes_per_s` are the whole batch's.
    """
    if episodes < 1:
        raise AimeError(f"episodes must be >= 1, got {episodes}")
    if num_envs < 1 or workers < 1 or runs < 1:
        raise AimeError(
            f"num_envs, workers and runs must be >= 1, got num_envs={num_envs}, workers={workers}, runs={runs}"
        )
    # A multi-process run splits the episodes into contiguous blocks, one per process (episode 0,
    # the video's, on process 0), and gathers the returns: since episode i depends only on
    # (seed, i), the result equals a single process's.
    index, count = jax.process_index(), jax.process_count()
    per = -(-episodes // count)
    mine = list(range(index * per, min((index + 1) * per, episodes)))
    returns: list[list[float]] = [[] for _ in range(runs)]
    lengths: list[list[int]] = [[] for _ in range(runs)]
    frames: list[list[np.ndarray]] = [[] for _ in range(runs)]
    start = time.perf_counter()
    if mine:
        num_envs = min(num_envs, len(mine))
        workers = min(workers, num_envs * runs)
        with VectorEnv(env_name, modality, num_envs * runs, workers, action_repeat, image_size) as env:
            start = time.perf_counter()
            for first in range(0, len(mine), num_envs):
                block = mine[first : first + num_envs]
                seeds = [episode_seed(seed, i) for _ in range(runs) for i in block]
                n = len(block)
                video = {r * n: frames[r] for r in range(runs)} if record_video and block[0] == 0 else {}
                batch_returns, batch_lengths = _run_batch(env, agent, seeds, video)
                for r in range(runs):
                    returns[r].extend(batch_returns[r * n : (r + 1) * n])
                    lengths[r].extend(batch_lengths[r * n : (r + 1) * n])
    elapsed = time.perf_counter() - start
    if count > 1:
        pad = per - len(mine)
        gathered_returns, gathered_lengths = [], []
        for r in range(runs):
            got = parallel.allgather_rows(np.asarray(returns[r] + [np.nan] * pad, np.float64))
            got_lengths = parallel.allgather_rows(np.asarray(lengths[r] + [-1] * pad, np.int32))
            gathered_returns.append([float(x) for x in got[~np.isnan(got)]])
            gathered_lengths.append([int(x) for x in got_lengths[got_lengths >= 0]])
        returns, lengths = gathered_returns, gathered_lengths
        elapsed = float(parallel.allgather_rows(np.asarray([elapsed], np.float64)).max())
    return [
        EvalResult(
            env_name=env_name,
            modality=modality,
            seed=seed,
            returns=returns[r],
            lengths=lengths[r],
            mean=float(np.mean(returns[r])),
            std=float(np.std(returns[r])),
            elapsed_s=elapsed,
            episodes_per_s=episodes * runs / elapsed,
            frames=np.stack(frames[r]) if frames[r] else None,
        )
        for r in range(runs)
    ]


def _run_batch(
    env: VectorEnv, agent: Agent, seeds: list[int], frames: dict[int, list[np.ndarray]]
) -> tuple[list[float], list[int]]:
    """Runs one episode per seed; `frames` maps environments to the lists their frames go to."""
    n = len(seeds)
    step = env.reset(seeds)
    carry = agent.initial_carry(seeds)
    prev_action = np.zeros((n, env.action_dim), np.float32)
    returns = np.zeros(n, np.float64)
    length = 0
    while True:
        for i, out in frames.items():
            out.append(step.observation["image"][i] if "image" in step.observation else env.render(i))
        if step.is_last[0]:
            return returns.tolist(), [length] * n
        carry, action = agent.act(carry, step.observation, prev_action, step.is_first)
        action = np.asarray(action, np.float32)
        if action.shape != (n, env.action_dim):
            raise AimeError(
                f"{type(agent).__name__}.act returned actions of shape {action.shape}; expected "
                f"({n}, {env.action_dim}) for {n} episodes"
            )
        step = env.step(action)
        returns += step.reward
        length += 1
        # The environment clips actions, and the datasets' pre_action holds the clipped value.
        prev_action = np.clip(action, -1.0, 1.0)


def normalised(returns_mean: float, expert_return: float) -> float:
    """The paper's score: 100 * mean return / expert return."""
    if not (np.isfinite(expert_return) and expert_return > 0):
        raise AimeError(f"expert_return must be a positive number, got {expert_return}")
    return 100.0 * returns_mean / expert_return


def _non_finite(value: Any, name: str = "") -> list[str]:
    if isinstance(value, float) and not np.isfinite(value):
        return [name]
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in _non_finite(v, f"{name}.{k}" if name else k)]
    if isinstance(value, (list, tuple)):
        return [bad for i, v in enumerate(value) for bad in _non_finite(v, f"{name}[{i}]")]
    return []


def write_results(path: str, result: dict) -> None:
    """Writes `result` as JSON atomically: readers see the old file or the new one, never half.

    JSON has no NaN: a result holding one is refused, naming where, instead of writing a file
    that strict readers cannot parse."""
    bad = _non_finite(result)
    if bad:
        raise AimeError(
            f"the results for {path} hold non-finite values at {', '.join(bad[:5])}; nothing was written. "
            "Check the inputs they come from (e.g. the demonstrations' rewards) and rerun"
        )
    write_json(path, result, sort_keys=True, allow_nan=False)
