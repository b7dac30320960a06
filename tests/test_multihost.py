"""Multi-process runs on this machine: 2 processes x 2 CPU devices against 1 process x 4 devices,
checkpoints across process counts, one copy of every log and file, launchers and sweeps."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import yaml

from support import program, program_env, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.sh")
SWEEP = os.path.join(REPO, "launch", "sweeps", "num_demos.yaml")


def _env(devices=None):
    env = program_env(WANDB_MODE="disabled")
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _run(args, processes=1, devices=1, timeout=400):
    """`args` as one process with `devices` CPU devices, or through launch/local.sh as
    `processes` processes with `devices` each; returns the CompletedProcess (output merged)."""
    if processes > 1:
        env = dict(_env(), AIME_LOCAL_DEVICES=str(devices))
        args = [LOCAL, str(processes), *args]
    else:
        env = _env(devices)
    out = subprocess.run(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=timeout)
    return out


def _pipeline(walker_random_dir, workdir, *overrides):
    return [
        sys.executable, "experiments/main.py", "--config=configs/walker_mdp.py:quick", f"--workdir={workdir}",
        f"--config.data.embodiment_dir={walker_random_dir}", f"--config.data.demos_dir={walker_random_dir}",
        "--config.data.num_demos=2", "--config.data.window=10", "--config.data.batch_size=8",
        "--config.world_model.deter_size=32", "--config.world_model.stoch_size=8",
        "--config.phase1.steps=4", "--config.phase1.save_every=2", "--config.phase1.eval_every=2",
        "--config.phase1.log_every=1", "--config.phase1.val_batches=1",
        "--config.phase2.steps=3", "--config.phase2.save_every=3", "--config.phase2.eval_every=3",
        "--config.phase2.log_every=1", "--config.phase2.eval_episodes=1",
        "--config.eval.episodes=3", "--config.eval.num_envs=2", *overrides,
    ]


def _metrics(path, key):
    """{step: value} of `key` in a metrics.jsonl, asserting that no step was written twice."""
    values = {}
    for line in open(path):
        row = json.loads(line)
        if key in row:
            assert row["step"] not in values, f"step {row['step']} of {key} written twice in {path}"
            values[row["step"]] = row[key]
    return values


@pytest.fixture(scope="module")
def runs(walker_random_dir, tmp_path_factory):
    """The same tiny pipeline (phase 1, phase 2, evaluation) on 1 process x 4 devices and on
    2 processes x 2 devices."""
    root = tmp_path_factory.mktemp("multihost")
    ref, multi = root / "ref", root / "multi"
    outputs = {
        "ref": _run(_pipeline(walker_random_dir, ref, "--config.stages=phase1,phase2,eval"), devices=4),
        "multi": _run(_pipeline(walker_random_dir, multi, "--config.stages=phase1,phase2,eval"), processes=2, devices=2),
    }
    for name, out in outputs.items():
        assert out.returncode == 0, f"{name}:\n{out.stdout[-4000:]}"
    return ref, multi, {k: v.stdout for k, v in outputs.items()}


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    ref, multi, _ = runs
    for stage in ("phase1", "phase2"):
        a = _metrics(ref / stage / "metrics.jsonl", "train/loss")
        b = _metrics(multi / stage / "metrics.jsonl", "train/loss")
        assert sorted(a) == sorted(b) and len(a) >= 3
        np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=2e-5)
    val_a = _metrics(ref / "phase1" / "metrics.jsonl", "val/loss")
    val_b = _metrics(multi / "phase1" / "metrics.jsonl", "val/loss")
    np.testing.assert_allclose([val_b[s] for s in (0, 2, 4)], [val_a[s] for s in (0, 2, 4)], rtol=2e-5)

    # The 2-process run's checkpoints restore in this single process (abstract restore).
    from aime_jax.agents import phase2

    config = ml_collections.ConfigDict(json.load(open(ref / "config.json")))
    agent_a = phase2.load_agent(config, str(ref / "phase2"), str(ref))
    agent_b = phase2.load_agent(config, str(multi / "phase2"), str(multi))
    for a, b in zip(jax.tree.leaves((agent_a.wm_params, agent_a.policy_params)),
                    jax.tree.leaves((agent_b.wm_params, agent_b.policy_params))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_evaluation_split_over_processes_equals_one_process(runs, tmp_path):
    ref, multi, _ = runs
    a, b = (json.load(open(d / "results.json")) for d in (ref, multi))
    assert len(b["returns"]) == 3 and np.all(np.isfinite(b["returns"]))  # 2 episodes on process 0, 1 on process 1
    # The random policy's episodes are the same simulations: equal, gathered bit for bit.
    assert b["random"] == a["random"]
    # Phase 2's evaluation of 1 episode: process 1 ran none and still received the return.
    assert sorted(_metrics(multi / "phase2" / "metrics.jsonl", "eval/return_mean")) == [0, 3]
    # The same policy (the 1-process run's checkpoints, restored by 2 processes) scores exactly
    # what the 1-process run scored: trained policies differ in their last bits between runs,
    # which the simulator amplifies, so only the same parameters can be compared.
    out = tmp_path / "returns.json"
    proc = _run([sys.executable, program("multihost_evaluate"), str(ref), str(out)], processes=2, devices=2)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert json.load(open(out)) == a["returns"]


@pytest.mark.slow
def test_logs_and_files_are_written_once(runs):
    _, multi, out = runs
    text = out["multi"]
    assert text.count("done: phase1, phase2, eval") == 1, text[-3000:]
    assert text.count("== stage ") == 3 and text.count("results: walker-stand") == 1
    assert text.count("[train] step 4/4") == 1 and text.count("[train] step 3/3") == 1
    # metrics.jsonl: every step once (_metrics asserts it), in both stages and for every prefix.
    for stage, keys in (("phase1", ("train/loss", "val/loss")), ("phase2", ("train/loss", "eval/return_mean"))):
        for key in keys:
            assert _metrics(multi / stage / "metrics.jsonl", key)
    assert sorted(os.listdir(multi)) == ["config.json", "phase1", "phase2", "results.json", "videos"]
    assert os.listdir(multi / "videos") == ["eval_episode0.mp4"]


@pytest.mark.slow
def test_process_helpers(tmp_path):
    """Bit-exact float64 gathering; a failure on process 0 stops the others instead of a hang."""
    out = _run([sys.executable, program("multihost_helpers")], processes=2, devices=1, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "process 0: dataset broken" in out.stdout
    assert "process 1: building a dataset failed on process 0" in out.stdout


def test_local_launcher_gives_each_process_its_index_and_fails_if_one_fails():
    # One write per process: the processes share the pipe, and a single short write is atomic.
    code = ("import os; e = os.environ; os.write(1, f\"id {e['JAX_PROCESS_ID']} {e['JAX_NUM_PROCESSES']} "
            "{e['JAX_COORDINATOR_ADDRESS'].split(':')[0]}\\n\".encode())")
    out = _run([sys.executable, "-c", code], processes=3)
    assert out.returncode == 0
    assert sorted(l for l in out.stdout.splitlines() if l.startswith("id")) == [f"id {i} 3 127.0.0.1" for i in range(3)]
    # Process 1 fails at once; process 0 would sleep for a minute, and is stopped instead.
    code = "import os, sys, time; i = os.environ['JAX_PROCESS_ID']; time.sleep(60 if i == '0' else 0); sys.exit(3)"
    out = _run([sys.executable, "-c", code], processes=2, timeout=30)
    assert out.returncode == 3 and "process 1" in out.stdout
    assert _run(["bash", LOCAL]).returncode == 2


def _sweep_module():
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import sweep
    finally:
        sys.path.pop(0)
    return sweep


def test_every_run_of_the_sweep_is_a_valid_main_command(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the sweep's paths (configs/...) are relative to the repository
    sweep = _sweep_module()
    spec = sweep.load_sweep(SWEEP)
    grid = sweep.grid(spec)
    assert sorted({r["config.data.num_demos"] for r in grid}) == [1, 2, 5, 10, 20, 50, 100]
    assert len(grid) == 7 * len(spec["parameters"]["config.seed"]["values"]) and len(grid) >= 14
    main = sweep._main_module()
    workdirs = set()
    for params in grid:
        command = sweep.expand(spec, params, str(tmp_path), wandb_mode="disabled")
        config, workdir, stages = main.check_command(command[1:])
        assert config.data.num_demos == params["config.data.num_demos"] and config.seed == params["config.seed"]
        assert config.wandb.mode == "disabled" and stages[-1] == "eval"
        workdirs.add(workdir)
    assert len(workdirs) == len(grid)  # one run directory per run
    # main.py itself accepts a run (dry run: nothing is trained), and wandb's own expansion.
    command = sweep.expand(spec, grid[-1], str(tmp_path))
    out = run_cli(*command[1:], "--dry_run", env=_env())
    assert out.returncode == 0 and "the command is valid" in out.stdout, out.stderr[-2000:]
    assert "--config.wandb.mode=online" in command and "--config.data.num_demos=100" in command
    assert not os.listdir(tmp_path)
    # The command line tool checks all of them; a bad override is caught for every run.
    out = run_cli("experiments/sweep.py", SWEEP, "--dry_run", f"--workdir_root={tmp_path}", env=_env())
    assert out.returncode == 0 and f"{len(grid)} of {len(grid)} runs valid" in out.stdout, out.stdout[-2000:]
    out = run_cli("experiments/sweep.py", SWEEP, "--dry_run", "--", "--config.phase2.stepz=1", env=_env())
    assert out.returncode == 1 and f"0 of {len(grid)} runs valid" in out.stdout
    assert "unknown config key 'stepz'" in out.stdout


def test_sweep_runs_each_run_in_its_own_directory(tmp_path):
    spec = {"program": program("sweep_program"), "method": "grid",
            "parameters": {"lr": {"values": [0.1, 0.5]}, "seed": {"values": [0, 1]}, "tag": {"value": "x"}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "experiments/sweep.py", str(path), f"--workdir_root={tmp_path / 'runs'}",
                          "--", "--extra=1"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    # The runs with lr=0.5 fail: the sweep goes on with the others and reports them at the end.
    assert out.returncode == 1 and "runs [3, 4] of 4 failed" in out.stderr, out.stderr
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert runs == ["lr0.1_seed0_tagx", "lr0.1_seed1_tagx", "lr0.5_seed0_tagx", "lr0.5_seed1_tagx"]
    args = json.load(open(tmp_path / "runs" / runs[1] / "args.json"))
    assert args[:4] == ["--lr=0.1", "--seed=1", "--tag=x", "--extra=1"]
    spec["method"] = "bayes"
    path.write_text(yaml.safe_dump(spec))
    out = run_cli("experiments/sweep.py", str(path), env=_env())
    assert out.returncode == 2 and "only grid sweeps can be expanded offline" in out.stderr
