"""N environments stepped together, optionally spread over worker processes.

With `workers > 1` each worker process owns a contiguous slice of the environments (and so its own
MuJoCo/OpenGL contexts), and the parent sends every worker its command before waiting for any
reply, so simulation and offscreen rendering run in parallel. `workers=1` runs in-process.

All episodes here have the same length (the dm_control time limit, no early termination), so the
environments start and end their episodes together; a batch where only some end is an error.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import traceback
from typing import Sequence

import numpy as np

from aime_jax.envs.dmc import ACTION_DIM, Step, make
from aime_jax.envs.tasks import check_modality, get_task
from aime_jax.errors import AimeError


@dataclasses.dataclass
class VecStep:
    """One step of the active environments; every array has a leading axis of that size."""

    observation: dict[str, np.ndarray]
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray


def _stack(steps: Sequence[Step]) -> VecStep:
    return VecStep(
        observation={k: np.stack([s.observation[k] for s in steps]) for k in steps[0].observation},
        reward=np.array([s.reward for s in steps], np.float64),
        is_first=np.array([s.is_first for s in steps], bool),
        is_last=np.array([s.is_last for s in steps], bool),
    )


def _concat(parts: Sequence[VecStep]) -> VecStep:
    return VecStep(
        observation={k: np.concatenate([p.observation[k] for p in parts]) for k in parts[0].observation},
        reward=np.concatenate([p.reward for p in parts]),
        is_first=np.concatenate([p.is_first for p in parts]),
        is_last=np.concatenate([p.is_last for p in parts]),
    )


class _Slice:
    """Environments that live in one process; what a worker runs, and what `workers=1` uses."""

    def __init__(self, name: str, modality: str, size: int, action_repeat: int, image_size: int):
        self.envs = [
            make(name, modality, seed=None, action_repeat=action_repeat, image_size=image_size)
            for _ in range(size)
        ]

    def reset(self, seeds: Sequence[int]) -> VecStep:
        return _stack([env.reset(seed=int(s)) for env, s in zip(self.envs, seeds)])

    def step(self, actions: np.ndarray) -> VecStep:
        return _stack([env.step(a) for env, a in zip(self.envs, actions)])

    def render(self, index: int, size: int | None) -> np.ndarray:
        return self.envs[index].render(size)


class _RemoteTraceback(Exception):
    """Carries a worker's formatted traceback as the `__cause__` of the re-raised exception."""

    def __str__(self) -> str:
        return self.args[0]


def _portable(exc: BaseException) -> BaseException:
    # Exceptions with custom constructors may not survive pickling; their text always does.
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker(conn, name: str, modality: str, size: int, action_repeat: int, image_size: int) -> None:
    try:
        envs = _Slice(name, modality, size, action_repeat, image_size)
        conn.send(("ok", None))
        while True:
            command, arg = conn.recv()
            if command == "close":
                return
            try:
                conn.send(("ok", getattr(envs, command)(*arg)))
            except Exception as e:  # noqa: BLE001 - every failure goes back to the parent
                conn.send(("error", (_portable(e), traceback.format_exc())))
    except (KeyboardInterrupt, EOFError):
        # Ctrl-C reaches the whole process group, and a parent that died closes the pipe: the
        # parent owns the reporting in both cases.
        pass
    except Exception as e:  # noqa: BLE001 - a failed start-up, reported like any other error
        conn.send(("error", (_portable(e), traceback.format_exc())))
    finally:
        conn.close()


class _Worker:
    def __init__(
        self, ctx, index: int, start: int, size: int, name: str, modality: str, action_repeat: int, image_size: int
    ):
        self.index, self.start, self.size = index, start, size
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker, args=(child, name, modality, size, action_repeat, image_size), daemon=True
        )
        self.process.start()
        child.close()

    def send(self, command: str, *arg) -> None:
        self.conn.send((command, arg))

    def receive(self):
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionError):
            self.process.join(1.0)
            raise RuntimeError(
                f"vector env worker {self.index} (envs {self.start}..{self.start + self.size - 1}) "
                f"exited unexpectedly with exit code {self.process.exitcode}"
            ) from None
        if status == "error":
            exc, remote = value
            raise exc from _RemoteTraceback(
                f"\nin vector env worker {self.index} (envs {self.start}..{self.start + self.size - 1}):\n{remote}"
            )
        return value

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.send("close")
            except (BrokenPipeError, ConnectionError):
                pass
            self.process.join(5.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5.0)
        self.conn.close()


class VectorEnv:
    """`num_envs` environments of one task and modality, stepped as a batch.

    `reset(seeds)` starts `len(seeds) <= num_envs` episodes on the first environments, environment
    i reseeded with `seeds[i]` (the rest stay idle until the next reset, so a last, smaller batch
    needs no new processes); `step(actions)` takes a `(len(seeds), 6)` array. Observations are
    float32 vectors and uint8 images with a leading batch axis, as `Env` gives them one at a time,
    and are identical to a single in-process `Env`'s for the same seeds and actions.
    """

    def __init__(
        self,
        name: str,
        modality: str,
        num_envs: int,
        workers: int = 1,
        action_repeat: int = 2,
        image_size: int = 64,
    ):
        # Bad names fail here, with the valid ones listed, before any process is started.
        get_task(name)
        check_modality(modality)
        if num_envs < 1:
            raise AimeError(f"num_envs must be >= 1, got {num_envs}")
        if not 1 <= workers <= num_envs:
            raise AimeError(f"workers must be between 1 and num_envs={num_envs}, got {workers}")
        self.name, self.modality, self.num_envs, self.workers = name, modality, num_envs, workers
        self.action_dim = ACTION_DIM
        self._active = 0
        self._running = False
        self._local: _Slice | None = None
        self._workers: list[_Worker] = []
        if workers == 1:
            self._local = _Slice(name, modality, num_envs, action_repeat, image_size)
            return
        # 'spawn': a forked child would inherit the parent's OpenGL and XLA state, neither fork-safe.
        ctx = mp.get_context("spawn")
        sizes = [len(s) for s in np.array_split(np.arange(num_envs), workers)]
        starts = np.cumsum([0] + sizes[:-1])
        try:
            self._workers = [
                _Worker(ctx, i, int(start), size, name, modality, action_repeat, image_size)
                for i, (start, size) in enumerate(zip(starts, sizes))
            ]
            for w in self._workers:
                w.receive()
        except BaseException:
            self.close()
            raise

    def reset(self, seeds: Sequence[int]) -> VecStep:
        seeds = [int(s) for s in seeds]
        if not 1 <= len(seeds) <= self.num_envs:
            raise AimeError(f"reset needs between 1 and {self.num_envs} seeds, got {len(seeds)}")
        self._active = len(seeds)
        out = self._call("reset", seeds)
        self._running = True
        return out

    def step(self, actions: np.ndarray) -> VecStep:
        if not self._running:
            raise AimeError("VectorEnv.step: no episodes running; call reset(seeds) first")
        actions = np.asarray(actions, np.float32)
        if actions.shape != (self._active, self.action_dim):
            raise AimeError(
                f"VectorEnv.step: actions must have shape ({self._active}, {self.action_dim}) for the "
                f"{self._active} running episodes, got {actions.shape}"
            )
        out = self._call("step", actions)
        if out.is_last.any() != out.is_last.all():
            raise AssertionError(
                f"{self.name}: episodes ended at different steps (is_last={out.is_last}); VectorEnv "
                "relies on every episode having the time limit's length"
            )
        self._running = not out.is_last[0]
        return out

    def render(self, index: int = 0, size: int | None = None) -> np.ndarray:
        """The current frame of environment `index` (size x size x 3 uint8), in any modality."""
        if not 0 <= index < self.num_envs:
            raise AimeError(f"render: index must be in [0, {self.num_envs}), got {index}")
        if self._local is not None:
            return self._local.render(index, size)
        worker = next(w for w in self._workers if w.start <= index < w.start + w.size)
        worker.send("render", index - worker.start, size)
        return worker.receive()

    def _call(self, command: str, batch: Sequence) -> VecStep:
        if self._local is not None:
            return getattr(self._local, command)(batch)
        busy = [w for w in self._workers if w.start < self._active]
        for w in busy:
            w.send(command, batch[w.start : min(w.start + w.size, self._active)])
        # Every busy worker must be read, even after one failed, or its reply would be taken as
        # the answer to the next command.
        parts, error = [], None
        for w in busy:
            try:
                parts.append(w.receive())
            except BaseException as e:  # noqa: BLE001 - re-raised below, the first one wins
                error = error or e
        if error is not None:
            self._running = False
            raise error
        return _concat(parts)

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []
        self._local = None

    def __enter__(self) -> "VectorEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
