"""What a run's evaluation produces: the normalisers (the demonstrations' return and the
paper's), scoring an agent, the record in results.json, its video, and the table printed at the
end. stages.py decides when to evaluate; this module assembles what comes out."""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from aime_jax import config as config_lib
from aime_jax.agents import bc
from aime_jax.checkpoint import Checkpointer
from aime_jax.data import EpisodeStore
from aime_jax.evaluate import PAPER_EXPERT_RETURNS, RandomAgent, evaluate, evaluate_runs, normalised, write_results
from aime_jax.logging import write_video


def expert_returns(config: ml_collections.ConfigDict) -> dict:
    """Our normaliser (the demonstrations' mean return, or their card's) and the paper's."""
    demos = config_lib.demos_dir(config)
    card = os.path.join(demos, "card.json")
    ours = None
    if os.path.exists(card):
        with open(card) as f:
            ours = json.load(f).get("expert_return")
    if ours is None:
        store = EpisodeStore(demos, progress=False)
        ours = float(np.mean([store.episode(i, ["reward"])["reward"].sum() for i in range(store.num_episodes)]))
    return {"expert_return": ours, "paper_expert_return": PAPER_EXPERT_RETURNS.get(config.env)}


def summary(result, experts: dict) -> dict:
    """Raw and normalised returns (both normalisers) of an evaluation."""
    summary = {
        "return_mean": result.mean,
        "return_std": result.std,
        "normalised": normalised(result.mean, experts["expert_return"]),
        "normalised_std": normalised(result.std, experts["expert_return"]),
    }
    if experts["paper_expert_return"]:
        summary["normalised_paper"] = normalised(result.mean, experts["paper_expert_return"])
    return summary


def make_scorer(config: ml_collections.ConfigDict):
    """agent, episodes -> summary dict with raw and normalised returns (both normalisers)."""
    experts = expert_returns(config)

    def score(agent, episodes: int, record_video: bool = False):
        result = evaluate(
            config.env, config.modality, agent, episodes, num_envs=config.eval.num_envs,
            seed=config.eval.seed, workers=config.eval.workers, record_video=record_video,
        )
        return summary(result, experts), result

    return score, experts


def make_runs_scorer(config: ml_collections.ConfigDict):
    """`make_scorer` for the agent of many runs (phase2_runs.RunsAgent): every run's episodes in
    one batch, one (summary, result) per run."""
    experts = expert_returns(config)

    def score(agent, episodes: int, record_video: bool = False):
        results = evaluate_runs(
            config.env, config.modality, agent, agent.runs, episodes, num_envs=config.eval.num_envs,
            seed=config.eval.seed, workers=config.eval.workers, record_video=record_video,
        )
        return [(summary(result, experts), result) for result in results]

    return score, experts


def embodiment_used(config: ml_collections.ConfigDict) -> str | None:
    """The embodiment data behind the policy: a reused world model's run directory, the dataset
    folder, or None for BC, which uses none."""
    if config.algo == "bc":
        return None
    if config.algo == "aime" and config.world_model_dir:
        return config.world_model_dir
    return config_lib.embodiment_dir(config)


def embodiment_name(config: ml_collections.ConfigDict) -> str | None:
    """The embodiment dataset's folder name (e.g. walker-random), also through a reused world
    model's run directory; None for BC."""
    if config.algo == "bc":
        return None
    folder = config_lib.embodiment_dir(config)
    if config.algo == "aime" and config.world_model_dir:
        folder = config.world_model_dir
        path = os.path.join(config.world_model_dir, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)["data"]
            folder = data.get("embodiment_dir") or data.get("embodiment") or folder
    return os.path.basename(os.path.normpath(folder))


def trained_policy(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """What identifies the trained policy in results.json (a rerun that trained further re-evaluates)."""
    if config.algo == "aime":
        return {"phase2_steps": config.phase2.steps}
    with Checkpointer(os.path.join(workdir, "bc", "checkpoints")) as ckpt:
        meta = ckpt.restore_meta()
    return {"policy_steps": meta["step"], "policy_epochs": meta["step"] / meta["steps_per_epoch"]}


def results_complete(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether `workdir`'s results.json already scores this policy with this many episodes."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return False
    trained = trained_policy(config, workdir)
    with open(path) as f:
        done = json.load(f)
    return done.get("episodes") == config.eval.episodes and all(done.get(k) == v for k, v in trained.items())


def random_policy_result(config: ml_collections.ConfigDict):
    # The random policy needs no observations: its episodes are run without rendering.
    return evaluate(config.env, "mdp", RandomAgent(config.eval.seed), config.eval.episodes,
                    num_envs=config.eval.num_envs, seed=config.eval.seed)


def results_record(config: ml_collections.ConfigDict, workdir: str, summary: dict, result, experts: dict,
                   rand) -> dict:
    """The contents of a run's results.json."""
    return {
        "algo": config.algo,
        "method": bc.METHOD_NAMES[config.algo],
        "env": config.env,
        "modality": config.modality,
        "embodiment": embodiment_used(config),
        "embodiment_name": embodiment_name(config),
        "num_demos": config.data.num_demos,
        "seed": config.seed,
        "episodes": config.eval.episodes,
        **trained_policy(config, workdir),
        **summary,
        "returns": result.returns,
        **experts,
        "random": {"return_mean": rand.mean, "return_std": rand.std,
                   "normalised": normalised(rand.mean, experts["expert_return"])},
        "episodes_per_s": result.episodes_per_s,
    }


def write_outputs(workdir: str, results: dict, frames) -> None:
    """results.json and the first evaluation episode's video of a run (process 0 writes)."""
    if jax.process_index() != 0:
        return
    write_results(os.path.join(workdir, "results.json"), results)
    if frames is not None:
        os.makedirs(os.path.join(workdir, "videos"), exist_ok=True)
        write_video(os.path.join(workdir, "videos", "eval_episode0.mp4"), frames)


def print_results(results: dict) -> None:
    rows = [
        ("policy", "return", "normalised (ours)", "normalised (paper)"),
        (results.get("method", "AIME"), f"{results['return_mean']:.1f} ± {results['return_std']:.1f}",
         f"{results['normalised']:.1f}", f"{results.get('normalised_paper', float('nan')):.1f}"),
        ("random", f"{results['random']['return_mean']:.1f} ± {results['random']['return_std']:.1f}",
         f"{results['random']['normalised']:.1f}", ""),
    ]
    print(f"results: {results['env']} / {results['modality']}, {results['num_demos']} demos, "
          f"{results['episodes']} episodes, expert return {results['expert_return']:.1f}")
    for row in rows:
        print("  " + " | ".join(f"{c:>20}" for c in row))


def print_runs_results(all_results: list[dict]) -> None:
    first = all_results[0]
    print(f"results: {first['env']} / {first['modality']}, {first['episodes']} episodes per run, "
          f"expert return {first['expert_return']:.1f}, random policy {first['random']['return_mean']:.1f} "
          f"({first['random']['normalised']:.1f} normalised)")
    print("  " + " | ".join(f"{c:>12}" for c in ("demos", "seed", "return", "normalised", "paper norm.")))
    for r in all_results:
        note = f"  (went non-finite at step {r['diverged_at_step']})" if r.get("diverged_at_step") else ""
        print("  " + " | ".join(f"{c:>12}" for c in (
            r["num_demos"], r["seed"], f"{r['return_mean']:.1f}", f"{r['normalised']:.1f}",
            f"{r.get('normalised_paper', float('nan')):.1f}")) + note)
