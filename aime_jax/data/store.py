"""A training store over a folder of episodes, backed by a memory-mapped packed copy.

The first use of a folder concatenates its episodes, key by key, into `.npy` files in
`<folder>/.aime_pack/` (one episode in memory at a time), and later uses memory-map them, so a
dataset larger than RAM (walker-mix visual: ~2M frames, ~24 GB of images) trains without loading
every file. The pack records the name, size and mtime of every episode file; when the episodes
change it is rebuilt. It is built in a temporary folder and renamed into place, so a killed build
never leaves a pack that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from typing import Iterable, Sequence

import numpy as np

from aime_jax.data.episodes import REQUIRED_KEYS, check_length, check_values, list_episodes, load_episode
from aime_jax.errors import DatasetError

PACK_DIR = ".aime_pack"
PACK_VERSION = 1


def _file_table(files: Sequence[str]) -> list[list]:
    table = []
    for f in files:
        st = os.stat(f)
        table.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return table


def _fingerprint(table: list[list]) -> str:
    """Identity of a dataset: names and sizes of its files (stable under copying)."""
    h = hashlib.sha256()
    for name, size, _ in table:
        h.update(f"{name}:{size};".encode())
    return h.hexdigest()[:16]


def _default_pack_dir(folder: str) -> str:
    if os.access(folder, os.W_OK):
        return os.path.join(folder, PACK_DIR)
    # A read-only dataset (e.g. a shared mount) gets its pack in the user's cache instead.
    digest = hashlib.sha256(os.path.abspath(folder).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~/.cache/aime_jax/packs"), digest)


def _read_manifest(pack_dir: str) -> dict | None:
    try:
        with open(os.path.join(pack_dir, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _peek(path: str) -> tuple[set[str], int]:
    """Keys and length of an episode file, reading only its `reward` entry."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return set(z.files), len(z["reward"])
    except KeyError:
        raise DatasetError(f"{path}: has no `reward` key; it is not an episode in the authors' layout") from None
    except Exception as e:  # noqa: BLE001 - any decoding failure means the same thing here
        raise DatasetError(
            f"{path}: not a readable .npz episode ({type(e).__name__}: {e}); it was probably "
            "written partially: delete it and collect it again"
        ) from None


def _build_pack(folder: str, files: list[str], table: list[list], pack_dir: str, progress: bool) -> None:
    """Packs every episode of `folder` into `pack_dir`, atomically."""
    first = load_episode(files[0])
    missing = [k for k in REQUIRED_KEYS if k not in first]
    if missing:
        raise DatasetError(f"{files[0]}: missing required key(s) {missing}; it has {sorted(first)}")
    spec = {k: (v.dtype, v.shape[1:]) for k, v in first.items()}
    lengths = [len(first["reward"])]
    for f in files[1:]:
        keys, n = _peek(f)
        if keys != set(spec):
            raise DatasetError(
                f"{f}: its keys {sorted(keys)} differ from {files[0]}'s {sorted(spec)}; every "
                "episode of a dataset must have the same keys (remove or re-collect the odd ones)"
            )
        lengths.append(n)
    parent = os.path.dirname(pack_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(pack_dir) + ".tmp-", dir=parent)
    try:
        total = int(np.sum(lengths))
        arrays = {
            k: np.lib.format.open_memmap(
                os.path.join(tmp, f"{k}.npy"), mode="w+", dtype=dt, shape=(total, *shape)
            )
            for k, (dt, shape) in spec.items()
        }
        offset = 0
        iterator = files
        if progress:
            from tqdm import tqdm

            iterator = tqdm(files, desc=f"packing {folder}", unit="ep", leave=False)
        for f, n in zip(iterator, lengths):
            ep = first if f == files[0] else load_episode(f)
            for k, (dt, shape) in spec.items():
                v = ep[k]
                if v.shape[1:] != shape or len(v) != n:
                    raise DatasetError(
                        f"{f}: key {k!r} has shape {v.shape}, but {files[0]} has "
                        f"(T, {', '.join(map(str, shape))}); every episode of a dataset must "
                        "agree (re-collect or re-render the odd ones)"
                    )
                arrays[k][offset : offset + n] = v.astype(dt, copy=False)
            offset += n
        for a in arrays.values():
            a.flush()
        del arrays
        manifest = {
            "version": PACK_VERSION,
            "folder": os.path.abspath(folder),
            "files": table,
            "fingerprint": _fingerprint(table),
            "lengths": [int(n) for n in lengths],
            "keys": {k: {"dtype": np.dtype(dt).str, "shape": list(shape)} for k, (dt, shape) in spec.items()},
            # load_episode checked every value on the way in.
            "checked": True,
        }
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        old = None
        if os.path.exists(pack_dir):
            old = tempfile.mkdtemp(prefix=os.path.basename(pack_dir) + ".old-", dir=parent)
            os.rmdir(old)
            os.rename(pack_dir, old)
        try:
            os.rename(tmp, pack_dir)
        except OSError:
            # Another process (another host on a shared disk) renamed its identical pack first.
            shutil.rmtree(tmp, ignore_errors=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_pack(folder: str, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """The checks of `load_episode`, on a pack built before the episodes were checked as they were
    packed (it would otherwise be trusted until its files change)."""
    offset = 0
    for (name, _, _), n in zip(manifest["files"], manifest["lengths"]):
        path = os.path.join(folder, name)
        check_length(path, n)
        for key, array in arrays.items():
            check_values(path, key, array[offset : offset + n])
        offset += n


class EpisodeStore:
    """All episodes of a folder as memory-mapped arrays, one per key, concatenated over time.

    `store.arrays[key]` has shape (total_steps, ...); episode i spans
    `offsets[i]:offsets[i] + lengths[i]`. `select` gives a view over a subset of episodes (a
    validation split, the first N demonstrations) that shares the same arrays.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        pack_dir: str | None = None,
        progress: bool = True,
        _view: tuple | None = None,
    ):
        self.folder = os.fspath(folder)
        if _view is not None:
            self.pack_dir, self.arrays, self.manifest, self.episode_ids, self._all_offsets, self._all_lengths = _view
        else:
            files = list_episodes(self.folder)
            table = _file_table(files)
            self.pack_dir = pack_dir or _default_pack_dir(self.folder)
            manifest = _read_manifest(self.pack_dir)
            if manifest is None or manifest.get("version") != PACK_VERSION or manifest["files"] != table:
                _build_pack(self.folder, files, table, self.pack_dir, progress)
                manifest = _read_manifest(self.pack_dir)
            self.manifest = manifest
            self.arrays = {
                k: np.load(os.path.join(self.pack_dir, f"{k}.npy"), mmap_mode="r") for k in manifest["keys"]
            }
            if not manifest.get("checked"):
                _check_pack(self.folder, manifest, self.arrays)
            self._all_lengths = np.asarray(manifest["lengths"], np.int64)
            self._all_offsets = np.concatenate([[0], np.cumsum(self._all_lengths)[:-1]]).astype(np.int64)
            self.episode_ids = np.arange(len(self._all_lengths))
        self.lengths = self._all_lengths[self.episode_ids]
        self.offsets = self._all_offsets[self.episode_ids]

    @property
    def fingerprint(self) -> str:
        """Identity of the whole folder's files (names and sizes) and of the selected episodes, which
        changes when any key is added to the files; runs identify their data by `fingerprint_of`."""
        base = self.manifest["fingerprint"]
        if len(self.episode_ids) == len(self._all_lengths):
            return base
        sel = hashlib.sha256(self.episode_ids.tobytes()).hexdigest()[:8]
        return f"{base}-{sel}"

    def fingerprint_of(self, keys: Iterable[str]) -> str:
        """Identity of what a run reads: the arrays `keys` of the selected episodes, in order (each
        file's name and, per key, the CRC-32 and size that its zip directory records for the array,
        read without decompressing). Keys added to the files later (images rendered for another
        modality) and episodes added beyond the selection leave it unchanged; it is stable under
        copying and recompression."""
        h = hashlib.sha256()
        for i in self.episode_ids:
            name = self.manifest["files"][i][0]
            path = os.path.join(self.folder, name)
            try:
                with zipfile.ZipFile(path) as zf:
                    entries = {info.filename: info for info in zf.infolist()}
            except (OSError, zipfile.BadZipFile) as e:
                raise DatasetError(f"{path}: cannot be read ({e}); restore the dataset or collect it again") from None
            h.update(f"{name};".encode())
            for key in sorted(set(keys)):
                info = entries.get(f"{key}.npy")
                h.update(f"{key}:{info.CRC}:{info.file_size};".encode() if info else f"{key}:-;".encode())
        return h.hexdigest()[:16]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_ids)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return self.num_episodes

    def select(self, episode_ids: Iterable[int]) -> "EpisodeStore":
        ids = self.episode_ids[np.asarray(list(episode_ids), np.int64)]
        view = (self.pack_dir, self.arrays, self.manifest, ids, self._all_offsets, self._all_lengths)
        return EpisodeStore(self.folder, _view=view)

    def episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        start, n = self.offsets[i], self.lengths[i]
        return {k: np.asarray(self.arrays[k][start : start + n]) for k in (keys or self.keys)}

    def valid_starts(self, window: int) -> np.ndarray:
        """Flat start offsets of every window of `window` steps that stays inside one episode."""
        if window < 1:
            raise DatasetError(f"window length must be >= 1, got {window}")
        longest = int(self.lengths.max()) if self.num_episodes else 0
        if window > longest:
            raise DatasetError(
                f"window length {window} is longer than every episode in {self.folder!r} "
                f"(the longest has {longest} steps); use a shorter window or longer episodes"
            )
        counts = np.maximum(self.lengths - window + 1, 0)
        starts = [off + np.arange(c) for off, c in zip(self.offsets, counts) if c > 0]
        return np.concatenate(starts).astype(np.int64)

    def gather(self, starts: np.ndarray, window: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Windows (B, T, ...) beginning at the flat offsets `starts`; images stay uint8."""
        idx = np.asarray(starts, np.int64)[:, None] + np.arange(window)
        return {k: self.arrays[k][idx] for k in (keys or self.keys)}

    def check_keys(self, keys: Iterable[str]) -> None:
        missing = [k for k in keys if k not in self.arrays]
        if missing:
            hint = (
                " Render images with `python experiments/render.py --data=" + self.folder + "`."
                if "image" in missing
                else ""
            )
            raise DatasetError(
                f"dataset {self.folder!r} has no key(s) {missing} (it has {sorted(self.arrays)}).{hint}"
            )
