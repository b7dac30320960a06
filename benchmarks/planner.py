"""The MPPI planner's episodes (demonstrations for the flips' SAC experts): return and wall time.

  python benchmarks/planner.py --envs=cheetah-flip,cheetah-flipbackward --episodes=2 \
      --out=benchmarks/results/planner_cpu.json

Plans into a temporary folder with the default settings (aime_jax/experts/mppi.py) and reports,
per task, each episode's return and wall seconds, against the paper's expert return.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

from aime_jax.atomic import write_json
from aime_jax.evaluate import PAPER_EXPERT_RETURNS
from aime_jax.experts.config import as_dict
from aime_jax.experts.mppi import default_config, plan_episodes
from aime_jax.hostmem import reexec_with_huge_pages


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", default="cheetah-flip,cheetah-flipbackward")
    p.add_argument("--episodes", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/planner_cpu.json")
    args = p.parse_args()
    config = default_config()
    result = {"command": "python " + " ".join(sys.argv), "settings": as_dict(config),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "tasks": []}
    for env in args.envs.split(","):
        episodes = []
        with tempfile.TemporaryDirectory() as out:
            for i in range(args.episodes):
                t0 = time.perf_counter()
                (r,) = plan_episodes(env, out, i + 1, args.seed, config, progress=False)
                episodes.append({"episode": i, "return": round(r["return"], 2),
                                 "wall_s": round(time.perf_counter() - t0, 1)})
                print(env, episodes[-1], flush=True)
        mean = sum(e["return"] for e in episodes) / len(episodes)
        paper = PAPER_EXPERT_RETURNS.get(env)
        result["tasks"].append({"env": env, "episodes": episodes, "return_mean": round(mean, 2),
                                "paper_expert_return": paper,
                                "fraction_of_paper": None if paper is None else round(mean / paper, 3)})
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
