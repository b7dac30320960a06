"""A program of three runs on 1 device and with its runs axis split over 4 (fake CPU) devices in
every layout: each run ends with the same parameters.

Run by tests/test_many_runs.py in its own interpreter (the device count must be set before JAX
starts):
    sharded_runs.py WORLD_MODEL_0 WORLD_MODEL_1 WORKDIR DEMOS_DIR
Prints OK.
"""
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import phase2_runs  # noqa: E402
from support import assert_close, make_runs, program_config  # noqa: E402

wm0, wm1, work, demos = sys.argv[1:]
config = program_config()
config.data.batch_size = 4
specs = [(1, 0, wm0), (2, 1, wm1), (3, 2, wm0)]
results = {}
for devices, data in ((1, 1), (4, 1), (4, 2), (4, 4)):
    mesh = parallel.make_runs_mesh(3, devices, data)
    runs = make_runs(config, Path(work) / f"d{devices}x{data}", specs, [demos] * 3)
    _, state = phase2_runs.train_aime_runs(config, runs, os.path.join(runs[0].workdir, "..", "phase2"), mesh)
    leaf = jax.tree.leaves(state.params)[0]
    assert leaf.shape[0] == parallel.padded_runs(3, mesh), leaf.shape
    assert len(leaf.sharding.device_set) == devices
    results[(devices, data)] = jax.device_get(state)
base = results.pop((1, 1))
for key, state in results.items():
    for r in range(3):
        assert_close(state.run(r).params, base.run(r).params)
    print(key, "matches")
print("OK")
