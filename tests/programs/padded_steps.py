"""The phase-1, phase-2 and BC steps on a batch of 10 real windows padded to 16 rows over 8 (fake
CPU) devices, against the one-device steps of the 10 real rows alone; and phase-1 validation alike.

Run by tests/test_padding.py in its own interpreter (the device count must be set before JAX
starts). Prints one line: RESULT {"counts": ..., "diffs": ...}.
"""
import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from aime_jax import parallel  # noqa: E402
from aime_jax.agents import bc, phase1, phase2  # noqa: E402
from support import all_reduce_counts, tiny_config  # noqa: E402

# 10 real windows on 8 devices: padded to 16 rows, 2 per device; devices 5-7 hold only padding.
B, T, A, PADDED = 10, 10, 6, 16
config = tiny_config("lpomdp")
config.world_model.idm.enabled = True  # every phase-1 loss term: ELBO, probe, inverse dynamics
spec = {"orientations": (14,), "height": (1,), "velocity": (9,)}  # the last one probed
bc_spec = {"orientations": (14,), "height": (1,)}
rng = np.random.default_rng(0)


def windows(rows, scale=1.0):
    out = {k: scale * rng.normal(size=(rows, T) + s).astype(np.float32) for k, s in spec.items()}
    out["pre_action"] = rng.uniform(-1, 1, (rows, T, A)).astype(np.float32)
    return out


real = windows(B)
# Padding rows unlike any real row: were they weighed at all, the results would move.
junk = windows(PADDED - B, scale=5.0)
padded = {k: np.concatenate([real[k], junk[k]]) for k in real}

wm_opt = phase1.make_optimizer(3e-4, 100.0)
model, wm_state = phase1.create_train_state(config.world_model, spec, A, wm_opt, 0)
p = config.phase2
policy = phase2.make_policy(p.policy, A)
opt = phase2.make_optimizer(p)
features = config.world_model.deter_size + config.world_model.stoch_size
policy_state = phase2.create_policy_state(policy, features, opt, 0)
loss_config = phase2.phase2_loss_config(model.config, p)
net = bc.make_net(config.bc, tuple(bc_spec), A)
bc_state = bc.create_state(net, bc_spec, 3, optax.adam(1e-3), 0)
bc_real = {k: rng.normal(size=(B, 3) + s).astype(np.float32) for k, s in bc_spec.items()}
bc_real[bc.TARGET] = rng.uniform(-1, 1, (B, A)).astype(np.float32)
bc_padded = {k: np.concatenate([v, 5.0 * rng.normal(size=(PADDED - B,) + v.shape[1:]).astype(np.float32)])
             for k, v in bc_real.items()}
wm_state, policy_state, bc_state = jax.device_get((wm_state, policy_state, bc_state))


def steps(mesh, batch, bc_batch):
    def repl(tree):
        return parallel.replicate(tree, mesh)

    def data(tree):
        return parallel.shard_batch(tree, mesh)

    return {
        "phase1": (phase1.jit_train_step(model, config.world_model, wm_opt, mesh, B),
                   lambda: (repl(wm_state), data(batch))),
        "phase2": (phase2.jit_train_step(model, policy, loss_config, opt, mesh, B),
                   lambda: (repl(policy_state), repl(wm_state.params), data(batch))),
        "bc": (bc.jit_train_step(net, optax.adam(1e-3), mesh, B), lambda: (repl(bc_state), data(bc_batch))),
    }


one, eight = parallel.make_mesh(1), parallel.make_mesh(8)
runs = {"one": steps(one, real, bc_real), "eight": steps(eight, padded, bc_padded)}
counts = {name: all_reduce_counts(step.lower(*args()).compile().as_text())
          for name, (step, args) in runs["eight"].items()}
results = {}
for layout, named in runs.items():
    for name, (step, args) in named.items():
        state, *rest = args()
        for _ in range(3):
            state, metrics = step(state, *rest)
        results[layout, name] = jax.device_get((state.params, metrics))
diffs = {}
for name in ("phase1", "phase2", "bc"):
    (p1, m1), (p8, m8) = results["one", name], results["eight", name]
    diffs[name] = {
        "params": max(float(np.max(np.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (p1, p8)))),
        "metrics": {k: [float(m1[k]), float(m8[k])] for k in m1},
    }

# Phase-1 validation (the whole padded batch under one jit, no shard_map) weighs it alike.
key = jax.random.PRNGKey(3)
ev_one = jax.jit(phase1.make_eval_step(model, config.world_model, B))(wm_state.params, real, key)
repl8, data8 = parallel.replicated(eight), parallel.batch_sharding(eight)
ev_eight = jax.jit(phase1.make_eval_step(model, config.world_model, B), in_shardings=(repl8, data8, repl8))(
    wm_state.params, parallel.shard_batch(padded, eight), key)
diffs["phase1_eval"] = {"params": 0.0, "metrics": {k: [float(ev_one[k]), float(ev_eight[k])] for k in ev_one}}
print("RESULT " + json.dumps({"counts": counts, "diffs": diffs}))
