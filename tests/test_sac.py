"""The SAC expert trainer: update math, replay buffer, resume, episode files, the restored policy."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aime_jax.checkpoint import CheckpointNotFoundError
from aime_jax.data import list_episodes, load_episode
from aime_jax.data.collect import collect
from aime_jax.errors import AimeError, ConfigError
from aime_jax.evaluate import evaluate
from aime_jax.experts import driver, replay
from aime_jax.experts import sac as sac_lib
from aime_jax.nets.policy import tanh_gaussian_log_prob, tanh_gaussian_sample_with_log_prob

from support import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBS_DIM = 24


def tiny_config(**overrides):
    base = dict(hidden_sizes=(32, 32), batch_size=16, seed_steps=500, eval_every=1000, save_every=500,
                eval_episodes=2, log_every=500)
    base.update(overrides)
    return sac_lib.default_config("walker-stand", **base)


def random_batch(rng, shape, obs_dim=OBS_DIM):
    return {
        "obs": rng.normal(size=(*shape, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (*shape, 6)).astype(np.float32),
        "reward": rng.uniform(size=shape).astype(np.float32),
        "discount": np.ones(shape, np.float32),
        "next_obs": rng.normal(size=(*shape, obs_dim)).astype(np.float32),
    }


def host_copy(tree):
    # The update donates its input state: keep real copies of what a test compares against.
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


@pytest.fixture(scope="module")
def sac():
    """One learner for the tests that need no special settings: it compiles once."""
    return sac_lib.SAC(tiny_config(), OBS_DIM)


def test_update_keeps_shapes_and_gives_finite_metrics(sac):
    state = sac.init(0)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    rng = np.random.default_rng(0)
    state, metrics = sac.update(state, jax.device_put(random_batch(rng, (16,))))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
    assert int(state.step) == 1
    for name, value in metrics.items():
        assert np.shape(value) == () and np.isfinite(value), name
    state, metrics = sac.update_many(state, jax.device_put(random_batch(rng, (3, 16))))
    assert int(state.step) == 4 and jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
    assert all(np.shape(v) == () and np.isfinite(v) for v in metrics.values())


def test_update_many_equals_consecutive_updates(sac):
    batches = random_batch(np.random.default_rng(1), (3, 16))
    one_by_one = sac.init(0)
    for k in range(3):
        one_by_one, _ = sac.update(one_by_one, jax.device_put({key: v[k] for key, v in batches.items()}))
    scanned, _ = sac.update_many(sac.init(0), jax.device_put(batches))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), scanned, one_by_one)


def test_target_critic_is_polyak_average(sac):
    tau = sac.config.tau
    state = sac.init(0)
    # Targets start equal to the critic, then follow it by tau per update.
    jax.tree.map(np.testing.assert_array_equal, state.target_critic_params, state.critic_params)
    rng = np.random.default_rng(0)
    state, _ = sac.update(state, jax.device_put(random_batch(rng, (16,))))
    old_target = host_copy(state.target_critic_params)
    state, _ = sac.update(state, jax.device_put(random_batch(rng, (16,))))
    expected = jax.tree.map(lambda new, old: tau * new + (1 - tau) * old, host_copy(state.critic_params), old_target)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), state.target_critic_params, expected
    )
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.target_critic_params, old_target)
    assert max(jax.tree.leaves(moved)) > 0


def test_log_prob_matches_tanh_gaussian_and_stays_finite_when_saturated():
    rng = jax.random.PRNGKey(0)
    mean = jax.random.normal(rng, (64, 6)) * 0.5
    log_std = jnp.full((64, 6), -1.0)
    action, log_prob = tanh_gaussian_sample_with_log_prob(mean, jnp.exp(log_std), jax.random.PRNGKey(1))
    assert np.abs(action).max() < 0.999  # inside the clip of tanh_gaussian_log_prob
    np.testing.assert_allclose(log_prob, tanh_gaussian_log_prob(mean, jnp.exp(log_std), action), rtol=1e-4, atol=1e-3)
    # Far in the tails tanh rounds to +-1; the pre-tanh form stays finite and differentiable.
    grad = jax.grad(lambda m: tanh_gaussian_sample_with_log_prob(m, jnp.exp(log_std), rng)[1].sum())(mean + 30.0)
    _, saturated = tanh_gaussian_sample_with_log_prob(mean + 30.0, jnp.exp(log_std), rng)
    assert np.all(np.isfinite(saturated)) and np.all(np.isfinite(grad))


def test_temperature_step_moves_toward_the_target_entropy():
    rng = np.random.default_rng(0)
    batch = jax.device_put(random_batch(rng, (16,)))
    for target, direction in ((-50.0, -1), (50.0, +1)):
        sac = sac_lib.SAC(tiny_config(target_entropy=target, temperature_lr=1e-2), OBS_DIM)
        state = sac.init(0)
        before = float(state.log_temperature)
        state, metrics = sac.update(state, batch)
        # Entropy above the target lowers the temperature, below it raises it (Adam: one lr step).
        assert np.sign(float(state.log_temperature) - before) == direction
        assert abs(abs(float(state.log_temperature) - before) - 1e-2) < 1e-3


@pytest.mark.slow
def test_learned_temperature_brings_the_entropy_to_the_target():
    """A one-step problem (discount 0, reward -|a - 0.5|^2): the reward pulls the policy towards a
    point, the temperature pulls its entropy to the target; both targets are met from either side."""
    rng = np.random.default_rng(0)
    for target in (-4.0, 1.5):
        sac = sac_lib.SAC(
            tiny_config(target_entropy=target, actor_lr=3e-3, critic_lr=3e-3, temperature_lr=3e-2,
                        init_temperature=1.0), OBS_DIM,
        )
        state = sac.init(0)
        entropies = []
        for i in range(30):
            b = random_batch(rng, (25, 64))
            b["reward"] = -np.sum(np.square(b["action"] - 0.5), axis=-1)
            b["discount"][:] = 0.0
            state, metrics = sac.update_many(state, jax.device_put(b))
            entropies.append(float(metrics["entropy"]))
        assert abs(np.mean(entropies[-5:]) - target) < 1.0, (target, entropies[::5])


def test_replay_buffer_wraps_and_saves_oldest_first():
    buf = replay.ReplayBuffer(5, 2, 1)
    for i in range(7):
        buf.add(obs=np.full((1, 2), i, np.float32), action=np.zeros((1, 1)), reward=np.array([i]),
                discount=np.ones(1), next_obs=np.full((1, 2), i + 1, np.float32))
    assert buf.size == 5 and buf.ptr == 2
    np.testing.assert_array_equal(buf.chronological()["reward"], [2, 3, 4, 5, 6])
    sample = buf.sample(np.random.default_rng(0), (3, 4))
    assert sample["obs"].shape == (3, 4, 2) and set(np.unique(sample["reward"])) <= {2, 3, 4, 5, 6}
    np.testing.assert_array_equal(sample["next_obs"][..., 0], sample["reward"] + 1)
    saved = buf.chronological()
    smaller, larger = replay.ReplayBuffer(3, 2, 1), replay.ReplayBuffer(10, 2, 1)
    smaller.fill(saved, "test")
    larger.fill(saved, "test")
    np.testing.assert_array_equal(smaller.chronological()["reward"], [4, 5, 6])
    np.testing.assert_array_equal(larger.chronological()["reward"], [2, 3, 4, 5, 6])
    assert larger.ptr == 5
    with pytest.raises(AimeError, match="lacks"):
        larger.fill({k: v for k, v in saved.items() if k != "obs"}, "test")


def _n_step_reference(buf, i, n, gamma, stride):
    """The n-step transition from stored index i, by walking the ring one transition at a time."""
    d = buf.data
    oldest = buf.ptr if buf.size == buf.capacity else 0
    reward, disc, next_obs, cur = float(d["reward"][i]), float(d["discount"][i]), d["next_obs"][i], i
    for k in range(1, n):
        nxt = (cur + stride) % buf.capacity
        if d["discount"][cur] == 0 or (cur - oldest) % buf.capacity + stride >= buf.size:
            break
        if not np.array_equal(d["obs"][nxt], next_obs):
            break
        reward += gamma**k * float(d["reward"][nxt])
        disc = gamma * disc * float(d["discount"][nxt])
        next_obs, cur = d["next_obs"][nxt], nxt
    return reward, disc, next_obs


@pytest.mark.parametrize("stride", [1, 2])
def test_n_step_batches_sum_rewards_within_episodes(stride):
    # Episodes of 4 transitions from `stride` environments stepped together, one terminal
    # transition, a ring that has wrapped: every sampled n-step transition must equal the
    # reference walk, and chains must stop at episode ends, terminals and the newest transition.
    rng = np.random.default_rng(0)
    buf = replay.ReplayBuffer(23, 2, 1)
    obs = rng.normal(size=(stride, 2)).astype(np.float32)
    for t in range(30):
        next_obs = rng.normal(size=(stride, 2)).astype(np.float32)
        discount = np.ones(stride, np.float32)
        if t == 9:
            discount[0] = 0.0
        buf.add(obs=obs, action=np.zeros((stride, 1)), reward=rng.uniform(size=stride), discount=discount, next_obs=next_obs)
        # Every 4th step the episode ends: the next transition starts from a reset observation.
        obs = rng.normal(size=(stride, 2)).astype(np.float32) if t % 4 == 3 else next_obs
    assert buf.size == buf.capacity
    gamma = 0.9
    batch = buf.sample(np.random.default_rng(1), (200,), n_step=3, gamma=gamma, stride=stride)
    one = buf.sample(np.random.default_rng(1), (200,))
    idx = np.random.default_rng(1).integers(0, buf.size, (200,))
    lengths = []
    for b, i in enumerate(idx):
        reward, disc, next_obs = _n_step_reference(buf, i, 3, gamma, stride)
        np.testing.assert_allclose(batch["reward"][b], reward, rtol=1e-6)
        np.testing.assert_allclose(batch["discount"][b], disc, rtol=1e-6)
        np.testing.assert_array_equal(batch["next_obs"][b], next_obs)
        lengths.append(round(np.log(disc) / np.log(gamma)) + 1 if disc > 0 else None)
    np.testing.assert_array_equal(batch["obs"], one["obs"])
    np.testing.assert_array_equal(batch["action"], one["action"])
    # Full 3-step chains, and chains cut short at episode ends.
    assert {1, 2, 3} <= set(lengths)
    assert (batch["reward"] > one["reward"]).mean() > 0.3


def test_bad_settings_fail_with_the_name():
    with pytest.raises(ConfigError, match="unknown SAC setting"):
        sac_lib.default_config("walker-stand", hiden_sizes=(3,))
    with pytest.raises(ConfigError, match="batch_size"):
        sac_lib.default_config("walker-stand", batch_size=0)
    with pytest.raises(AimeError, match="unknown environment"):
        sac_lib.default_config("walker-dance")
    with pytest.raises(AimeError, match="no SAC expert"):
        sac_lib.load_expert_policy("/nonexistent/expert")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """2000 uninterrupted steps (4 episodes), every episode saved."""
    work = tmp_path_factory.mktemp("sac_full")
    summary = sac_lib.train_expert("walker-stand", str(work / "run"), 2000, seed=3, config=tiny_config(),
                                   episode_dir=str(work / "episodes"))
    return work, summary


def test_run_writes_episodes_metrics_and_summary(full_run):
    work, summary = full_run
    assert summary["env_steps"] == 2000 and summary["episodes"] == 4 and summary["updates"] == 1500
    assert [e["env_steps"] for e in summary["eval_curve"]] == [1000, 2000]
    assert json.load(open(work / "run" / "summary.json"))["eval_return"] == summary["eval_return"]
    assert json.load(open(work / "episodes" / "meta.json"))["env"] == "walker-stand"
    files = list_episodes(work / "episodes")
    assert [os.path.basename(f) for f in files] == ["0.npz", "1.npz", "2.npz", "3.npz"]
    for i, path in enumerate(files):
        ep = load_episode(path)
        assert "image" not in ep and ep["physics_state"].shape == (501, 18)
        assert {"orientations", "height", "velocity", "pre_action", "reward", "is_first", "is_last"} <= set(ep)
        assert ep["is_first"][0] and ep["is_last"][-1] and not ep["pre_action"][0].any()
        np.testing.assert_allclose(ep["reward"].sum(), summary["train_returns"][i], rtol=1e-4)
    lines = [json.loads(line) for line in open(work / "run" / "metrics.jsonl")]
    train = [line for line in lines if "train/critic_loss" in line]
    assert [line["step"] for line in train] == [1000, 1500, 2000]
    assert all(np.isfinite(line["train/critic_loss"]) for line in train)
    assert [line["step"] for line in lines if "eval/return" in line] == [1000, 2000]
    # Only the last checkpoint, with its replay buffer inside, is kept.
    assert os.listdir(work / "run" / "checkpoints") == ["2000"] and not os.path.exists(work / "run" / "replay")
    assert len(driver.read_replay(str(work / "run" / "checkpoints"))["obs"]) == 2000


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint_like_an_uninterrupted_run(full_run, tmp_path):
    work, summary = full_run
    part = sac_lib.train_expert("walker-stand", str(tmp_path), 1000, seed=3, config=tiny_config())
    assert part["env_steps"] == 1000 and part["updates"] == 500
    # A run killed after saving a new best but before its main checkpoint: the stale best is
    # dropped on resume, so best/ holds only the best evaluation the checkpoint recorded.
    assert os.listdir(tmp_path / "best") == ["1000"] and part["best_eval"]["env_steps"] == 1000
    shutil.copytree(tmp_path / "best" / "1000", tmp_path / "best" / "1500")
    sac_lib.train_expert("walker-stand", str(tmp_path), 1000, seed=3, config=tiny_config())
    assert os.listdir(tmp_path / "best") == ["1000"]
    resumed = sac_lib.train_expert("walker-stand", str(tmp_path), 2000, seed=3, config=tiny_config())
    assert resumed["env_steps"] == 2000 and resumed["updates"] == 1500
    assert resumed["best_eval"] == summary["best_eval"]
    assert os.listdir(tmp_path / "best") == [str(summary["best_eval"]["env_steps"])]
    np.testing.assert_allclose(resumed["train_returns"], summary["train_returns"], rtol=1e-5)
    np.testing.assert_allclose(resumed["eval_return"], summary["eval_return"], rtol=1e-3)
    # A finished run returns at once.
    again = sac_lib.train_expert("walker-stand", str(tmp_path), 2000, seed=3, config=tiny_config())
    assert again["wall_s"] == resumed["wall_s"]
    with pytest.raises(AimeError, match="other networks"):
        sac_lib.train_expert("walker-stand", str(tmp_path), 3000, seed=3, config=tiny_config(hidden_sizes=(16,)))


def test_a_checkpoint_with_its_buffer_beside_it_resumes(full_run, tmp_path):
    """Earlier versions saved the buffer as .npy files in workdir/replay/<step>/: such a run resumes
    as an uninterrupted one, and its next checkpoint holds the buffer; without them, one line."""
    work, summary = full_run
    run, bare = tmp_path / "run", tmp_path / "no-buffer"
    sac_lib.train_expert("walker-stand", str(run), 500, seed=3, config=tiny_config())
    arrays = driver.read_replay(str(run / "checkpoints"))
    os.makedirs(run / "replay" / "500")
    for key, value in arrays.items():
        np.save(run / "replay" / "500" / f"{key}.npy", value)
    shutil.rmtree(run / "checkpoints" / "500" / replay.ITEM)
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "replay")
    resumed = sac_lib.train_expert("walker-stand", str(run), 1000, seed=3, config=tiny_config())
    np.testing.assert_allclose(resumed["train_returns"], summary["train_returns"][:2], rtol=1e-5)
    np.testing.assert_allclose(resumed["eval_return"], summary["eval_curve"][0]["return"], rtol=1e-3)
    assert not os.path.exists(run / "replay") and len(driver.read_replay(str(run / "checkpoints"))["obs"]) == 1000
    with pytest.raises(AimeError, match="holds no replay buffer"):
        sac_lib.train_expert("walker-stand", str(bare), 1000, seed=3, config=tiny_config())


def test_expert_policy_restores_from_the_checkpoint_and_collects(full_run, tmp_path):
    work, summary = full_run
    policy = sac_lib.load_expert_policy(str(work / "run"))
    assert policy.name == "sac-expert:walker-stand@2000"
    # The same mode policy as the trainer evaluated, scored on the same initial states.
    result = evaluate("walker-stand", "mdp", policy, episodes=2, num_envs=2, seed=sac_lib.EVAL_SEED)
    np.testing.assert_allclose(result.mean, summary["eval_return"], rtol=1e-4)
    collect("walker-stand", "lpomdp", str(tmp_path / "demos"), 1, policy=policy, progress=False)
    ep = load_episode(tmp_path / "demos" / "0.npz")
    observation = {k: ep[k][3] for k in ("orientations", "height", "velocity")}
    np.testing.assert_allclose(ep["pre_action"][4], policy({}, observation, None), atol=1e-6)
    meta = json.load(open(tmp_path / "demos" / "meta.json"))
    assert meta["policy"] == "sac-expert:walker-stand@2000"


def test_best_checkpoint_holds_the_best_evaluation(full_run, tmp_path):
    work, summary = full_run
    curve = summary["eval_curve"]
    top = max(curve, key=lambda e: e["return"])
    assert summary["best_eval"] == {"env_steps": top["env_steps"], "return": top["return"]}
    assert os.listdir(work / "run" / "best") == [str(top["env_steps"])]
    policy = sac_lib.load_expert_policy(str(work / "run"), best=True)
    assert policy.name == f"sac-expert:walker-stand@{top['env_steps']}"
    result = evaluate("walker-stand", "mdp", policy, episodes=2, num_envs=2, seed=sac_lib.EVAL_SEED)
    np.testing.assert_allclose(result.mean, top["return"], rtol=1e-4)
    # experiments/collect.py --policy=RUN/best acts with it too.
    assert sac_lib.load_policy(str(work / "run" / "best")).name == policy.name
    assert sac_lib.load_policy(str(work / "run")).name == "sac-expert:walker-stand@2000"
    with pytest.raises(CheckpointNotFoundError, match="no best/ checkpoint"):
        sac_lib.load_expert_policy(str(tmp_path / "nowhere"), best=True)


EXPERT_CONFIG = "--config=configs/expert.py:walker-stand"


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "experiments/train_expert.py", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cli_errors_are_one_line(tmp_path):
    for args, message in (
        (["--config=configs/expert.py:walker-dance"], "error: bad command line: unknown config argument 'walker-dance'"),
        ([EXPERT_CONFIG, "--config.sac.batch_size=0"], "error: SAC settings ['batch_size'] must be >= 1"),
        ([EXPERT_CONFIG, "--config.sac.batchsize=3"], "error: bad command line: unknown config key 'batchsize'"),
    ):
        proc = run_cli("experiments/train_expert.py", f"--workdir={tmp_path}", *args)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and message in out and "Traceback" not in out, out[-2000:]


@pytest.mark.slow
def test_cli_resumes_after_a_kill(tmp_path):
    args = [f"--workdir={tmp_path}", EXPERT_CONFIG, "--config.steps=1500", "--config.sac.hidden_sizes=32,32",
            "--config.sac.batch_size=16", "--config.sac.seed_steps=500", "--config.sac.save_every=500",
            "--config.sac.eval_every=1500", "--config.sac.eval_episodes=1"]
    proc = _cli(*args)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isdir(tmp_path / "checkpoints" / "500"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = _cli(*args)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "done: walker-stand 1500 env steps" in out, out[-3000:]
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["updates"] == 1000 and len(summary["train_returns"]) == 3
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl") if "train/critic_loss" in line]
    assert max(steps) == 1500


@pytest.mark.slow
def test_sac_learns_walker_stand(tmp_path):
    """The default settings with 2000 seed steps for 20k env steps: about 65 s on 2 CPU cores. A
    random policy scores ~140; six runs of these settings (seeds 0-2, one or ten updates per call)
    scored 490-680 here, and the default reaches ~920 by 35k steps (benchmarks/results/sac_cpu.json)."""
    config = sac_lib.default_config("walker-stand", seed_steps=2000, eval_every=20_000, save_every=20_000)
    summary = sac_lib.train_expert("walker-stand", str(tmp_path), 20_000, seed=0, config=config)
    assert summary["env_steps"] == 20_000 and summary["updates"] == 18_000
    assert summary["eval_return"] > 350, summary["eval_curve"]


def test_periodic_pitch_input_is_the_same_after_a_full_turn():
    keys, dim, index = sac_lib._obs_spec("cheetah-flip", periodic=True)
    assert keys == ("position", "velocity") and dim == 18 and index == 1  # position = [rootz, rooty, ...]
    assert sac_lib._obs_spec("cheetah-flip") == (keys, 17, None)
    assert sac_lib._obs_spec("walker-stand", periodic=True)[2] is None  # walker observes orientations
    vec = np.random.default_rng(0).normal(size=(4, 17)).astype(np.float32)
    turned = vec.copy()
    turned[:, 1] += 2 * np.pi
    out = sac_lib.periodic_pitch(vec, 1)
    assert out.shape == (4, 18)
    np.testing.assert_allclose(out, sac_lib.periodic_pitch(turned, 1), atol=1e-5)
    np.testing.assert_array_equal(out[:, [0, *range(3, 18)]], vec[:, [0, *range(2, 17)]])
    np.testing.assert_allclose(out[:, 1:3], np.stack([np.sin(vec[:, 1]), np.cos(vec[:, 1])], -1), rtol=1e-6)
    with pytest.raises(ConfigError, match="start_pitch"):
        sac_lib.default_config("cheetah-flip", start_pitch=4.0)


@pytest.mark.slow
def test_pitched_starts_train_and_the_restored_policy_sees_the_periodic_pitch(tmp_path):
    config = tiny_config(start_pitch=np.pi, periodic_pitch=True, seed_steps=250, save_every=500)
    summary = sac_lib.train_expert("cheetah-flip", str(tmp_path / "run"), 500, seed=1, config=config,
                                   episode_dir=str(tmp_path / "episodes"))
    assert summary["env_steps"] == 500 and summary["updates"] == 250
    first = load_episode(tmp_path / "episodes" / "0.npz")
    pitch = sac_lib._start_pitch(config, 1, 0)
    assert abs(pitch) > 2 and abs(first["position"][0][1] - pitch) < 1.5  # the drawn start (upright: 0), settled
    policy = sac_lib.load_expert_policy(str(tmp_path / "run"))
    assert policy.pitch_index == 1 and policy.sac.obs_dim == 18
    # Evaluation starts upright (the suite's starts) and scores what the trainer recorded.
    result = evaluate("cheetah-flip", "mdp", policy, episodes=2, num_envs=2, seed=sac_lib.EVAL_SEED)
    np.testing.assert_allclose(result.mean, summary["eval_return"], rtol=1e-4)
    with pytest.raises(AimeError, match="other networks"):
        sac_lib.train_expert("cheetah-flip", str(tmp_path / "run"), 1000, seed=1, config=tiny_config(periodic_pitch=False))


def test_shaped_reward_fills_the_replay_and_the_task_reward_is_reported(tmp_path):
    config = tiny_config(shaped_reward=True, seed_steps=500, save_every=500)
    summary = sac_lib.train_expert("cheetah-flip", str(tmp_path / "run"), 500, seed=2, config=config,
                                   episode_dir=str(tmp_path / "episodes"))
    stored = driver.read_replay(str(tmp_path / "run" / "checkpoints"))["reward"]
    episode = load_episode(tmp_path / "episodes" / "0.npz")
    task_reward = episode["reward"][1:]
    assert stored.min() < 0.0 and task_reward.min() >= 0.0
    np.testing.assert_allclose(np.maximum(stored, 0.0), task_reward, atol=1e-6)
    np.testing.assert_allclose(summary["train_returns"][0], task_reward.sum(), rtol=1e-5)
    with pytest.raises(ConfigError, match="no shaped reward.*cheetah-flip"):
        sac_lib.train_expert("cheetah-run", str(tmp_path / "other"), 500, config=config)


def test_demonstrations_fill_their_share_of_every_batch(tmp_path):
    collect("cheetah-flip", "mdp", str(tmp_path / "demos"), 2, seed=5, progress=False)
    config = tiny_config(demo_dir=str(tmp_path / "demos"), demo_fraction=0.25, shaped_reward=True)
    keys, _, _ = sac_lib._obs_spec("cheetah-flip")
    demos = sac_lib.load_demos(config, "cheetah-flip", keys, None)
    assert demos.size == 1000
    ep = load_episode(tmp_path / "demos" / "1.npz")
    vec = sac_lib.observation_vector(ep, keys)
    np.testing.assert_array_equal(demos.data["obs"][500:], vec[:-1])
    np.testing.assert_array_equal(demos.data["next_obs"][500:], vec[1:])
    np.testing.assert_array_equal(demos.data["action"][500:], ep["pre_action"][1:])
    # Rewarded as training is (shaped here): the task's reward is the shaped one's positive part.
    np.testing.assert_allclose(np.maximum(demos.data["reward"][500:], 0.0), ep["reward"][1:], atol=1e-6)
    assert demos.data["reward"].min() < 0.0
    online = replay.ReplayBuffer(100, 17)
    online.add(obs=np.full((100, 17), 7.0, np.float32), action=np.zeros((100, 6), np.float32),
               reward=np.zeros(100, np.float32), discount=np.ones(100, np.float32),
               next_obs=np.full((100, 17), 7.0, np.float32))
    batch = sac_lib._sample(online, demos, config, seed=0, updates=0)
    assert batch["obs"].shape == (config.updates_per_call, config.batch_size, 17)
    from_demos = batch["obs"][..., 0] != 7.0
    assert from_demos[:, :12].sum() == 0 and from_demos[:, 12:].all()  # 16 x 0.25 = 4 of 16
    np.testing.assert_array_equal(sac_lib._sample(online, demos, config, 0, 0)["obs"], batch["obs"])
    # A trainer run with them; a folder of another domain's episodes is refused by name.
    summary = sac_lib.train_expert("cheetah-flip", str(tmp_path / "run"), 500, seed=0,
                                   config=tiny_config(demo_dir=str(tmp_path / "demos"), seed_steps=250))
    assert summary["updates"] == 250 and np.isfinite(summary["eval_return"])
    collect("walker-stand", "mdp", str(tmp_path / "walker"), 1, progress=False)
    with pytest.raises(ConfigError, match="not a cheetah-flip episode"):
        sac_lib.load_demos(tiny_config(demo_dir=str(tmp_path / "walker")), "cheetah-flip", keys, None)
    with pytest.raises(ConfigError, match="demo_fraction"):
        tiny_config(demo_dir="x", demo_fraction=1.0)
