"""Bad input of every kind ends in one line that names the value or the file, and leaves the disk
as it was (or falls back to what is intact and says so).

One table per way of failing, each row a case of issue 24's classes: 1 damaged checkpoints,
2 world models that do not fit, 3 bad values in episodes, 4 impossible flag values, 5 the file
system, 6 leftovers of failed or killed runs, 7 config errors. A new command-line tool joins by
adding rows to `CLI_CASES` (run as a subprocess) or `REFUSALS` (called in-process).
"""
from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aime_jax import parallel
from aime_jax.agents import phase1
from aime_jax.agents.loop import LoopConfig, train_loop
from aime_jax.checkpoint import CheckpointError, Checkpointer
from aime_jax.data import EpisodeStore, save_episode
from aime_jax.errors import AimeError

from support import run_cli, tiny_config

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# Helpers: what is on disk, and the one line a failure gives


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (hidden ones too) with a digest of its contents."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def refusal(call: Callable[[], Any]) -> str:
    """The message of the AimeError that `call` must end in (what the entry points print), checked
    to be one line."""
    with pytest.raises(AimeError) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def stderr_lines(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]


def copy_episodes(src: str, dst: Path, edit: Callable[[int, dict], None] | None = None) -> Path:
    """The episodes of `src` in `dst`, episode i passed through `edit(i, episode)` first."""
    for i in range(3):
        with np.load(os.path.join(src, f"{i}.npz")) as z:
            episode = {k: z[k] for k in z.files}
        if edit is not None:
            edit(i, episode)
        save_episode(dst / f"{i}.npz", episode)
    return dst


# ------------------------------------------------------------------------------------------------
# Class 1: a damaged newest checkpoint


def small_state(value: float) -> dict:
    w = jnp.full((4, 3), value, jnp.float32)
    # Optimiser state: tuples of named tuples, which a restore cannot rebuild without the metadata.
    return {"w": w, "opt": optax.adam(1e-3).init(w), "step": jnp.asarray(int(value), jnp.int32),
            "rng": jax.random.PRNGKey(int(value))}


def two_checkpoints(directory: Path) -> None:
    with Checkpointer(directory, save_interval_steps=1) as ckpt:
        for step in (1, 2):
            ckpt.save(step, small_state(step), {"step": step})


def _truncate_arrays(step_dir: Path) -> None:
    for path in glob.glob(str(step_dir / "state" / "d" / "*")):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


DAMAGES = {
    "truncated array file": _truncate_arrays,
    "missing OCDBT manifest": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "missing array metadata": lambda step_dir: (step_dir / "state" / "_METADATA").unlink(),
    "missing JSON metadata": lambda step_dir: (step_dir / "meta" / "metadata").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_intact_one_used(tmp_path, capfd, damage):
    two_checkpoints(tmp_path)
    DAMAGES[damage](tmp_path / "2")
    damaged = snapshot(tmp_path / "2")
    capfd.readouterr()
    with Checkpointer(tmp_path) as ckpt:
        state, meta = ckpt.restore(jax.eval_shape(lambda: small_state(0)))
        assert ckpt.latest_step() == 1
    assert meta == {"step": 1} and float(state["w"][0, 0]) == 1.0
    [line] = stderr_lines(capfd)
    assert line.startswith(f"warning: checkpoint step 2 in {tmp_path} is damaged") and "using step 1" in line
    # Nothing deleted: the damaged step is kept, byte for byte, where Orbax no longer lists it.
    assert snapshot(tmp_path / "2.damaged") == damaged and not (tmp_path / "2").exists()


def test_a_damaged_checkpoint_in_a_read_only_folder_is_passed_over_in_place(tmp_path, capfd):
    two_checkpoints(tmp_path)
    _truncate_arrays(tmp_path / "2")
    before = snapshot(tmp_path)
    capfd.readouterr()
    with Checkpointer(tmp_path, read_only=True) as ckpt:
        state, meta = ckpt.restore(jax.eval_shape(lambda: small_state(0)))
    assert meta == {"step": 1}
    [line] = stderr_lines(capfd)
    assert "checkpoint step 2" in line and "damaged" in line and "left as it is" in line
    assert snapshot(tmp_path) == before


def test_no_intact_checkpoint_is_one_line_naming_every_damaged_step(tmp_path):
    two_checkpoints(tmp_path)
    for step in ("1", "2"):
        _truncate_arrays(tmp_path / step)
    before = snapshot(tmp_path)
    with Checkpointer(tmp_path) as ckpt:
        line = refusal(lambda: ckpt.restore(jax.eval_shape(lambda: small_state(0))))
    assert "no intact checkpoint" in line and "step 2:" in line and "step 1:" in line
    assert snapshot(tmp_path) == before


def test_a_target_of_other_shapes_is_not_mistaken_for_damage(tmp_path):
    two_checkpoints(tmp_path)
    before = snapshot(tmp_path)
    other = jax.eval_shape(lambda: small_state(0))
    other["w"] = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    with Checkpointer(tmp_path) as ckpt, pytest.raises(Exception) as caught:
        ckpt.restore(other)
    assert not isinstance(caught.value, CheckpointError)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# Classes 1 and 2: a world model to reuse (conftest's tiny_world_model, checkpoints at 3 and 6)


@pytest.mark.slow
def test_a_damaged_world_model_checkpoint_falls_back_and_the_input_stays_untouched(
    tiny_world_model, tmp_path, capfd
):
    run = tmp_path / "wm"
    shutil.copytree(tiny_world_model, run)
    _truncate_arrays(run / "phase1" / "checkpoints" / "6")
    before = snapshot(run)
    capfd.readouterr()
    _, params, _ = phase1.load_world_model(str(run), config=tiny_config())
    [line] = stderr_lines(capfd)
    assert "checkpoint step 6" in line and "damaged" in line and "using step 3" in line
    assert snapshot(run) == before
    with Checkpointer(tiny_world_model / "phase1" / "checkpoints") as ckpt:
        intact = ckpt.restore_subtree({"params": jax.eval_shape(lambda: params)}, step=3)["params"]
    for a, b in zip(jax.tree.leaves(jax.device_get(params)), jax.tree.leaves(jax.device_get(intact))):
        np.testing.assert_array_equal(a, b)


def _lpomdp():
    return tiny_config("lpomdp")


def _cheetah():
    c = tiny_config()
    c.domain, c.env = "cheetah", "cheetah-run"
    return c


def _wider():
    c = tiny_config()
    c.world_model.deter_size = 64
    return c


def _faster():
    c = tiny_config()
    c.world_model.scan_unroll = 4  # computes the same model another way: allowed
    return c


@pytest.mark.parametrize("make_config,expected", [
    (_lpomdp, r"modality 'mdp' \(this run: 'lpomdp'\)"),
    (_cheetah, r"domain 'walker' \(this run: 'cheetah'\)"),
    (_wider, r"world_model.deter_size 32 \(this run: 64\)"),
], ids=["modality", "domain", "size"])
def test_a_world_model_that_does_not_fit_the_run_is_refused(make_config, expected):
    saved = {"config": tiny_config().to_dict()}  # as a phase-1 run saves it
    line = refusal(lambda: phase1.check_world_model_fits(make_config(), saved, "runs/wm"))
    assert line.startswith("the world model in runs/wm does not fit this run: ") and re.search(expected, line), line


def test_a_world_model_computed_another_way_fits():
    phase1.check_world_model_fits(_faster(), {"config": tiny_config().to_dict()}, "runs/wm")


@pytest.mark.slow
def test_phase2_refuses_a_world_model_of_another_modality_before_training(tiny_world_model, walker_random_dir, tmp_path):
    from aime_jax.agents import phase2

    before = snapshot(tiny_world_model)
    line = refusal(lambda: phase2.train_aime(_lpomdp(), str(tmp_path / "phase2"), str(tiny_world_model),
                                           walker_random_dir))
    assert f"the world model in {tiny_world_model} does not fit this run: modality 'mdp'" in line
    assert snapshot(tiny_world_model) == before and not (tmp_path / "phase2").exists()


def test_a_plain_folder_as_world_model_is_refused_without_writing_into_it(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run")
    before = snapshot(folder)
    line = refusal(lambda: phase1.load_world_model(str(folder), config=tiny_config()))
    assert str(folder) in line and "holds no phase-1 checkpoints" in line
    assert snapshot(folder) == before


# ------------------------------------------------------------------------------------------------
# Class 3: bad values inside episodes, refused where they enter (naming file, key and step)


def _set(key: str, step: int, value: float):
    def edit(i: int, episode: dict) -> None:
        if i == 1:
            episode[key] = episode[key].copy()
            episode[key][step] = value
    return edit


def _empty(i: int, episode: dict) -> None:
    if i == 2:
        for key in episode:
            episode[key] = episode[key][:0]


def _narrow_actions(i: int, episode: dict) -> None:
    episode["pre_action"] = episode["pre_action"][:, :5]


@pytest.mark.parametrize("edit,expected", [
    (_set("velocity", 17, np.nan), r"1\.npz: 'velocity' is nan at step 17"),
    (_set("orientations", 3, np.inf), r"1\.npz: 'orientations' is inf at step 3"),
    (_set("reward", 40, np.nan), r"1\.npz: 'reward' is nan at step 40"),
    (_empty, r"2\.npz: the episode has no steps"),
    (_narrow_actions, r"0\.npz: 'pre_action' has shape \(\d+, 5\), not \(T, 6\)"),
], ids=["nan-observation", "inf-observation", "nan-reward", "empty-episode", "pre-action-width"])
def test_bad_values_in_episodes_are_refused_where_they_enter(walker_random_dir, tmp_path, edit, expected):
    folder = copy_episodes(walker_random_dir, tmp_path / "episodes", edit)
    before = snapshot(folder)
    line = refusal(lambda: EpisodeStore(str(folder), progress=False))
    assert re.search(expected, line), line
    assert snapshot(folder) == before  # no pack left behind either


def test_a_pack_built_before_values_were_checked_is_checked_when_opened(walker_random_dir, tmp_path):
    folder = copy_episodes(walker_random_dir, tmp_path / "episodes")
    store = EpisodeStore(str(folder), progress=False)
    # What an older version packed from a file holding a NaN: the values, and no "checked" mark.
    manifest_path = folder / ".aime_pack" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["checked"]
    manifest_path.write_text(json.dumps(manifest))
    velocity = np.load(folder / ".aime_pack" / "velocity.npy", mmap_mode="r+")
    velocity[int(store.offsets[2]) + 5, 0] = np.nan
    velocity.flush()
    del velocity, store
    line = refusal(lambda: EpisodeStore(str(folder), progress=False))
    assert f"{folder / '2.npz'}: 'velocity' is nan at step 5" in line


def test_results_with_a_nan_are_refused_and_not_written(tmp_path):
    from aime_jax.evaluate import write_results

    path = tmp_path / "results.json"
    line = refusal(lambda: write_results(str(path), {"return_mean": 3.0, "expert_return": float("nan"),
                                                     "random": {"normalised": float("inf")}}))
    assert "expert_return" in line and "random.normalised" in line
    assert snapshot(tmp_path) == {}


# ------------------------------------------------------------------------------------------------
# Classes 4, 5, 6, 7 in-process: one row per refusal; `prepare(tmp_path)` returns the call and the
# folder that must not change.


def _render_size_zero(tmp_path: Path, walker_random_dir: str):
    from aime_jax.data.render import render_folder

    folder = copy_episodes(walker_random_dir, tmp_path / "episodes")
    return lambda: render_folder(str(folder), size=0, progress=False), folder


def _workdir_is_a_file(tmp_path: Path, walker_random_dir: str):
    from aime_jax import stages

    workdir = tmp_path / "run"
    workdir.write_text("a file, not a folder")
    return lambda: stages.write_config(tiny_config(), str(workdir)), tmp_path


def _workdir_read_only(tmp_path: Path, walker_random_dir: str):
    from aime_jax import stages

    (tmp_path / "run").mkdir()

    def call():
        # Root may write anywhere; the probe write is made to fail as a read-only disk fails.
        with pytest.MonkeyPatch.context() as m:
            m.setattr("tempfile.mkstemp", _fail_with(errno.EROFS))
            stages.write_config(tiny_config(), str(tmp_path / "run"))

    return call, tmp_path


def _sac_setting_not_a_list(tmp_path: Path, walker_random_dir: str):
    from aime_jax.experts.sac import default_config

    return lambda: default_config("walker-stand", hidden_sizes="abc"), tmp_path


def _sac_setting_not_a_number(tmp_path: Path, walker_random_dir: str):
    from aime_jax.experts.sac import default_config

    return lambda: default_config("walker-stand", batch_size="many"), tmp_path


def _shared_world_model_of_another_seed(tmp_path: Path, walker_random_dir: str):
    from aime_jax import stages

    folder = tmp_path / "world_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(stages.phase1_identity(tiny_config())))
    (folder / stages.WORLD_MODEL_STATUS).write_text(json.dumps({"complete": True, "phase1_steps": 6}))
    config = tiny_config()
    config.seed = 1
    config.world_model_dir = str(folder)
    return lambda: stages.shared_world_model(config, str(folder), None), tmp_path


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


REFUSALS = [
    # (class, name, prepare, what the line must contain)
    (4, "render-size-0", _render_size_zero, "size >= 1, camera >= 0 and workers >= 1; got size=0"),
    (5, "workdir-is-a-file", _workdir_is_a_file, "--workdir {tmp}/run is a file, not a folder"),
    (5, "workdir-read-only", _workdir_read_only, "--workdir {tmp}/run cannot be written (Read-only file system)"),
    (2, "shared-world-model-other-seed", _shared_world_model_of_another_seed,
     "world_model_dir={tmp}/world_model holds a world model with other phase-1 settings (seed 0 (this run: 1)); "
     "name the values that differ in config.world_model_dir (e.g. {{seed}})"),
    (7, "sac-hidden-sizes-abc", _sac_setting_not_a_list, "SAC setting hidden_sizes='abc': give a list of layer widths"),
    (7, "sac-batch-size-word", _sac_setting_not_a_number, "SAC setting batch_size='many': give a whole number"),
]


@pytest.mark.parametrize("klass,name,prepare,expected", REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusals_are_one_line_and_change_nothing(walker_random_dir, tmp_path, klass, name, prepare, expected):
    call, watched = prepare(tmp_path, walker_random_dir)
    before = snapshot(watched)
    line = refusal(call)
    assert expected.format(tmp=tmp_path) in line, line
    assert snapshot(watched) == before


# ------------------------------------------------------------------------------------------------
# Classes 5 and 6 in a training loop: a toy learner with the real loop, checkpoints and logger


@flax.struct.dataclass
class ToyState:
    step: jax.Array
    w: jax.Array


def toy_run(workdir: Path, steps: int = 8, poison_at: int | None = None) -> ToyState:
    """Trains w += mean(batch) for `steps` steps, saving every 2; the metric turns NaN at `poison_at`."""
    mesh = parallel.make_mesh(1)

    @jax.jit
    def train_step(state, batch):
        loss = jnp.mean(batch["x"])
        if poison_at is not None:
            loss = jnp.where(state.step + 1 >= poison_at, jnp.nan, loss)
        return state.replace(step=state.step + 1, w=state.w + loss), {"loss": loss}

    def batches(start):
        step = start
        while True:
            yield {"x": np.full((2, 3), step, np.float32)}
            step += 1

    return train_loop(
        name="toy", workdir=str(workdir), state=ToyState(jnp.zeros((), jnp.int32), jnp.zeros(3)),
        train_step=train_step, batches=batches, mesh=mesh, loop=LoopConfig(steps, 2, 1000, 2, 5),
        meta={"data_fingerprint": "toy"},
    )


def test_a_failed_save_stops_training_at_once_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capfd):
    from orbax.checkpoint._src.path import async_path

    rename = async_path.rename

    async def disk_full_at_step_4(src, dst):
        if dst.name == "4":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return await rename(src, dst)

    monkeypatch.setattr(async_path, "rename", disk_full_at_step_4)
    capfd.readouterr()
    line = refusal(lambda: toy_run(tmp_path, steps=20))
    assert line.startswith(f"saving checkpoint step 4 in {tmp_path / 'checkpoints'} failed (No space left on device)")
    assert "the last good checkpoint, step 2, is intact" in line
    assert "Traceback" not in capfd.readouterr().err
    # Stopped as soon as the save had failed (at the latest when the next one began), not at the end.
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2]
    logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert max(logged) <= 6
    # Space freed: the same command resumes from step 2 and ends where an uninterrupted run does.
    monkeypatch.setattr(async_path, "rename", rename)
    resumed = toy_run(tmp_path, steps=20)
    uninterrupted = toy_run(tmp_path / "fresh", steps=20)
    np.testing.assert_array_equal(np.asarray(resumed.w), np.asarray(uninterrupted.w))


def test_a_run_whose_newest_checkpoint_is_damaged_resumes_bit_exact_from_the_intact_one(tmp_path, capfd):
    toy_run(tmp_path, steps=8)
    _truncate_arrays(tmp_path / "checkpoints" / "8")
    capfd.readouterr()
    resumed = toy_run(tmp_path, steps=8)
    [line] = [l for l in stderr_lines(capfd) if l.startswith("warning:")]
    assert "checkpoint step 8" in line and "moved it to 8.damaged" in line and "using step 6" in line
    np.testing.assert_array_equal(np.asarray(resumed.w), np.asarray(toy_run(tmp_path / "fresh", steps=8).w))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4", "6", "8", "8.damaged"]


def test_a_run_failing_before_its_first_checkpoint_leaves_no_checkpoints_folder(tmp_path, capfd):
    capfd.readouterr()
    line = refusal(lambda: toy_run(tmp_path, poison_at=1))
    assert "toy stopped: non-finite ['loss'] at step 2" in line and "it had no checkpoint yet" in line
    assert not (tmp_path / "checkpoints").exists()
    assert "Traceback" not in capfd.readouterr().err


def test_stale_temporaries_of_a_killed_collection_are_removed_by_the_next_run(walker_random_dir, tmp_path):
    from aime_jax.data.collect import collect

    folder = tmp_path / "episodes"
    shutil.copytree(walker_random_dir, folder)
    stale = folder / ".3.npz.k2x9_q7a.tmp"  # what atomic_open leaves when its writer is killed
    stale.write_bytes(b"half an episode")
    theirs = [folder / ".notes.tmp", folder / "draft.npz.tmp"]  # not ours: left alone
    for path in theirs:
        path.write_text("user's")
    collect("walker-walk", "mdp", str(folder), episodes=3, seed=0, progress=False)
    assert not stale.exists() and all(p.exists() for p in theirs)


# ------------------------------------------------------------------------------------------------
# Every command-line tool: impossible flag values and bad settings, refused before touching data.
# Rows: (class, tool and arguments, what the one line must contain). Files named {data} are a
# copy of three episodes that must not change.

CLI_CASES = [
    (4, ["experiments/render.py", "--data={data}", "--size=0"], "flag --size=0"),
    (4, ["experiments/render.py", "--data={data}", "--workers=-1"], "flag --workers=-1"),
    (4, ["experiments/collect.py", "--out={data}", "--episodes=0"], "flag --episodes=0"),
    (4, ["experiments/collect.py", "--out={data}", "--seed=-3"], "flag --seed=-3"),
    (4, ["experiments/datasets.py", "--name=walker-random", "--root={data}", "--scale=0"], "--scale must be > 0"),
    (7, ["experiments/plan.py", "--out={data}", "--config=configs/planner.py:cheetah-flip",
         "--config.mppi.temperature=0"], "noise and temperature must be > 0"),
    (7, ["experiments/train_expert.py", "--workdir={data}", "--config=configs/expert.py:walker-stand",
         "--config.steps=0"], "config.steps must be >= 1"),
    (7, ["experiments/train_expert.py", "--workdir={data}", "--config=configs/expert.py:walker-stand",
         "--config.sac.hidden_sizes=abc"], "SAC setting hidden_sizes=('abc',)"),
    # The tools with a --config file: none given, or one that does not exist.
    (7, ["experiments/plan.py", "--out={data}"], "--config is required, e.g. --config=configs/planner.py:cheetah-flip"),
    (7, ["experiments/train_expert.py", "--workdir={data}", "--config=configs/nosuch.py:walker-stand"],
     "--config could not be loaded: [Errno 2] No such file or directory: 'configs/nosuch.py'"),
    (7, ["experiments/main.py", "--workdir={data}"], "--config is required, e.g. --config=configs/walker_mdp.py:quick"),
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:nosuchvariant", "--workdir={data}"],
     "unknown config argument 'nosuchvariant'"),
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}/run",
         "--config.data.seed=-1"], "config.data.seed must be a whole number >= 0, got -1"),
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}/run",
         "--config.world_model_dir={data}/world_model_{{sed}}"],
     "names a config value that does not exist ('sed'; did you mean 'seed'?)"),
    # Many runs as one program (config.runs, issue 23).
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}",
         "--config.runs.num_demos=1,x"], "config.runs.num_demos='1,x'; give whole numbers >= 1"),
    (4, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}", "--config.runs.seeds=0,1",
         "--config.runs.data_devices=3"], "config.runs.data_devices=3 does not divide the 1 devices"),
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}", "--config.algo=bc",
         "--config.runs.seeds=0,1"], "config.runs trains many AIME runs as one program, not bc"),
    (7, ["experiments/main.py", "--config=configs/walker_mdp.py:quick", "--workdir={data}/run", "--config.runs.seeds=0,1",
         "--config.world_model_dir={data}/world_model"], "whose phase-1 settings differ (seed)"),
]


@pytest.mark.parametrize("klass,argv,expected", CLI_CASES, ids=[" ".join(c[1][:1] + c[1][-1:]) for c in CLI_CASES])
def test_command_line_refusals_are_one_line(walker_random_dir, tmp_path, klass, argv, expected):
    data = copy_episodes(walker_random_dir, tmp_path / "data")
    before = snapshot(data)
    out = run_cli(*(a.format(data=data) for a in argv))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert snapshot(data) == before
