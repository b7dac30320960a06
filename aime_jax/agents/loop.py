"""The training loop every learner shares: resume, data stream, logging, evaluation, checkpoints.

Learners supply a jitted pure step `(state, batch) -> (state, metrics)` whose state has a `step`
field, a sampler whose batches are functions of the step, and an evaluation callback; the loop
makes the run resumable: a rerun with the same workdir restores the latest checkpoint and
continues the same data stream, so it ends where an uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from aime_jax import parallel
from aime_jax.atomic import writable_dir
from aime_jax.checkpoint import Checkpointer
from aime_jax.errors import AimeError, Interrupted
from aime_jax.logging import RunLogger


@dataclasses.dataclass
class LoopConfig:
    steps: int
    log_every: int
    eval_every: int
    save_every: int
    keep: int
    prefetch: int = 2
    lr: float | None = None  # reported to wandb (the learners' learning rates are constant)

    @classmethod
    def from_config(cls, stage: ml_collections.ConfigDict, data: ml_collections.ConfigDict) -> "LoopConfig":
        return cls(stage.steps, stage.log_every, stage.eval_every, stage.save_every, stage.keep, data.prefetch,
                   stage.get("lr"))


def _evaluated(result, state):
    return state if result is None else result


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM (a cluster's preemption notice) only set a flag, which the
    loop reads between steps: the interruption then never lands inside Orbax or a JAX callback,
    where it would end in their tracebacks, and the loop can save the current step before it
    stops. A second Ctrl-C stops at once. Outside the main thread, signals keep their handlers."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def restore_or_keep(ckpt: Checkpointer, state, meta: dict, workdir: str, data_dir: str):
    """The latest checkpoint's state if there is one (refusing another dataset), else `state`.

    `meta["data_fingerprint"]` identifies what the run reads; a checkpoint written before runs
    identified their data that way holds the fingerprint of the folder's files, which
    `meta["data_fingerprint_files"]` gives."""
    if ckpt.latest_step() is None:
        return state
    saved = ckpt.restore_meta().get("data_fingerprint")
    fingerprint = meta["data_fingerprint"]
    if saved not in (fingerprint, meta.get("data_fingerprint_files", fingerprint)):
        raise AimeError(
            f"{workdir} was trained on another dataset (fingerprint {saved}, now {fingerprint} "
            f"for {data_dir!r}); use a new --workdir or restore the dataset"
        )
    return ckpt.restore(state)[0]


def train_loop(
    *,
    name: str,
    workdir: str,
    state: Any,
    train_step: Callable,
    batches: Callable[[int], Any],
    mesh,
    loop: LoopConfig,
    meta: dict,
    evaluate: Callable[[Any, int, RunLogger], Any] | None = None,
    summary: tuple[str, ...] | None = None,
    data_dir: str = "",
    stop: Callable[[Any], bool] | None = None,
    put: Callable[[Any, Any], Any] | None = None,
    report: Callable[[int, dict, RunLogger, bool], str | None] | None = None,
) -> Any:
    """Runs (or resumes, or skips when complete) one training stage in `workdir`.

    batches(start_step) yields the host batches from `start_step` on. `meta` (JSON) is stored
    with every checkpoint; its `data_fingerprint` guards resuming against another dataset (see
    `restore_or_keep`).
    `evaluate(state, step, logger)` runs at step 0, every `eval_every` steps and at the end; it
    may return a new state (early-stopping bookkeeping, best parameters), which is then the one
    trained on and saved. `stop(state)`, asked after each evaluation, ends training early: that
    state is saved at once, and a rerun whose restored state says stop trains nothing more.

    `put(batch, mesh)` places a host batch on the devices (default `parallel.shard_batch`).
    `report(step, metrics, logger, logging_now)` replaces the default handling of the metrics
    fetched at logging and saving steps (log them, or stop on a non-finite value); it returns why
    training must stop, or None. A program of many runs masks a diverged run instead of stopping
    (aime_jax/agents/phase2_runs.py).
    """
    writable_dir(workdir, "run directory")
    with Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=loop.keep, save_interval_steps=loop.save_every
    ) as ckpt:
        state = restore_or_keep(ckpt, state, meta, workdir, data_dir)
        start = int(jax.device_get(state.step))
        if start >= loop.steps or (stop is not None and start > 0 and stop(state)):
            return state
        logger = RunLogger(workdir, loop.steps, start, loop.log_every)
        if loop.lr is not None:
            logger.constants({"lr": loop.lr})
        last_good = ckpt.latest_step()
        step = start
        try:
            with StopRequests() as stops, parallel.Prefetcher(batches(start), mesh, loop.prefetch, put) as stream:
                if start == 0 and evaluate is not None:
                    state = _evaluated(evaluate(state, 0, logger), state)  # the untrained baseline
                for step in range(start + 1, loop.steps + 1):
                    began = time.perf_counter()
                    state, metrics = train_step(state, next(stream))
                    if step == start + 1:
                        # The first step compiles: waiting for it times it, and the logger's
                        # rates (advance) start from its end.
                        jax.block_until_ready(metrics)
                        logger.first_step(time.perf_counter() - began)
                    ckpt.check()  # a save that failed in the background stops the run here
                    logger.advance()
                    logging_now = step % loop.log_every == 0 or step == loop.steps
                    saving_now = step % loop.save_every == 0 or step == loop.steps
                    if logging_now or saving_now:
                        # The only host sync between log intervals: the device runs ahead meanwhile.
                        fetched = jax.device_get(metrics)
                        if report is not None:
                            failure = report(step, fetched, logger, logging_now)
                        else:
                            bad = sorted(k for k, v in fetched.items() if not np.all(np.isfinite(v)))
                            failure = f"non-finite {bad}" if bad else None
                            if logging_now and not bad:
                                logger.log(step, fetched, summary=summary)
                        if failure:
                            raise AimeError(
                                f"{name} stopped: {failure} at step {step} ({workdir}; {_kept(last_good)}); "
                                "lower the learning rate or the gradient clip and rerun"
                            )
                    stopping = False
                    if evaluate is not None and (step % loop.eval_every == 0 or step == loop.steps):
                        state = _evaluated(evaluate(state, step, logger), state)
                        stopping = stop is not None and stop(state)
                    if saving_now or stopping:
                        ckpt.save(step, state, dict(meta, step=step), force=step == loop.steps or stopping)
                        last_good = step
                    if stopping:
                        break
                    if stops.signal is not None:
                        ckpt.save(step, state, dict(meta, step=step), force=True)
                        ckpt.wait()
                        last_good = step
                        raise Interrupted(
                            f"{name} stopped at step {step} by {signal.Signals(stops.signal).name} ({workdir}; "
                            f"{_kept(last_good)}); rerun the same command to continue"
                        )
        except KeyboardInterrupt:
            raise Interrupted(
                f"{name} stopped at step {step} ({workdir}; {_kept(last_good)}); rerun the same command to continue"
            ) from None
        finally:
            logger.close()
    return state


def _kept(last_good: int | None) -> str:
    return f"its last checkpoint is step {last_good}" if last_good is not None else "it had no checkpoint yet"
