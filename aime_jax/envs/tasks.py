"""The paper's tasks (suite tasks plus custom rewards) and what each modality observes.

Custom rewards follow PAPER.md. They are computed once per agent step from the proprioceptive
observation after the action repeat and replace the summed suite reward; walker's backward tasks
scale the summed walker-stand reward instead.

Velocity layout (the `velocity` observation is MuJoCo's qvel):
  walker:  [rootz, rootx, rooty, 6 joints]  -> forward speed index 1, angular speed index 2
  cheetah: [rootx, rootz, rooty, 6 joints]  -> forward speed index 0, angular speed index 2
The authors' release reads walker index 0 (the vertical root speed) for walkbackward and
runbackward; we follow PAPER.md's definition (forward speed) instead.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from aime_jax.errors import AimeError

Proprio = Mapping[str, np.ndarray]
RewardFn = Callable[[Proprio, float], float]

MODALITIES = ("mdp", "lpomdp", "visual")
DOMAINS = ("walker", "cheetah")

# Proprioceptive keys in the suite's order, with their sizes.
PROPRIO_KEYS: dict[str, dict[str, int]] = {
    "walker": {"orientations": 14, "height": 1, "velocity": 9},
    "cheetah": {"position": 8, "velocity": 9},
}
_FORWARD_INDEX = {"walker": 1, "cheetah": 0}
_ANGULAR_INDEX = 2


def _clip01(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def _backward(domain: str, scale: float) -> RewardFn:
    idx = _FORWARD_INDEX[domain]
    return lambda obs, summed: summed * (5.0 * _clip01(-obs["velocity"][idx] / scale) + 1.0) / 6.0


# The rewards below read the velocity alone and also take batched velocities (..., 9), as the
# planner (aime_jax/experts/mppi.py) scores its sampled rollouts with them.
def _speed_backward(domain: str, scale: float) -> RewardFn:
    idx = _FORWARD_INDEX[domain]
    return lambda obs, summed: np.clip(-obs["velocity"][..., idx] / scale, 0.0, 1.0)


def _flip(sign: float) -> RewardFn:
    return lambda obs, summed: np.clip(sign * obs["velocity"][..., _ANGULAR_INDEX] / 5.0, 0.0, 1.0)


def _signed_flip(sign: float) -> RewardFn:
    return lambda obs, reward: np.clip(sign * obs["velocity"][..., _ANGULAR_INDEX] / 5.0, -1.0, 1.0)


def _jump(obs: Proprio, summed: float) -> float:
    return _clip01(float(np.asarray(obs["height"]).reshape(-1)[0]) / 5.0)


@dataclasses.dataclass(frozen=True)
class Task:
    domain: str
    suite_task: str
    # None keeps the suite reward summed over the repeated sub-steps.
    reward: RewardFn | None = None
    # A reward an expert trainer may optimise in place of `reward` (the SAC setting `shaped_reward`),
    # called with the proprioception and the task reward (batched over steps too); scores always
    # use `reward`. The flips' counts turning the wrong way as much as turning the right way,
    # where the task's reward ignores it: rocking back and forth then earns nothing.
    shaped: RewardFn | None = None
    # The reward reads only the `velocity` observation (MuJoCo's qvel), batched or not: a planner
    # can score simulated rollouts with it.
    velocity_reward: bool = False


TASKS: dict[str, Task] = {
    "walker-stand": Task("walker", "stand"),
    "walker-walk": Task("walker", "walk"),
    "walker-run": Task("walker", "run"),
    "walker-walkbackward": Task("walker", "stand", _backward("walker", 1.0)),
    "walker-runbackward": Task("walker", "stand", _backward("walker", 8.0)),
    "walker-flip": Task("walker", "stand", _flip(1.0), _signed_flip(1.0), velocity_reward=True),
    "walker-flipbackward": Task("walker", "stand", _flip(-1.0), _signed_flip(-1.0), velocity_reward=True),
    "walker-jump": Task("walker", "stand", _jump),
    "cheetah-run": Task("cheetah", "run"),
    "cheetah-runbackward": Task("cheetah", "run", _speed_backward("cheetah", 10.0), velocity_reward=True),
    "cheetah-flip": Task("cheetah", "run", _flip(1.0), _signed_flip(1.0), velocity_reward=True),
    "cheetah-flipbackward": Task("cheetah", "run", _flip(-1.0), _signed_flip(-1.0), velocity_reward=True),
}
ENV_NAMES = tuple(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise AimeError(f"unknown environment {name!r}; valid names: {', '.join(ENV_NAMES)}")
    return TASKS[name]


def check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise AimeError(f"unknown modality {modality!r}; valid modalities: {', '.join(MODALITIES)}")
    return modality


def domain_of(name: str) -> str:
    """'walker-walk' -> 'walker'; also accepts a bare domain."""
    if name in DOMAINS:
        return name
    return get_task(name).domain


def observation_keys(domain: str, modality: str) -> tuple[str, ...]:
    """Keys the agent observes: MDP all proprioception, LPOMDP no velocities, Visual the image."""
    check_modality(modality)
    if domain not in DOMAINS:
        raise AimeError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    keys = tuple(PROPRIO_KEYS[domain])
    if modality == "mdp":
        return keys
    if modality == "lpomdp":
        return tuple(k for k in keys if k != "velocity")
    return ("image",)


def probe_keys(domain: str, modality: str) -> tuple[str, ...]:
    """Proprioceptive keys the agent does not observe (targets for stop-gradient probes)."""
    observed = set(observation_keys(domain, modality))
    return tuple(k for k in PROPRIO_KEYS[domain] if k not in observed)
