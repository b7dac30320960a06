"""What a run reports: a progress bar over train steps, metrics.jsonl, a summary line per log
call, videos, and wandb when asked for.

Only the main process (process 0) writes, prints or talks to wandb; the others keep the same
calls as no-ops so training code needs no `if process_index == 0`.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import imageio
import jax
import numpy as np
from tqdm import tqdm

from aime_jax.errors import ConfigError

WANDB_MODES = ("disabled", "online", "offline")


def _to_python(value: Any) -> Any:
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class RunLogger:
    """Progress, metrics and videos of one run directory; resuming appends to what is there."""

    def __init__(
        self,
        workdir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        log_every: int = 1000,
        wandb_mode: str = "disabled",
        wandb_project: str = "aime-jax",
        run_name: str | None = None,
        config: dict | None = None,
        is_main_process: bool | None = None,
        progress: bool = True,
    ):
        if wandb_mode not in WANDB_MODES:
            raise ConfigError(f"wandb mode {wandb_mode!r} is not one of {', '.join(WANDB_MODES)}")
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.log_every = log_every
        self.is_main = jax.process_index() == 0 if is_main_process is None else is_main_process
        # progress=False: files (and wandb) only, no bar and no printed lines (one run of many).
        self.progress = progress
        # Per prefix: the (step, time) of its previous log call, for the steps/s of the summary.
        self._marks: dict[str, tuple[int, float]] = {}
        self._start = (initial_step, time.perf_counter())
        self._metrics_file = None
        self._wandb_run = None
        interactive = sys.stderr.isatty()
        # In a log file every refresh is a new line, so refresh rarely there.
        self._bar = tqdm(
            total=total_steps,
            initial=initial_step,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=interactive,
            mininterval=0.2 if interactive else 60.0,
            disable=not (self.is_main and progress),
        )
        if not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.workdir / "metrics.jsonl", "a")
        if wandb_mode != "disabled":
            self._wandb_run = self._start_wandb(wandb_mode, wandb_project, run_name, config)

    def _start_wandb(self, mode: str, project: str, run_name: str | None, config: dict | None):
        import wandb  # only here: a run without wandb must not pay for (or need) the import

        # The run id is kept in the run directory so that a resumed run continues the same
        # wandb run instead of starting a new one.
        # Under `wandb agent` (a sweep), the agent's run id ties the run to its sweep.
        id_file = self.workdir / "wandb_run_id"
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            run_id = os.environ["WANDB_RUN_ID"]
            id_file.write_text(run_id)
        elif id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
        return wandb.init(
            project=project, name=run_name, config=config, dir=str(self.workdir), mode=mode,
            id=run_id, resume="allow",
        )

    def should_log(self, step: int) -> bool:
        """Whether `step` is a logging step: every `log_every` steps and the last one."""
        return step % self.log_every == 0 or step == self.total_steps

    def advance(self, n: int = 1) -> None:
        """Moves the progress bar on by `n` steps."""
        self._bar.update(n)

    def log(
        self, step: int, metrics: dict[str, Any], prefix: str = "train", summary: tuple[str, ...] | None = None
    ) -> None:
        """Records scalar (or small array) metrics at `step`; `summary` picks (and orders) the
        metrics of the printed line (default: all). Every metric goes to the files and wandb.

        The only place where metrics leave the device: one `jax.device_get` for the whole dict,
        so the train loop keeps dispatching steps between log calls.
        """
        if not self.is_main:
            return
        fetched = jax.device_get(metrics)
        # In the caller's order (device_get sorts dict keys): the summary shows loss first.
        host = {key: _to_python(fetched[key]) for key in metrics}
        values = {f"{prefix}/{key}": v for key, v in host.items()}
        now = time.perf_counter()
        last_step, last_time = self._marks.get(prefix, self._start)
        self._marks[prefix] = (step, now)
        steps_per_s = (step - last_step) / max(now - last_time, 1e-9)

        self._metrics_file.write(json.dumps({"step": step, **values, "time": time.time()}) + "\n")
        self._metrics_file.flush()
        keys = [k for k in summary if k in host] if summary is not None else list(host)
        shown = [f"{key} {_format(host[key])}" for key in keys if isinstance(host[key], (int, float))]
        summary = " | ".join(
            [f"[{prefix}] step {step}/{self.total_steps}", *shown, f"{steps_per_s:.1f} steps/s"]
        )
        if self.progress:
            self._bar.write(summary, file=sys.stdout)
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)

    def video(self, name: str, frames: np.ndarray, step: int, fps: int = 25) -> Path | None:
        """Writes `frames` (uint8, (T, H, W, 3)) to videos/{name}_{step}.mp4; returns the path."""
        if not self.is_main:
            return None
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        path = self.workdir / "videos" / f"{name}_{step}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        # macro_block_size=2: H.264 needs even sides only, so 64x64 or 84x84 frames keep their size.
        imageio.mimwrite(path, frames, fps=fps, codec="libx264", macro_block_size=2)
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({f"videos/{name}": wandb.Video(str(path), format="mp4")}, step=step)
        return path

    def close(self) -> None:
        """Closes the bar, the metrics file and the wandb run; safe to call twice."""
        self._bar.close()
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

