"""Three phase-1 steps on 1 and on 4 (fake CPU) devices: the same parameters and loss.

Run by tests/test_phase1.py in its own interpreter: the device count must be set before JAX
starts. Prints OK and the losses.
"""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import phase1  # noqa: E402
from support import tiny_config  # noqa: E402

config = tiny_config()
config.data.batch_size = 8
spec = {"orientations": (14,), "height": (1,), "velocity": (9,)}
rng = np.random.default_rng(0)
batch = {k: rng.normal(size=(8, 10) + s).astype(np.float32) for k, s in spec.items()}
batch["pre_action"] = rng.uniform(-1, 1, (8, 10, 6)).astype(np.float32)
opt = phase1.make_optimizer(3e-4, 100.0)
results = []
for n in (1, 4):
    mesh = parallel.make_mesh(n)
    model, state = phase1.create_train_state(config.world_model, spec, 6, opt, 0)
    state = parallel.replicate(state, mesh)
    step = phase1.jit_train_step(model, config.world_model, opt, mesh)
    for _ in range(3):
        state, metrics = step(state, parallel.shard_batch(batch, mesh))
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == n
    results.append((jax.device_get(state.params), float(metrics["loss"])))
(p1, l1), *others = results
for p4, l4 in others:
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("OK", l1, [l for _, l in others])
