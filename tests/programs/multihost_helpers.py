"""The process helpers on every process it is started with (tests/test_multihost.py starts 2
under launch/local.sh): float64 rows gathered bit for bit, and a failure on process 0 that
`parallel.on_main` hands to the others instead of leaving them waiting. Each process prints
the one line its failure gave.
"""
import sys

import numpy as np

from aime_jax import parallel

assert parallel.initialize_distributed()

import jax  # noqa: E402

from aime_jax.errors import AimeError  # noqa: E402

p = jax.process_index()
rows = np.array([np.pi * (p + 1), 1e-300 * (p + 1)], np.float64)
got = parallel.allgather_rows(rows)
assert got.dtype == np.float64 and got.tolist() == [np.pi, 1e-300, 2 * np.pi, 2e-300], got


def fail():
    raise AimeError("dataset broken")


try:
    parallel.on_main(fail, "building a dataset")
except AimeError as e:
    print(f"process {p}: {e}", flush=True)
else:
    sys.exit(f"process {p} did not raise")
parallel.barrier("end")
