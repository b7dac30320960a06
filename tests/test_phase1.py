"""Phase 1: the sharded step, resuming, learning on real walker data, and config errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aime_jax import config as config_lib
from aime_jax.agents import phase1
from aime_jax.data import save_episode
from aime_jax.errors import AimeError

from support import REPO, run_cli, run_program, tiny_config


def _params(run_dir, config, data_dir):
    return jax.device_get(phase1.train_world_model(config, run_dir, data_dir).params)


@pytest.mark.slow
def test_resume_ends_with_the_parameters_of_an_uninterrupted_run(walker_random_dir, tmp_path):
    full = _params(str(tmp_path / "full"), tiny_config(), walker_random_dir)
    # Interrupted after the step-3 checkpoint, then the same run continued to the end.
    _params(str(tmp_path / "resumed"), tiny_config(steps=3), walker_random_dir)
    resumed = _params(str(tmp_path / "resumed"), tiny_config(), walker_random_dir)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert sorted({l["step"] for l in lines if "train/loss" in l}) == [3, 6]
    # A finished run is complete: rerunning it trains nothing more.
    again = _params(str(tmp_path / "full"), tiny_config(), walker_random_dir)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_dataset(tiny_world_model, walker_random_dir, tmp_path):
    # A copy of a run trained on walker_random_dir: the shared one is never written.
    shutil.copytree(tiny_world_model / "phase1", tmp_path / "run")
    other = tmp_path / "other"
    os.makedirs(other)
    for name in ("0.npz", "1.npz"):
        with open(os.path.join(walker_random_dir, name), "rb") as src, open(other / name, "wb") as dst:
            dst.write(src.read())
    with pytest.raises(AimeError, match="trained on another dataset"):
        _params(str(tmp_path / "run"), tiny_config(), str(other))


@pytest.mark.slow
def test_resume_accepts_the_dataset_after_another_modality_is_added_to_it(walker_random_dir, tmp_path):
    """A visual run renders `image` into the shared folder: the MDP run on it still resumes."""
    data = tmp_path / "data"
    os.makedirs(data)
    for i in range(3):
        with np.load(os.path.join(walker_random_dir, f"{i}.npz")) as z:
            save_episode(data / f"{i}.npz", {k: z[k] for k in z.files})
    _params(str(tmp_path / "run"), tiny_config(steps=3), str(data))
    for i in range(3):
        with np.load(data / f"{i}.npz") as z:
            episode = {k: z[k] for k in z.files}
        save_episode(data / f"{i}.npz", {**episode, "image": np.zeros((len(episode["reward"]), 8, 8, 3), np.uint8)})
    state = phase1.train_world_model(tiny_config(), str(tmp_path / "run"), str(data))
    assert int(state.step) == 6


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_message(walker_random_dir, tmp_path):
    bad = tmp_path / "bad"
    for i in range(2):
        with np.load(os.path.join(walker_random_dir, f"{i}.npz")) as z:
            ep = {k: z[k] for k in z.files}
        # Finite (a NaN is refused where the episodes are loaded), but its square overflows float32.
        ep["velocity"][:] = 1e30
        save_episode(bad / f"{i}.npz", ep)
    with pytest.raises(AimeError, match=r"non-finite .* at step 3 .*it had no checkpoint yet"):
        _params(str(tmp_path / "run"), tiny_config(), str(bad))
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "3")


# tests/test_allreduce.py compares the same 1- and 4-device phase-1 steps in the quick tier.
@pytest.mark.slow
def test_sharded_step_on_4_devices_equals_single_device():
    out = run_program("sharded_phase1")
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_phase1_halves_the_validation_nelbo_on_real_walker_data(walker_random_dir, tmp_path):
    config = config_lib.resolve(config_lib.make_config("walker", "mdp", "quick"))
    config.phase1.update(steps=400, eval_every=400, save_every=400)
    phase1.train_world_model(config, str(tmp_path), walker_random_dir)
    val = [json.loads(l) for l in open(tmp_path / "metrics.jsonl") if '"val/nelbo"' in l]
    first, last = val[0], val[-1]
    assert first["step"] == 0 and last["step"] == 400
    assert np.isfinite(last["val/nelbo"])
    assert last["val/nelbo"] < 0.5 * first["val/nelbo"], (first["val/nelbo"], last["val/nelbo"])
    assert os.path.isdir(tmp_path / "checkpoints" / "400")


@pytest.mark.slow
def test_visual_phase1_writes_an_open_loop_video(tmp_path):
    from aime_jax.data.collect import collect

    data = str(tmp_path / "data")
    collect("walker-stand", "visual", data, episodes=2, seed=0, progress=False)
    config = config_lib.resolve(config_lib.make_config("walker", "visual", "quick"))
    config.data.update(window=12, batch_size=2)
    config.phase1.update(steps=4, log_every=2, eval_every=4, save_every=4, val_batches=1, video_context=4)
    phase1.train_world_model(config, str(tmp_path / "run"), data)
    videos = os.listdir(tmp_path / "run" / "videos")
    assert "open_loop_4.mp4" in videos
    import imageio.v3 as iio

    frames = iio.imread(tmp_path / "run" / "videos" / "open_loop_4.mp4", plugin="pyav")
    assert frames.shape == (12, 64, 128, 3)
    val = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl") if '"val/' in l]
    assert "val/probe_mse/velocity" in val[-1] and "val/mse/image" in val[-1]


def _main(*args):
    return run_cli("experiments/main.py", *args)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.modality=pixels", "config.modality='pixels'; choose one of mdp, lpomdp, visual"),
        ("--config.env=cheetah-run", "config.env='cheetah-run'; for walker choose one of"),
        ("--config.stages=phase1,phase9", "unknown stage(s) ['phase9']"),
        ("--config.data.batch_size=0", "config.data.batch_size must be >= 1"),
        ("--config.wandb.mode=cloud", "config.wandb.mode='cloud'"),
        ("--config.world_model.cnn_chunk=-2", "config.world_model.cnn_chunk=-2; use a number of images"),
        ("--config.world_model.scan_unroll=0", "config.world_model.scan_unroll=0; use a number of time steps"),
    ],
)
def test_bad_config_values_fail_before_compiling(tmp_path, override, message):
    out = _main("--config=configs/walker_mdp.py:quick", f"--workdir={tmp_path}", override)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "phase1")


def test_missing_dataset_fails_before_compiling(tmp_path):
    out = _main("--config=configs/walker_mdp.py:quick", f"--workdir={tmp_path}", "--config.stages=phase1",
                f"--config.data.embodiment_dir={tmp_path / 'nowhere'}")
    assert out.returncode != 0
    assert "embodiment dataset" in out.stderr and "does not exist" in out.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.data.batch_szie=3", "batch_szie"),
    ("--config.data.window=long", "window"),
])
def test_unknown_keys_and_wrong_types_are_named(tmp_path, override, message):
    out = _main("--config=configs/walker_mdp.py:quick", f"--workdir={tmp_path}", override)
    assert out.returncode != 0 and message in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_a_config_files_own_refusal_is_one_line(tmp_path):
    out = _main("--config=configs/walker_mdp.py:nosuchvariant", f"--workdir={tmp_path}")
    assert out.returncode != 0 and "unknown config argument 'nosuchvariant'" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_and_stops_in_one_line_naming_the_step(walker_random_dir, tmp_path, sig):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "experiments/main.py", "--config=configs/walker_mdp.py:quick", f"--workdir={tmp_path}",
         "--config.stages=phase1", f"--config.data.embodiment_dir={walker_random_dir}", "--config.phase1.steps=100000",
         "--config.phase1.save_every=20", "--config.data.window=16"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    checkpoints = tmp_path / "phase1" / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in err, err[-3000:]
    assert last.startswith("interrupted: phase 1 stopped at step ") and "rerun the same command to continue" in last
    stopped = int(last.split("stopped at step ")[1].split()[0])
    # The step it stopped at is saved: nothing trained is lost.
    assert f"its last checkpoint is step {stopped})" in last and (checkpoints / str(stopped)).is_dir(), last


def test_missing_config_file_is_named(tmp_path):
    out = _main("--config=configs/nope.py", f"--workdir={tmp_path}")
    assert out.returncode != 0 and "configs/nope.py" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_rerun_with_other_model_settings_is_refused_but_speed_settings_are_not(tmp_path):
    from aime_jax import stages
    from aime_jax.config import make_config
    from aime_jax.errors import AimeError

    config = make_config("walker", "mdp", "quick")
    stages.write_config(config, str(tmp_path))
    # Same model, computed another way, trained for longer: a resume.
    config.world_model.update(scan_unroll=5, cnn_chunk=-1, cnn_impl="lax")
    config.phase1.steps += 10
    stages.write_config(config, str(tmp_path))
    config.world_model.deter_size += 1
    with pytest.raises(AimeError, match=r"other settings \(world_model.deter_size\)"):
        stages.write_config(config, str(tmp_path))


def test_handoff_reads_the_parameters_alone(tmp_path):
    """Phase 2 and evaluation take only the world model's parameters out of a phase-1
    checkpoint: one saved with another optimiser (no Adam moments at all) loads, and gives
    exactly the saved parameters."""
    import optax

    from aime_jax.checkpoint import Checkpointer

    config = tiny_config()
    spec = {"orientations": (14,), "height": (1,), "velocity": (9,)}
    _, state = phase1.create_train_state(config.world_model, spec, 6, optax.sgd(0.1), 3)
    meta = {"stage": "phase1", "action_dim": 6, "obs_spec": {k: list(v) for k, v in spec.items()},
            "config": config.to_dict()}
    with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
        ckpt.save(7, state, meta, force=True)
    model, params, saved = phase1.load_world_model(str(tmp_path), config=config)
    assert saved.world_model.deter_size == config.world_model.deter_size
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
