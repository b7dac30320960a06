"""Phase-2 step throughput (B=50, T=50, paper sizes) and evaluation episodes/s; JSON out.

  python benchmarks/phase2_eval.py --out=benchmarks/results/phase2_eval_cpu.json

The world model and policy are freshly initialised (speed does not depend on the weights); the
batch is synthetic with the real shapes and dtypes.
"""
import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from aime_jax import config as config_lib, parallel
from aime_jax.agents import phase2
from aime_jax.atomic import write_json
from aime_jax.evaluate import evaluate
from aime_jax.hostmem import reexec_with_huge_pages
from aime_jax.world_model import rssm

SPECS = {"orientations": (14,), "height": (1,), "velocity": (9,), "position": (8,), "image": (64, 64, 3)}


def build(domain: str, modality: str):
    config = config_lib.resolve(config_lib.make_config(domain, modality, ""))
    spec = {k: SPECS[k] for k in (*config.world_model.obs_keys, *config.world_model.probe_keys)}
    model, wm_params = rssm.init_world_model(config.world_model, spec, 6, jax.random.PRNGKey(0))
    policy = phase2.make_policy(config.phase2.policy, 6)
    return config, spec, model, wm_params, policy


def phase2_step(domain: str, modality: str, steps: int) -> dict:
    import optax

    config, spec, model, wm_params, policy = build(domain, modality)
    b, t = config.data.batch_size, config.data.window
    rng = np.random.default_rng(0)
    batch = {
        k: (rng.integers(0, 256, (b, t, *s), dtype=np.uint8) if k == "image" else rng.normal(size=(b, t, *s)).astype(np.float32))
        for k, s in spec.items() if k in config.world_model.obs_keys
    }
    optimizer = optax.chain(optax.clip_by_global_norm(100.0), optax.adam(3e-4))
    state = phase2.create_policy_state(policy, config.world_model.deter_size + config.world_model.stoch_size, optimizer, 0)
    step = phase2.jit_train_step(model, policy, phase2.phase2_loss_config(model.config, config.phase2), optimizer,
                               parallel.make_mesh(1))
    t0 = time.perf_counter()
    compiled = step.lower(state, wm_params, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, wm_params, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, wm_params, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    return {"compile_s": round(compile_s, 2), "s_per_step": round(dt, 4), "steps_per_s": round(1 / dt, 3),
            "env_steps_per_s": round(b * t / dt, 1), "variant": config.world_model.variant}


def eval_speed(env: str, modality: str, episodes: int, num_envs: int, workers: int) -> dict:
    config, spec, model, wm_params, policy = build(env.split("-")[0], modality)
    params = policy.init(jax.random.PRNGKey(1), np.zeros((1, config.world_model.deter_size + config.world_model.stoch_size)))["params"]
    agent = phase2.AimeAgent(model, wm_params, policy, params)
    evaluate(env, modality, agent, 1, num_envs=1, seed=0)  # compile outside the timing
    result = evaluate(env, modality, agent, episodes, num_envs=num_envs, seed=0, workers=workers)
    return {"episodes": episodes, "num_envs": num_envs, "workers": workers,
            "episodes_per_s": round(result.episodes_per_s, 4), "s_per_episode": round(1 / result.episodes_per_s, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/phase2_eval_cpu.json")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--visual_steps", type=int, default=2)
    p.add_argument("--evals", default="mdp,lpomdp,visual", help="evaluation speeds to measure (walker-walk)")
    args = p.parse_args()
    result = {
        "command": "python " + " ".join(sys.argv),
        "device": f"{jax.devices()[0].platform} {jax.devices()[0].device_kind}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES")},
        "phase2_B50_T50": {},
        "eval": {},
    }
    for domain in ("walker", "cheetah"):
        for modality in ("mdp", "visual"):
            n = args.visual_steps if modality == "visual" else args.steps
            result["phase2_B50_T50"][f"{domain}/{modality}"] = phase2_step(domain, modality, n)
            print(domain, modality, result["phase2_B50_T50"][f"{domain}/{modality}"], flush=True)
            write_json(args.out, result)  # after every measurement, so an interrupted run keeps what it has
    evals = {"mdp": (10, 10, 1), "lpomdp": (10, 10, 1), "visual": (2, 2, 2)}
    for modality in [m.strip() for m in args.evals.split(",") if m.strip()]:
        result["eval"][f"walker-walk/{modality}"] = eval_speed("walker-walk", modality, *evals[modality])
        print("eval", modality, result["eval"][f"walker-walk/{modality}"], flush=True)
        write_json(args.out, result)
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
