"""Restores a checkpoint saved on one device onto two (fake CPU) devices, replicated and split.

Run by tests/test_checkpoint.py in its own interpreter (the device count must be set before JAX
starts):
    reshard_restore.py CHECKPOINT_DIR EXPECTED_NPZ
Prints OK.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from aime_jax.checkpoint import Checkpointer, restore_params_tree  # noqa: E402

assert jax.device_count() == 2
mesh = Mesh(np.asarray(jax.devices()), ("data",))
expected = dict(np.load(sys.argv[2]))


def target(spec):
    return {"w": jax.ShapeDtypeStruct((4, 3), np.float32, sharding=NamedSharding(mesh, spec)),
            "rng": jax.ShapeDtypeStruct((2,), np.uint32, sharding=NamedSharding(mesh, P()))}


with Checkpointer(sys.argv[1]) as ckpt:
    state, meta = ckpt.restore(target(P()))
assert meta == {"devices": 1}
assert state["w"].sharding.is_fully_replicated and len(state["w"].devices()) == 2
np.testing.assert_array_equal(np.asarray(state["w"]), expected["w"])
np.testing.assert_array_equal(np.asarray(state["rng"]), expected["rng"])

split = restore_params_tree(sys.argv[1], target(P("data")))
assert split["w"].addressable_shards[0].data.shape == (2, 3)
np.testing.assert_array_equal(np.asarray(split["w"]), expected["w"])
print("OK")
