"""One episode per `.npz` file, in the layout of the authors' release.

On disk every proprioceptive key, `pre_action`, `reward`, `is_first`, `is_last`, `is_terminal`
(and `image`, T x H x W x 3 uint8, where rendered) has a leading time axis; vectors are (T, d) and
scalars (T, 1), as the release writes them. Our own extra key is `physics_state` (T, S) float64.
Files are named `<index>.npz`. In memory, `load_episode` returns scalars as (T,) and vectors as
float32 (T, d), whatever the file's float width.
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import Iterable, Sequence

import numpy as np

from aime_jax.atomic import atomic_open
from aime_jax.errors import DatasetError

REQUIRED_KEYS = ("pre_action", "reward", "is_first", "is_last", "is_terminal")
# Walker and cheetah both have six actuators (aime_jax.envs.dmc.ACTION_DIM, which this layer
# cannot import without loading the simulator).
ACTION_WIDTH = 6
SCALAR_KEYS = ("reward", "is_first", "is_last", "is_terminal", "discount")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
# Kept at full precision: re-rendering must reproduce the simulator exactly.
EXACT_KEYS = ("physics_state",)


def episode_from_steps(steps: Sequence, include_image: bool | None = None) -> dict[str, np.ndarray]:
    """Stacks `aime_jax.envs.Step`s into an episode dict in the on-disk layout."""
    if not steps:
        raise ValueError("an episode needs at least one step")
    if include_image is None:
        include_image = steps[0].image is not None
    ep = {k: np.stack([s.proprio[k] for s in steps]).astype(np.float32) for k in steps[0].proprio}
    if include_image:
        ep["image"] = np.stack([s.image for s in steps]).astype(np.uint8)
    ep["pre_action"] = np.stack([s.action for s in steps]).astype(np.float32)
    ep["reward"] = np.array([[s.reward] for s in steps], np.float32)
    ep["is_first"] = np.array([[s.is_first] for s in steps], bool)
    ep["is_last"] = np.array([[s.is_last] for s in steps], bool)
    ep["is_terminal"] = np.array([[s.is_terminal] for s in steps], bool)
    ep["physics_state"] = np.stack([s.physics_state for s in steps]).astype(np.float64)
    return ep


def save_episode(path: str | os.PathLike, episode: dict[str, np.ndarray], compress: bool = True) -> None:
    """Writes atomically: a temporary file in the same folder, fsync, then rename.

    The temporary name does not end in `.npz`, so a writer killed mid-write leaves nothing that a
    reader takes for an episode.
    """
    with atomic_open(path) as f:
        (np.savez_compressed if compress else np.savez)(f, **episode)


def _sort_key(name: str):
    stem = name[: -len(".npz")]
    return (0, int(stem), "") if re.fullmatch(r"\d+", stem) else (1, 0, stem)


def list_episodes(folder: str | os.PathLike) -> list[str]:
    """The episode files of a folder in index order (`2.npz` before `10.npz`)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DatasetError(
            f"dataset folder {folder!r} does not exist; collect one with "
            f"`python experiments/collect.py --out={folder} ...` or fix the path"
        )
    names = [n for n in os.listdir(folder) if n.endswith(".npz") and not n.startswith(".")]
    if not names:
        raise DatasetError(
            f"dataset folder {folder!r} holds no .npz episodes; collect some with "
            f"`python experiments/collect.py --out={folder} ...`"
        )
    return [os.path.join(folder, n) for n in sorted(names, key=_sort_key)]


def _normalise(path: str, key: str, value: np.ndarray) -> np.ndarray:
    if key in SCALAR_KEYS:
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if value.ndim != 1:
            raise DatasetError(f"{path}: key {key!r} must have shape (T,) or (T, 1), got {value.shape}")
        return value.astype(bool) if key in FLAG_KEYS else value.astype(np.float32)
    if key == "image":
        if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8:
            raise DatasetError(
                f"{path}: `image` must be uint8 (T, H, W, 3), got {value.dtype} {value.shape}"
            )
        return value
    if value.ndim == 1:
        value = value[:, None]
    if key in EXACT_KEYS:
        return value.astype(np.float64)
    if value.dtype.kind == "f":
        return value.astype(np.float32)
    return value


def check_length(path: str, length: int) -> None:
    if length < 1:
        raise DatasetError(f"{path}: the episode has no steps; remove the file or collect the episode again")


def check_values(path: str, key: str, value: np.ndarray) -> None:
    """Refuses, where an episode enters, what would otherwise surface far away as a non-finite
    loss, a NaN score or a shape error inside JAX: a non-finite float (naming its step) and a
    `pre_action` that is not one action per step."""
    if key == "pre_action" and value.shape[1:] != (ACTION_WIDTH,):
        raise DatasetError(
            f"{path}: 'pre_action' has shape {value.shape}, not (T, {ACTION_WIDTH}) (one value per actuator "
            "and step); collect the episode again"
        )
    if value.dtype.kind != "f" or not len(value):
        return
    finite = np.isfinite(value).reshape(len(value), -1).all(axis=1)
    if not finite.all():
        step = int(np.argmin(finite))
        row = np.ravel(value[step])
        raise DatasetError(
            f"{path}: {key!r} is {row[~np.isfinite(row)][0]} at step {step} ({int((~finite).sum())} step(s) "
            "non-finite); remove the file or collect the episode again"
        )


def load_episode(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Reads and checks one episode file (keys, shapes, finite values); `keys` limits what is
    decompressed."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            available = list(f.files)
            wanted = available if keys is None else list(keys)
            missing = [k for k in wanted if k not in available]
            if missing:
                raise DatasetError(
                    f"{path}: missing key(s) {missing}; it has {sorted(available)}. "
                    "Re-collect the episode, or render images with experiments/render.py if only "
                    "`image` is missing"
                )
            raw = {k: f[k] for k in wanted}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise DatasetError(
            f"{path}: not a readable .npz episode ({type(e).__name__}: {e}); it was probably "
            "written partially: delete it and collect it again"
        ) from None
    episode = {k: _normalise(path, k, v) for k, v in raw.items()}
    lengths = {k: len(v) for k, v in episode.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{path}: keys disagree on the episode length: {lengths}")
    if lengths:
        check_length(path, min(lengths.values()))
    for key, value in episode.items():
        check_values(path, key, value)
    return episode
