"""Throughput of the simulator, the renderer and the window sampler; JSON out.

  python benchmarks/data_env.py --out=benchmarks/results/data_env_cpu.json

Env steps are agent steps (action repeat 2). The sampler is measured on a packed, memory-mapped
store at B=50, T=50 (the paper's phase-1 batch) once the pages are cached.
"""
import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from aime_jax import envs
from aime_jax.data import EpisodeStore, WindowSampler, save_episode


def env_steps_per_second(name: str, modality: str, steps: int) -> float:
    env = envs.make(name, modality, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, 6))
    t0 = time.perf_counter()
    for a in actions:
        if env.step(a).is_last:
            env.reset()
    return steps / (time.perf_counter() - t0)


def render_fps(domain: str, frames: int) -> float:
    env = envs.make(f"{domain}-run", "mdp", seed=0)
    states = [env.reset().physics_state]
    while len(states) < frames:
        states.append(env.step(np.zeros(6)).physics_state)
    renderer = envs.dmc.StateRenderer(domain, 64)
    renderer(np.stack(states[:2]))
    t0 = time.perf_counter()
    renderer(np.stack(states))
    return frames / (time.perf_counter() - t0)


def sampler_batches_per_second(folder: str, keys, batches: int) -> dict:
    store = EpisodeStore(folder, progress=False)
    sampler = WindowSampler(store, 50, 50, seed=0, keys=keys)
    for s in range(3):
        sampler.batch(s)
    t0 = time.perf_counter()
    for s in range(batches):
        sampler.batch(s)
    dt = (time.perf_counter() - t0) / batches
    return {"batches_per_s": 1.0 / dt, "ms_per_batch": 1000 * dt, "dataset_frames": store.num_steps}


def synthetic_dataset(folder: str, episodes: int, image: bool) -> None:
    rng = np.random.default_rng(0)
    for i in range(episodes):
        n = 501
        ep = {
            "orientations": rng.normal(size=(n, 14)).astype(np.float32),
            "height": rng.normal(size=(n, 1)).astype(np.float32),
            "velocity": rng.normal(size=(n, 9)).astype(np.float32),
            "pre_action": rng.uniform(-1, 1, (n, 6)).astype(np.float32),
            "reward": rng.uniform(size=(n, 1)).astype(np.float32),
            "is_first": (np.arange(n) == 0)[:, None],
            "is_last": (np.arange(n) == n - 1)[:, None],
            "is_terminal": np.zeros((n, 1), bool),
        }
        if image:
            # Smooth images compress like rendered ones; content does not change the read cost.
            base = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
            ep["image"] = np.repeat(base, n, axis=0)
        save_episode(os.path.join(folder, f"{i}.npz"), ep, compress=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/data_env_cpu.json")
    p.add_argument("--env_steps", type=int, default=2000)
    p.add_argument("--render_frames", type=int, default=300)
    p.add_argument("--episodes", type=int, default=100, help="episodes of the synthetic sampler datasets")
    p.add_argument("--batches", type=int, default=50)
    args = p.parse_args()

    result = {
        "command": "python benchmarks/data_env.py " + f"--out={args.out}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "env_steps_per_s": {},
        "render_fps_64": {},
        "sampler_B50_T50": {},
    }
    for name in ("walker-walk", "cheetah-run"):
        for modality in envs.MODALITIES:
            steps = args.env_steps if modality != "visual" else args.render_frames
            result["env_steps_per_s"][f"{name}/{modality}"] = round(env_steps_per_second(name, modality, steps), 1)
            print(name, modality, result["env_steps_per_s"][f"{name}/{modality}"], flush=True)
    for domain in envs.DOMAINS:
        result["render_fps_64"][domain] = round(render_fps(domain, args.render_frames), 1)
    with tempfile.TemporaryDirectory() as tmp:
        mdp, vis = os.path.join(tmp, "mdp"), os.path.join(tmp, "visual")
        synthetic_dataset(mdp, args.episodes, image=False)
        synthetic_dataset(vis, args.episodes, image=True)
        result["sampler_B50_T50"]["mdp"] = sampler_batches_per_second(
            mdp, ["orientations", "height", "velocity", "pre_action", "reward", "is_first"], args.batches
        )
        result["sampler_B50_T50"]["visual"] = sampler_batches_per_second(
            vis, ["image", "pre_action", "reward", "is_first"], args.batches
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
