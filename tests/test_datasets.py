"""The dataset builder, through real simulation and real (tiny) agent training: files, keys,
counts and cards; the mix keeps every source episode exactly once; a build killed at several
points and rerun gives the files of an uninterrupted one; the pipeline's datasets stage; the CLI."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from aime_jax import config as config_lib
from aime_jax import results, stages
from aime_jax.data import EpisodeStore, list_episodes, load_episode
from aime_jax.errors import AimeError, ConfigError, DatasetError
from aime_jax.experts import build as build_lib

from support import program, program_env, run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALKER_KEYS = {"orientations", "height", "velocity", "pre_action", "reward", "is_first", "is_last", "is_terminal",
               "physics_state"}
# Scale 0.003: 3 episodes per dataset (1 demonstration); expert runs of 1500 (stand) and 2000
# (walk) steps, the exploration run 1500 steps, all with tiny networks, 500 seed steps and one
# update per 4 steps.
SCALE, EXPERT_SCALE = 0.003, 0.02
EXPERT = dict(hidden_sizes=(32, 32), batch_size=16, seed_steps=500, utd=0.25, eval_episodes=1, eval_every=1000,
              save_every=500, log_every=500)
EXPLORE = dict(model_hidden_sizes=(32, 32), sac=dict(hidden_sizes=(32, 32), batch_size=16, seed_steps=500, utd=0.25,
                                                     save_every=1000, log_every=500))
SOURCES = ("walker-random", "walker-explore-buffer", "walker-stand-buffer", "walker-walk-buffer")


def tiny_build(name, root, modality="mdp", **kw):
    settings = dict(scale=SCALE, expert_scale=EXPERT_SCALE, expert_config=EXPERT, explore_config=EXPLORE, progress=False)
    return build_lib.build(name, modality, str(root), **{**settings, **kw})


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def episode_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """walker-mix (with its four sources) and walker-stand-expert, built without interruption."""
    root = tmp_path_factory.mktemp("datasets")
    tiny_build("walker-mix", root)
    tiny_build("walker-stand-expert", root)
    return root


@pytest.mark.slow
def test_sources_have_the_expected_files_keys_counts_and_cards(root):
    for name in SOURCES:
        folder = root / name
        files = list_episodes(folder)
        assert [os.path.basename(f) for f in files] == ["0.npz", "1.npz", "2.npz"], name
        assert sorted(n for n in os.listdir(folder) if not n.endswith(".npz")) == ["card.json", "meta.json"]
        returns = []
        for path in files:
            ep = load_episode(path)
            assert set(ep) == WALKER_KEYS, name
            assert ep["physics_state"].shape == (501, 18) and ep["pre_action"].shape == (501, 6)
            assert ep["is_first"][0] and ep["is_last"][-1] and not ep["pre_action"][0].any()
            returns.append(float(ep["reward"].sum()))
        card = build_lib.read_card(str(folder))
        assert card["name"] == name and card["episodes"] == 3 and card["steps"] == 1500 and card["frames"] == 1503
        assert card["seed"] == 0 and card["generator"]["kind"] == build_lib.parse_name(name).kind
        np.testing.assert_allclose([card["return_mean"], card["return_std"], card["return_min"], card["return_max"]],
                                   [np.mean(returns), np.std(returns), np.min(returns), np.max(returns)], rtol=1e-5)
        assert card["size_bytes"] == sum(os.path.getsize(f) for f in files) and card["image_size"] is None
    # The task buffers are the first episodes of their expert's training run.
    for task in ("walker-stand", "walker-walk"):
        card = build_lib.read_card(str(root / f"{task}-buffer"))
        summary = json.load(open(root / "experts" / task / "summary.json"))
        np.testing.assert_allclose([card["return_min"], card["return_max"]],
                                   [min(summary["train_returns"][:3]), max(summary["train_returns"][:3])], rtol=1e-5)
        assert card["expert"]["env_steps"] == {"walker-stand": 1500, "walker-walk": 2000}[task]
    # The exploration run: intrinsic reward (ensemble disagreement) once the ensemble trains.
    summary = json.load(open(root / "experts" / "walker-explore" / "summary.json"))
    assert summary["episodes"] == 3 and summary["updates"] == 250
    assert summary["intrinsic_returns"][0] == 0.0 and min(summary["intrinsic_returns"][1:]) > 0


@pytest.mark.slow
def test_mix_keeps_every_source_episode_exactly_once_in_order(root):
    card = build_lib.read_card(str(root / "walker-mix"))
    assert card["episodes"] == 12 and [s["name"] for s in card["sources"]] == list(SOURCES)
    assert [(s["first"], s["episodes"]) for s in card["sources"]] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    mixed = [digest(f) for f in list_episodes(root / "walker-mix")]
    sources = [digest(f) for name in SOURCES for f in list_episodes(root / name)]
    assert mixed == sources and len(set(mixed)) == 12
    # The mix loads as one dataset of consistent episodes.
    assert EpisodeStore(str(root / "walker-mix"), progress=False).num_episodes == 12


@pytest.mark.slow
def test_expert_demonstrations_and_their_card(root):
    folder = root / "walker-stand-expert"
    card = build_lib.read_card(str(folder))
    assert card["episodes"] == 1 and card["generator"]["expert_steps"] == 1200
    ep = load_episode(folder / "0.npz")
    assert set(ep) == WALKER_KEYS
    assert card["expert_return"] == pytest.approx(float(ep["reward"].sum()), rel=1e-5)
    # The snapshot of the policy at its training length acted: its mode actions are in the file.
    from aime_jax.experts.sac import load_expert_policy

    policy = load_expert_policy(card["expert"]["policy"])
    assert card["expert"]["policy"].endswith(os.path.join("walker-stand", "policy-1500"))
    # The snapshot is the run's best-evaluated checkpoint, recorded in the card.
    curve = json.load(open(os.path.join(card["expert"]["policy"], "summary.json")))["eval_curve"]
    top = max(curve, key=lambda e: e["return"])
    expert = card["expert"]
    assert (expert["policy_env_steps"], expert["policy_eval_return"]) == (top["env_steps"], top["return"])
    assert policy.name.endswith(f"@{top['env_steps']}")
    proprio = {k: ep[k][10] for k in ("orientations", "height", "velocity")}
    np.testing.assert_allclose(ep["pre_action"][11], policy({}, proprio, None), atol=1e-6)
    # The evaluation normalises by the card's expert return.
    config = config_lib.make_config("walker", "mdp", "quick")
    config.env, config.data.demos_dir = "walker-stand", str(folder)
    assert results.expert_returns(config)["expert_return"] == card["expert_return"]


def test_expert_benchmark_reads_the_dataset_card(root, tmp_path):
    out = tmp_path / "experts.json"
    proc = run_cli("benchmarks/experts.py", "--datasets", str(root / "walker-stand-expert"), f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.load(open(out))["datasets"][0]
    card = build_lib.read_card(str(root / "walker-stand-expert"))
    assert row["expert_return"] == card["expert_return"]
    assert row["policy_env_steps"] == card["expert"]["policy_env_steps"]
    assert row["target_met"] == (card["expert_return"] >= 0.9 * row["paper_expert_return"])
    proc = run_cli("benchmarks/experts.py", "--datasets", str(root / "walker-random"))
    assert proc.returncode != 0 and "takes <task>-expert ones" in proc.stderr and "Traceback" not in proc.stderr


def test_complete_datasets_are_skipped_extended_or_refused(root, tmp_path):
    before = {f: os.stat(f).st_mtime_ns for f in list_episodes(root / "walker-mix")}
    tiny_build("walker-mix", root)
    assert {f: os.stat(f).st_mtime_ns for f in list_episodes(root / "walker-mix")} == before
    with pytest.raises(DatasetError, match="other settings"):
        build_lib.build("walker-random", "mdp", str(root), scale=SCALE, seed=1, progress=False)
    with pytest.raises(DatasetError, match="other settings"):
        tiny_build("walker-stand-expert", root, episodes=1, expert_config={**EXPERT, "batch_size": 8})
    with pytest.raises(DatasetError, match="unknown dataset name 'walker-dance'"):
        tiny_build("walker-dance", root)
    with pytest.raises(AimeError, match="unknown modality"):
        tiny_build("walker-random", root, modality="pixels")
    with pytest.raises(ConfigError):
        tiny_build("walker-mix", root, episodes=4)
    # More episodes extend a complete dataset; the first ones stay as they were.
    shutil.copytree(root / "walker-random", tmp_path / "walker-random")
    first = digest(tmp_path / "walker-random" / "0.npz")
    folder = build_lib.build("walker-random", "mdp", str(tmp_path), scale=SCALE, episodes=4, progress=False)
    assert len(list_episodes(folder)) == 4 and build_lib.read_card(folder)["episodes"] == 4
    assert digest(tmp_path / "walker-random" / "0.npz") == first


def test_a_complete_dataset_is_used_without_its_lock(root, monkeypatch):
    """Nothing is written to a complete dataset, so it needs no lock (a read-only shared disk)."""
    from aime_jax import locks

    def no_lock(target, what, **kw):
        raise AssertionError(f"locked {what}")

    monkeypatch.setattr(locks, "hold", no_lock)
    assert tiny_build("walker-mix", root) == str(root / "walker-mix")
    assert tiny_build("walker-stand-expert", root, episodes=1) == str(root / "walker-stand-expert")


class Stop(Exception):
    pass


@pytest.mark.slow
def test_a_build_killed_at_any_point_and_rerun_equals_an_uninterrupted_one(root, tmp_path):
    """The mix is built again, stopped in the random collection, twice in the exploration run
    (before its first checkpoint, and after it with a trained agent), in the linking of a buffer
    and of the mix itself, then run to the end: every file equals the uninterrupted build's. The
    two SAC expert runs are copied over (their resumption is test_sac's)."""
    for task in ("walker-stand", "walker-walk"):
        shutil.copytree(root / "experts" / task, tmp_path / "experts" / task)
    stops = [("walker-random", 1), ("walker-explore", 0), ("walker-explore", 1), ("walker-stand-buffer", 0),
             ("walker-mix", 7)]
    seen = []
    for stop in stops:
        def on_episode(name, i, stop=stop):
            seen.append((name, i))
            if (name, i) == stop:
                raise Stop

        with pytest.raises(Stop):
            tiny_build("walker-mix", tmp_path, on_episode=on_episode)
        assert not os.path.exists(tmp_path / "walker-mix" / "card.json")
    assert all(stop in seen for stop in stops)
    tiny_build("walker-mix", tmp_path)
    for name in (*SOURCES, "walker-mix"):
        ours, theirs = list_episodes(tmp_path / name), list_episodes(root / name)
        assert [os.path.basename(f) for f in ours] == [os.path.basename(f) for f in theirs]
        for a, b in zip(ours, theirs):
            ea, eb = episode_arrays(a), episode_arrays(b)
            assert set(ea) == set(eb)
            for key in ea:
                np.testing.assert_array_equal(ea[key], eb[key], err_msg=f"{a} {key}")
        ca, cb = build_lib.read_card(str(tmp_path / name)), build_lib.read_card(str(root / name))
        for key in ("generator", "episodes", "steps", "return_mean", "return_std", "return_min", "return_max"):
            assert ca[key] == cb[key], (name, key)


@pytest.mark.slow
def test_visual_build_of_a_state_dataset_only_renders(root, tmp_path):
    shutil.copytree(root / "walker-stand-expert", tmp_path / "walker-stand-expert")
    state = load_episode(tmp_path / "walker-stand-expert" / "0.npz")
    # No expert run in this root: anything but rendering would have to train one.
    folder = tiny_build("walker-stand-expert", tmp_path, modality="visual")
    assert not os.path.exists(tmp_path / "experts")
    ep = load_episode(os.path.join(folder, "0.npz"))
    assert ep["image"].shape == (501, 64, 64, 3) and ep["image"].dtype == np.uint8 and ep["image"].std() > 0
    for key in state:
        np.testing.assert_array_equal(ep[key], state[key], err_msg=key)
    card = build_lib.read_card(folder)
    assert card["image_size"] == 64 and card["size_bytes"] > build_lib.read_card(str(root / "walker-stand-expert"))["size_bytes"]
    assert card["expert_return"] == build_lib.read_card(str(root / "walker-stand-expert"))["expert_return"]


@pytest.mark.slow
def test_episodes_added_to_a_rendered_folder_for_another_modality_are_rendered_too(tmp_path):
    """A visual run rendered the demonstrations; an MDP run that needs more of them extends the
    folder: the new episodes get images too, so the folder stays one the loader accepts."""
    folder = build_lib.build("walker-random", "visual", str(tmp_path), scale=SCALE, episodes=1, progress=False)
    mdp_keys = ("orientations", "height", "velocity", "pre_action")
    before = EpisodeStore(folder, progress=False).fingerprint_of(mdp_keys)
    build_lib.build("walker-random", "mdp", str(tmp_path), scale=SCALE, episodes=2, progress=False)
    store = EpisodeStore(folder, progress=False)
    assert store.num_episodes == 2 and "image" in store.keys and build_lib.read_card(folder)["image_size"] == 64
    assert store.select([0]).fingerprint_of(mdp_keys) == before


def test_concurrent_builders_of_one_dataset_build_it_once_and_both_succeed(tmp_path):
    env = program_env()
    log = tmp_path / "episodes.log"
    procs = [subprocess.Popen([sys.executable, program("dataset_builder"), str(tmp_path / "data"), str(log)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    # Every episode was written once, by one of them; the other waited and found it complete.
    written = [line.split() for line in open(log)]
    assert sorted(int(i) for _, _, i in written) == [0, 1, 2] and len({pid for pid, _, _ in written}) == 1
    assert sum("waiting for the dataset" in out for out in outs) == 1, outs
    results = [out.strip().splitlines()[-1] for out in outs]
    assert results[0] == results[1] and results[0].startswith(f"built {tmp_path / 'data' / 'walker-random'}")
    assert sorted(os.listdir(tmp_path / "data")) == ["walker-random"]  # no lock or temporary left
    assert len(list_episodes(tmp_path / "data" / "walker-random")) == 3


def test_pipeline_stage_builds_the_embodiment_data_and_the_demonstrations(tmp_path, capsys):
    config = config_lib.make_config("walker", "mdp", "quick")
    config.env = "walker-walk"
    config.data.update(root=str(tmp_path), scale=0.002, expert_scale=0.01, num_demos=2, embodiment="walker-random")
    config.stages = "datasets,phase1"
    stages.datasets(config, str(tmp_path / "run"), None)
    assert len(list_episodes(tmp_path / "walker-random")) == 2
    assert not os.path.exists(tmp_path / "walker-walk-expert")  # no later stage needs them
    demos = stages.demonstrations(config)
    assert demos == str(tmp_path / "walker-walk-expert")
    # The expert's training (its own bar and summary lines) is announced as what it is, once.
    out = capsys.readouterr().out
    assert out.count("datasets: walker-walk-expert needs the walker-walk SAC expert: training it for "
                     f"1000 agent steps (2 episodes) in {tmp_path / 'experts' / 'walker-walk'}, resuming where it stopped") == 1, out
    assert stages.demonstrations(config) == demos and "datasets:" not in capsys.readouterr().out
    card = build_lib.read_card(demos)
    # num_demos above the scaled count (1) sets the size; an 800-step expert (1000: whole episodes).
    assert card["episodes"] == 2 and card["expert"]["env_steps"] == 1000
    assert results.expert_returns(config)["expert_return"] == card["expert_return"]


def _cli(*args):
    return run_cli("experiments/datasets.py", *args)


def test_cli_builds_and_reports_bad_input_in_one_line(tmp_path):
    for args, message in (
        (["--name=walker-dance"], "error: unknown dataset name 'walker-dance'"),
        (["--name=walker-random", "--modality=pixels"], "error: unknown modality 'pixels'"),
        ([], "error: --name is required; valid names: walker-random"),
    ):
        out = _cli(f"--root={tmp_path}", *args)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    out = _cli(f"--root={tmp_path}", "--name=walker-random", "--scale=0.001")
    assert out.returncode == 0 and "done: walker-random" in out.stdout and "1 episodes" in out.stdout, out.stderr[-2000:]
    assert len(list_episodes(tmp_path / "walker-random")) == 1


def test_task_expert_settings_apply_under_the_build_overrides():
    from types import SimpleNamespace

    from aime_jax.experts import sac

    defaults = SimpleNamespace(expert_config={})
    assert sac.default_config("cheetah-run", **build_lib._expert_settings(defaults, "cheetah-run")).hidden_sizes == (256, 256)
    assert build_lib._expert_settings(defaults, "walker-walk") == {}
    custom = SimpleNamespace(expert_config={"hidden_sizes": [64, 64], "batch_size": 32})
    assert build_lib._expert_settings(custom, "cheetah-run") == {"hidden_sizes": [64, 64], "batch_size": 32}


@pytest.mark.slow
def test_flip_expert_learns_from_planner_demonstrations(tmp_path, monkeypatch):
    """The builder plans the flips' demonstrations first (a tiny planner here) and hands them to
    the SAC expert, whose checkpoint and the dataset card record them."""
    from aime_jax.experts import mppi, sac

    real = mppi.plan_episodes
    calls = []

    def tiny_planner(env, out, episodes, seed=0, config=None, progress=True):
        calls.append((env, out, episodes))
        return real(env, out, episodes, seed, mppi.default_config(samples=8, horizon=4), progress=False)

    monkeypatch.setattr(mppi, "plan_episodes", tiny_planner)
    tiny_build("cheetah-flip-expert", tmp_path, expert_scale=0.006)  # 3000 steps
    planner_dir = str(tmp_path / "experts" / "cheetah-flip-planner")
    assert set(calls) == {("cheetah-flip", planner_dir, 1)}  # 6 x 0.006 -> at least one; reruns find it done
    assert os.listdir(planner_dir) == ["0.npz"]
    meta, _ = sac._read_meta(str(tmp_path / "experts" / "cheetah-flip" / "checkpoints"))
    assert meta["config"]["demo_dir"] == planner_dir and meta["config"]["periodic_pitch"]
    generator = build_lib.read_card(str(tmp_path / "cheetah-flip-expert"))["generator"]
    assert generator["expert_demos"] == 1 and generator["expert_config"]["periodic_pitch"]


def test_the_expert_config_is_the_builders_run():
    """configs/expert.py:<task> trains what the builder trains at scale 1 (length and settings)."""
    from aime_jax.experts import config as experts_config
    from aime_jax.experts import sac

    ctx = build_lib._Build("data", 1.0, 0, 1.0, {}, {}, False, None)
    for env in ("walker-stand", "cheetah-run", "cheetah-flip"):
        config = experts_config.expert(env)
        assert config.steps == build_lib._expert_steps(ctx, env)
        assert config.sac == sac.default_config(env, **build_lib._expert_settings(ctx, env))
    assert experts_config.expert("cheetah-run").sac.hidden_sizes == (256, 256)
    with pytest.raises(ConfigError, match="unknown config argument 'walker-dance'"):
        experts_config.expert("walker-dance")
