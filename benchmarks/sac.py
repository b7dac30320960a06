"""SAC expert throughput and a walker-stand learning curve; JSON out.

  python benchmarks/sac.py --out=benchmarks/results/sac_cpu.json

Measures updates/s of the jitted update for several network and batch sizes (K updates per call,
batches sampled on the host and moved once per call), the latency of the per-step actor call,
then trains a walker-stand expert with the default settings for `--steps` agent steps or
`--budget_s` seconds, whichever comes first, and records the evaluation curve (env steps,
mean return over 10 episodes, wall time), the run's env steps/s and updates/s. Last, the
comparison behind `default_config`: the default and wider/larger-batch variants, each trained
for `--compare_steps` steps on the same seed (0 skips it). Env steps are agent
steps (action repeat 2). The machine's load average is recorded: on a shared CPU it explains
much of the spread between runs.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import numpy as np

from aime_jax.evaluate import PAPER_EXPERT_RETURNS, write_results
from aime_jax.experts import replay
from aime_jax.experts.config import as_dict
from aime_jax.experts import sac as sac_lib
from aime_jax.hostmem import reexec_with_huge_pages


def updates_per_second(hidden, layer_norm: bool, batch_size: int, per_call: int, seconds: float) -> float:
    config = sac_lib.default_config("walker-stand", hidden_sizes=hidden, layer_norm=layer_norm, batch_size=batch_size)
    sac = sac_lib.SAC(config, 24)
    state = sac.init(0)
    rng = np.random.default_rng(0)
    buffer = replay.ReplayBuffer(100_000, 24)
    n = 100_000
    buffer.add(obs=rng.normal(size=(n, 24)), action=rng.uniform(-1, 1, (n, 6)), reward=rng.uniform(size=n),
               discount=np.ones(n), next_obs=rng.normal(size=(n, 24)))
    state, metrics = sac.update_many(state, jax.device_put(buffer.sample(rng, (per_call, batch_size))))
    jax.block_until_ready(metrics)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        state, metrics = sac.update_many(state, jax.device_put(buffer.sample(rng, (per_call, batch_size))))
        done += per_call
        if done % (10 * per_call) == 0:
            jax.block_until_ready(metrics)
    jax.block_until_ready(metrics)
    return done / (time.perf_counter() - start)


def act_latency_us(num_envs: int, calls: int = 500) -> float:
    sac = sac_lib.SAC(sac_lib.default_config("walker-stand"), 24)
    state = sac.init(0)
    obs = np.zeros((num_envs, 24), np.float32)
    key = jax.random.PRNGKey(0)
    np.asarray(sac.sample_actions(state.actor_params, obs, key, 0))
    start = time.perf_counter()
    for i in range(calls):
        np.asarray(sac.sample_actions(state.actor_params, obs, key, i))
    return 1e6 * (time.perf_counter() - start) / calls


# Variants of the default settings compared by learning speed (env steps and wall time).
VARIANTS = {
    "default (128x2, batch 128)": {},
    "256x2, batch 128": {"hidden_sizes": (256, 256)},
    "256x2, batch 256": {"hidden_sizes": (256, 256), "batch_size": 256},
    "256x2, batch 256, no LayerNorm, lr 3e-4": {
        "hidden_sizes": (256, 256), "batch_size": 256, "layer_norm": False,
        "actor_lr": 3e-4, "critic_lr": 3e-4, "temperature_lr": 3e-4,
    },
}


def curve(summary: dict) -> list[dict]:
    return [
        {"env_steps": e["env_steps"], "return": round(e["return"], 1), "return_std": round(e["return_std"], 1),
         "wall_s": round(e["wall_s"], 1)}
        for e in summary["eval_curve"]
    ]


def compare(env: str, steps: int, eval_every: int) -> dict:
    out = {}
    for name, overrides in VARIANTS.items():
        config = sac_lib.default_config(env, eval_every=eval_every, save_every=steps, **overrides)
        with tempfile.TemporaryDirectory() as tmp:
            summary = sac_lib.train_expert(env, os.path.join(tmp, "run"), steps, seed=0, config=config)
        out[name] = {"overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
                     "wall_s": round(summary["wall_s"], 1), "eval_curve": curve(summary)}
        print(name, out[name], flush=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/sac_cpu.json")
    p.add_argument("--env", default="walker-stand")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--budget_s", type=float, default=900.0)
    p.add_argument("--eval_every", type=int, default=5000)
    p.add_argument("--seconds_per_config", type=float, default=10.0)
    p.add_argument("--workdir", default=None, help="Keep the run here (default: a temporary folder).")
    p.add_argument("--compare_steps", type=int, default=20_000)
    p.add_argument("--compare_eval_every", type=int, default=2500)
    args = p.parse_args()
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__,
                    "backend": jax.default_backend(), "loadavg_start": os.getloadavg()},
    }
    table = []
    for hidden, layer_norm, batch, per_call in [
        ((256, 256), True, 256, 1), ((256, 256), True, 256, 8), ((256, 256), False, 256, 8),
        ((256, 256), True, 128, 8), ((128, 128), True, 128, 8), ((1024, 1024), True, 256, 8),
    ]:
        ups = updates_per_second(hidden, layer_norm, batch, per_call, args.seconds_per_config)
        row = {"hidden": list(hidden), "layer_norm": layer_norm, "batch": batch, "updates_per_call": per_call,
               "updates_per_s": round(ups, 1)}
        print(row, flush=True)
        table.append(row)
    result["updates_per_s"] = table
    result["act_latency_us"] = {n: round(act_latency_us(n), 1) for n in (1, 4, 10)}
    print(result["act_latency_us"], flush=True)

    config = sac_lib.default_config(args.env, eval_every=args.eval_every, save_every=args.eval_every * 4)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or os.path.join(tmp, "run")
        start = time.perf_counter()
        summary = sac_lib.train_expert(args.env, workdir, args.steps, seed=0, config=config, max_wall_s=args.budget_s)
        wall = time.perf_counter() - start
        metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [m for m in metrics if "train/updates_per_s" in m and m["train/updates"] > 0]
    result["training"] = {
        "env": args.env,
        "config": as_dict(config),
        "env_steps": summary["env_steps"],
        "updates": summary["updates"],
        "wall_s": round(wall, 1),
        "eval_wall_s": round(summary["eval_wall_s"], 1),
        "env_steps_per_s": round(summary["env_steps"] / wall, 1),
        # Over the logging intervals after the seed steps: the steady state of the loop.
        "updates_per_s_median": round(float(np.median([m["train/updates_per_s"] for m in train[1:]] or [0])), 1),
        "eval_curve": curve(summary),
        "paper_expert_return": PAPER_EXPERT_RETURNS.get(args.env),
    }
    print(json.dumps(result["training"], indent=1), flush=True)
    write_results(args.out, result)
    if args.compare_steps:
        result["comparison"] = {"env": args.env, "steps": args.compare_steps, "seed": 0,
                                "runs": compare(args.env, args.compare_steps, args.compare_eval_every)}
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_results(args.out, result)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
