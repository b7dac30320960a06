"""Builds the paper's datasets by name, training the agents they need on the way.

Names (`dataset_names()` lists them):
- `<domain>-random`: uniform random actions (in `<domain>`'s base task, walker-stand or
  cheetah-run, whose reward is recorded), 1000 episodes.
- `<domain>-<task>-expert`: 100 episodes of a SAC expert's mode actions, plus `expert_return`
  (their mean return, the normaliser of our scores) in the card.
- `<domain>-<task>-buffer`: the first 1000 training episodes of that task's SAC expert run.
- `<domain>-explore-buffer`: the 1000 training episodes of the exploration agent
  (`aime_jax.experts.explore`).
- `walker-mix`: walker-random + walker-explore-buffer + walker-stand-buffer + walker-walk-buffer,
  every source episode exactly once, renumbered in that order.

`scale` multiplies every episode count and agent training length (`scale=0.01` makes tiny
versions for tests; `expert_scale` sets the training lengths alone). Every dataset folder holds
episodes `<i>.npz` (all proprioception, actions, rewards, physics states, and `image` once
rendered) and `card.json`; the card is written last, so a folder with a card is complete and is
skipped. Agents are trained in `<root>/experts/<name>` (resumable; an expert's policy is
snapshotted at its training length in `policy-<steps>/`, so demonstrations come from the same
policy whatever was built before; the snapshot is the run's best-evaluated checkpoint up to there,
`best/`, not its last one, since single-seed evaluations swing from one checkpoint to the next).
Episode i of every dataset depends only on (seed, i) and the settings, and every file is written
atomically, so a build killed at any point and run again gives the same files as one that was
never interrupted. Building the visual modality of a dataset renders its stored physics states;
the state episodes are never simulated again.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import shutil
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

from aime_jax import envs, locks
from aime_jax.atomic import check_local_path, write_json
from aime_jax.data.collect import random_policy, run_episode
from aime_jax.data.episodes import list_episodes, save_episode
from aime_jax.data.render import render_folder
from aime_jax.envs.seeding import episode_seed
from aime_jax.errors import AimeError, ConfigError, DatasetError
from aime_jax.experts import config as experts_config
from aime_jax.experts import explore, mppi, sac

CARD = "card.json"
IMAGE_SIZE = 64
# Episodes per dataset kind at scale 1, as in the paper.
EPISODES = {"random": 1000, "expert": 100, "buffer": 1000, "explore": 1000}
# Per task: its SAC expert's training length at scale 1, its settings and its planner
# demonstrations (experts.config.tasks(), where the measurements behind them are).
TASKS = experts_config.tasks()
MIXES = {"walker-mix": ("walker-random", "walker-explore-buffer", "walker-stand-buffer", "walker-walk-buffer")}
EPISODE_STEPS = 500  # agent steps per episode: 1000 simulator steps, action repeat 2


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a dataset name means: its kind, domain and task (the simulator it runs)."""

    name: str
    kind: str  # random | expert | buffer | explore | mix
    domain: str
    env: str
    sources: tuple[str, ...] = ()


def dataset_names() -> list[str]:
    names = [f"{d}-random" for d in envs.DOMAINS] + [f"{d}-explore-buffer" for d in envs.DOMAINS]
    names += [f"{e}-expert" for e in envs.ENV_NAMES] + [f"{e}-buffer" for e in envs.ENV_NAMES]
    return names + list(MIXES)


def parse_name(name: str) -> Spec:
    if name in MIXES:
        return Spec(name, "mix", envs.domain_of(MIXES[name][0].split("-")[0]), "", MIXES[name])
    for domain in envs.DOMAINS:
        if name == f"{domain}-random":
            return Spec(name, "random", domain, explore.EXPLORE_TASK[domain])
        if name == f"{domain}-explore-buffer":
            return Spec(name, "explore", domain, explore.EXPLORE_TASK[domain])
    for kind in ("expert", "buffer"):
        env = name[: -len(kind) - 1] if name.endswith("-" + kind) else None
        if env in envs.ENV_NAMES:
            return Spec(name, kind, envs.domain_of(env), env)
    raise DatasetError(
        f"unknown dataset name {name!r}; valid names: <domain>-random, <domain>-explore-buffer, "
        f"<task>-expert, <task>-buffer (domains {', '.join(envs.DOMAINS)}; tasks "
        f"{', '.join(envs.ENV_NAMES)}) and {', '.join(MIXES)}"
    )


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one stream of episodes. The random dataset uses `seed` itself; the
    demonstrations, each SAC run and each exploration run have their own, so no two sources of
    a mix start from the same initial states."""
    if stream == "random":
        return seed
    return int(np.random.SeedSequence([seed, zlib.crc32(stream.encode())]).generate_state(1)[0] % 2**31)


def _stream(spec: Spec) -> str:
    return {"random": "random", "expert": f"demos:{spec.env}", "buffer": f"sac:{spec.env}",
            "explore": f"explore:{spec.domain}"}[spec.kind]


def scaled(count: int, scale: float) -> int:
    return max(1, int(round(count * scale)))


def expert_workdir(root: str, env: str, seed: int) -> str:
    return os.path.join(root, "experts", env if seed == 0 else f"{env}-seed{seed}")


def explorer_workdir(root: str, domain: str, seed: int) -> str:
    return os.path.join(root, "experts", f"{domain}-explore" if seed == 0 else f"{domain}-explore-seed{seed}")


def read_card(folder: str) -> dict | None:
    path = os.path.join(folder, CARD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class _Build:
    """The settings shared by a build and the builds of its sources."""

    root: str
    scale: float
    seed: int
    expert_scale: float
    expert_config: dict
    explore_config: dict
    progress: bool
    on_episode: Callable[[str, int], None] | None


def build(
    name: str,
    modality: str = "mdp",
    root: str = "data",
    scale: float = 1.0,
    seed: int = 0,
    expert_scale: float | None = None,
    episodes: int | None = None,
    expert_config: dict | None = None,
    explore_config: dict | None = None,
    progress: bool = True,
    on_episode: Callable[[str, int], None] | None = None,
) -> str:
    """Builds `<root>/<name>` (see the module docstring) if it is not complete; returns the folder.

    `episodes` overrides the scaled episode count (not for mixes); `expert_config` and
    `explore_config` override settings of the SAC experts (`sac.default_config`) and of the
    exploration agent (`explore.default_config`). `on_episode(name, i)` is called after each
    episode file is written (name: the dataset's, or the exploration run's folder name).

    A complete dataset built with other settings is refused with a message, never mixed in; one
    asked for with more episodes is extended, and one with more than asked for is left as it is
    (its first N episodes are the smaller dataset).
    """
    envs.tasks.check_modality(modality)
    check_local_path(root, "the data root")
    spec = parse_name(name)
    if not scale > 0 or (expert_scale is not None and not expert_scale > 0):
        raise ConfigError(f"scale and expert_scale must be > 0, got {scale}, {expert_scale}")
    if episodes is not None and (spec.kind == "mix" or episodes < 1):
        raise ConfigError(
            f"episodes={episodes}: a mix takes its size from its sources (use scale)" if spec.kind == "mix"
            else f"episodes must be >= 1, got {episodes}"
        )
    ctx = _Build(os.fspath(root), scale, seed, scale if expert_scale is None else expert_scale,
                 dict(expert_config or {}), dict(explore_config or {}), progress, on_episode)
    return _build(ctx, spec, modality, episodes)


def given(folder: str) -> bool:
    """Whether `folder` holds episodes that aime-jax did not build or collect: episode files but
    neither a card nor the meta.json every builder and collector writes before its first episode
    (e.g. the authors' published datasets, extracted as they are)."""
    return (not os.path.exists(os.path.join(folder, CARD)) and not os.path.exists(os.path.join(folder, "meta.json"))
            and bool(glob.glob(os.path.join(folder, "*.npz"))))


def _build(ctx: _Build, spec: Spec, modality: str, episodes: int | None) -> str:
    folder = os.path.join(ctx.root, spec.name)
    if given(folder):
        raise DatasetError(
            f"{folder} holds episodes that aime-jax did not build (no card.json or meta.json, e.g. the authors' "
            "published files); it never writes into such a folder: pass it as it is (--config.data.embodiment_dir "
            "or demos_dir; experiments/reproduce.py uses it as given), or build into another --root"
        )
    if _complete(ctx, spec, modality, episodes, folder):
        return folder  # nothing to write (it may be on a read-only disk): no lock
    # Other processes (or hosts) may build the same dataset: one builds, the others wait and
    # then find it complete.
    with locks.hold(folder, f"the dataset {folder}"):
        return _build_locked(ctx, spec, modality, episodes, folder)


def _complete(ctx: _Build, spec: Spec, modality: str, episodes: int | None, folder: str) -> bool:
    """Whether the folder holds this dataset, with enough episodes, in this modality (a complete
    dataset built with other settings is refused here already)."""
    card = read_card(folder)
    if card is None:
        return False
    wanted = json.loads(json.dumps(_generator(ctx, spec, episodes)))
    _check_card(folder, card, wanted)
    if card["episodes"] < wanted["episodes"]:
        return False
    if card.get("image_size") == IMAGE_SIZE:
        return True
    return modality != "visual" and card.get("image_size") is None and not _holds_images(folder)


def wanted_generator(name: str, root: str = "data", scale: float = 1.0, seed: int = 0,
                     expert_scale: float | None = None, episodes: int | None = None,
                     expert_config: dict | None = None, explore_config: dict | None = None) -> tuple[str, dict]:
    """(folder, generator) of `build` with these settings, computed without building anything:
    what `check_built` compares and a sweep's dry run collects."""
    spec = parse_name(name)
    ctx = _Build(os.fspath(root), scale, seed, scale if expert_scale is None else expert_scale,
                 dict(expert_config or {}), dict(explore_config or {}), False, None)
    return os.path.join(ctx.root, spec.name), json.loads(json.dumps(_generator(ctx, spec, episodes)))


def check_built(folder: str, wanted: dict) -> None:
    """Refuses, as the build itself would, a complete dataset in `folder` built with settings other
    than `wanted`; reads its card only."""
    card = read_card(folder)
    if card is not None:
        _check_card(folder, card, wanted)


def _holds_images(folder: str) -> bool:
    try:
        first = list_episodes(folder)[0]
    except DatasetError:  # no folder, or no episodes yet
        return False
    return _image_size(first) == IMAGE_SIZE


def _build_locked(ctx: _Build, spec: Spec, modality: str, episodes: int | None, folder: str) -> str:
    # As JSON gives it back (tuples become lists), to compare with the card.
    wanted = json.loads(json.dumps(_generator(ctx, spec, episodes)))
    card = read_card(folder)
    if card is not None:
        _check_card(folder, card, wanted)
    # A folder rendered for the visual modality stays uniform: episodes added for another
    # modality are rendered too (the loader needs the same keys in every episode).
    render = modality == "visual" or _holds_images(folder)
    if card is None or card["episodes"] < wanted["episodes"]:
        if card is not None:
            os.remove(os.path.join(folder, CARD))  # extending: incomplete until the new card
        _BUILDERS[spec.kind](ctx, spec, folder, wanted, modality)
        card = _write_card(folder, spec, wanted, extra=_card_extra(ctx, spec, folder))
    if render and card.get("image_size") != IMAGE_SIZE:
        if spec.kind == "mix":
            _build_mix(ctx, spec, folder, wanted, "visual")
        render_folder(folder, size=IMAGE_SIZE, domain=spec.domain, progress=ctx.progress)
        extra = {k: card[k] for k in ("expert", "sources") if k in card}
        card = _write_card(folder, spec, card["generator"], extra=extra)
    return folder


def _generator(ctx: _Build, spec: Spec, episodes: int | None) -> dict[str, Any]:
    """What defines the dataset's contents; a complete card must agree with it."""
    g: dict[str, Any] = {"kind": spec.kind, "env": spec.env, "seed": ctx.seed}
    if spec.kind == "mix":
        g["sources"] = list(spec.sources)
        g["scale"] = ctx.scale
        g["episodes"] = sum(n for _, n in _mix_counts(ctx, spec))
        return g
    g["episodes"] = episodes if episodes is not None else scaled(EPISODES[spec.kind], ctx.scale)
    g["episode_seed"] = stream_seed(ctx.seed, _stream(spec))
    if spec.kind in ("expert", "buffer"):
        g["expert_steps"] = _expert_steps(ctx, spec.env)
        g["expert_config"] = _expert_settings(ctx, spec.env)
        if TASKS[spec.env].planner_demos:
            g["expert_demos"] = scaled(TASKS[spec.env].planner_demos, ctx.expert_scale)
    if spec.kind == "explore":
        g["explore_config"] = ctx.explore_config
    return g


def _mix_counts(ctx: _Build, spec: Spec) -> list[tuple[str, int]]:
    """(source name, episodes it gives the mix), in the mix's order."""
    return [(name, _generator(ctx, parse_name(name), None)["episodes"]) for name in spec.sources]


def generator_diff(have: dict, wanted: dict) -> dict:
    """{setting: (have, wanted)} of two builds' generators that cannot share one folder."""
    diff = {k: (have.get(k), v) for k, v in wanted.items() if k != "episodes" and have.get(k) != v}
    # More episodes than asked for is fine (take the first N); fewer are added by extending.
    if wanted["kind"] == "mix" and have.get("episodes") != wanted["episodes"]:
        diff["episodes"] = (have.get("episodes"), wanted["episodes"])
    return diff


def _check_card(folder: str, card: dict, wanted: dict) -> None:
    diff = generator_diff(card.get("generator", {}), wanted)
    if diff:
        raise DatasetError(
            f"{folder} is a complete dataset built with other settings {diff} (built, asked); use "
            "the same settings (seed, --scale), another root folder, or delete it to rebuild"
        )


def _expert_settings(ctx: _Build, env: str) -> dict:
    return {**TASKS[env].sac.to_dict(), **ctx.expert_config}


def _expert_steps(ctx: _Build, env: str) -> int:
    return max(1, int(round(TASKS[env].steps * ctx.expert_scale)))


def _write_meta(folder: str, meta: dict) -> None:
    """meta.json, as `collect` writes it; a partial folder of another build is refused."""
    path = os.path.join(folder, "meta.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        # The modality and image size say how a folder was first collected, not what it holds.
        clash = {k: (old.get(k), v) for k, v in meta.items()
                 if k not in ("modality", "image_size") and k in old and old[k] != v}
        if clash:
            raise DatasetError(
                f"{folder} already holds episodes made with other settings {clash} (old, new); delete "
                "it, or build with the same settings"
            )
        return
    os.makedirs(folder, exist_ok=True)
    write_json(path, meta)


def _bar(ctx: _Build, total: int, done: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="ep", disable=not ctx.progress)


def _collect(ctx: _Build, spec: Spec, folder: str, wanted: dict, policy, policy_name: str) -> None:
    """Episodes 0..n-1 of `policy` in `spec.env` (state only), skipping those already there."""
    seed = wanted["episode_seed"]
    _write_meta(folder, {"env": spec.env, "modality": "mdp", "policy": policy_name, "seed": seed,
                         "action_repeat": 2, "image_size": None})
    n = wanted["episodes"]
    paths = [os.path.join(folder, f"{i}.npz") for i in range(n)]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    env = envs.make(spec.env, "mdp", seed=seed)
    with _bar(ctx, n, n - len(todo), spec.name) as bar:
        for i in todo:
            save_episode(paths[i], run_episode(env, policy, episode_seed(seed, i)))
            bar.update(1)
            if ctx.on_episode is not None:
                ctx.on_episode(spec.name, i)


def _build_random(ctx: _Build, spec: Spec, folder: str, wanted: dict, modality: str) -> None:
    _collect(ctx, spec, folder, wanted, random_policy, "random")


def _announce(ctx: _Build, text: str) -> None:
    """One line saying what a long build step is about to do (the bar that follows is its own)."""
    if ctx.progress:
        print(f"datasets: {text}", flush=True)


def _episodes_in(folder: str) -> int:
    return len(glob.glob(os.path.join(folder, "*.npz"))) if os.path.isdir(folder) else 0


def ensure_expert(ctx: _Build, env: str, dataset: str, min_episodes: int = 0) -> str:
    """Trains the task's SAC expert to its scaled length (resuming), snapshots its best-evaluated
    policy so far, then trains on until the run has `min_episodes` episodes; returns the snapshot
    folder. `dataset`: the dataset that needs it, named in what the build prints."""
    workdir = expert_workdir(ctx.root, env, ctx.seed)
    # The task's -expert and -buffer datasets share this run, also when built at the same time.
    with locks.hold(workdir, f"the expert run {workdir}"):
        return _ensure_expert_locked(ctx, env, dataset, min_episodes, workdir)


def _ensure_expert_locked(ctx: _Build, env: str, dataset: str, min_episodes: int, workdir: str) -> str:
    seed = stream_seed(ctx.seed, f"sac:{env}")
    settings = _expert_settings(ctx, env)
    if TASKS[env].planner_demos and "demo_dir" not in settings:
        demo_dir = workdir + "-planner"
        planned = scaled(TASKS[env].planner_demos, ctx.expert_scale)
        if _episodes_in(demo_dir) < planned:
            _announce(ctx, f"{dataset} needs the {env} SAC expert, which learns from {planned} planner "
                           f"(MPPI) episodes first: planning them into {demo_dir}")
        mppi.plan_episodes(env, demo_dir, planned,
                           seed=stream_seed(ctx.seed, f"mppi:{env}"), progress=ctx.progress)
        settings = {**settings, "demo_dir": demo_dir}
    config = sac.default_config(env, **settings)
    round_steps = config.num_envs * math.ceil(sac.SIMULATOR_STEPS_PER_EPISODE / config.action_repeat)
    steps = math.ceil(_expert_steps(ctx, env) / round_steps) * round_steps
    snapshot = os.path.join(workdir, f"policy-{steps}")
    episode_dir = os.path.join(workdir, "episodes")
    if not os.path.isdir(snapshot):
        _announce(ctx, f"{dataset} needs the {env} SAC expert: training it for {steps} agent steps "
                       f"({steps // EPISODE_STEPS} episodes) in {workdir}, resuming where it stopped")
        summary = sac.train_expert(env, workdir, steps, seed, config, episode_dir=episode_dir)
        if summary["env_steps"] != steps:
            raise AimeError(
                f"the expert run {workdir} has trained for {summary['env_steps']} steps, past the "
                f"{steps} its demonstrations need, without a policy snapshot there; delete it (or use "
                "another root) to train it again"
            )
        tmp = snapshot + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # The best evaluation's checkpoint (a run from before best/ existed: its last one).
        shutil.copytree(os.path.join(workdir, "best" if summary["best_eval"] else "checkpoints"), tmp)
        write_json(os.path.join(tmp, "summary.json"), summary)
        os.replace(tmp, snapshot)
    if min_episodes * EPISODE_STEPS > steps:
        if _episodes_in(episode_dir) < min_episodes:
            _announce(ctx, f"{dataset} is the {env} SAC expert's first {min_episodes} training episodes: "
                           f"training it on to {min_episodes * EPISODE_STEPS} agent steps in {workdir}")
        sac.train_expert(env, workdir, min_episodes * EPISODE_STEPS, seed, config, episode_dir=episode_dir)
    return snapshot


def _build_expert(ctx: _Build, spec: Spec, folder: str, wanted: dict, modality: str) -> None:
    policy = sac.load_expert_policy(ensure_expert(ctx, spec.env, spec.name))
    _collect(ctx, spec, folder, wanted, policy, policy.name)


def _link(src: str, dst: str) -> None:
    """dst becomes the same file as src (a hard link, else a copy), atomically."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.link.tmp")
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _link_episodes(ctx: _Build, name: str, folder: str, sources: list[tuple[str, int]], meta: dict) -> None:
    """Episode k of the concatenated (source folder, count) list becomes `<k>.npz` in `folder`."""
    _write_meta(folder, meta)
    total = sum(n for _, n in sources)
    with _bar(ctx, total, 0, name) as bar:
        k = 0
        for src_folder, n in sources:
            for i in range(n):
                src = os.path.join(src_folder, f"{i}.npz")
                if not os.path.exists(src):
                    raise DatasetError(f"{src} is missing; its run did not write it (delete {src_folder}'s run to redo it)")
                _link(src, os.path.join(folder, f"{k}.npz"))
                bar.update(1)
                if ctx.on_episode is not None:
                    ctx.on_episode(name, k)
                k += 1


def _build_buffer(ctx: _Build, spec: Spec, folder: str, wanted: dict, modality: str) -> None:
    n = wanted["episodes"]
    ensure_expert(ctx, spec.env, spec.name, min_episodes=n)
    episodes = os.path.join(expert_workdir(ctx.root, spec.env, ctx.seed), "episodes")
    _link_episodes(ctx, spec.name, folder, [(episodes, n)],
                   {"env": spec.env, "modality": "mdp", "policy": "sac-training", "seed": wanted["episode_seed"],
                    "action_repeat": 2, "image_size": None})


def _build_explore(ctx: _Build, spec: Spec, folder: str, wanted: dict, modality: str) -> None:
    n = wanted["episodes"]
    workdir = explorer_workdir(ctx.root, spec.domain, ctx.seed)
    episodes = os.path.join(workdir, "episodes")
    # The training episodes are files too: on_episode sees them under the run's folder name.
    hook = None if ctx.on_episode is None else (lambda i: ctx.on_episode(os.path.basename(workdir), i))
    if _episodes_in(episodes) < n:
        _announce(ctx, f"{spec.name} is an exploration agent's first {n} training episodes: training it "
                       f"for {n * EPISODE_STEPS} agent steps in {workdir}, resuming where it stopped")
    explore.train_explorer(spec.domain, workdir, n * EPISODE_STEPS, wanted["episode_seed"],
                           explore.default_config(**ctx.explore_config), episode_dir=episodes, on_episode=hook)
    _link_episodes(ctx, spec.name, folder, [(episodes, n)],
                   {"env": spec.env, "modality": "mdp", "policy": "explore-training",
                    "seed": wanted["episode_seed"], "action_repeat": 2, "image_size": None})


def _build_mix(ctx: _Build, spec: Spec, folder: str, wanted: dict, modality: str) -> None:
    sources = []
    for name, n in _mix_counts(ctx, spec):
        # Visual: render the sources, whose files the mix then shares, rather than the mix.
        sources.append((_build(ctx, parse_name(name), modality, None), n))
    _link_episodes(ctx, spec.name, folder, sources,
                   {"env": spec.domain, "modality": "mdp", "policy": "mix", "seed": ctx.seed,
                    "action_repeat": 2, "image_size": None})


_BUILDERS = {"random": _build_random, "expert": _build_expert, "buffer": _build_buffer,
             "explore": _build_explore, "mix": _build_mix}


def _card_extra(ctx: _Build, spec: Spec, folder: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if spec.kind in ("expert", "buffer"):
        snapshot = ensure_expert(ctx, spec.env, spec.name)
        with open(os.path.join(snapshot, "summary.json")) as f:
            summary = json.load(f)
        chosen = sac.checkpoint_eval(snapshot)
        extra["expert"] = {"workdir": os.path.dirname(snapshot), "policy": snapshot,
                           "env_steps": summary["env_steps"], "eval_return": summary["eval_return"],
                           "policy_env_steps": chosen["env_steps"], "policy_eval_return": chosen["return"],
                           "train_wall_s": summary["wall_s"]}
    if spec.kind == "mix":
        first, sources = 0, []
        for name, n in _mix_counts(ctx, spec):
            card = read_card(os.path.join(ctx.root, name))
            sources.append({"name": name, "first": first, "episodes": n, "generator": card["generator"]})
            first += n
        extra["sources"] = sources
    return extra


def _image_size(path: str) -> int | None:
    """The side of the episode's images, read from the array header (no decompression)."""
    with zipfile.ZipFile(path) as zf:
        if "image.npy" not in zf.namelist():
            return None
        with zf.open("image.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            return int(read(f)[0][1])


def _write_card(folder: str, spec: Spec, wanted: dict, extra: dict) -> dict:
    """Statistics of the episodes on disk; written last, it marks the dataset complete."""
    files = list_episodes(folder)
    if len(files) != wanted["episodes"]:
        raise DatasetError(f"{folder} holds {len(files)} episodes, {wanted['episodes']} expected; delete the extra files")
    returns, frames, sizes = [], 0, set()
    for path in files:
        with np.load(path) as z:
            reward = z["reward"]
        returns.append(float(np.sum(reward)))
        frames += len(reward)
        sizes.add(_image_size(path))
    returns = np.asarray(returns)
    image_size = sizes.pop() if len(sizes) == 1 else None
    card = {
        "name": spec.name,
        "generator": wanted,
        "domain": spec.domain,
        "env": spec.env or None,
        "seed": wanted["seed"],
        "episodes": len(files),
        "steps": frames - len(files),
        "frames": frames,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "size_bytes": int(sum(os.path.getsize(p) for p in files)),
        "image_size": image_size,
        **extra,
    }
    if spec.kind == "expert":
        card["expert_return"] = card["return_mean"]
    write_json(os.path.join(folder, CARD), card)
    return card
