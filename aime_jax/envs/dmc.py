"""A dm_control environment with action repeat, the three modalities and physics-state capture.

Every step carries the full proprioceptive dict and the MuJoCo physics state besides the
modality's observation, so an episode can later be re-rendered or re-observed in another modality
without simulating it again.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Mapping

import numpy as np

from aime_jax.envs.tasks import PROPRIO_KEYS, check_modality, get_task, observation_keys
from aime_jax.errors import AimeError

ACTION_DIM = 6
# Pitched starts (`Env.reset(pitch=...)`): lifted this far, then settled for this many physics steps.
PITCH_DROP = 0.5
PITCH_SETTLE = 200


@dataclasses.dataclass
class Step:
    """One agent step. `action` is the action that led here (zero after a reset)."""

    observation: dict[str, np.ndarray]
    proprio: dict[str, np.ndarray]
    physics_state: np.ndarray
    action: np.ndarray
    reward: float
    is_first: bool
    is_last: bool
    is_terminal: bool
    image: np.ndarray | None = None


class _SetTotalMassNotice(logging.Filter):
    """dm_control's cheetah.xml sets `settotalmass`, which MuJoCo 3 still applies but announces as
    deprecated on every model compile (each environment, each render worker): one line per
    cheetah environment in a user's terminal about a file that is not ours to change. Only that
    message is dropped; every other warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("compiler attribute 'settotalmass' is deprecated")


def _load(domain: str, suite_task: str, seed: int | None):
    from absl import logging as absl_logging
    from dm_control import suite

    handler_logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _SetTotalMassNotice) for f in handler_logger.filters):
        handler_logger.addFilter(_SetTotalMassNotice())
    return suite.load(domain, suite_task, task_kwargs={"random": seed})


def _proprio(observation: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, np.float32).reshape(-1) for k, v in observation.items()}


class Env:
    """See `make`."""

    def __init__(
        self,
        name: str,
        modality: str,
        seed: int | None = 0,
        action_repeat: int = 2,
        image_size: int = 64,
        camera: int = 0,
        render: bool | None = None,
    ):
        self.task = get_task(name)
        self.name = name
        self.modality = check_modality(modality)
        self.domain = self.task.domain
        if action_repeat < 1:
            raise AimeError(f"action_repeat must be >= 1, got {action_repeat}")
        self.action_repeat = action_repeat
        self.image_size = image_size
        self.camera = camera
        self.render_images = modality == "visual" if render is None else render
        self.observation_keys = observation_keys(self.domain, modality)
        self._env = _load(self.domain, self.task.suite_task, seed)
        self.action_dim = ACTION_DIM

    @property
    def physics(self):
        return self._env.physics

    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        spec = {k: ((n,), np.dtype(np.float32)) for k, n in PROPRIO_KEYS[self.domain].items()}
        spec["image"] = ((self.image_size, self.image_size, 3), np.dtype(np.uint8))
        return {k: spec[k] for k in self.observation_keys}

    def render(self, size: int | None = None) -> np.ndarray:
        size = size or self.image_size
        return self._env.physics.render(size, size, camera_id=self.camera)

    def reset(self, seed: int | None = None, pitch: float | None = None) -> Step:
        """Starts an episode; `seed` reseeds the task's initial-state randomness first.

        `pitch` (radians) turns the suite's start about the y axis (the `rooty` joint; pi is on
        its back), lifts it by `PITCH_DROP` metres so no part starts in the floor, and lets it
        fall and settle for `PITCH_SETTLE` physics steps at zero control, as the suite's own
        resets settle. An exploration aid for training (see the SAC setting `start_pitch`).
        """
        if seed is not None:
            self._env.task.random.seed(seed)
        ts = self._env.reset()
        obs = ts.observation
        if pitch is not None:
            physics = self._env.physics
            if not np.isfinite(pitch):
                raise AimeError(f"{self.name}: start pitch must be finite, got {pitch}")
            with physics.reset_context():
                physics.named.data.qpos["rooty"] = float(pitch)
                physics.named.data.qpos["rootz"] += PITCH_DROP
                physics.data.qvel[:] = 0.0
            physics.data.ctrl[:] = 0.0
            physics.step(nstep=PITCH_SETTLE)
            physics.data.time = 0.0
            obs = self._env.task.get_observation(physics)
        return self._make_step(obs, np.zeros(ACTION_DIM, np.float32), 0.0, True, False, False)

    def step(self, action: np.ndarray) -> Step:
        action = np.asarray(action, np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise AimeError(f"{self.name}: action must have {ACTION_DIM} entries, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise AimeError(f"{self.name}: action is not finite: {action}")
        action = np.clip(action, -1.0, 1.0)
        summed = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(action)
            summed += ts.reward or 0.0
            if ts.last():
                break
        proprio = _proprio(ts.observation)
        reward = summed if self.task.reward is None else self.task.reward(proprio, summed)
        return self._make_step(
            ts.observation, action, reward, False, ts.last(), ts.discount == 0.0, proprio
        )

    def _make_step(self, obs, action, reward, is_first, is_last, is_terminal, proprio=None) -> Step:
        proprio = _proprio(obs) if proprio is None else proprio
        image = self.render() if self.render_images else None
        observation = {k: proprio[k] for k in self.observation_keys if k != "image"}
        if "image" in self.observation_keys:
            observation["image"] = image
        return Step(
            observation=observation,
            proprio=proprio,
            physics_state=self._env.physics.get_state().copy(),
            action=action,
            reward=float(reward),
            is_first=is_first,
            is_last=bool(is_last),
            is_terminal=bool(is_terminal),
            image=image,
        )


def make(
    name: str,
    modality: str,
    seed: int | None = 0,
    action_repeat: int = 2,
    image_size: int = 64,
    camera: int = 0,
    render: bool | None = None,
) -> Env:
    """A walker/cheetah environment, e.g. `make('walker-walk', 'visual', seed=0)`.

    Observations are dicts of float32 vectors (`image`: uint8 HxWx3 in the visual modality).
    `render` forces images on or off regardless of modality (default: only for visual).
    Unknown names or modalities fail here, listing the valid ones.
    """
    return Env(name, modality, seed, action_repeat, image_size, camera, render)


class StateRenderer:
    """Renders images from stored physics states, reusing one simulator per domain."""

    def __init__(self, domain: str, size: int = 64, camera: int = 0):
        if domain not in PROPRIO_KEYS:
            raise AimeError(f"unknown domain {domain!r}; valid domains: {', '.join(PROPRIO_KEYS)}")
        suite_task = {"walker": "stand", "cheetah": "run"}[domain]
        self.physics = _load(domain, suite_task, 0).physics
        self.size = size
        self.camera = camera
        self.state_size = self.physics.get_state().shape[0]

    def __call__(self, states: np.ndarray) -> np.ndarray:
        states = np.asarray(states, np.float64)
        if states.ndim != 2 or states.shape[1] != self.state_size:
            raise AimeError(
                f"physics states must have shape (T, {self.state_size}), got {states.shape}"
            )
        frames = np.empty((len(states), self.size, self.size, 3), np.uint8)
        for t, state in enumerate(states):
            with self.physics.reset_context():
                self.physics.set_state(state)
            frames[t] = self.physics.render(self.size, self.size, camera_id=self.camera)
        return frames


def render_states(domain: str, states: np.ndarray, size: int = 64, camera: int = 0) -> np.ndarray:
    """(T, S) physics states -> (T, size, size, 3) uint8 images, as rendered online."""
    return StateRenderer(domain, size, camera)(states)
