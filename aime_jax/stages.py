"""The stages of `experiments/main.py`. Each one skips itself when its output is complete and
resumes when it is partial, so rerunning the same command continues an interrupted pipeline."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, ContextManager

import ml_collections

from aime_jax import config as config_lib
from aime_jax import locks, parallel
from aime_jax.agents import bc
from aime_jax.agents.phase1 import check_world_model_fits, train_world_model, world_model_meta
from aime_jax.agents.phase2 import load_agent as load_aime_agent
from aime_jax.agents.phase2 import train_aime
from aime_jax.agents.phase2_runs import Run, load_runs_agent, train_aime_runs
from aime_jax.atomic import remove_stale_temporaries, writable_dir, write_json
from aime_jax.data.render import render_folder
from aime_jax.errors import AimeError
from aime_jax.experts.build import EPISODES, build, check_built, generator_diff, scaled, wanted_generator
from aime_jax.logging import active_wandb, pipeline_wandb, wandb_histogram, wandb_table, wandb_video
from aime_jax.results import (
    make_runs_scorer,
    make_scorer,
    print_results,
    print_runs_results,
    random_policy_result,
    results_complete,
    results_record,
    write_outputs,
)
from aime_jax.world_model import config as wm_config


def datasets(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """Makes sure the embodiment dataset exists in the configured modality, and the
    demonstrations too when a later stage needs them.

    `config.data.embodiment` (e.g. walker-random, walker-mix) is built in `config.data.root` by
    aime_jax/experts/build.py when it is missing or partial (training the agents it needs first), at
    `config.data.scale`; `config.data.embodiment_dir` is used as it is (rendered for visual).
    """
    if config.data.embodiment_dir:
        folder = config.data.embodiment_dir
        if not os.path.isdir(folder):
            raise AimeError(
                f"config.data.embodiment_dir={folder!r} does not exist; point it at a folder of episodes, "
                f"or leave it empty to build config.data.embodiment={config.data.embodiment!r}"
            )
        if config.modality == "visual":
            parallel.on_main(lambda: render_folder(folder, size=64), f"rendering {folder}")
    else:
        # Process 0 builds while the others wait; they all read the result from a shared disk.
        parallel.on_main(
            lambda: build(config.data.embodiment, config.modality, config.data.root, scale=config.data.scale,
                          seed=config.data.seed, expert_scale=config.data.expert_scale),
            f"building {config.data.embodiment}",
        )
    if {"phase2", "eval"} & set(config_lib.stages(config)):
        demonstrations(config)


def phase1(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    folder = config.world_model_dir
    if not folder:
        train_world_model(config, os.path.join(workdir, "phase1"), config_lib.embodiment_dir(config), mesh)
    elif parallel.agreed(lambda: _plain_run(folder), f"looking at {folder}"):
        print(f"phase 1 skipped: reusing the world model of {folder}")
    else:
        shared_world_model(config, folder, mesh)


def world_model_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return config.world_model_dir or workdir


# ------------------------------------------------------------------------------------------------
# A world model shared by the runs that differ only in what phase 1 does not read (a sweep over
# demonstration counts): config.world_model_dir names its folder, which holds config.json (the
# phase-1 settings), world_model.json ({"complete": ...}) and phase1/ (the run). One process
# trains it under the folder's lock (aime_jax/locks.py); the others wait, then reuse it.

WORLD_MODEL_STATUS = "world_model.json"
# Settings phase 1 never reads (the other stages', logging, where and how fast it computes).
NOT_PHASE1 = (
    "stages", "algo", "env", "world_model_dir", "phase2", "bc", "eval", "wandb", "mesh", "compile_cache_dir",
    "data.num_demos", "data.demos", "data.demos_dir", "data.prefetch",
    "phase1.log_every", "phase1.eval_every", "phase1.save_every", "phase1.keep", "phase1.val_batches",
    "phase1.video_context",
)


def phase1_identity(config: ml_collections.ConfigDict) -> dict:
    """Everything phase 1 reads: runs with equal identities train the same world model."""
    identity = json.loads(config.to_json())
    for key in NOT_PHASE1:
        *parents, last = key.split(".")
        node = identity
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return identity


def _identity_diff(saved: dict, ours: dict) -> list[str]:
    speed_only = tuple(f"world_model.{k}" for k in wm_config.SPEED_ONLY)
    return sorted(k for k in _diff(saved, ours) if not k.startswith(speed_only))


def _plain_run(folder: str) -> bool:
    """A world model folder written by an ordinary run (a pipeline or phase-1 run directory),
    not a shared one: it is reused as it is."""
    if os.path.exists(os.path.join(folder, WORLD_MODEL_STATUS)):
        return False
    return any(os.path.isdir(os.path.join(folder, *sub, "checkpoints")) for sub in ((), ("phase1",)))


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _complete_world_model(folder: str) -> bool:
    status = _read_json(os.path.join(folder, WORLD_MODEL_STATUS))
    return status is not None and status["complete"]


def check_shared_world_model(config: ml_collections.ConfigDict, folder: str) -> None:
    """Refuses a shared world model folder trained (or being trained) with other phase-1 settings."""
    saved = _read_json(os.path.join(folder, "config.json"))
    if saved is None or not os.path.exists(os.path.join(folder, WORLD_MODEL_STATUS)):
        return
    ours = phase1_identity(config)
    changed = _identity_diff(saved, ours)
    if changed:
        values = ", ".join(f"{k} {_get(saved, k)!r} (this run: {_get(ours, k)!r})" for k in changed[:3])
        raise AimeError(
            f"config.world_model_dir={folder} holds a world model with other phase-1 settings ({values}); "
            f"name the values that differ in config.world_model_dir (e.g. {{{changed[0]}}}) so that each gets "
            "its own world model, or use that world model's settings"
        )


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


@contextlib.contextmanager
def locked_on_main(target: str, what: str):
    """Process 0 holds `target`'s lock for the block (the other processes of a multi-process run
    work under its lock); it waits while another run holds it."""
    held = contextlib.ExitStack()
    with held:
        parallel.on_main(lambda: held.enter_context(locks.hold(target, what)), f"locking {target}")
        yield


def shared_world_model(config: ml_collections.ConfigDict, folder: str, mesh) -> None:
    """Trains the shared world model in `folder` unless another run has (or is doing it, which is
    waited for); refuses one with other phase-1 settings."""
    status = os.path.join(folder, WORLD_MODEL_STATUS)
    if parallel.agreed(lambda: _complete_world_model(folder), f"looking at {folder}"):
        # Nothing to write (the folder may be read-only): no lock.
        check_shared_world_model(config, folder)
        print(f"phase 1 skipped: the shared world model in {folder} is complete; reusing it")
        return

    def claim() -> None:
        check_shared_world_model(config, folder)
        if not os.path.exists(status):
            writable_dir(folder, "config.world_model_dir")
            write_json(os.path.join(folder, "config.json"), phase1_identity(config))
            write_json(status, {"complete": False, "phase1_steps": config.phase1.steps})

    with locked_on_main(folder, f"the world model {folder}"):
        parallel.on_main(claim, f"claiming {folder}")
        if parallel.agreed(lambda: _complete_world_model(folder), f"looking at {folder}"):
            print(f"phase 1 skipped: the shared world model in {folder} is complete; reusing it")
            return
        print(f"phase 1: training the shared world model in {folder} (runs with the same phase-1 settings "
              "wait for it and reuse it)", flush=True)
        train_world_model(config, os.path.join(folder, "phase1"), config_lib.embodiment_dir(config), mesh)
        parallel.on_main(lambda: write_json(status, {"complete": True, "phase1_steps": config.phase1.steps}),
                         f"finishing {folder}")


def wait_for_world_model(config: ml_collections.ConfigDict) -> None:
    """Before a reused world model is read: a shared one that another run is training is waited
    for; one left unfinished is refused."""
    folder = config.world_model_dir

    def ready() -> bool:
        return not os.path.exists(os.path.join(folder, WORLD_MODEL_STATUS)) or _complete_world_model(folder)

    if not folder or parallel.agreed(ready, f"looking at {folder}"):
        return
    with locked_on_main(folder, f"the world model {folder}"):
        if not parallel.agreed(ready, f"looking at {folder}"):
            raise AimeError(
                f"the shared world model in {folder} is not finished (its training stopped); run this command "
                "with the phase1 stage in config.stages to finish it there"
            )


def demonstrations(config: ml_collections.ConfigDict) -> str:
    """The demonstrations folder, rendered for visual: `config.data.demos_dir` as it is, or
    `<root>/<demos>` (default `<env>-expert`), built by aime_jax/experts/build.py when it is missing
    (a SAC expert is trained first) with at least `config.data.num_demos` episodes."""
    demos = config_lib.demos_dir(config)
    if config.data.demos_dir:
        if not os.path.isdir(demos):
            raise AimeError(
                f"phase 2 needs demonstrations of {config.env}, and config.data.demos_dir={demos!r} does not "
                "exist; point it at a folder of expert episodes, or leave it empty to build "
                f"{config.env}-expert"
            )
        if config.modality == "visual":
            parallel.on_main(lambda: render_folder(demos, size=64), f"rendering {demos}")
        return demos
    name, episodes = _demos_build(config)
    parallel.on_main(
        lambda: build(name, config.modality, config.data.root, scale=config.data.scale, seed=config.data.seed,
                      expert_scale=config.data.expert_scale, episodes=episodes),
        f"building {name}",
    )
    return demos


def _demos_build(config: ml_collections.ConfigDict) -> tuple[str, int | None]:
    """(name, episodes) of the demonstrations that `demonstrations` builds."""
    name = config.data.demos or f"{config.env}-expert"
    episodes = max(scaled(EPISODES["expert"], config.data.scale), config.data.num_demos)
    return name, episodes if name.endswith("-expert") else None


def phase2(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    # Before the demonstrations are built (which may train an expert first): a reused world
    # model that does not fit is refused at once.
    if config.world_model_dir:
        wait_for_world_model(config)
        check_world_model_fits(config, world_model_meta(config.world_model_dir), config.world_model_dir)
    demos = demonstrations(config)

    score, _ = make_scorer(config)
    train_aime(
        config, os.path.join(workdir, "phase2"), world_model_dir(config, workdir),
        demos, mesh, evaluate_agent=lambda agent, n: score(agent, n)[0],
    )


def no_embodiment_data(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    print("skipped: BC learns from the demonstrations alone, it needs no embodiment dataset")


def bc_datasets(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """BC's datasets stage: the demonstrations alone (when a later stage needs them)."""
    no_embodiment_data(config, workdir, mesh)
    if {"phase2", "eval"} & set(config_lib.stages(config)):
        demonstrations(config)


def idm(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """BCO(0)'s phase 1: the inverse dynamics model, on the embodiment dataset."""
    bc.train_idm(config, os.path.join(workdir, "idm"), config_lib.embodiment_dir(config), mesh)


def bc_policy(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """The baselines' phase 2: BC on the demonstrations' actions, or BCO(0) on the IDM's labels."""
    demos = demonstrations(config)
    if config.algo == "bco":
        bc.train_bco(config, os.path.join(workdir, "bc"), os.path.join(workdir, "idm"), demos, mesh)
    else:
        bc.train_bc(config, os.path.join(workdir, "bc"), demos, mesh)


def evaluation(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """The final score: `eval.episodes` episodes of the trained policy and of a random policy."""
    if results_complete(config, workdir):
        print(f"evaluation skipped: {os.path.join(workdir, 'results.json')} is complete")
        report_final(workdir)
        return
    if config.algo == "aime":
        wait_for_world_model(config)
        agent = load_aime_agent(config, os.path.join(workdir, "phase2"), world_model_dir(config, workdir), mesh)
    else:
        agent = bc.load_agent(config, os.path.join(workdir, "bc"))
    score, experts = make_scorer(config)
    summary, result = score(agent, config.eval.episodes, record_video=True)
    results = results_record(config, workdir, summary, result, experts, random_policy_result(config))
    write_outputs(workdir, results, result.frames)
    print_results(results)
    report_final(workdir)


# What the final evaluation reports to wandb (from results.json), besides the returns' histogram,
# the random policy's score and the video.
FINAL_KEYS = ("normalised", "normalised_paper", "normalised_std", "return_mean", "return_std", "expert_return",
              "episodes")
RUNS_TABLE = ("run", "num_demos", "seed", "return_mean", "return_std", "normalised", "normalised_paper")


def _final_values(workdir: str, prefix: str) -> tuple[dict, dict]:
    """(the wandb values under `prefix`, the results) of a run's results.json and its video."""
    results = _read_json(os.path.join(workdir, "results.json"))
    values = {f"{prefix}/{key}": results[key] for key in FINAL_KEYS if key in results}
    values[f"{prefix}/random_normalised"] = results["random"]["normalised"]
    values[f"{prefix}/returns"] = wandb_histogram(results["returns"])
    video = os.path.join(workdir, "videos", "eval_episode0.mp4")
    if os.path.exists(video):
        values[f"{prefix}/video"] = wandb_video(video)
    return values, results


def report_final(workdir: str) -> None:
    """The final evaluation in the pipeline's wandb run (if there is one), as final/normalised,
    final/return_mean, ..., final/video: the score a sweep optimises (launch/sweeps/). A rerun
    that skips a complete evaluation reports it again (an interrupted run may not have)."""
    run = active_wandb()
    if run is not None:
        run.record(_final_values(workdir, "final")[0])


def report_final_runs(runs: list) -> None:
    """`report_final` of a program of runs: each run's values under final/<run name>/, and one
    table of every run's scores (final/runs)."""
    run = active_wandb()
    if run is None:
        return
    values, rows = {}, []
    for r in runs:
        ours, results = _final_values(r.workdir, f"final/{r.name}")
        values.update(ours)
        rows.append([r.name, *(results.get(key) for key in RUNS_TABLE[1:])])
    run.record({**values, "final/runs": wandb_table(list(RUNS_TABLE), rows)})


# ---- many runs as one program (config.runs; docs/many_runs.md) ----------------------------------
#
# <workdir>/config.json        the program's config
# <workdir>/seed<S>/           seed S's world model (phase1/), unless config.world_model_dir is set
# <workdir>/phase2/            the stacked phase-2 checkpoints and the program's metrics
# <workdir>/demos<N>_seed<S>/  one run, laid out as a single run that reuses seed S's world model:
#                              config.json, phase2/ (its metrics, its final checkpoint), results.json


def seed_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, f"seed{seed}")


def _seeds(config: ml_collections.ConfigDict) -> list[int]:
    return list(dict.fromkeys(seed for _, seed in config_lib.run_grid(config)))


def _largest(config: ml_collections.ConfigDict, seed: int | None = None) -> ml_collections.ConfigDict:
    """A single run's config with the program's largest number of demonstrations (what the
    datasets must hold), for `seed` (default: the first)."""
    grid = config_lib.run_grid(config)
    seed = grid[0][1] if seed is None else seed
    return config_lib.run_config(config, max(n for n, _ in grid), seed, config_lib.seed_world_model_dir(config, seed))


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of seed S's world-model run (<workdir>/seed<S>)."""
    c = _largest(config, seed)
    c.stages = "datasets,phase1"
    return c


def program_runs(config: ml_collections.ConfigDict, workdir: str) -> list:
    """The runs of config.runs, each with its own single-run config and folder."""
    demos = config_lib.demos_dir(config)
    stage_names = ",".join(s for s in config_lib.stages(config) if s != "phase1")
    runs = []
    for num_demos, seed in config_lib.run_grid(config):
        wm = config_lib.seed_world_model_dir(config, seed) or seed_dir(workdir, seed)
        c = config_lib.run_config(config, num_demos, seed, wm)
        c.stages = stage_names
        runs.append(Run(c, os.path.join(workdir, config_lib.run_dirname(num_demos, seed)), wm, demos))
    return runs


def write_run_configs(config: ml_collections.ConfigDict, workdir: str) -> None:
    """config.json of every seed's world-model folder and every run's folder, refusing a rerun
    with other settings before anything is trained."""
    if not config.world_model_dir:
        for seed in _seeds(config):
            write_config(seed_config(config, seed), seed_dir(workdir, seed))
    for run in program_runs(config, workdir):
        write_config(run.config, run.workdir)


def many_datasets(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    datasets(_largest(config), workdir, mesh)


def many_phase1(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """One world model per seed, each trained once and shared by that seed's runs (one after
    another: phase 1 is not vectorised over seeds): in <workdir>/seed<S>, or in the seed's
    config.world_model_dir (reused if it holds a finished run, else trained there as a shared
    world model, as a single run's phase 1 does)."""
    for seed in _seeds(config):
        c = seed_config(config, seed)
        if c.world_model_dir:
            print(f"-- world model of seed {seed} ({c.world_model_dir})", flush=True)
            phase1(c, workdir, mesh)
            continue
        print(f"-- world model of seed {seed} ({seed_dir(workdir, seed)})", flush=True)
        train_world_model(c, os.path.join(seed_dir(workdir, seed), "phase1"), config_lib.embodiment_dir(c), mesh)


def _wait_for_world_models(runs: list) -> None:
    """Each shared world model the runs read, waited for if another run is training it."""
    for run in {run.world_model_dir: run for run in runs}.values():
        wait_for_world_model(run.config)


def many_phase2(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """Phase 2 of every run as one program (aime_jax/agents/phase2_runs.py)."""
    runs = program_runs(config, workdir)
    _wait_for_world_models(runs)
    # Before the demonstrations are built (which may train an expert first): a world model that
    # does not fit is refused at once.
    for folder in dict.fromkeys(run.world_model_dir for run in runs):
        check_world_model_fits(config, world_model_meta(folder), folder)
    demonstrations(_largest(config))
    score, _ = make_runs_scorer(config)
    runs_mesh = parallel.make_runs_mesh(len(runs), config.mesh.num_devices or None, config.runs.data_devices)
    print(f"{len(runs)} runs on a mesh of {dict(runs_mesh.shape)} devices", flush=True)
    train_aime_runs(config, runs, os.path.join(workdir, "phase2"), runs_mesh,
                    evaluate_runs=lambda agent, n: [summary for summary, _ in score(agent, n)])


def many_evaluation(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """Every run's final score, all runs' episodes in one batch; a results.json per run."""
    runs = program_runs(config, workdir)
    evaluate_program(config, runs)
    report_final_runs(runs)


def evaluate_program(config: ml_collections.ConfigDict, runs: list) -> None:
    """`evaluation` of the runs of a program whose results.json is missing or stale, together."""
    runs = [run for run in runs if not results_complete(run.config, run.workdir)]
    if not runs:
        print("evaluation skipped: every run's results.json is complete")
        return
    _wait_for_world_models(runs)
    agent, metas = load_runs_agent(config, runs)
    score, experts = make_runs_scorer(config)
    scores = score(agent, config.eval.episodes, record_video=True)
    rand = random_policy_result(config)
    all_results = []
    for run, meta, (summary, result) in zip(runs, metas, scores):
        results = results_record(run.config, run.workdir, summary, result, experts, rand)
        if meta.get("diverged_at_step"):
            results["diverged_at_step"] = meta["diverged_at_step"]
        write_outputs(run.workdir, results, result.frames)
        all_results.append(results)
    print_runs_results(all_results)


STAGE_FNS = {"datasets": datasets, "phase1": phase1, "phase2": phase2, "eval": evaluation}
MANY_STAGE_FNS = {"datasets": many_datasets, "phase1": many_phase1, "phase2": many_phase2, "eval": many_evaluation}
# The baselines run in place of AIME's phases: BCO(0)'s phase 1 is its inverse dynamics model.
BASELINE_STAGES = {
    "bc": {"datasets": bc_datasets, "phase1": no_embodiment_data, "phase2": bc_policy},
    "bco": {"phase1": idm, "phase2": bc_policy},
}


def stage_fn(config: ml_collections.ConfigDict, name: str):
    """The function of stage `name` for the configured algorithm (and for many runs)."""
    if config_lib.many_runs(config):
        return MANY_STAGE_FNS[name]
    return BASELINE_STAGES.get(config.algo, {}).get(name, STAGE_FNS[name])


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """config.json of the run directory, which must be a folder that can be written (checked
    first, and cleared of the temporaries a killed run left); a rerun with other settings is
    refused, not mixed in."""
    writable_dir(workdir, "--workdir")
    remove_stale_temporaries(workdir)
    check_run_config(config, workdir)
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))


def check_run_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses a run directory that holds a run with other settings (its config.json)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise AimeError(f"--workdir {workdir} is a file, not a folder; choose another --workdir")
    old = _read_json(os.path.join(workdir, "config.json"))
    changed = [] if old is None else config_changes(old, config)
    if changed:
        raise AimeError(
            f"{workdir} holds a run with other settings ({', '.join(changed)}); use a new "
            "--workdir, or the same settings to resume"
        )


def config_changes(old: dict, config: ml_collections.ConfigDict) -> list[str]:
    """The settings of `config` that a run with the config `old` cannot resume with. Stages,
    logging and step counts may change between reruns (e.g. to train for longer), and so may the
    settings that change only how fast the same model computes (e.g. resuming a CPU run on a GPU)."""
    new = json.loads(config.to_json())
    changed = sorted(_diff(old, new))
    harmless = (
        "stages", "wandb.", "data.prefetch", "eval.", "runs.data_devices", "compile_cache_dir",
        *(f"world_model.{key}" for key in wm_config.SPEED_ONLY),
        *(f"{stage}.{key}" for stage in ("phase1", "phase2") for key in ("steps", "log_every", "eval_every")),
        "phase2.eval_episodes",
    )
    # Runs from before data.seed existed built their datasets with `seed`; the data fingerprints
    # of their checkpoints say whether the data are the same.
    if "seed" not in old.get("data", {}):
        harmless += ("data.seed",)
    return [k for k in changed if not k.startswith(harmless)]


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def planned_datasets(config: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
    """(folder, generator) of every dataset the run's stages would build."""
    names = config_lib.stages(config)
    d = config.data
    builds = []
    if "datasets" in names and config.algo != "bc" and not d.embodiment_dir:
        builds.append((d.embodiment, None))
    if not d.demos_dir and ("phase2" in names or ("datasets" in names and "eval" in names)):
        builds.append(_demos_build(config))
    return [wanted_generator(name, d.root, d.scale, d.seed, d.expert_scale, episodes) for name, episodes in builds]


def preflight(config: ml_collections.ConfigDict, workdir: str, plan: dict | None = None) -> None:
    """What the run would refuse on disk before computing anything, checked without writing: the
    run directory's config.json, complete datasets built with other settings, a shared world
    model with other phase-1 settings, a reused one that does not fit. `plan` (a sweep's dry run)
    remembers what earlier runs will write and refuses a later run that clashes with them: two
    settings for one run directory, one dataset folder or one shared world model."""
    plan = {} if plan is None else plan
    if config_lib.many_runs(config):
        _preflight_many(config, workdir, plan)
        return
    ours = json.loads(config.to_json())
    check_run_config(config, workdir)
    earlier = plan.setdefault(("run", os.path.abspath(workdir)), ours)
    changed = [] if earlier is ours else config_changes(earlier, config)
    if changed:
        raise AimeError(
            f"an earlier run of this sweep uses the run directory {workdir} with other settings "
            f"({', '.join(changed)}); name them in --workdir (e.g. {{{changed[0]}}}) so that each run gets its own"
        )
    for folder, wanted in planned_datasets(config):
        check_built(folder, wanted)
        earlier = plan.setdefault(("dataset", os.path.abspath(folder)), wanted)
        diff = generator_diff(earlier, wanted)
        if diff:
            raise AimeError(
                f"an earlier run of this sweep builds {folder} with other settings {diff} (earlier, this run); "
                "runs that share a data root must build its datasets alike: use the same data settings "
                "(e.g. config.data.seed), or give these runs their own config.data.root"
            )
    folder = config.world_model_dir
    if not folder:
        return
    names = config_lib.stages(config)
    if "phase1" in names and config.algo == "aime" and not _plain_run(folder):
        check_shared_world_model(config, folder)
        identity = phase1_identity(config)
        earlier = plan.setdefault(("world_model", os.path.abspath(folder)), identity)
        changed = _identity_diff(earlier, identity)
        if changed:
            raise AimeError(
                f"config.world_model_dir={folder} is shared with an earlier run of this sweep whose phase-1 "
                f"settings differ ({', '.join(changed[:3])}); name them in config.world_model_dir (e.g. "
                f"{{{changed[0]}}}) so that each gets its own world model"
            )
    elif {"phase2", "eval"} & set(names) and config.algo == "aime":
        saved = _read_json(os.path.join(folder, "config.json"))
        if saved is not None and "world_model" in saved:
            check_world_model_fits(config, {"config": saved}, folder)


def _preflight_many(config: ml_collections.ConfigDict, workdir: str, plan: dict) -> None:
    """`preflight` of a program of runs: its folder, each seed's datasets and world model (as a
    single run of that seed with the largest number of demonstrations), each run's folder."""
    check_run_config(config, workdir)
    for seed in _seeds(config):
        preflight(_largest(config, seed), seed_dir(workdir, seed), plan)
    for run in program_runs(config, workdir):
        check_run_config(run.config, run.workdir)


def run(config: ml_collections.ConfigDict, workdir: str, mesh,
        around: Callable[[str], ContextManager] | None = None) -> list[str]:
    """Runs the config's stages in `workdir` (config.json first); `around(name)`, if given, wraps
    each stage (e.g. a timer). Returns the stage names. One process (process 0 of a multi-process
    run) works in a run directory at a time: another one with the same --workdir waits for it."""
    names = config_lib.stages(config)
    parallel.on_main(lambda: preflight(config, workdir), "checking the run")
    with locked_on_main(workdir, f"the run directory {workdir}"):
        parallel.on_main(lambda: write_config(config, workdir), "writing config.json")
        if config_lib.many_runs(config):
            parallel.on_main(lambda: write_run_configs(config, workdir), "writing the runs' config.json")
        with pipeline_wandb(config, workdir):
            for name in names:
                print(f"== stage {name} ({workdir})", flush=True)
                with around(name) if around else contextlib.nullcontext():
                    stage_fn(config, name)(config, workdir, mesh)
    return names
