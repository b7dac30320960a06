"""The baselines: BC on held-out demonstrations, the IDM on embodiment data, BCO(0) end to end."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from aime_jax import config as config_lib
from aime_jax import stages
from aime_jax.agents import bc
from aime_jax.data import EpisodeStore
from aime_jax.data.collect import collect
from aime_jax.errors import ConfigError
from aime_jax.evaluate import evaluate

from support import REPO, LinearDemonstrator, bc_config, run_program


@pytest.fixture(scope="module")
def demos_dir(tmp_path_factory):
    """Ten walker-walk episodes of a known linear state-feedback demonstrator."""
    out = str(tmp_path_factory.mktemp("linear_demos"))
    collect("walker-walk", "mdp", out, 10, policy=LinearDemonstrator(scale=0.3), seed=3, progress=False)
    return out


def test_frame_stacks_repeat_the_first_frame_and_targets_follow_the_action_convention(walker_random_dir):
    store = EpisodeStore(walker_random_dir, progress=False)
    ep = store.episode(1)
    length = len(ep["reward"])
    # BC: frames ending at t, target = the action taken at t, stored as pre_action[t + 1].
    data = bc.stack_data(store, ("orientations", "height"), 3, 1)
    assert len(data) == store.num_episodes * (length - 1)
    first = length - 1  # the first sample of episode 1
    batch = data.gather(np.array([first, first + 1, first + 4]))
    np.testing.assert_array_equal(batch["height"][0], ep["height"][[0, 0, 0]])
    np.testing.assert_array_equal(batch["height"][1], ep["height"][[0, 0, 1]])
    np.testing.assert_array_equal(batch["orientations"][2], ep["orientations"][[2, 3, 4]])
    np.testing.assert_array_equal(batch[bc.TARGET], ep["pre_action"][[1, 2, 5]])
    # IDM: frames ending at t >= 1, target = the action that led to frame t.
    data = bc.stack_data(store, ("height",), 4, 0)
    batch = data.gather(np.array([first, first + 2]))
    np.testing.assert_array_equal(batch["height"][0], ep["height"][[0, 0, 0, 1]])
    np.testing.assert_array_equal(batch["height"][1], ep["height"][[0, 1, 2, 3]])
    np.testing.assert_array_equal(batch[bc.TARGET], ep["pre_action"][[1, 3]])


def test_agent_keeps_the_stack_in_its_carry():
    net = bc.StackNet(("height",), 6, (8,), "elu", 8)
    params = net.init(jax.random.PRNGKey(0), {"height": np.zeros((1, 3, 1), np.float32)})["params"]
    agent = bc.BCAgent(net, params, 3)
    obs = lambda v: {"height": np.array([[v], [10 * v]], np.float32)}  # noqa: E731
    carry = agent.initial_carry([0, 1])
    carry, action = agent.act(carry, obs(1.0), np.zeros((2, 6)), np.array([True, True]))
    assert action.shape == (2, 6) and np.all(np.abs(action) < 1)
    np.testing.assert_array_equal(carry["height"][:, :, 0], [[1, 1, 1], [10, 10, 10]])
    carry, _ = agent.act(carry, obs(2.0), action, np.array([False, False]))
    carry, action = agent.act(carry, obs(3.0), action, np.array([False, True]))
    np.testing.assert_array_equal(carry["height"][:, :, 0], [[1, 2, 3], [30, 30, 30]])
    # The action depends only on the stack: row 1 acts as a fresh episode at 30 would.
    fresh, fresh_action = agent.act(None, {"height": np.array([[30.0]], np.float32)}, np.zeros((1, 6)), np.array([True]))
    np.testing.assert_allclose(action[1], fresh_action[0], rtol=1e-6)


def test_bc_imitates_the_demonstrator(demos_dir, tmp_path):
    """BC through the pipeline's stages: its action error on the held-out demonstrations is far
    below a random policy's, it stops early and keeps its best epoch, and in the simulator it
    scores near the demonstrator; batched and one-at-a-time evaluation agree."""
    c = bc_config()
    c.algo = "bc"
    c.data.update(demos_dir=demos_dir, num_demos=10)
    c.eval.update(episodes=3, num_envs=3)
    mesh = None
    for name in ("datasets", "phase1", "phase2"):
        stages.stage_fn(c, name)(c, str(tmp_path), mesh)
    agent = bc.load_agent(c, str(tmp_path / "bc"))
    _, train_store, val_store = bc.demo_split(c, demos_dir)
    assert (train_store.num_episodes, val_store.num_episodes) == (7, 3)
    val = bc.stack_data(val_store, agent.net.obs_keys, c.bc.stack, 1)
    baselines = bc.baseline_mses(bc.stack_data(train_store, agent.net.obs_keys, c.bc.stack, 1), val)
    mse = bc.action_mse(agent, val)
    logged = [json.loads(line) for line in open(tmp_path / "bc" / "metrics.jsonl") if '"val/action_mse"' in line]
    print(f"BC held-out action MSE {mse:.4f}; random policy {baselines['random_action_mse']:.3f}, "
          f"mean action {baselines['mean_action_mse']:.3f}; {len(logged) - 1} epochs")
    assert mse < 0.1 * baselines["random_action_mse"] and mse < 0.1 * baselines["mean_action_mse"]
    # The agent holds the best epoch's parameters, not the last epoch's.
    assert mse == pytest.approx(min(line["val/action_mse"] for line in logged), rel=1e-4)
    epochs = len(logged) - 1
    assert c.bc.min_epochs <= epochs < c.bc.max_epochs and logged[-1]["val/bad_evals"] == c.bc.patience

    stages.stage_fn(c, "eval")(c, str(tmp_path), mesh)
    results = json.load(open(tmp_path / "results.json"))
    assert results["algo"] == "bc" and results["method"] == "BC" and results["embodiment"] is None
    assert results["policy_epochs"] == epochs and len(results["returns"]) == 3
    demo_return = results["expert_return"]
    print(f"BC return {results['return_mean']:.1f} (normalised {results['normalised']:.1f}); demonstrator "
          f"{demo_return:.1f}, random {results['random']['return_mean']:.1f}")
    assert results["return_mean"] > results["random"]["return_mean"] + 0.6 * (demo_return - results["random"]["return_mean"])
    single = evaluate("walker-walk", "mdp", agent, 3, num_envs=1, seed=c.eval.seed)
    np.testing.assert_array_equal(single.returns, results["returns"])
    # A finished run trains nothing more.
    bc.train_bc(c, str(tmp_path / "bc"), demos_dir)
    assert len([line for line in open(tmp_path / "bc" / "metrics.jsonl") if '"val/action_mse"' in line]) == len(logged)


def test_bc_resumes_to_the_parameters_of_an_uninterrupted_run(demos_dir, tmp_path):
    c = bc_config(min_epochs=3, max_epochs=3, log_every=10)
    c.data.update(num_demos=3)
    full = bc.train_bc(c, str(tmp_path / "full"), demos_dir)
    c.bc.update(min_epochs=1, max_epochs=1)
    bc.train_bc(c, str(tmp_path / "resumed"), demos_dir)
    c.bc.update(min_epochs=3, max_epochs=3)
    resumed = bc.train_bc(c, str(tmp_path / "resumed"), demos_dir)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_idm_recovers_actions_on_embodiment_data(tmp_path):
    """The inverse dynamics model predicts held-out random-policy actions far better than their
    mean does, and its labels of an episode are its predictions at the right steps."""
    collect("walker-walk", "mdp", str(tmp_path / "random"), 30, seed=1, progress=False)
    c = bc_config(idm_steps=2000, idm_max_steps=2000, idm_eval_every=500)
    net, params = bc.train_idm(c, str(tmp_path / "idm"), str(tmp_path / "random"))
    store = EpisodeStore(str(tmp_path / "random"), progress=False)
    val_store = store.select([29])  # data.val_fraction holds out the last episodes
    val = bc.stack_data(val_store, net.obs_keys, c.bc.stack + 1, 0)
    train = bc.stack_data(store.select(range(28)), net.obs_keys, c.bc.stack + 1, 0)
    baselines = bc.baseline_mses(train, val)
    mse = bc.action_mse(bc.BCAgent(net, params, c.bc.stack + 1), val)
    print(f"IDM held-out action MSE {mse:.3f}; mean action {baselines['mean_action_mse']:.3f}, "
          f"random {baselines['random_action_mse']:.3f}")
    assert mse < 0.7 * baselines["mean_action_mse"]
    labels = bc.label_actions(net, params, val_store, c.bc.stack + 1)
    start, n = val_store.offsets[0], val_store.lengths[0]
    true = val_store.arrays["pre_action"][start + 1 : start + n]
    assert np.mean(np.square(labels[start + 1 : start + n] - true)) == pytest.approx(mse, rel=1e-4)
    assert np.all(labels[start] == 0)


def _main(workdir, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "experiments/main.py", "--config=configs/walker_lpomdp.py:quick", f"--workdir={workdir}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_bco_pipeline_end_to_end(walker_random_dir, demos_dir, tmp_path):
    """BCO(0) on a quick LPOMDP config through experiments/main.py: IDM, labels, BC, results.json
    in the AIME format, a rerun that skips every stage, and the report of the run."""
    from aime_jax import report

    work = tmp_path / "run"
    args = [
        "--config.algo=bco", f"--config.data.embodiment_dir={walker_random_dir}", f"--config.data.demos_dir={demos_dir}",
        "--config.data.num_demos=3", "--config.bc.idm_steps=20", "--config.bc.idm_max_steps=20",
        "--config.bc.idm_eval_every=10", "--config.bc.min_epochs=1", "--config.bc.max_epochs=2",
        "--config.eval.episodes=2", "--config.eval.num_envs=2",
    ]
    out = _main(work, *args)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.load(open(work / "results.json"))
    assert results["algo"] == "bco" and results["method"] == "BCO(0)" and results["embodiment_name"] == os.path.basename(walker_random_dir)
    assert results["modality"] == "lpomdp" and results["num_demos"] == 3 and len(results["returns"]) == 2
    assert {"normalised", "normalised_paper", "expert_return", "random", "seed", "episodes"} <= set(results)
    assert os.path.exists(work / "videos" / "eval_episode0.mp4")
    idm_steps = [json.loads(line)["step"] for line in open(work / "idm" / "metrics.jsonl") if '"val/action_mse"' in line]
    assert idm_steps == [0, 10, 20]
    labels = np.load(work / "bc" / "labels.npy")
    assert labels.shape == (3 * 501, 6) and np.all(np.abs(labels) <= 1)
    out = _main(work, *args)
    assert out.returncode == 0 and "evaluation skipped" in out.stdout, out.stderr[-3000:]
    row = report.build_rows(report.find_results([str(tmp_path)]))[0]
    assert row.ours["bco"].mean == pytest.approx(results["normalised"]) and row.modality == "lpomdp"


def test_config_errors():
    c = bc_config()
    c.algo = "bcx"
    with pytest.raises(ConfigError, match=r"config.algo='bcx'; choose one of aime, bc, bco"):
        config_lib.validate(c, 1)
    c = bc_config(min_epochs=5, max_epochs=2)
    c.algo = "bc"
    with pytest.raises(ConfigError, match="config.bc.max_epochs=2 is below config.bc.min_epochs=5"):
        config_lib.validate(c, 1)
    c = bc_config()
    c.algo, c.data.num_demos = "bco", 1
    with pytest.raises(ConfigError, match="num_demos=1, but bco holds out 30% .* use at least 2"):
        config_lib.validate(c, 1)
    # A batch the devices do not divide is padded with masked rows (tests/test_padding.py).
    c = bc_config(batch_size=50)
    c.algo = "bc"
    config_lib.validate(c, 4)
    # AIME ignores the baselines' section.
    c = bc_config(stack=0)
    config_lib.validate(c, 1)


def test_bc_on_4_devices_equals_one_device(walker_random_dir, tmp_path):
    out = run_program("sharded_bc", tmp_path, walker_random_dir)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_visual_bco_hands_the_idm_encoder_to_the_policy(walker_random_dir, tmp_path):
    """Images go through the CNN encoder; BCO(0)'s policy starts from the IDM's encoder."""
    from aime_jax.data import load_episode, save_episode

    rng = np.random.default_rng(0)
    for i in range(3):
        ep = {k: v[:24] for k, v in load_episode(os.path.join(walker_random_dir, f"{i}.npz")).items()}
        ep["image"] = rng.integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
        save_episode(tmp_path / "data" / f"{i}.npz", ep)
    # A learning rate so small that training leaves the handed-over encoder where it was.
    c = bc_config("visual", stack=2, batch_size=8, lr=1e-12, idm_steps=2, idm_max_steps=2, idm_eval_every=2,
                  min_epochs=1, max_epochs=1)
    c.data.num_demos = 3
    data = str(tmp_path / "data")
    _, idm_params = bc.train_idm(c, str(tmp_path / "idm"), data)
    agent = bc.train_bco(c, str(tmp_path / "bc"), str(tmp_path / "idm"), data)
    for a, b in zip(jax.tree.leaves(idm_params["encoder"]), jax.tree.leaves(agent.params["encoder"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-8)
    # ... which is not what BC would have started from.
    fresh = bc.create_state(agent.net, {"image": (64, 64, 3)}, 2, optax.adam(1.0), c.seed + 7)
    pairs = zip(jax.tree.leaves(fresh.params["encoder"]), jax.tree.leaves(agent.params["encoder"]))
    assert not all(np.allclose(a, b) for a, b in pairs)
    image = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    carry, action = agent.act(agent.initial_carry([0, 1]), {"image": image}, np.zeros((2, 6)), np.ones(2, bool))
    assert action.shape == (2, 6) and carry["image"].shape == (2, 2, 64, 64, 3)
