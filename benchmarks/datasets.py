"""The dataset builder's agents: the exploration agent against random actions, and the quick
pipeline's demonstrations; JSON out.

  python benchmarks/datasets.py --out=benchmarks/results/datasets_cpu.json

1. Exploration: trains the exploration agent (default settings: 5 x 128x2 ensemble, SAC after
   5000 random seed steps) on walker for `--explore_episodes` episodes and collects as many
   random-action episodes from the same initial-state stream. Records the intrinsic return
   (ensemble disagreement x scale) and the task (stand) return per episode, the training speed,
   and the state coverage of the second half of each: the number of occupied cells of a grid
   over torso height (0.1), torso angle (0.3 rad) and forward speed (0.5 m/s).
2. Demonstrations as `configs/walker_*.py:quick` builds them: `walker-walk-expert` at
   `--expert_scale` (0.5: a 40k-step SAC expert) with 10 episodes; records the build's wall time,
   the expert's evaluation return (10 deterministic episodes) and the demonstrations' return.
   `--expert_scale=0` skips it.
The machine's load average is recorded: on a shared CPU it explains much of the spread.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from aime_jax.data import list_episodes, load_episode
from aime_jax.data.collect import collect
from aime_jax.evaluate import write_results
from aime_jax.experts import explore
from aime_jax.experts import build as build_lib
from aime_jax.hostmem import reexec_with_huge_pages


def occupied_cells(paths) -> int:
    cells = set()
    for path in paths:
        ep = load_episode(path)
        torso = np.arctan2(ep["orientations"][:, 1], ep["orientations"][:, 0])
        grid = np.stack([np.floor(ep["height"][:, 0] / 0.1), np.floor(torso / 0.3),
                         np.floor(ep["velocity"][:, 1] / 0.5)], axis=1).astype(int)
        cells.update(map(tuple, grid))
    return len(cells)


def exploration(episodes: int, folder: str) -> dict:
    start = time.perf_counter()
    summary = explore.train_explorer("walker", os.path.join(folder, "run"), episodes * 500, seed=0,
                                     episode_dir=os.path.join(folder, "explore"))
    wall = time.perf_counter() - start
    collect("walker-stand", "mdp", os.path.join(folder, "random"), episodes, seed=0, progress=False)
    half = episodes // 2
    return {
        "episodes": episodes,
        "wall_s": round(wall, 1),
        "env_steps_per_s": round(episodes * 500 / wall, 1),
        "updates": summary["updates"],
        "intrinsic_returns": [round(x, 1) for x in summary["intrinsic_returns"]],
        "task_returns": [round(x, 1) for x in summary["train_returns"]],
        "cells_second_half": {
            "explore": occupied_cells(list_episodes(os.path.join(folder, "explore"))[half:]),
            "random": occupied_cells(list_episodes(os.path.join(folder, "random"))[half:]),
        },
    }


def quick_demonstrations(expert_scale: float, root: str) -> dict:
    start = time.perf_counter()
    folder = build_lib.build("walker-walk-expert", "mdp", root, scale=0.03, expert_scale=expert_scale, episodes=10)
    card = build_lib.read_card(folder)
    return {"expert_scale": expert_scale, "wall_s": round(time.perf_counter() - start, 1),
            "expert_env_steps": card["expert"]["env_steps"], "expert_eval_return": card["expert"]["eval_return"],
            "demonstrations": card["episodes"], "demo_return_mean": card["return_mean"],
            "demo_return_std": card["return_std"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/datasets_cpu.json")
    parser.add_argument("--explore_episodes", type=int, default=30)
    parser.add_argument("--expert_scale", type=float, default=0.5)
    args = parser.parse_args()
    result = {"command": "python benchmarks/datasets.py " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
                          "loadavg_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        result["exploration"] = exploration(args.explore_episodes, os.path.join(tmp, "explore"))
        print(json.dumps(result["exploration"]["cells_second_half"]), flush=True)
        if args.expert_scale > 0:
            result["quick_demonstrations"] = quick_demonstrations(args.expert_scale, os.path.join(tmp, "data"))
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_results(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
