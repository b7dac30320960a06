"""Re-rendering the `image` key of stored episodes from their physics states, on several processes."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal

import numpy as np

from aime_jax import locks
from aime_jax.atomic import remove_stale_temporaries, writable_dir
from aime_jax.data.episodes import list_episodes, save_episode
from aime_jax.errors import AimeError, DatasetError

_renderer = None


def _domain_of_folder(folder: str, first_file: str) -> str:
    from aime_jax import envs

    meta = os.path.join(folder, "meta.json")
    if os.path.exists(meta):
        with open(meta) as f:
            return envs.domain_of(json.load(f)["env"])
    with np.load(first_file) as z:
        keys = set(z.files)
    for domain, proprio in envs.PROPRIO_KEYS.items():
        if set(proprio) <= keys:
            return domain
    raise DatasetError(f"{folder}: cannot tell walker from cheetah by its keys; pass --domain")


def _needs_render(path: str, size: int) -> bool:
    with np.load(path) as z:
        if "physics_state" not in z.files:
            raise DatasetError(
                f"{path}: has no `physics_state` key, so its images cannot be re-rendered "
                "(episodes collected by aime-jax carry it; the authors' files do not)"
            )
        return "image" not in z.files or z["image"].shape[1:3] != (size, size)


def _init_worker(domain: str, size: int, camera: int) -> None:
    global _renderer
    # Ctrl-C reaches every process of the group: the parent reports it in one line and stops the
    # pool; a worker's own traceback would only bury that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from aime_jax.envs.dmc import StateRenderer

    _renderer = StateRenderer(domain, size, camera)


def _render_file(path: str) -> str:
    with np.load(path) as z:
        episode = {k: z[k] for k in z.files}
    episode["image"] = _renderer(episode["physics_state"])
    save_episode(path, episode)
    return path


def render_folder(
    folder: str,
    size: int = 64,
    workers: int | None = None,
    camera: int = 0,
    domain: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> int:
    """Adds (or replaces) `image` in every episode of `folder`; returns how many were rendered.

    Files that already hold images of this size are skipped unless `force`, so an interrupted
    run continues where it stopped. Each file is rewritten atomically.
    """
    if size < 1 or camera < 0 or (workers is not None and workers < 1):
        raise AimeError(
            f"rendering needs size >= 1, camera >= 0 and workers >= 1; got size={size}, camera={camera}, "
            f"workers={workers}"
        )
    list_episodes(folder)  # refuses a missing or empty folder first
    writable_dir(folder, "dataset folder")
    # A builder of the same folder (or another renderer) writes there only under this lock.
    with locks.hold(folder, f"the dataset {folder}"):
        return _render_locked(folder, size, workers, camera, domain, force, progress)


def _render_locked(folder: str, size: int, workers: int | None, camera: int,
                   domain: str | None, force: bool, progress: bool) -> int:
    files = list_episodes(folder)
    remove_stale_temporaries(folder)
    domain = domain or _domain_of_folder(folder, files[0])
    todo = [f for f in files if force or _needs_render(f, size)]
    if not todo:
        return 0
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"render {folder} ({workers} proc)", unit="ep")
    # Each worker owns its own OpenGL context; 'spawn' avoids inheriting one through fork.
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(domain, size, camera)) as pool:
        for _ in pool.imap_unordered(_render_file, todo):
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return len(todo)
