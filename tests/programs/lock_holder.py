"""Holds the lock of TARGET for SECONDS seconds, logging its start and end to LOG; with a fourth
argument it dies holding it (killed, so nothing releases it). Run by tests/test_locks.py:
    lock_holder.py TARGET SECONDS LOG [die]
"""
import os
import sys
import time

from aime_jax import locks

target, seconds, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with locks.hold(target, "the test's work", poll_s=0.05):
    with open(log, "a") as f:
        f.write(f"start {os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end {os.getpid()} {time.time()}\n")
    if len(sys.argv) > 4:
        os.kill(os.getpid(), 9)
