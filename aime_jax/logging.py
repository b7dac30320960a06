"""What a run reports: a progress bar over train steps, metrics.jsonl, a summary line per log
call, videos, and wandb when asked for.

Only the main process (process 0) writes, prints or talks to wandb; the others keep the same
calls as no-ops so training code needs no `if process_index == 0`.

wandb: a pipeline run (aime_jax/stages.py) is one wandb run, opened by `pipeline_wandb` for all
its stages; every RunLogger with a progress bar made meanwhile logs into it under its stage's
prefix (its folder relative to the run directory: phase1, phase2, bc, seed0/phase1, ...), each
stage against its own step axis `<prefix>/step`, so a stage that starts again at step 0 (or a
resumed one) never sends wandb's own step backwards.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from aime_jax.errors import AimeError

RUN_ID_FILE = "wandb_run_id"


def _to_python(value: Any) -> Any:
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class WandbRun:
    """The one wandb run of a pipeline run; see the module's docstring."""

    def __init__(self, run: Any, workdir: str | Path):
        self.run = run
        self.workdir = Path(workdir).resolve()
        self._defined: set[str] = set()

    def stage(self, folder: str | Path) -> str:
        """A stage's metric prefix: its folder relative to the run directory, or for a folder
        outside it (a shared world model, an expert in the data root) its last two parts."""
        folder = Path(folder).resolve()
        if folder.is_relative_to(self.workdir) and folder != self.workdir:
            return folder.relative_to(self.workdir).as_posix()
        return "/".join(folder.parts[-2:])

    def log(self, stage: str, step: int, values: dict[str, Any]) -> None:
        """One history row: `values` under `<stage>/`, at `step` of the stage's own axis."""
        axis = f"{stage}/step"
        row = {f"{stage}/{key}": value for key, value in values.items()}
        new = [key for key in row if key not in self._defined]
        if new:
            # Metric by metric rather than a glob: a prefix such as "phase1/*" must not take in
            # the metrics of another stage whose prefix merely starts alike.
            if axis not in self._defined:
                self.run.define_metric(axis)
                self._defined.add(axis)
            for key in new:
                self.run.define_metric(key, step_metric=axis)
                self._defined.add(key)
        self.run.log({**row, axis: step})

    def record(self, values: dict[str, Any]) -> None:
        """One history row on wandb's own step, for what is logged once (the final evaluation);
        its scalars are also the summary's values."""
        self.run.log(values)

    def summary(self, values: dict[str, Any]) -> None:
        """Values that describe the run as a whole (no history): wandb's summary."""
        self.run.summary.update(values)

    def add_config(self, stage: str, config: dict) -> None:
        """The settings of a stage the pipeline's config does not hold (e.g. an expert's)."""
        self.run.config.update({stage: config}, allow_val_change=True)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


_ACTIVE: WandbRun | None = None


def active_wandb() -> WandbRun | None:
    """The wandb run of the pipeline running in this process, if wandb is on (process 0 only)."""
    return _ACTIVE


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25) -> None:
    """Encodes `frames` (uint8, (T, H, W, 3)) as an H.264 mp4 at `path`, inside this process.

    PyAV links ffmpeg's libraries; an ffmpeg subprocess (imageio-ffmpeg) would fork this
    multithreaded JAX process, which Python and JAX warn may deadlock. H.264's yuv420p needs even
    sides, so an odd height or width gains one edge row or column instead of being resized.
    """
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def wandb_video(path: str | Path) -> Any:
    import wandb

    return wandb.Video(str(path), format="mp4")


def wandb_table(columns: list[str], rows: list[list]) -> Any:
    import wandb

    return wandb.Table(columns=columns, data=rows)


def wandb_histogram(values: Any) -> Any:
    import wandb

    return wandb.Histogram(np.asarray(values))


def _run_id(workdir: Path) -> str:
    """The run's wandb id: the agent's under `wandb agent` (a sweep), else the one stored in the
    run directory, so that a resumed run continues the same wandb run instead of starting a new one."""
    id_file = workdir / RUN_ID_FILE
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        run_id = os.environ["WANDB_RUN_ID"]
    elif id_file.exists():
        return id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return run_id


def run_group(config: ml_collections.ConfigDict) -> str:
    """config.wandb.group, else the sweep's id under `wandb agent`, else algorithm, task and modality."""
    return (config.wandb.get("group") or os.environ.get("WANDB_SWEEP_ID")
            or f"{config.algo}_{config.env}_{config.modality}")


def start_wandb(config: ml_collections.ConfigDict, workdir: str | Path) -> WandbRun:
    """Starts (or resumes) the pipeline's wandb run in `workdir`: named after the run directory
    (or config.wandb.name), grouped by `run_group`, its config the pipeline's."""
    import wandb  # only here: a run without wandb must not pay for (or need) the import

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Under an agent the run belongs to the sweep's project (the sweep file's `project`), which
    # wandb takes from the agent's environment; a project given here would be ignored.
    project = None if os.environ.get("WANDB_SWEEP_ID") else config.wandb.project
    try:
        run = wandb.init(
            project=project, name=config.wandb.name or workdir.resolve().name, group=run_group(config),
            config={**config.to_dict(), "workdir": str(workdir.resolve())}, dir=str(workdir),
            mode=config.wandb.mode, id=_run_id(workdir), resume="allow",
        )
    except wandb.errors.Error as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AimeError(
            f"wandb could not start the run ({reason}); log in with `wandb login` (or set WANDB_API_KEY), "
            "or use --config.wandb.mode=offline (or disabled)"
        ) from None
    return WandbRun(run, workdir)


@contextlib.contextmanager
def pipeline_wandb(config: ml_collections.ConfigDict, workdir: str | Path) -> Iterator[WandbRun | None]:
    """The pipeline's wandb run for the block (None when wandb is off or on processes other than
    0); `active_wandb()` returns it meanwhile. It is finished at the end, as failed when the block
    raises (an interrupted run resumes into it)."""
    global _ACTIVE
    if config.wandb.mode == "disabled" or jax.process_index() != 0:
        yield None
        return
    if _ACTIVE is not None:
        raise RuntimeError("a pipeline's wandb run is already open in this process")
    _ACTIVE = start_wandb(config, workdir)
    try:
        yield _ACTIVE
    except BaseException:
        _ACTIVE.finish(exit_code=1)
        raise
    else:
        _ACTIVE.finish()
    finally:
        _ACTIVE = None


class RunLogger:
    """Progress, metrics and videos of one run directory; resuming appends to what is there."""

    def __init__(
        self,
        workdir: str | Path,
        total_steps: int,
        initial_step: int = 0,
        log_every: int = 1000,
        config: dict | None = None,
        is_main_process: bool | None = None,
        progress: bool = True,
    ):
        """`config`: the settings of a stage the pipeline's config does not hold (an expert's),
        added to the wandb run's config under the stage's prefix."""
        self.workdir = Path(workdir)
        self.total_steps = total_steps
        self.log_every = log_every
        self.is_main = jax.process_index() == 0 if is_main_process is None else is_main_process
        # progress=False: files only, no bar, no printed lines and no wandb (one run of many).
        self.progress = progress
        # Per prefix: the (step, time) of its previous log call, for the steps/s of the summary.
        self._marks: dict[str, tuple[int, float]] = {}
        self._start = (initial_step, time.perf_counter())
        self._step = initial_step
        # (step, time) at the end of the first advance: the first step compiles, so rates (the
        # summary's steps/s, the bar's rate and ETA) are measured from there on.
        self._warm: tuple[int, float] | None = None
        self._bar: tqdm | None = None
        self._metrics_file = None
        self._wandb = None
        if not self.is_main:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = open(self.workdir / "metrics.jsonl", "a")
        if progress and _ACTIVE is not None:
            self._wandb = _ACTIVE
            self._stage = _ACTIVE.stage(self.workdir)
            if config is not None:
                _ACTIVE.add_config(self._stage, config)

    def should_log(self, step: int) -> bool:
        """Whether `step` is a logging step: every `log_every` steps and the last one."""
        return step % self.log_every == 0 or step == self.total_steps

    def advance(self, n: int = 1) -> None:
        """Moves the progress bar on by `n` steps. The bar appears at the end of the first call:
        its rate and time left then leave out the first, compiling step (and the evaluation
        before it), also in a log file, where a line printed early would otherwise report the
        compilation's rate for a long time."""
        self._step += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._warm = (self._step, time.perf_counter())
            interactive = sys.stderr.isatty()
            # In a log file every refresh is a new line, so refresh rarely there.
            self._bar = tqdm(
                total=self.total_steps,
                initial=self._step,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=interactive,
                mininterval=0.2 if interactive else 60.0,
                disable=not (self.is_main and self.progress),
            )
        if self._step >= self.total_steps:
            # Closed at the last step, its final line shows the training's rate, not one diluted
            # by the evaluation that follows.
            self._bar.close()

    def log(
        self, step: int, metrics: dict[str, Any], prefix: str = "train", summary: tuple[str, ...] | None = None
    ) -> None:
        """Records scalar (or small array) metrics at `step`; `summary` picks (and orders) the
        metrics of the printed line (default: all). Every metric goes to the files and wandb;
        wandb also gets the printed steps/s as `<prefix>/steps_per_s`.

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
        if self._warm is not None and last_time < self._warm[1]:
            last_step, last_time = self._warm
        self._marks[prefix] = (step, now)
        steps_per_s = (step - last_step) / max(now - last_time, 1e-9)

        self._metrics_file.write(json.dumps({"step": step, **values, "time": time.time()}) + "\n")
        self._metrics_file.flush()
        keys = [k for k in summary if k in host] if summary is not None else list(host)
        shown = [f"{key} {_format(host[key])}" for key in keys if isinstance(host[key], (int, float))]
        line = " | ".join([f"[{prefix}] step {step}/{self.total_steps}", *shown, f"{steps_per_s:.1f} steps/s"])
        if self.progress:
            tqdm.write(line, file=sys.stdout)
        if self._wandb is not None:
            self._wandb.log(self._stage, step, {**values, f"{prefix}/steps_per_s": steps_per_s})

    def first_step(self, seconds: float) -> None:
        """Reports the wall time of this session's first train step, compilation included: a
        printed line, and `<stage>/compile_s` in wandb's summary."""
        if not self.is_main:
            return
        if self.progress:
            tqdm.write(f"first step (compilation included): {seconds:.1f} s", file=sys.stdout)
        if self._wandb is not None:
            self._wandb.summary({f"{self._stage}/compile_s": seconds})

    def constants(self, values: dict[str, Any]) -> None:
        """Settings that hold for the whole stage (its learning rate): wandb's summary, under the
        stage's prefix."""
        if self._wandb is not None:
            self._wandb.summary({f"{self._stage}/{key}": value for key, value in values.items()})

    def video(self, name: str, frames: np.ndarray, step: int, fps: int = 25) -> Path | None:
        """Writes `frames` (uint8, (T, H, W, 3)) to videos/{name}_{step}.mp4; returns the path."""
        if not self.is_main:
            return None
        path = self.workdir / "videos" / f"{name}_{step}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, frames, fps)
        if self._wandb is not None:
            self._wandb.log(self._stage, step, {f"videos/{name}": wandb_video(path)})
        return path

    def close(self) -> None:
        """Closes the bar and the metrics file (the pipeline closes its wandb run); safe to call twice."""
        if self._bar is not None:
            self._bar.close()
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
