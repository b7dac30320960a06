"""Window sampling as a pure function of (seed, step, process_index, process_count).

Each step draws one global batch of window starts, uniformly over all valid starts and without
replacement (when there are enough), from a generator keyed on (seed, step) alone; process p
takes the p-th contiguous slice. Hence a resumed run sees exactly the batches an uninterrupted
run would have seen, the shards of one step never overlap, and N processes together see the same
global batch as one process would.

A global batch that the devices do not divide is padded to `padded_batch` rows: the drawn starts
come first, the padding rows repeat them (real data, which the train steps weigh 0), so the real
windows are those of an unpadded run.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from aime_jax.data.store import EpisodeStore
from aime_jax.errors import ConfigError


def sample_starts(
    seed: int,
    step: int,
    num_valid: int,
    global_batch: int,
    process_index: int = 0,
    process_count: int = 1,
    padded_batch: int | None = None,
) -> np.ndarray:
    """Indices into the valid starts for this process's shard of the batch at `step`: of
    `global_batch` starts, padded to `padded_batch` rows (default: none) by repeating them."""
    padded = global_batch if padded_batch is None else padded_batch
    if padded < global_batch:
        raise ValueError(f"padded_batch {padded} is below the global batch {global_batch}")
    if padded % process_count:
        raise ConfigError(
            f"global batch size {padded} is not divisible by the {process_count} processes; "
            "choose a batch size that is a multiple of the process count"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    rng = np.random.default_rng([int(seed), int(step)])
    replace = global_batch > num_valid
    chosen = np.resize(rng.choice(num_valid, size=global_batch, replace=replace), padded)
    per = padded // process_count
    return chosen[process_index * per : (process_index + 1) * per]


class WindowSampler:
    """Batches of windows {key: (B_local, T, ...)} from an `EpisodeStore`.

    `batch(step)` is deterministic in (seed, step, process_index, process_count); iterate from
    any step with `iterate(start_step)` to resume a data stream. `padded_batch` pads each global
    batch of `global_batch` windows to that many rows (see `sample_starts`).
    """

    def __init__(
        self,
        store: EpisodeStore,
        window: int,
        global_batch: int,
        seed: int,
        keys: Sequence[str] | None = None,
        process_index: int = 0,
        process_count: int = 1,
        padded_batch: int | None = None,
    ):
        if keys is not None:
            store.check_keys(keys)
        self.store = store
        self.window = window
        self.global_batch = global_batch
        self.seed = seed
        self.keys = tuple(keys) if keys is not None else store.keys
        self.process_index = process_index
        self.process_count = process_count
        self.padded_batch = global_batch if padded_batch is None else padded_batch
        self.starts = store.valid_starts(window)
        sample_starts(seed, 0, len(self.starts), global_batch, process_index, process_count, self.padded_batch)

    @property
    def local_batch(self) -> int:
        return self.padded_batch // self.process_count

    def starts_at(self, step: int) -> np.ndarray:
        idx = sample_starts(
            self.seed, step, len(self.starts), self.global_batch, self.process_index, self.process_count,
            self.padded_batch,
        )
        return self.starts[idx]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self.store.gather(self.starts_at(step), self.window, self.keys)

    def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
