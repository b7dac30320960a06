"""The stages of `experiments/main.py`. Each one skips itself when its output is complete and
resumes when it is partial, so rerunning the same command continues an interrupted pipeline."""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from aime_jax import config as config_lib
from aime_jax.errors import AimeError


def datasets(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    """Makes sure the embodiment dataset exists in the configured modality.

    The random-policy dataset is collected here (continued if partial); other datasets come from
    their builder.
    """
    from aime_jax.data.collect import collect
    from aime_jax.data.render import render_folder

    folder = config_lib.embodiment_dir(config)
    random_name = f"{config.domain}-random"
    visual = config.modality == "visual"
    if config.data.embodiment == random_name and not config.data.embodiment_dir:
        if jax.process_index() == 0:
            # Collected with images only when they are needed; render.py adds them later.
            collect(
                f"{config.domain}-{'stand' if config.domain == 'walker' else 'run'}",
                "visual" if visual else "mdp",
                folder,
                config.data.random_episodes,
                policy="random",
                seed=config.seed,
            )
    elif not os.path.isdir(folder):
        raise AimeError(
            f"embodiment dataset {folder!r} does not exist. This version builds only the random "
            f"dataset ({random_name!r}) itself; collect others with experiments/collect.py, or "
            "point config.data.embodiment_dir at an existing folder of episodes"
        )
    if visual and jax.process_index() == 0:
        render_folder(folder, size=64)


def phase1(config: ml_collections.ConfigDict, workdir: str, mesh) -> None:
    from aime_jax.agents.world_model import train_world_model

    train_world_model(config, os.path.join(workdir, "phase1"), config_lib.embodiment_dir(config), mesh)


STAGE_FNS = {"datasets": datasets, "phase1": phase1}


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """config.json of the run directory; a rerun with other settings is refused, not mixed in."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        changed = sorted(_diff(old, new))
        # Stages, logging and step counts may change between reruns (e.g. to train for longer).
        harmless = ("stages", "wandb.", "phase1.steps", "phase1.log_every", "phase1.eval_every", "data.prefetch")
        changed = [k for k in changed if not k.startswith(harmless)]
        if changed:
            raise AimeError(
                f"{workdir} holds a run with other settings ({', '.join(changed)}); use a new "
                "--workdir, or the same settings to resume"
            )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(new, f, indent=2)
    os.replace(tmp, path)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")
