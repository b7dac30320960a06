"""BC for two epochs on 1 and on 4 (fake CPU) devices ends with the same parameters.

Run by tests/test_bc.py in its own interpreter (the device count must be set before JAX starts):
    sharded_bc.py WORKDIR DEMOS_DIR
Prints OK.
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import bc  # noqa: E402
from support import bc_config  # noqa: E402

work, demos = sys.argv[1:]
c = bc_config(min_epochs=2, max_epochs=2, batch_size=40, log_every=50)
c.data.num_demos = 3
params = []
for n in (1, 4):
    agent = bc.train_bc(c, os.path.join(work, str(n)), demos, parallel.make_mesh(n))
    params.append(agent.params)
for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    # 50 Adam steps apart from float summation order: close, not bit-equal.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
print("OK")
