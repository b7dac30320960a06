"""Exclusive locks on folders that several processes or hosts may write (a shared dataset, an
expert run, a shared world model, a run directory), for a filesystem all of them see.

The lock of `<parent>/<name>` is the file `<parent>/.<name>.lock`, created atomically
(`O_CREAT | O_EXCL`, which NFS and the usual cluster filesystems honour) and holding its owner's
pid, host, start time and a random token. While it is held, a thread touches the file every
`HEARTBEAT_S` seconds (a quarter of the stale time, if that is shorter). A waiter takes a lock over when it is stale:

- its owner ran on this host and that process is gone (killed, crashed), or
- it has not been touched for `stale_after_s()` seconds (`AIME_LOCK_STALE_S`, default 600): a
  host that died, or a process killed on another host.

Taking over goes through a second lock file (`.<name>.lock.break`), so two waiters never both
remove a stale lock and one of them a fresh one. The work done under a lock must be resumable
(every builder and training loop here is): whoever takes a lock over continues what the dead
owner left. Locks are re-entrant within a process.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import Callable, Iterator

from aime_jax.atomic import check_local_path
from aime_jax.errors import AimeError

HEARTBEAT_S = 30.0
DEFAULT_STALE_S = 600.0
# A takeover holds the break file for milliseconds; one older than this was left by a killed waiter.
BREAK_STALE_S = 60.0
_HOST = socket.gethostname()
# The locks this process holds: how often each is entered, and its token.
_held: dict[str, int] = {}
_tokens: dict[str, str] = {}
_held_guard = threading.Lock()


def stale_after_s() -> float:
    """Seconds without a heartbeat after which a lock is abandoned (`AIME_LOCK_STALE_S`)."""
    value = os.environ.get("AIME_LOCK_STALE_S", "")
    if not value:
        return DEFAULT_STALE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise AimeError(f"AIME_LOCK_STALE_S={value!r}; give the seconds after which a silent lock is stale, e.g. 600")
    return seconds


def lock_path(target: str | os.PathLike) -> str:
    """The lock file of the folder or file `target`: a hidden file beside it."""
    target = os.path.abspath(os.fspath(target))
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")


def _read(path: str) -> tuple[dict | None, os.stat_result | None]:
    """(owner record, stat) of a lock file; (None, None) if there is none, ({}, stat) while its
    owner is still writing the record."""
    try:
        st = os.stat(path)
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(text), st
    except ValueError:
        return {}, st


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_reason(info: dict, st: os.stat_result, stale_s: float) -> str | None:
    """Why the lock is abandoned, or None while its owner may still be at work."""
    silent = time.time() - st.st_mtime
    if info.get("host") == _HOST and isinstance(info.get("pid"), int):
        pid = info["pid"]
        if pid == os.getpid() and info.get("token") not in _tokens.values():
            return f"left by an earlier process with this pid ({pid})"
        if pid != os.getpid() and not _alive(pid):
            return f"its process {pid} on this host is gone"
    if silent > stale_s:
        return f"no heartbeat for {silent:.0f} s (more than {stale_s:.0f} s)"
    return None



def describe(info: dict | None) -> str:
    if not info:
        return "a process that is still writing its lock"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("created", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} since {since}"


def holder(target: str | os.PathLike) -> dict | None:
    """The live owner's record of `target`'s lock, or None when it is free or stale."""
    info, st = _read(lock_path(target))
    if info is None or _stale_reason(info, st, stale_after_s()) is not None:
        return None
    return info


def _break(path: str, info: dict, st: os.stat_result) -> bool:
    """Removes the stale lock `path` if it is still the one that was judged stale."""
    guard = path + ".break"
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(guard).st_mtime > BREAK_STALE_S:
                os.unlink(guard)
        return False
    try:
        now, now_st = _read(path)
        if now is None:
            return True
        if now != info or now_st.st_ino != st.st_ino or now_st.st_mtime_ns != st.st_mtime_ns:
            return False  # renewed by its owner, or already replaced by another waiter's lock
        os.unlink(path)
        return True
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(guard)


def _create(path: str, what: str) -> str | None:
    """Creates the lock file; its token, or None if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    except OSError as e:
        raise AimeError(
            f"cannot create the lock {path} ({e.strerror or e}) for {what}, which writes there; use a folder "
            "that can be written"
        ) from None
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": _HOST, "created": time.time(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token, "what": what}
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return token


class _Heartbeat(threading.Thread):
    def __init__(self, path: str, token: str, every: float):
        super().__init__(daemon=True, name=f"lock heartbeat {path}")
        self.path, self.token, self.every = path, token, every
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            info, _ = _read(self.path)
            if not info or info.get("token") != self.token:
                print(f"warning: the lock {self.path} was taken over by another process (it judged this "
                      "one dead); stop one of them", file=sys.stderr, flush=True)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)


@contextlib.contextmanager
def hold(
    target: str | os.PathLike,
    what: str,
    *,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> Iterator[None]:
    """Holds `target`'s lock for the block, waiting (and saying for what, and for whom) while
    another live process holds it; takes a stale lock over. `what` names the work, e.g.
    "building data/walker-random". `timeout_s` bounds the wait (AimeError after it)."""
    check_local_path(target, what)
    path = lock_path(target)
    with _held_guard:
        if _held.get(path):
            _held[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    stale_s = stale_after_s()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise AimeError(f"cannot create {os.path.dirname(path)} ({e.strerror or e}) for {what}; use a folder "
                        "that can be written") from None
    start, told = time.monotonic(), None
    while True:
        token = _create(path, what)
        if token is not None:
            break
        info, st = _read(path)
        if info is None:
            continue  # released in between
        reason = _stale_reason(info, st, stale_s)
        if reason is not None:
            if _break(path, info, st):
                log(f"taking over the stale lock of {what} ({describe(info)}: {reason})")
            continue
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise AimeError(
                f"waited {timeout_s:.0f} s for {what}: {path} is held by {describe(info)}; wait for it to "
                f"finish, or stop it (a lock whose owner died is taken over after {stale_s:.0f} s)"
            )
        key = (info.get("pid"), info.get("host"), info.get("token"))
        if key != told:
            log(f"waiting for {what}: another process holds it ({describe(info)}; lock {path})")
            told = key
        time.sleep(poll_s)
    _tokens[path] = token
    with _held_guard:
        _held[path] = 1
    beat = _Heartbeat(path, token, min(HEARTBEAT_S, stale_s / 4))
    beat.start()
    try:
        yield
    finally:
        beat.stop.set()
        beat.join()
        with _held_guard:
            _held.pop(path, None)
        _tokens.pop(path, None)
        info, _ = _read(path)
        if info and info.get("token") == token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
