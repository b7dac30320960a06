"""Collecting episodes in the simulator, resumable and reproducible per episode."""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from aime_jax import envs
from aime_jax.atomic import remove_stale_temporaries, writable_dir, write_json
from aime_jax.data.episodes import episode_from_steps, save_episode
from aime_jax.envs.seeding import episode_seed
from aime_jax.errors import AimeError

# policy(observation, proprio, rng) -> action in [-1, 1]^6
Policy = Callable[[dict, dict, np.random.Generator], np.ndarray]


def random_policy(observation: dict, proprio: dict, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, envs.dmc.ACTION_DIM).astype(np.float32)


random_policy.name = "random"  # what meta.json records for it


def run_episode(env: envs.Env, policy: Policy, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    step = env.reset(seed=seed)
    steps = [step]
    while not step.is_last:
        step = env.step(policy(step.observation, step.proprio, rng))
        steps.append(step)
    return episode_from_steps(steps, include_image=env.render_images)


def _write_meta(out: str, meta: dict) -> None:
    path = os.path.join(out, "meta.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        clash = {k: (old.get(k), v) for k, v in meta.items() if k in old and old[k] != v}
        if clash:
            raise AimeError(
                f"{out} already holds episodes collected with other settings {clash} (old, new); "
                "choose another --out folder or the same settings"
            )
        return
    write_json(path, meta)


def collect(
    env_name: str,
    modality: str,
    out: str,
    episodes: int,
    policy: Policy = random_policy,
    seed: int = 0,
    action_repeat: int = 2,
    image_size: int = 64,
    progress: bool = True,
    policy_name: str | None = None,
) -> list[str]:
    """Writes episodes `0.npz` ... `<episodes-1>.npz` to `out`, skipping those already there.

    `policy(observation, proprio, rng) -> action` acts; meta.json records `policy_name`, by
    default the policy's `name` attribute (experiments/collect.py loads an expert with
    `aime_jax.experts.sac.load_policy` and records the folder it was given).

    Episode i depends only on (seed, i), so an interrupted collection continued later produces
    the same files as one that ran through.
    """
    if episodes < 1:
        raise AimeError(f"--episodes must be >= 1, got {episodes}")
    env = envs.make(env_name, modality, seed=seed, action_repeat=action_repeat, image_size=image_size)
    if policy_name is None:
        policy_name = getattr(policy, "name", type(policy).__name__)
    writable_dir(out, "--out")
    remove_stale_temporaries(out)
    _write_meta(
        out,
        {
            "env": env_name,
            "modality": modality,
            "policy": policy_name,
            "seed": seed,
            "action_repeat": action_repeat,
            "image_size": image_size if env.render_images else None,
        },
    )
    paths = [os.path.join(out, f"{i}.npz") for i in range(episodes)]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, initial=episodes - len(todo), desc=f"collect {env_name}/{modality}", unit="ep")
    returns = []
    for i in todo:
        ep = run_episode(env, policy, episode_seed(seed, i))
        save_episode(paths[i], ep)
        returns.append(float(ep["reward"].sum()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ret=f"{returns[-1]:.1f}")
    if bar is not None:
        bar.close()
    return paths
