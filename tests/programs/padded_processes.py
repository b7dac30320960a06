"""Three phase-1 steps on a batch of 6 windows from DATA_DIR, on however many processes and
devices it is started with: run alone (1 process x 1 device) and under launch/local.sh (2
processes x 2 devices, where 4 devices split the batch as 8 rows and process 1 holds real rows
4-5 and the 2 padding rows) by tests/test_padding.py:
    padded_processes.py DATA_DIR
Process 0 prints one line: RESULT {"rows": ..., "losses": ..., "sums": ...} (its rows per step,
the losses, the sums of the parameters).
"""
import json
import sys

from aime_jax import parallel

parallel.initialize_distributed()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from aime_jax.agents import phase1  # noqa: E402
from aime_jax.data import EpisodeStore, WindowSampler  # noqa: E402
from support import tiny_config  # noqa: E402

B = 6
config = tiny_config()
mesh = parallel.make_mesh()
store = EpisodeStore(sys.argv[1], progress=False)
keys = phase1.batch_keys(config.world_model)
spec = phase1.obs_spec(store, keys)
action_dim = spec.pop(phase1.ACTION_KEY)[-1]
sampler = WindowSampler(store, config.data.window, B, 0, keys, jax.process_index(), jax.process_count(),
                        parallel.mesh_batch(B, mesh))
opt = phase1.make_optimizer(3e-4, 100.0)
model, state = phase1.create_train_state(config.world_model, spec, action_dim, opt, 0)
state = parallel.replicate(state, mesh)
step = phase1.jit_train_step(model, config.world_model, opt, mesh, B)
losses = []
for i in range(3):
    state, metrics = step(state, parallel.shard_batch(sampler.batch(i), mesh))
    losses.append(float(metrics["loss"]))
sums = [float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(parallel.host_local(state.params))]
if jax.process_index() == 0:
    print("RESULT " + json.dumps({"rows": sampler.local_batch, "losses": losses, "sums": sums}))
