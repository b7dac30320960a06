"""Many AIME runs as one program (aime_jax/agents/phase2_runs.py, config.runs): each run equals the
same run trained alone, the program resumes bit-exact, a diverging run stops alone, the runs axis
splits over devices, and the command line writes one results.json per run.

Tolerance: given the same parameters, a step's loss, metrics and gradient norm are bit-exact
against the single run. The update is not: under vmap XLA rewrites the optimiser's divisions by a
per-run scalar (the clip's global norm, Adam's bias correction) into multiplications by its
reciprocal, which can move a parameter by an ulp per step. Parameters are compared at
rtol 1e-5, atol 1e-6 after a few steps; the program against itself (resume) is bit-exact.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aime_jax import config as config_lib
from aime_jax import parallel
from aime_jax.agents import phase1, phase2, phase2_runs
from aime_jax.data import save_episode
from aime_jax.errors import AimeError, ConfigError
from aime_jax.world_model import rssm

from support import (REPO, RUNS_RTOL, assert_close, make_runs, program_config, run_program, tiny_config,
                     tiny_phase2)

SPEC = {"orientations": (14,), "height": (1,), "velocity": (9,)}


# ------------------------------------------------------------------------------------------------
# The step and the agent, on world models made in memory


def _batch(seed, config):
    rng = np.random.default_rng(seed)
    b, t = config.data.batch_size, config.data.window
    batch = {k: rng.normal(size=(b, t) + s).astype(np.float32) for k, s in SPEC.items()}
    batch["pre_action"] = rng.uniform(-1, 1, (b, t, 6)).astype(np.float32)
    return batch


@pytest.fixture(scope="module")
def parts():
    config = tiny_phase2(tiny_config())
    wms = [rssm.init_world_model(config.world_model, SPEC, 6, jax.random.PRNGKey(s)) for s in (0, 1)]
    model = wms[0][0]
    policy = phase2.make_policy(config.phase2.policy, 6)
    optimizer = phase2.make_optimizer(config.phase2)
    loss_config = phase2.phase2_loss_config(model.config, config.phase2)
    features = model.config.deter_size + model.config.stoch_size
    return config, model, [p for _, p in wms], policy, optimizer, loss_config, features


@pytest.mark.parametrize("wm_index", [pytest.param((0, 0, 0), id="one-world-model"),
                                      pytest.param((0, 1, 0), id="two-world-models", marks=pytest.mark.slow)])
def test_each_run_of_a_step_equals_the_run_alone(parts, wm_index):
    config, model, wm_params, policy, optimizer, loss_config, features = parts
    seeds, steps = (0, 1, 2), 2
    mesh = parallel.make_mesh(1)
    single = phase2.jit_train_step(model, policy, loss_config, optimizer, mesh)
    alone = []
    for r, seed in enumerate(seeds):
        state = phase2.create_policy_state(policy, features, optimizer, seed)
        history = []
        for step in range(steps):
            state, metrics = single(state, wm_params[wm_index[r]], parallel.shard_batch(_batch(10 * r + step, config), mesh))
            history.append(jax.device_get(metrics))
        alone.append((state, history))

    runs_mesh = parallel.make_runs_mesh(len(seeds), 1)
    used = sorted(set(wm_index))
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *[wm_params[g] for g in used])
    state = phase2_runs.stack_states([phase2.create_policy_state(policy, features, optimizer, s) for s in seeds], 3)
    state = jax.device_put(state, phase2_runs.state_shardings(state, runs_mesh))
    step_fn = phase2_runs.jit_runs_train_step(model, policy, loss_config, optimizer, runs_mesh, state)
    index = jnp.asarray([used.index(g) for g in wm_index], jnp.int32)
    for step in range(steps):
        batch = {k: np.stack([_batch(10 * r + step, config)[k] for r in range(3)]) for k in _batch(0, config)}
        state, metrics = step_fn(state, stack, index, parallel.shard_runs_batch(batch, runs_mesh))
        metrics = jax.device_get(metrics)
        for r, (_, history) in enumerate(alone):
            if step == 0:  # the same parameters: the same loss and gradients, to the bit
                for key in ("loss", "nelbo_per_step", "action_mse", "grad_norm", "action_std"):
                    assert metrics[key][r] == history[0][key], (key, r)
            np.testing.assert_allclose(metrics["loss"][r], history[step]["loss"], rtol=RUNS_RTOL)
    assert np.all(metrics["active"]) and not np.any(metrics["diverged_at"])
    for r, (single_state, _) in enumerate(alone):
        assert_close(state.run(r).params, single_state.params)
        assert_close(state.run(r).opt_state, single_state.opt_state)


def test_the_agent_of_many_runs_acts_as_each_run_alone(parts):
    config, model, wm_params, policy, optimizer, _, features = parts
    params = [phase2.create_policy_state(policy, features, optimizer, s).params for s in (0, 1)]
    index = (1, 0)
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *wm_params)
    together = phase2_runs.RunsAgent(model, stack, index, policy, jax.tree.map(lambda *xs: jnp.stack(xs), *params))
    alone = [phase2.AimeAgent(model, wm_params[index[r]], policy, params[r]) for r in range(2)]
    episodes = 3  # per run
    seeds = [100 + i for i in range(episodes)]
    carry = together.initial_carry(seeds * 2)
    carries = [agent.initial_carry(seeds) for agent in alone]
    rng = np.random.default_rng(0)
    prev = np.zeros((2 * episodes, 6), np.float32)
    for t in range(3):
        obs = {k: rng.normal(size=(2 * episodes,) + s).astype(np.float32) for k, s in SPEC.items()}
        first = np.full((2 * episodes,), t == 0)
        carry, action = together.act(carry, obs, prev, first)
        for r, agent in enumerate(alone):
            rows = slice(r * episodes, (r + 1) * episodes)
            carries[r], own = agent.act(carries[r], {k: v[rows] for k, v in obs.items()}, prev[rows], first[rows])
            np.testing.assert_array_equal(action[rows], own)
        prev = action


def test_runs_share_the_devices_as_the_layout_says():
    assert parallel.runs_layout(21, 1) == (1, 1)
    assert parallel.runs_layout(21, 8) == (8, 1)  # 24 runs on the mesh, 3 of them idle
    assert parallel.runs_layout(3, 4) == (2, 2)
    assert parallel.runs_layout(1, 4) == (1, 4)
    assert parallel.runs_layout(3, 4, data_devices=4) == (1, 4)
    mesh = parallel.make_runs_mesh(3, 1)
    assert dict(mesh.shape) == {"runs": 1, "data": 1} and parallel.padded_runs(3, mesh) == 3
    with pytest.raises(ConfigError, match="data_devices=3 does not divide the 4 devices"):
        parallel.runs_layout(3, 4, data_devices=3)


def _grid_config(**runs):
    config = config_lib.make_config("walker", "mdp", "quick")
    config.runs.update(runs)
    return config


@pytest.mark.parametrize("runs,message", [
    (dict(num_demos="1,two"), "config.runs.num_demos='1,two'; give whole numbers >= 1 separated by commas"),
    (dict(num_demos="0,5"), "config.runs.num_demos='0,5'; give whole numbers >= 1"),
    (dict(seeds="0,-1"), "config.runs.seeds='0,-1'; give whole numbers >= 0"),
    (dict(seeds="1,1"), "config.runs.seeds='1,1' names a value twice"),
    (dict(seeds="0,1", data_devices=3), "config.runs.data_devices=3 does not divide the 4 devices"),
])
def test_bad_run_grids_are_refused_in_one_line(runs, message):
    config = _grid_config(**runs)
    config.data.batch_size = 18
    with pytest.raises(ConfigError) as caught:
        config_lib.validate(config, num_devices=4)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_batch_the_data_devices_do_not_divide_is_padded_not_refused():
    config = _grid_config(seeds="0", data_devices=4)
    config.data.batch_size = 18
    config_lib.validate(config, num_devices=4)


def test_the_grid_names_every_run_seed_by_seed():
    config = _grid_config(num_demos="1, 10", seeds="3,4")
    assert config_lib.many_runs(config)
    assert config_lib.run_grid(config) == [(1, 3), (10, 3), (1, 4), (10, 4)]
    single = config_lib.run_config(config, 10, 4, "runs/x/seed4")
    assert (single.data.num_demos, single.seed, single.world_model_dir, single.runs.seeds) == (10, 4, "runs/x/seed4", "")
    assert not config_lib.many_runs(single)
    # Seeds alone: the configured number of demonstrations for each.
    assert config_lib.run_grid(_grid_config(seeds="0,1")) == [(10, 0), (10, 1)]
    with pytest.raises(ConfigError, match="not bc"):
        bc = _grid_config(seeds="0,1")
        bc.algo = "bc"
        config_lib.validate(bc, num_devices=1)


def test_each_seed_fills_the_world_model_folder_pattern(tmp_path):
    from aime_jax import stages

    config = config_lib.resolve(_grid_config(num_demos="1,2", seeds="0,1"))
    config.world_model_dir = str(tmp_path / "wm_seed{seed}")
    assert config_lib.world_model_dirs(config) == [str(tmp_path / "wm_seed0"), str(tmp_path / "wm_seed1")]
    runs = stages.program_runs(config, str(tmp_path / "curve"))
    assert [(r.name, r.world_model_dir) for r in runs] == [
        ("demos1_seed0", str(tmp_path / "wm_seed0")), ("demos2_seed0", str(tmp_path / "wm_seed0")),
        ("demos1_seed1", str(tmp_path / "wm_seed1")), ("demos2_seed1", str(tmp_path / "wm_seed1"))]
    assert all(r.config.world_model_dir == r.world_model_dir for r in runs)
    # main.py keeps the pattern of a program of runs (a single run's is filled with its own seed).
    out = subprocess.run(
        [sys.executable, "experiments/main.py", "--config=configs/walker_mdp.py:quick", f"--workdir={tmp_path / 'curve'}",
         "--config.runs.num_demos=1,2", "--config.runs.seeds=0,1", f"--config.world_model_dir={tmp_path}/wm_seed{{seed}}",
         "--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert out.returncode == 0 and "for 4 runs as one program" in out.stdout, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "curve")


# ------------------------------------------------------------------------------------------------
# Whole programs: two world models trained on real walker data, runs of 1 to 3 demonstrations


@pytest.fixture(scope="module")
def world_models(walker_random_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("world_models")
    dirs = []
    for seed in (0, 1):
        config = tiny_config(steps=3)
        config.seed = seed
        phase1.train_world_model(config, str(root / f"seed{seed}" / "phase1"), walker_random_dir)
        dirs.append(str(root / f"seed{seed}"))
    return dirs


@pytest.mark.slow
def test_each_run_of_a_program_equals_the_run_trained_alone(world_models, walker_random_dir, tmp_path):
    config = program_config(log_every=1)
    specs = [(1, 0, world_models[0]), (2, 1, world_models[0]), (3, 0, world_models[1])]
    runs = make_runs(config, tmp_path / "program", specs, [walker_random_dir] * 3)
    _, state = phase2_runs.train_aime_runs(config, runs, str(tmp_path / "program" / "phase2"))
    assert int(state.step) == 4 and np.all(jax.device_get(state.active))
    for r, run in enumerate(runs):
        _, alone = phase2.train_aime(run.config, str(tmp_path / f"alone{r}"), run.world_model_dir, walker_random_dir)
        assert_close(state.run(r).params, alone.params)
        ours = [json.loads(line) for line in open(os.path.join(run.phase2_dir, "metrics.jsonl"))]
        theirs = [json.loads(line) for line in open(tmp_path / f"alone{r}" / "metrics.jsonl")]
        assert [l["step"] for l in ours] == [l["step"] for l in theirs] == [1, 2, 3, 4]
        # Step 1 starts from the same parameters: its metrics are the same to the bit.
        assert {k: v for k, v in ours[0].items() if k != "time"} == {k: v for k, v in theirs[0].items() if k != "time"}
        # The run's own folder holds its final state as a single run's: its agent loads as one.
        restored = phase2.load_agent(run.config, run.phase2_dir, run.world_model_dir)
        assert_close(restored.policy_params, state.run(r).params, exact=True)


@pytest.mark.slow
def test_a_program_resumes_bit_exact(world_models, walker_random_dir, tmp_path):
    specs = [(1, 0, world_models[0]), (3, 1, world_models[0])]

    def program(folder, steps):
        config = program_config(steps=steps)
        runs = make_runs(config, tmp_path / folder, specs, [walker_random_dir] * 2)
        return phase2_runs.train_aime_runs(config, runs, str(tmp_path / folder / "phase2"))[1]

    full = program("full", 4)
    program("resumed", 2)  # stopped after its step-2 checkpoint, as a kill would leave it
    resumed = program("resumed", 4)
    assert_close(full, resumed, exact=True)
    logged = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "phase2" / "metrics.jsonl")]
    assert sorted(set(logged)) == [2, 4]
    # A finished program trains nothing more.
    assert_close(program("full", 4), full, exact=True)


def _overflowing(src, dst):
    """The episodes of `src` with velocities whose square overflows float32 (finite, so accepted)."""
    for i in range(3):
        with np.load(os.path.join(src, f"{i}.npz")) as z:
            episode = {k: z[k] for k in z.files}
        episode["velocity"][:] = 1e30
        save_episode(dst / f"{i}.npz", episode)
    return str(dst)


@pytest.mark.slow
def test_a_diverging_run_stops_alone_and_is_reported(world_models, walker_random_dir, tmp_path, capsys):
    from aime_jax import stages

    config = program_config()
    config.data.demos_dir = walker_random_dir
    bad = _overflowing(walker_random_dir, tmp_path / "bad")
    specs = [(2, 0, world_models[0]), (2, 1, world_models[0]), (3, 2, world_models[0])]
    runs = make_runs(config, tmp_path / "program", specs, [walker_random_dir, bad, walker_random_dir])
    initial = phase2.create_policy_state(
        phase2.make_policy(config.phase2.policy, 6), 40, phase2.make_optimizer(config.phase2), 1).params
    _, state = phase2_runs.train_aime_runs(config, runs, str(tmp_path / "program" / "phase2"))
    out = capsys.readouterr().out
    assert "run demos2_seed1 went non-finite at step 1: it keeps the parameters of step 0" in out
    assert list(jax.device_get(state.active)) == [True, False, True]
    assert list(jax.device_get(state.diverged_at)) == [0, 1, 0]
    assert_close(state.run(1).params, initial, exact=True)
    # The others trained on as if alone.
    for r in (0, 2):
        _, alone = phase2.train_aime(runs[r].config, str(tmp_path / f"alone{r}"), runs[r].world_model_dir,
                                   walker_random_dir)
        assert_close(state.run(r).params, alone.params)
    stages.evaluate_program(config, runs)
    results = [json.load(open(os.path.join(run.workdir, "results.json"))) for run in runs]
    assert [r.get("diverged_at_step") for r in results] == [None, 1, None]
    assert [(r["num_demos"], r["seed"]) for r in results] == [(2, 0), (2, 1), (3, 2)]
    assert all(np.isfinite(r["normalised"]) and len(r["returns"]) == 1 for r in results)


@pytest.mark.slow
def test_a_program_whose_every_run_diverges_stops_in_one_line(world_models, walker_random_dir, tmp_path):
    bad = _overflowing(walker_random_dir, tmp_path / "bad")
    config = program_config()
    runs = make_runs(config, tmp_path / "program", [(1, 0, world_models[0])], [bad])
    with pytest.raises(AimeError, match=r"every run went non-finite \(demos1_seed0 at step 1\) at step 2 "):
        phase2_runs.train_aime_runs(config, runs, str(tmp_path / "program" / "phase2"))


@pytest.mark.slow
def test_the_runs_axis_splits_over_four_devices(world_models, walker_random_dir, tmp_path):
    out = run_program("sharded_runs", world_models[0], world_models[1], tmp_path, walker_random_dir, timeout=900)
    assert out.returncode == 0 and "OK" in out.stdout, (out.stdout[-2000:], out.stderr[-3000:])


def _main(workdir, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, "experiments/main.py", "--config=configs/walker_mdp.py:quick", f"--workdir={workdir}", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
def test_the_command_line_writes_a_results_file_per_run_and_resumes_after_a_kill(walker_random_dir, tmp_path):
    work = tmp_path / "curve"
    common = [
        "--config.runs.num_demos=1,2", "--config.runs.seeds=0,1",
        f"--config.data.embodiment_dir={walker_random_dir}", f"--config.data.demos_dir={walker_random_dir}",
        "--config.data.window=10", "--config.data.batch_size=4", "--config.world_model.deter_size=32",
        "--config.world_model.stoch_size=8",
        "--config.phase1.steps=10", "--config.phase1.save_every=10", "--config.phase1.eval_every=10",
        "--config.phase2.steps=40", "--config.phase2.save_every=10", "--config.phase2.eval_every=40",
        "--config.phase2.eval_episodes=1", "--config.eval.episodes=2", "--config.eval.num_envs=2",
    ]
    proc = _main(work, *common)
    deadline = time.time() + 600
    while time.time() < deadline and not os.path.isdir(work / "phase2" / "checkpoints" / "10"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _main(work, *common)
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "4 runs on a mesh of" in out
    for seed in (0, 1):
        assert os.path.isdir(work / f"seed{seed}" / "phase1" / "checkpoints" / "10")
        for demos in (1, 2):
            run = work / f"demos{demos}_seed{seed}"
            results = json.load(open(run / "results.json"))
            assert (results["num_demos"], results["seed"], results["phase2_steps"]) == (demos, seed, 40)
            assert len(results["returns"]) == 2 and results["embodiment"] == str(work / f"seed{seed}")
            assert os.path.exists(run / "videos" / "eval_episode0.mp4")
            assert json.load(open(run / "config.json"))["world_model_dir"] == str(work / f"seed{seed}")
    # A finished program skips every stage; the report draws its curve.
    proc = _main(work, *common)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "every run's results.json is complete" in out, out[-3000:]
    report = subprocess.run([sys.executable, "experiments/report.py", str(work), f"--out={tmp_path / 'report'}"],
                            cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert report.returncode == 0 and os.path.exists(tmp_path / "report" / "demos_plot.png"), report.stderr
    assert "| 2 | " in report.stdout and "(2 runs)" in report.stdout
