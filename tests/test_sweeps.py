"""Sweeps on one shared disk: runs of several seeds share the datasets, the runs of one seed share
one world model (trained once, also when they start at the same moment), and the dry run refuses
what the run would refuse."""
import json
import os
import subprocess
import sys

import pytest

from aime_jax.experts import build as build_lib

from support import program_env, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = program_env(WANDB_MODE="disabled")
    env.pop("XLA_FLAGS", None)
    return env


def _main(*args, dry_run=False):
    return run_cli("experiments/main.py", "--config=configs/walker_mdp.py:quick", *args,
                   *(["--dry_run"] if dry_run else []), env=_env())


def _one_line(out):
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def test_the_dry_run_refuses_what_the_run_refuses(tmp_path):
    """walker-random built with data seed 0; a run asking for data seed 1 in the same root is
    refused by its dry run and by the run itself, in the same line, before anything is written;
    the training seed alone changes no dataset."""
    data = tmp_path / "data"
    build_lib.build("walker-random", "mdp", str(data), episodes=2, progress=False)
    common = [f"--config.data.root={data}", "--config.data.embodiment=walker-random", "--config.stages=datasets,phase1",
              "--config.data.scale=0.002"]
    bad = [f"--workdir={tmp_path / 'run'}", *common, "--config.data.seed=1"]
    dry, real = _one_line(_main(*bad, dry_run=True)), _one_line(_main(*bad))
    assert dry == real and dry.startswith(f"error: {data / 'walker-random'} is a complete dataset built with other "
                                          "settings {'seed': (0, 1)"), dry
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no run directory, no lock left
    ok = _main(f"--workdir={tmp_path / 'run'}", *common, "--config.seed=1", dry_run=True)
    assert ok.returncode == 0 and "the command is valid" in ok.stdout, ok.stderr[-2000:]


def test_the_dry_run_of_a_sweep_refuses_runs_that_clash_with_earlier_ones(tmp_path):
    """A world model folder that does not name the seed, and a data seed swept on one data root:
    each later run would be refused by the real run (it finds what the earlier one wrote)."""
    import yaml

    spec = yaml.safe_load(open(os.path.join(REPO, "launch", "sweeps", "num_demos.yaml")))
    spec["parameters"] = {"config.data.num_demos": {"values": [1, 2]}, "config.seed": {"values": [0, 1]}}
    spec["command"] = [c.replace("_seed{seed}", "") if "world_model_dir" in c else c for c in spec["command"]]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = run_cli("experiments/sweep.py", str(path), "--dry_run", f"--workdir_root={tmp_path / 'runs'}", "--",
                  f"--config.data.root={tmp_path / 'data'}", env=_env())
    assert out.returncode == 1 and "2 of 4 runs valid" in out.stdout, out.stdout[-3000:]
    assert out.stdout.count("whose phase-1 settings differ (seed); name them in config.world_model_dir (e.g. "
                            "{seed})") == 2
    spec["parameters"]["config.data.seed"] = spec["parameters"].pop("config.seed")
    spec["command"] = [c.replace("{seed}", "{data.seed}") for c in spec["command"]]
    path.write_text(yaml.safe_dump(spec))
    out = run_cli("experiments/sweep.py", str(path), "--dry_run", f"--workdir_root={tmp_path / 'runs'}", "--",
                  f"--config.data.root={tmp_path / 'data'}", env=_env())
    assert out.returncode == 1 and "2 of 4 runs valid" in out.stdout, out.stdout[-3000:]
    assert out.stdout.count(f"an earlier run of this sweep builds {tmp_path / 'data' / 'walker-random'} with other "
                            "settings {'seed': (0, 1)") == 2
    assert os.listdir(tmp_path) == ["sweep.yaml"]  # nothing written


@pytest.mark.slow
def test_a_sweep_of_4_concurrent_runs_trains_each_seeds_world_model_once(walker_random_dir, tmp_path):
    """2 demonstration counts x 2 seeds, the 4 runs started at the same moment on one disk: all
    finish, phase 1 is trained twice (once per seed), and the other run of each seed waited for
    it and reused it; no run directory holds a phase 1 of its own."""
    runs = tmp_path / "runs"
    common = [
        f"--workdir={runs}/demos{{data.num_demos}}_seed{{seed}}",
        f"--config.world_model_dir={runs}/world_model_seed{{seed}}",
        f"--config.data.embodiment_dir={walker_random_dir}", f"--config.data.demos_dir={walker_random_dir}",
        "--config.data.window=10", "--config.data.batch_size=4",
        "--config.world_model.deter_size=32", "--config.world_model.stoch_size=8",
        "--config.phase1.steps=8", "--config.phase1.save_every=4", "--config.phase1.eval_every=8",
        "--config.phase1.log_every=1", "--config.phase1.val_batches=1",
        "--config.phase2.steps=2", "--config.phase2.save_every=2", "--config.phase2.eval_every=2",
        "--config.phase2.eval_episodes=1", "--config.eval.episodes=1", "--config.eval.num_envs=1",
    ]
    procs = {
        (demos, seed): subprocess.Popen(
            [sys.executable, "experiments/main.py", "--config=configs/walker_mdp.py:quick", *common,
             f"--config.data.num_demos={demos}", f"--config.seed={seed}"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for demos in (1, 2) for seed in (0, 1)
    }
    outs = {key: proc.communicate(timeout=840)[0] for key, proc in procs.items()}
    for key, proc in procs.items():
        assert proc.returncode == 0, (key, outs[key][-3000:])
    trained = sorted(key for key, out in outs.items() if "phase 1: training the shared world model" in out)
    reused = sorted(key for key, out in outs.items() if "the shared world model in" in out and "is complete" in out)
    assert len(trained) == 2 and {seed for _, seed in trained} == {0, 1}, outs
    assert len(reused) == 2 and {seed for _, seed in reused} == {0, 1}
    for key in reused:
        assert f"waiting for the world model {runs}/world_model_seed{key[1]}: another process holds it" in outs[key]
    for seed in (0, 1):
        folder = runs / f"world_model_seed{seed}"
        assert json.load(open(folder / "world_model.json")) == {"complete": True, "phase1_steps": 8}
        assert json.load(open(folder / "config.json"))["seed"] == seed
        steps = [json.loads(line)["step"] for line in open(folder / "phase1" / "metrics.jsonl")
                 if "train/loss" in line]
        assert steps == list(range(1, 9))  # one training: every step logged once
    for demos, seed in procs:
        run = runs / f"demos{demos}_seed{seed}"
        results = json.load(open(run / "results.json"))
        assert results["num_demos"] == demos and results["seed"] == seed
        assert results["embodiment"] == f"{runs}/world_model_seed{seed}" and not (run / "phase1").exists()
    assert not [n for n in os.listdir(runs) if n.endswith(".lock")]


def test_a_sweep_worker_puts_off_a_run_that_another_process_is_running(tmp_path, monkeypatch, capsys):
    """Workers of one sweep on a shared disk: a run whose directory is locked by a live process
    goes to the end of the queue (once), so the worker takes the next run meanwhile."""
    import yaml

    from aime_jax import locks

    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import sweep
    finally:
        sys.path.pop(0)
    monkeypatch.chdir(REPO)
    command = sweep.expand(yaml.safe_load(open(os.path.join(REPO, "launch", "sweeps", "num_demos.yaml"))),
                           {"config.data.num_demos": 1, "config.seed": 0}, str(tmp_path))
    main = sweep._main_module()
    assert sweep._in_use(command, main) is None
    with locks.hold(tmp_path / "demos1_seed0", "the run directory"):
        busy = sweep._in_use(command, main)
    assert busy.startswith(f"{tmp_path / 'demos1_seed0'} is in use by pid {os.getpid()} on ")
    # The queue: run 1 is busy the first time it is looked at.
    spec = {"program": "experiments/main.py", "method": "grid", "parameters": {"config.seed": {"values": [0, 1, 2]}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    looked, ran = [], []

    def seed(command):
        return next(a for a in command if a.startswith("--config.seed="))

    monkeypatch.setattr(sweep, "_in_use", lambda c, m: (looked.append(seed(c)), "busy" if len(looked) == 1 else None)[1])
    monkeypatch.setattr(sweep.subprocess, "run", lambda c: (ran.append(seed(c)), subprocess.CompletedProcess(c, 0))[1])
    assert sweep.main([str(path), f"--workdir_root={tmp_path}"]) == 0
    assert ran == ["--config.seed=1", "--config.seed=2", "--config.seed=0"]
    assert "[1/3] later: busy" in capsys.readouterr().out
