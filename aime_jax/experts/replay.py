"""The replay buffer of the SAC experts and the exploration agent: a preallocated numpy ring of
transitions on the host, saved in each checkpoint (the item `ITEM`) so a resumed run samples from
the buffer an uninterrupted one would have had."""
from __future__ import annotations

import os
import shutil

import numpy as np

from aime_jax.envs.dmc import ACTION_DIM
from aime_jax.errors import AimeError, ConfigError

BATCH_KEYS = ("obs", "action", "reward", "discount", "next_obs")
# The checkpoint item that holds the buffer (`Checkpointer(array_items=(ITEM,))`).
ITEM = "replay"
# Where checkpoints of earlier versions kept it: `<workdir>/replay/<step>/<key>.npy`.
LEGACY_DIR = "replay"


class ReplayBuffer:
    """A preallocated numpy ring of transitions; indices are drawn on the host.

    `chronological()` is what a checkpoint saves (oldest first), `fill` puts it back.
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

    def fill(self, saved: dict[str, np.ndarray], origin: str) -> None:
        """Replaces the contents with saved ones (`chronological()` of a buffer; its newest
        `capacity` transitions); `origin` names where they come from in errors."""
        missing = [k for k in BATCH_KEYS if k not in saved]
        if missing:
            raise AimeError(f"replay buffer {origin} lacks {missing}; the checkpoint cannot be resumed: start a new workdir")
        n = len(saved["obs"])
        keep = min(n, self.capacity)
        for k in BATCH_KEYS:
            if saved[k].shape[1:] != self.data[k].shape[1:] or len(saved[k]) != n:
                raise AimeError(
                    f"replay buffer {origin}: {k} has shape {saved[k].shape}, expected ({n}, *{self.data[k].shape[1:]})"
                )
            self.data[k][:keep] = saved[k][n - keep :]
        self.size = keep
        self.ptr = keep % self.capacity


def read_legacy(workdir: str, step: int) -> dict[str, np.ndarray] | None:
    """The buffer a checkpoint of an earlier version saved beside itself (`.npy` files), or None."""
    folder = os.path.join(workdir, LEGACY_DIR, str(step))
    if not os.path.isdir(folder):
        return None
    try:
        return {k: np.load(os.path.join(folder, f"{k}.npy")) for k in BATCH_KEYS}
    except (OSError, ValueError) as e:
        raise AimeError(
            f"replay buffer {folder} is unreadable ({e}); the checkpoint next to it cannot be resumed: start a "
            "new workdir"
        ) from None


def remove_legacy(workdir: str) -> None:
    """Removes the buffers of an earlier version's checkpoints (once a checkpoint holds its own)."""
    shutil.rmtree(os.path.join(workdir, LEGACY_DIR), ignore_errors=True)
