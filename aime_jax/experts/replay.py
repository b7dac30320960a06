"""The replay buffer of the SAC experts and the exploration agent: a preallocated numpy ring of
transitions on the host, saved beside each checkpoint so a resumed run samples from the buffer an
uninterrupted one would have had."""
from __future__ import annotations

import os
import shutil

import numpy as np

from aime_jax.envs.dmc import ACTION_DIM
from aime_jax.errors import AimeError, ConfigError

BATCH_KEYS = ("obs", "action", "reward", "discount", "next_obs")


class ReplayBuffer:
    """A preallocated numpy ring of transitions; indices are drawn on the host.

    `save` writes the contents oldest first as one `.npy` per key into a temporary folder and
    renames it into place, so a folder that exists is complete.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int = ACTION_DIM):
        if capacity < 1:
            raise ConfigError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "action": np.zeros((capacity, action_dim), np.float32),
            "reward": np.zeros((capacity,), np.float32),
            "discount": np.zeros((capacity,), np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
        }
        self.size = 0
        self.ptr = 0

    def add(self, **batch: np.ndarray) -> None:
        """Adds N transitions; every key of `BATCH_KEYS` with a leading axis of N."""
        n = len(batch["obs"])
        idx = (self.ptr + np.arange(n)) % self.capacity
        for k in BATCH_KEYS:
            self.data[k][idx] = batch[k]
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(
        self, rng: np.random.Generator, shape: tuple[int, ...], n_step: int = 1, gamma: float = 1.0, stride: int = 1
    ) -> dict[str, np.ndarray]:
        """A batch of `shape` transitions drawn uniformly. With `n_step` > 1 each one is extended
        by up to n_step - 1 following transitions of the same episode (`stride` apart: the number
        of environments stepped together): `reward` becomes sum_j gamma^j r_j, `next_obs` the
        last one's and `discount` gamma^(n'-1) times the product of the discounts over the n'
        steps, so that `soft_target`'s r + gamma * discount * V(next_obs) is the n'-step target.
        A transition continues its episode when it is stored after it and starts where it ended
        (its obs equals the other's next_obs exactly); a terminal transition ends the chain."""
        if self.size == 0:
            raise AimeError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, shape)
        batch = {k: v[idx] for k, v in self.data.items()}
        if n_step == 1:
            return batch
        oldest = self.ptr if self.size == self.capacity else 0
        cur, scale = idx, np.ones(idx.shape, np.float32)
        alive = batch["discount"] > 0
        for _ in range(n_step - 1):
            nxt = (cur + stride) % self.capacity
            alive = alive & ((cur - oldest) % self.capacity + stride < self.size)
            alive = alive & np.all(self.data["obs"][nxt] == batch["next_obs"], axis=-1)
            scale = np.where(alive, scale * gamma, scale)
            batch["reward"] = np.where(alive, batch["reward"] + scale * self.data["reward"][nxt], batch["reward"])
            batch["discount"] = np.where(alive, gamma * batch["discount"] * self.data["discount"][nxt], batch["discount"])
            batch["next_obs"] = np.where(alive[..., None], self.data["next_obs"][nxt], batch["next_obs"])
            alive = alive & (self.data["discount"][nxt] > 0)
            cur = np.where(alive, nxt, cur)
        return batch

    def chronological(self) -> dict[str, np.ndarray]:
        if self.size < self.capacity:
            return {k: v[: self.size] for k, v in self.data.items()}
        return {k: np.roll(v, -self.ptr, axis=0) for k, v in self.data.items()}

    def save(self, directory: str) -> None:
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{os.path.basename(directory)}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            for k, v in self.chronological().items():
                with open(os.path.join(tmp, f"{k}.npy"), "wb") as f:
                    np.save(f, v)
                    f.flush()
                    os.fsync(f.fileno())
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def load(self, directory: str) -> None:
        """Replaces the contents with a saved buffer (its newest `capacity` transitions)."""
        try:
            saved = {k: np.load(os.path.join(directory, f"{k}.npy")) for k in BATCH_KEYS}
        except (OSError, ValueError) as e:
            raise AimeError(
                f"replay buffer {directory} is missing or unreadable ({e}); the checkpoint next to it "
                "cannot be resumed: start a new workdir"
            ) from None
        n = len(saved["obs"])
        keep = min(n, self.capacity)
        for k in BATCH_KEYS:
            if saved[k].shape[1:] != self.data[k].shape[1:]:
                raise AimeError(
                    f"replay buffer {directory}: {k} has shape {saved[k].shape}, expected (N, *{self.data[k].shape[1:]})"
                )
            self.data[k][:keep] = saved[k][n - keep :]
        self.size = keep
        self.ptr = keep % self.capacity


def replay_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, "replay", str(step))


def prune_replay(workdir: str, keep: int | None) -> None:
    """Removes every saved buffer but the one of checkpoint `keep`, and half-written ones."""
    root = os.path.join(workdir, "replay")
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name != str(keep):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
