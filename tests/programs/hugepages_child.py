"""Restarts itself with huge pages where that applies (aime_jax.hostmem), then mallocs 64 MiB.

Run by tests/test_hostmem.py with any arguments. Prints "start" each time it starts, then one
JSON line: GLIBC_TUNABLES, its arguments, and how many MiB of its memory are huge pages.
"""
import ctypes
import json
import os
import sys

from aime_jax import hostmem

if __name__ == "__main__":
    print("start", flush=True)
    hostmem.reexec_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    n = 64 << 20  # as large as XLA's per-step buffers: glibc serves it with mmap
    ctypes.memset(libc.malloc(n), 1, n)
    with open("/proc/self/smaps_rollup") as f:
        huge = [int(line.split()[1]) for line in f if line.startswith("AnonHugePages:")][0]
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES"), "argv": sys.argv[1:], "huge_mib": huge // 1024}))
