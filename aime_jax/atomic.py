"""Atomic file writes: a temporary file beside the target, fsync, then rename.

Readers see the old file or the new one, never a half-written one; the temporary name starts
with a dot and ends in `.tmp`, so a writer killed mid-write leaves nothing that looks like data.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import IO, Any, Iterator

from aime_jax.errors import AimeError, ConfigError

# A URL such as gs://bucket/runs or s3://...: os.makedirs would create a local folder named "gs:".
_CLOUD_PATH = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# The names atomic_open gives its temporaries: "." + target name + "." + mkstemp's 8 characters + ".tmp".
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; written files should get the usual mode.
_UMASK = _current_umask()


def check_local_path(path: str | os.PathLike, what: str) -> None:
    """Refuses a cloud URL (gs://, s3://, ...) where a folder on a filesystem is needed: run
    directories, datasets and their locks are written with the operating system's file calls,
    which would turn gs://bucket into a local folder named "gs:"."""
    path = os.fspath(path)
    if _CLOUD_PATH.match(path):
        raise ConfigError(
            f"{what}: {path!r} is a cloud URL, and aime-jax reads and writes runs and datasets as local files; "
            "mount the bucket (e.g. with gcsfuse, on every host) and give the mounted folder's path"
        )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A file object whose contents replace `path` only when the block completes."""
    path = os.fspath(path)
    check_local_path(path, "file")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, **kwargs)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Removes the temporaries that `atomic_open` writers killed mid-write left in `folder`.
    Only for a folder no other writer is working in at the time."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _TEMPORARY.fullmatch(name) and os.path.isfile(path):
            os.remove(path)


def writable_dir(path: str | os.PathLike, what: str) -> None:
    """Creates the folder `path` if needed and proves that it can be written, by writing there,
    so that a run refuses a file, a read-only disk or a missing permission before it starts."""
    path = os.fspath(path)
    check_local_path(path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise AimeError(f"{what} {path} is a file, not a folder; choose another {what}")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=path)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise AimeError(
            f"{what} {path} cannot be written ({e.strerror or e}); choose a folder you can write to"
        ) from None
