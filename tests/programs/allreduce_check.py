"""The all-reduces of the phase-1, phase-2 and BC train steps compiled for 4 (fake CPU) devices
and for one, and the 1- and 4-device steps' parameters and metrics after three steps.

Run by tests/test_allreduce.py in its own interpreter (the device count must be set before JAX
starts). Prints one line: RESULT {"counts": ..., "diffs": ...}.
"""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import bc, phase1, phase2  # noqa: E402
from support import all_reduce_counts, tiny_config  # noqa: E402

B, T, A = 8, 10, 6
spec = {"orientations": (14,), "height": (1,), "velocity": (9,)}
rng = np.random.default_rng(0)
batch = {k: rng.normal(size=(B, T) + s).astype(np.float32) for k, s in spec.items()}
batch["pre_action"] = rng.uniform(-1, 1, (B, T, A)).astype(np.float32)
config = tiny_config()
config.data.batch_size = B
wm_opt = phase1.make_optimizer(3e-4, 100.0)
model, wm_state = phase1.create_train_state(config.world_model, spec, A, wm_opt, 0)
p = config.phase2
policy = phase2.make_policy(p.policy, A)
opt = optax.chain(optax.clip_by_global_norm(p.grad_clip), optax.adam(p.lr))
features = config.world_model.deter_size + config.world_model.stoch_size
policy_state = phase2.create_policy_state(policy, features, opt, 0)
loss_config = phase2.phase2_loss_config(model.config, p)
net = bc.make_net(config.bc, tuple(spec), A)
bc_state = bc.create_state(net, spec, 3, optax.adam(1e-3), 0)
bc_batch = {k: rng.normal(size=(B, 3) + s).astype(np.float32) for k, s in spec.items()}
bc_batch[bc.TARGET] = rng.uniform(-1, 1, (B, A)).astype(np.float32)
# Host copies: the steps donate their states, and a copy onto the same device may alias.
wm_state, policy_state, bc_state = jax.device_get((wm_state, policy_state, bc_state))


def steps(mesh):
    # Each step as its learner jits it, with its inputs placed as the learner places them.
    def repl(tree):
        return parallel.replicate(tree, mesh)

    def data(tree):
        return parallel.shard_batch(tree, mesh)

    return {
        "phase1": (phase1.jit_train_step(model, config.world_model, wm_opt, mesh),
                   lambda: (repl(wm_state), data(batch))),
        "phase2": (phase2.jit_train_step(model, policy, loss_config, opt, mesh),
                   lambda: (repl(policy_state), repl(wm_state.params), data(batch))),
        "bc": (bc.jit_train_step(net, optax.adam(1e-3), mesh),
               lambda: (repl(bc_state), data(bc_batch))),
    }


mesh4 = parallel.make_mesh(4)
counts = {name: all_reduce_counts(step.lower(*args()).compile().as_text())
          for name, (step, args) in steps(mesh4).items()}

diffs = {}
for name in ("phase1", "phase2"):
    results = []
    for mesh in (parallel.make_mesh(1), mesh4):
        step, args = steps(mesh)[name]
        if mesh.size == 1:
            counts[name + "_one_device"] = all_reduce_counts(step.lower(*args()).compile().as_text())
        state, *rest = args()
        for _ in range(3):
            state, metrics = step(state, *rest)
        results.append(jax.device_get((state.params, metrics)))
    (p1, m1), (p4, m4) = results
    diffs[name] = {
        "params": max(float(np.max(np.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (p1, p4)))),
        "metrics": {k: [float(m1[k]), float(m4[k])] for k in m1},
    }
print("RESULT " + json.dumps({"counts": counts, "diffs": diffs}))
