"""The mesh, batch sharding, replication and prefetching on 4 (fake CPU) devices.

Run by tests/test_parallel.py in its own interpreter: the device count must be set before JAX
starts, and the pytest process keeps whatever devices the other test files expect. Prints OK.
"""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.errors import ConfigError  # noqa: E402

assert jax.device_count() == 4, jax.devices()
mesh = parallel.make_mesh()
assert mesh.shape == {"data": 4}

host = {"obs": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "act": np.ones((8, 2))}
batch = parallel.shard_batch(host, mesh)
assert batch["obs"].sharding.spec == P("data")
assert len(batch["obs"].addressable_shards) == 4
assert batch["obs"].addressable_shards[1].data.shape == (2, 3)

params = parallel.replicate({"w": jnp.full((3,), 2.0)}, mesh)
assert params["w"].sharding.is_fully_replicated


@jax.jit
def step(params, batch):
    return jnp.mean(batch["obs"] * params["w"], axis=0)


out = step(params, batch)
np.testing.assert_allclose(np.asarray(out), (host["obs"] * 2.0).mean(0), rtol=1e-6)
assert out.sharding.is_fully_replicated

try:
    parallel.shard_batch({"obs": np.zeros((6, 3))}, mesh)
except ConfigError as e:
    msg = str(e)
    assert "6" in msg and "4 devices" in msg and "multiple of 4" in msg, msg
else:
    raise AssertionError("a batch of 6 on 4 devices must be refused")

assert parallel.make_mesh(2).shape == {"data": 2}
with parallel.Prefetcher(({"x": np.full((4,), i)} for i in range(3)), mesh) as it:
    got = [int(b["x"][0]) for b in it]
assert got == [0, 1, 2], got
print("OK")
