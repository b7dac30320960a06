"""Huge pages for the host memory XLA allocates every step (Linux with glibc).

XLA's CPU client allocates each execution's temporary buffers (1.3 GB for a Visual phase-1 step
at B=50, T=50; 150-330 MB for MDP) with malloc, and glibc serves allocations that large with
fresh `mmap` pages and returns them at `free`. Every step therefore faults in its whole working
set again, 4 KiB at a time (~315,000 page faults and ~0.55 s of kernel time per Visual step on
our 2-core CPU). glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) makes malloc ask for
transparent huge pages for such chunks: ~1,000 faults per step, and on that CPU phase-1 steps
get 3-15 % faster, phase-2 steps 9-13 % (benchmarks/results/phase{1,2}_cpu_hugepages{,_off}.json).

glibc reads tunables only when a process starts, so the entry points call
`reexec_with_huge_pages()` first: where it applies, it adds the tunable to GLIBC_TUNABLES and
replaces the process with the same command (`os.execve`, same PID, arguments and open files).
Set AIME_JAX_HUGEPAGES=0 to leave the process as started; setting `glibc.malloc.hugetlb` in
GLIBC_TUNABLES yourself also wins. Code that imports aime_jax from its own program can set
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment instead.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "AIME_JAX_HUGEPAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError, TypeError):
        return None


def _thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), None if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def tuned_environment(environ: Mapping[str, str], platform: str, glibc: tuple[int, int] | None,
                      thp_mode: str | None) -> dict[str, str] | None:
    """The environment to restart with, or None when nothing is to be done: not Linux, not glibc
    >= 2.35 (older ones ignore the tunable), huge pages off in the kernel, the tunable already set
    (by us or by the user), or AIME_JAX_HUGEPAGES=0."""
    if environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not platform.startswith("linux") or glibc is None or glibc < (2, 35):
        return None
    if thp_mode not in ("always", "madvise"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=")[0] == TUNABLE for item in tunables.split(":")):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return env


def reexec_with_huge_pages() -> None:
    """Restart this program with glibc's malloc huge pages on, where that applies (see the module
    docstring); otherwise return. Call it first in an entry point's `__main__` block."""
    env = tuned_environment(os.environ, sys.platform, _glibc_version(), _thp_mode())
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), env)
    except OSError:
        return  # cannot restart (unusual interpreter setup): run as started
