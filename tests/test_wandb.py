"""wandb: one run per pipeline run (also under `wandb agent`), each stage on its own step axis,
the final evaluation as the sweep's metric; the shipped sweep files are valid sweep configs.

wandb runs offline here and the run's .wandb file is read back: it is the record stream wandb
would upload (a LevelDB-style log of protobuf records)."""
import json
from pathlib import Path

import pytest
import yaml

from aime_jax import config as config_lib
from aime_jax import parallel, stages

from support import tiny_config, tiny_phase2

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "launch" / "sweeps").glob("*.yaml"))


def read_records(path: Path) -> list:
    """The protobuf records of a .wandb file: after a 7-byte header (":W&B", magic, version),
    chunks of (CRC, length, type) + data in 32 KiB blocks; FULL (1) or FIRST (2), MIDDLE (3)...
    LAST (4) chunks make one record."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


@pytest.mark.slow
def test_a_pipeline_under_a_wandb_agent_is_one_run_with_the_final_score(walker_random_dir, tmp_path, monkeypatch):
    """Phases 1 and 2 and the evaluation in the agent's run: named after the run directory,
    grouped by the sweep, in the agent's project; each stage's steps never go back on its axis;
    the final evaluation (the shipped sweep's metric), throughput, learning rate and compile time
    are there."""
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest turns wandb off through the environment
    for key, value in {"WANDB_SWEEP_ID": "sweep7", "WANDB_RUN_ID": "agentrun7", "WANDB_PROJECT": "agent-project",
                       "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb_dir",
                       "WANDB_CONFIG_DIR": tmp_path / "cfg", "WANDB_CACHE_DIR": tmp_path / "cache",
                       "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(key, str(value))
    config = tiny_phase2(tiny_config())
    config.stages = "phase1,phase2,eval"
    config.data.embodiment_dir = config.data.demos_dir = walker_random_dir
    config.eval.episodes, config.eval.num_envs = 1, 1
    config.wandb.mode = "offline"
    workdir = tmp_path / "demos2_seed0"
    stages.run(config_lib.resolve(config), str(workdir), parallel.make_mesh(1))

    assert (workdir / "wandb_run_id").read_text() == "agentrun7"
    runs = list((workdir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith("-agentrun7"), runs
    records = read_records(runs[0] / "run-agentrun7.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds.count("run") == 1 and kinds.count("exit") == 1
    run = next(r.run for r in records if r.HasField("run"))
    assert (run.run_id, run.display_name, run.run_group, run.sweep_id, run.project) == (
        "agentrun7", "demos2_seed0", "sweep7", "sweep7", "agent-project")

    history = [_items(r.history.item) for r in records if r.HasField("history")]
    axes = {}
    for row in history:
        for axis in [k for k in row if k.endswith("/step") and k != "_step"]:
            axes.setdefault(axis, []).append(row[axis])
    assert set(axes) == {"phase1/step", "phase2/step"}
    for axis, steps in axes.items():
        assert steps == sorted(steps) and steps[0] == 0, (axis, steps)
    assert max(axes["phase1/step"]) == config.phase1.steps and max(axes["phase2/step"]) == config.phase2.steps
    assert [r["_step"] for r in history] == list(range(len(history)))  # wandb's own step: every row kept
    logged = set().union(*history)
    assert {"phase1/train/loss", "phase1/train/steps_per_s", "phase1/val/loss", "phase2/train/loss",
            "phase2/eval/normalised"} <= logged, sorted(logged)
    step_metrics = {r.metric.name: r.metric.step_metric for r in records if r.HasField("metric")}
    assert step_metrics["phase2/eval/normalised"] == "phase2/step"

    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update(_items(r.summary.update))
    results = json.loads((workdir / "results.json").read_text())
    assert summary["final/normalised"] == pytest.approx(results["normalised"])
    assert summary["final/return_mean"] == pytest.approx(results["return_mean"])
    # Media are summarised by their nested fields (path, _type, ...).
    assert summary["final/video/_type"] == "video-file" and summary["final/returns/_type"] == "histogram"
    assert (runs[0] / "files" / summary["final/video/path"]).is_file()
    assert summary["phase1/lr"] == config.phase1.lr and summary["phase2/lr"] == config.phase2.lr
    assert summary["phase1/compile_s"] > 0 and summary["phase2/compile_s"] > 0
    for sweep in SWEEPS:
        assert yaml.safe_load(sweep.read_text())["metric"]["name"] in summary


# The keys of a wandb sweep configuration and the values its controller accepts (W&B's sweep
# configuration reference); the `sweeps` package that validates them needs numpy<2, scipy and
# scikit-learn, too heavy (and clashing with jax) for the dev extras.
SWEEP_KEYS = {"program", "method", "metric", "parameters", "command", "project", "entity", "name",
              "description", "early_terminate", "run_cap", "controller", "job", "image_uri"}
METHODS = ("grid", "random", "bayes")
PARAMETER_KEYS = {"values", "value", "distribution", "min", "max", "mu", "sigma", "q", "probabilities",
                  "parameters"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_the_shipped_sweep_files_are_valid_sweep_configs(path):
    sweep = yaml.safe_load(path.read_text())
    assert set(sweep) <= SWEEP_KEYS, set(sweep) - SWEEP_KEYS
    # Under `wandb agent` a run belongs to the sweep's project: the file must name it.
    assert isinstance(sweep["project"], str) and sweep["project"]
    assert sweep["method"] in METHODS
    assert set(sweep["metric"]) <= {"name", "goal", "target"} and sweep["metric"]["goal"] in ("maximize", "minimize")
    assert sweep["metric"]["name"].startswith("final/")  # the final evaluation, not an in-training score
    assert (REPO / sweep["program"]).is_file()
    for name, spec in sweep["parameters"].items():
        assert isinstance(spec, dict) and set(spec) <= PARAMETER_KEYS and spec, name
        if sweep["method"] == "grid":
            assert "values" in spec or "value" in spec, name
    command = sweep["command"]
    assert all(isinstance(item, str) for item in command) and "${args}" in command
    assert not any(item.startswith("--config.wandb.project") for item in command)  # ignored under an agent


def test_an_offline_sweep_sends_its_runs_to_the_files_project_grouped_by_its_name():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep_cli", REPO / "experiments" / "sweep.py")
    sweep_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_cli)
    sweep = sweep_cli.load_sweep(str(REPO / "launch" / "sweeps" / "num_demos.yaml"))
    sweep["_path"] = "launch/sweeps/num_demos.yaml"
    params = sweep_cli.grid(sweep)[0]
    command = sweep_cli.expand(sweep, params, wandb_mode="offline")
    assert command.count("--config.wandb.mode=offline") == 1 and "--config.wandb.mode=online" not in command
    assert f"--config.wandb.project={sweep['project']}" in command and "--config.wandb.group=num_demos" in command
    off = sweep_cli.expand(sweep, params, wandb_mode="disabled")
    assert "--config.wandb.mode=disabled" in off and not any("wandb.group" in a for a in off)


def test_a_wandb_run_that_cannot_start_stops_the_pipeline_in_one_line(tmp_path, monkeypatch):
    import wandb

    from aime_jax.errors import AimeError
    from aime_jax.logging import pipeline_wandb

    def refuse(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)\ncall wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    config = config_lib.make_config("walker", "mdp")
    config.wandb.mode = "online"
    with pytest.raises(AimeError) as error:
        with pipeline_wandb(config, tmp_path / "run"):
            pass
    assert str(error.value) == (
        "wandb could not start the run (api_key not configured (no-tty)); log in with `wandb login` (or set "
        "WANDB_API_KEY), or use --config.wandb.mode=offline (or disabled)")
