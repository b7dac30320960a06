"""The folder lock that shared datasets, experts, world models and run directories are written
under: one holder at a time across processes, waiters say for what they wait, a lock whose owner
died (gone on this host, or silent past the stale time) is taken over, a live one never is."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from aime_jax import locks
from aime_jax.errors import AimeError

from support import program, program_env

def _holder(target, seconds, log, *extra, stale_s=None):
    """tests/programs/lock_holder.py holding the lock of `target` for `seconds`."""
    env = program_env()
    if stale_s is not None:
        env["AIME_LOCK_STALE_S"] = str(stale_s)
    return subprocess.Popen([sys.executable, program("lock_holder"), str(target), str(seconds), str(log), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _intervals(log):
    starts, ends = {}, {}
    for line in open(log):
        kind, pid, t = line.split()
        (starts if kind == "start" else ends)[pid] = float(t)
    return sorted((starts[p], ends.get(p)) for p in starts)


def test_two_processes_never_hold_one_lock_at_once_and_the_waiter_says_why(tmp_path):
    target, log = tmp_path / "data" / "walker-random", tmp_path / "log"
    procs = [_holder(target, 1.0, log) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (s1, e1), (s2, e2) = _intervals(log)
    assert e1 <= s2  # one after the other
    waited = [o for o in outs if "waiting for the test's work: another process holds it (pid" in o]
    assert len(waited) == 1, outs
    assert not os.path.exists(locks.lock_path(target)) and os.listdir(tmp_path / "data") == []


def test_a_lock_whose_owner_died_on_this_host_is_taken_over(tmp_path, capsys):
    target, log = tmp_path / "run", tmp_path / "log"
    dead = _holder(target, 0.0, log, "die")
    dead.communicate(timeout=60)
    assert dead.returncode == -signal.SIGKILL and os.path.exists(locks.lock_path(target))
    assert locks.holder(target) is None  # stale: nobody holds it
    started = time.monotonic()
    with locks.hold(target, "the run", poll_s=0.05):
        assert json.load(open(locks.lock_path(target)))["pid"] == os.getpid()
    assert time.monotonic() - started < 5  # at once, not after the stale time
    out = capsys.readouterr().out
    assert f"taking over the stale lock of the run (pid {dead.pid} on" in out and "is gone" in out


def _foreign_lock(target, age_s):
    path = locks.lock_path(target)
    with open(path, "w") as f:
        json.dump({"pid": 1, "host": "another-host", "created": time.time() - age_s, "token": "x"}, f)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_a_silent_lock_of_another_host_is_taken_over_after_the_stale_time_and_not_before(tmp_path, monkeypatch,
                                                                                           capsys):
    monkeypatch.setenv("AIME_LOCK_STALE_S", "3")
    target = tmp_path / "expert"
    _foreign_lock(target, age_s=1)
    # Touched a second ago: its owner may be alive on its host; the waiter waits and says for whom.
    with pytest.raises(AimeError, match=r"waited 1 s for the expert: .* is held by pid 1 on another-host"):
        with locks.hold(target, "the expert", poll_s=0.05, timeout_s=1):
            pass
    assert "waiting for the expert: another process holds it (pid 1 on another-host" in capsys.readouterr().out
    _foreign_lock(target, age_s=10)
    with locks.hold(target, "the expert", poll_s=0.05, timeout_s=1):
        pass
    assert "no heartbeat for 10 s (more than 3 s)" in capsys.readouterr().out
    assert not os.path.exists(locks.lock_path(target))


def test_a_live_holders_heartbeat_keeps_its_lock_past_the_stale_time(tmp_path):
    """The holder works for 4 s with a stale time of 1 s: its heartbeat keeps the lock fresh, so
    the waiter (started just after it) waits for it to finish instead of taking it over."""
    target, log = tmp_path / "world_model", tmp_path / "log"
    first = _holder(target, 4.0, log, stale_s=1)
    deadline = time.time() + 60
    while not os.path.exists(log):
        assert time.time() < deadline and first.poll() is None
        time.sleep(0.05)
    second = _holder(target, 0.0, log, stale_s=1)
    outs = [p.communicate(timeout=60)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    (s1, e1), (s2, _) = _intervals(log)
    assert e1 <= s2 and "taking over" not in outs[1] and "waiting for" in outs[1], outs


def test_the_lock_is_reentrant_in_one_process_and_released_on_errors(tmp_path):
    target = tmp_path / "dataset"
    with pytest.raises(RuntimeError):
        with locks.hold(target, "a build"):
            with locks.hold(target, "the same build, nested"):
                assert locks.holder(target)["pid"] == os.getpid()
            assert os.path.exists(locks.lock_path(target))
            raise RuntimeError
    assert not os.path.exists(locks.lock_path(target)) and locks.holder(target) is None


def test_a_bad_stale_time_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("AIME_LOCK_STALE_S", "soon")
    with pytest.raises(AimeError, match="AIME_LOCK_STALE_S='soon'; give the seconds"):
        with locks.hold(tmp_path / "x", "anything"):
            pass
