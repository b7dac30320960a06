"""RunLogger: metrics.jsonl, summary lines, progress bar off a TTY, videos, wandb kept off."""
import json
import re
import warnings
from pathlib import Path

import imageio.v3 as iio
import jax.numpy as jnp
import numpy as np
import pytest

from aime_jax.logging import RunLogger

from support import program_env, run_program


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_and_resume_appends(tmp_path):
    with RunLogger(tmp_path, total_steps=100, log_every=10) as logger:
        logger.log(10, {"loss": jnp.float32(1.5), "kl": 0.25, "count": jnp.int32(3)})
        logger.log(20, {"loss": jnp.float32(1.0), "kl": 0.5, "count": 4})
        logger.log(20, {"return": jnp.asarray(900.0)}, prefix="eval")
    with RunLogger(tmp_path, total_steps=100, initial_step=20) as logger:
        logger.log(30, {"loss": jnp.asarray([0.75])[0], "hist": jnp.arange(3)})

    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 20, 30]
    assert rows[0]["train/loss"] == 1.5 and rows[0]["train/kl"] == 0.25
    assert rows[0]["train/count"] == 3 and isinstance(rows[0]["train/count"], int)
    assert rows[2] == {"step": 20, "eval/return": 900.0, "time": rows[2]["time"]}
    assert rows[3]["train/loss"] == 0.75 and rows[3]["train/hist"] == [0, 1, 2]
    assert all(isinstance(r["time"], float) for r in rows)


def test_one_summary_line_per_log_call(tmp_path, capsys):
    with RunLogger(tmp_path, total_steps=100_000, initial_step=900) as logger:
        logger.advance(100)
        logger.log(1000, {"loss": jnp.float32(12.3), "kl": jnp.float32(4.5)})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("[train] step 1000/100000 | loss 12.3 | kl 4.5 | ")
    assert out[0].endswith(" steps/s")


def test_progress_bar_off_a_tty_prints_little(tmp_path, capsys):
    with RunLogger(tmp_path, total_steps=5000) as logger:
        for _ in range(5000):
            logger.advance()
    err = capsys.readouterr().err
    assert "5000/5000" in err
    assert err.count("\r") + err.count("\n") <= 4


def test_should_log():
    logger = RunLogger("unused", total_steps=25, log_every=10, is_main_process=False)
    assert [s for s in range(1, 26) if logger.should_log(s)] == [10, 20, 25]


def test_non_main_process_writes_and_prints_nothing(tmp_path, capfd):
    workdir = tmp_path / "run"
    with RunLogger(workdir, total_steps=10, is_main_process=False) as logger:
        logger.advance(5)
        logger.log(5, {"loss": jnp.float32(1.0)})
        assert logger.video("eval", np.zeros((2, 8, 8, 3), np.uint8), step=5) is None
    assert not workdir.exists()
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_video_is_written_and_readable_without_forking_the_jax_process(tmp_path):
    """Every frame comes back, close to what was written (H.264 is lossy), and no subprocess is
    forked from this process: JAX's runtime is up (its threads running), so a fork would warn."""
    jnp.ones(3).block_until_ready()
    rng = np.random.default_rng(0)
    # Smooth frames (H.264 keeps them close); random ones would only test the codec's loss.
    ramp = np.linspace(0, 255, 48, dtype=np.float32)[None, None, :, None]
    frames = np.clip(ramp + rng.normal(0, 2, (12, 64, 48, 3)) + 8 * np.arange(12)[:, None, None, None],
                     0, 255).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with RunLogger(tmp_path, total_steps=10) as logger:
            path = logger.video("eval_walker", frames, step=500, fps=25)
            odd = logger.video("odd", frames[:, :63, :47], step=500)
            with pytest.raises(ValueError, match="uint8"):
                logger.video("bad", frames.astype(np.float32), step=500)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]
    assert path == tmp_path / "videos" / "eval_walker_500.mp4"
    read = iio.imread(path, plugin="pyav")
    assert read.shape == (12, 64, 48, 3)
    assert np.abs(read.astype(np.float32) - frames).mean() < 6
    # Odd sides gain one edge row and column (H.264 needs even ones); the picture is not resized.
    assert iio.imread(odd, plugin="pyav").shape == (12, 64, 48, 3)


def test_rates_and_time_left_leave_out_the_first_compiling_step(tmp_path, capsys, monkeypatch):
    """In a log file: a first step of 100 s (compilation) then 0.1 s per step. Every rate printed
    (summary lines, progress lines) is 10 steps/s and every time left is what 10 steps/s gives;
    counting the first step would print about 1 step/s at step 100."""
    clock = [0.0]
    monkeypatch.setattr("aime_jax.logging.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("tqdm.std.time", lambda: clock[0])
    with RunLogger(tmp_path, total_steps=1000, log_every=100) as logger:
        logger.log(0, {"return": 1.0}, prefix="eval")  # the step-0 evaluation, before any step
        clock[0] += 100.0
        logger.advance()
        for step in range(2, 1001):
            clock[0] += 0.1
            logger.advance()
            if logger.should_log(step):
                logger.log(step, {"loss": 1.0})
                if step % 500 == 0:
                    logger.log(step, {"return": 1.0}, prefix="eval")
    captured = capsys.readouterr()
    summaries = [line for line in captured.out.splitlines() if line.startswith(("[train]", "[eval] step 500"))]
    assert len(summaries) == 11
    assert all(line.endswith(" | 10.0 steps/s") for line in summaries), summaries
    progress = re.findall(r"(\d+)/1000 \[[\d:]+<([\d:]+), ([\d.]+)step/s\]", captured.err)
    assert len(progress) >= 2, captured.err
    for done, left, rate in progress:
        minutes, seconds = left.split(":")
        # tqdm truncates the seconds: 90 s may print as 01:29.
        assert float(rate) == 10.0 and abs(int(minutes) * 60 + int(seconds) - (1000 - int(done)) / 10) <= 1
    # A short stage, 50 s of evaluation after its last step: the bar's last line is the training's rate.
    with RunLogger(tmp_path, total_steps=5) as logger:
        for _ in range(5):
            clock[0] += 0.1
            logger.advance()
        clock[0] += 50.0
        logger.log(5, {"return": 1.0}, prefix="eval")
    assert re.findall(r"5/5 \[[\d:]+<[\d:]+, ([\d.]+)step/s\]", capsys.readouterr().err) == ["10.00"]


def test_wandb_disabled_never_imports_wandb(tmp_path):
    result = run_program("wandb_disabled", tmp_path, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_logs_and_resumes_the_same_run(tmp_path):
    env = program_env(WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "cfg"),
                      WANDB_CACHE_DIR=str(tmp_path / "cache"), WANDB_DATA_DIR=str(tmp_path / "data"))
    env.pop("WANDB_MODE", None)  # conftest disables wandb through the environment
    result = run_program("wandb_offline", tmp_path, timeout=120, env=env)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    run_id = (tmp_path / "wandb_run_id").read_text()
    # Both runs write under the one id; wandb names the folders offline-run-{time}-{id}[-n].
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in r.name for r in runs)
    assert all(list(r.glob("files/media/**/*.mp4")) for r in runs)


class FakeWandbConfig(dict):
    def update(self, values, allow_val_change=False):
        super().update(values)


class FakeWandbRun:
    """What RunLogger asks of a wandb run, recorded."""

    def __init__(self):
        self.rows, self.step_metrics, self.summary, self.config = [], {}, {}, FakeWandbConfig()

    def define_metric(self, name, step_metric=None):
        self.step_metrics[name] = step_metric

    def log(self, row):
        self.rows.append(row)


def test_stages_log_into_the_pipelines_wandb_run_each_on_its_own_axis(tmp_path, monkeypatch):
    """Two stages that both count from step 0, an expert trained outside the run directory, and a
    logger of one run of many (no wandb): prefixes, step axes and summary values."""
    from aime_jax import logging as logging_lib

    fake = FakeWandbRun()
    run = logging_lib.WandbRun(fake, tmp_path / "run")
    monkeypatch.setattr(logging_lib, "_ACTIVE", run)
    for stage in ("phase1", "seed0/phase1"):
        with RunLogger(tmp_path / "run" / stage, total_steps=4, log_every=2) as logger:
            logger.constants({"lr": 3e-4})
            logger.log(0, {"loss": 2.0}, prefix="val")
            logger.first_step(1.5)
            for step in range(1, 5):
                logger.advance()
                if logger.should_log(step):
                    logger.log(step, {"loss": 1.0 / step})
    with RunLogger(tmp_path / "data" / "experts" / "walker-walk", 10, config={"num_envs": 4}) as logger:
        logger.log(5, {"return": 1.0}, prefix="eval")
    with RunLogger(tmp_path / "run" / "demos1_seed0" / "phase2", 10, progress=False) as logger:
        logger.log(5, {"loss": 1.0})

    assert [sorted(row) for row in fake.rows[:3]] == [
        ["phase1/step", "phase1/val/loss", "phase1/val/steps_per_s"],
        ["phase1/step", "phase1/train/loss", "phase1/train/steps_per_s"],
        ["phase1/step", "phase1/train/loss", "phase1/train/steps_per_s"],
    ]
    assert [row["seed0/phase1/step"] for row in fake.rows[3:6]] == [0, 2, 4]
    assert sorted(fake.rows[-1]) == ["experts/walker-walk/eval/return", "experts/walker-walk/eval/steps_per_s",
                                     "experts/walker-walk/step"]
    assert len(fake.rows) == 7  # the run of many logged to its files alone
    assert fake.step_metrics["phase1/train/loss"] == "phase1/step"
    assert fake.step_metrics["seed0/phase1/train/loss"] == "seed0/phase1/step"
    assert fake.summary == {"phase1/lr": 3e-4, "phase1/compile_s": 1.5, "seed0/phase1/lr": 3e-4,
                            "seed0/phase1/compile_s": 1.5}
    assert fake.config == {"experts/walker-walk": {"num_envs": 4}}
