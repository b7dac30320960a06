"""Entry points restart with glibc's malloc huge pages (aime_jax/hostmem.py)."""
import json
import subprocess
import sys

import pytest

from aime_jax import hostmem

from support import program, program_env

LINUX = dict(platform="linux", glibc=(2, 36), thp_mode="madvise")


def test_the_tunable_is_added_to_the_environment():
    env = hostmem.tuned_environment({"HOME": "/h"}, **LINUX)
    assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = hostmem.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hostmem.tuned_environment({}, "linux", (2, 39), "always") is not None


@pytest.mark.parametrize("environ, platform, glibc, thp_mode", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "linux", (2, 36), "madvise"),  # already restarted
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux", (2, 36), "madvise"),  # the user's choice
    ({"AIME_JAX_HUGEPAGES": "0"}, "linux", (2, 36), "madvise"),  # opted out
    ({}, "darwin", None, None),
    ({}, "linux", None, "madvise"),  # not glibc (musl)
    ({}, "linux", (2, 31), "madvise"),  # glibc without the tunable
    ({}, "linux", (2, 36), "never"),
    ({}, "linux", (2, 36), None),
])
def test_nothing_is_done_where_it_does_not_apply(environ, platform, glibc, thp_mode):
    assert hostmem.tuned_environment(environ, platform, glibc, thp_mode) is None


def _run(**env) -> tuple[int, dict]:
    """How many times tests/programs/hugepages_child.py started, and what it reported at its end."""
    environ = {k: v for k, v in program_env().items() if k not in ("GLIBC_TUNABLES", hostmem.OPT_OUT)}
    out = subprocess.run([sys.executable, "-u", program("hugepages_child"), "a", "b c"], env={**environ, **env},
                         capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    return out.count("start"), json.loads(out[-1])


@pytest.mark.skipif(
    hostmem.tuned_environment({}, sys.platform, hostmem._glibc_version(), hostmem._thp_mode()) is None,
    reason="needs Linux, glibc >= 2.35 and transparent huge pages",
)
def test_a_restarted_program_keeps_its_arguments_and_gets_huge_pages():
    starts, report = _run()
    assert starts == 2  # restarted once, from the beginning
    assert report["tunables"] == "glibc.malloc.hugetlb=1" and report["argv"] == ["a", "b c"]
    assert report["huge_mib"] >= 32, report  # most of the 64 MiB buffer is in 2 MiB pages
    starts, report = _run(**{hostmem.OPT_OUT: "0"})
    assert starts == 1 and report["tunables"] is None and report["argv"] == ["a", "b c"]
    if hostmem._thp_mode() == "madvise":  # without the tunable, glibc's pages are small ones
        assert report["huge_mib"] < 32, report
