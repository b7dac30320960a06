"""A global batch that the devices do not divide (the paper's 50 windows on 8, 16 or 32 devices)
is padded to a multiple of their number with rows of weight 0: the real windows are those an
unpadded run samples, and every train step equals the one-device step of the real rows alone."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aime_jax import parallel
from aime_jax.agents import bc
from aime_jax.data import sample_starts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("batch,devices,padded", [(50, 1, 50), (50, 8, 56), (50, 16, 64), (50, 32, 64),
                                                  (64, 16, 64), (3, 8, 8)])
def test_padded_batch_is_the_next_multiple_of_the_devices(batch, devices, padded):
    assert parallel.padded_batch(batch, devices) == padded


def test_padding_keeps_the_real_windows_and_splits_over_processes():
    for step in range(5):
        real = sample_starts(3, step, 1000, 50)
        padded = sample_starts(3, step, 1000, 50, padded_batch=64)
        # The real rows first, as one device draws them; the padding repeats real windows.
        np.testing.assert_array_equal(padded[:50], real)
        np.testing.assert_array_equal(padded[50:], real[:14])
        # 4 processes take contiguous quarters of the padded batch: the last holds the padding.
        shards = [sample_starts(3, step, 1000, 50, p, 4, padded_batch=64) for p in range(4)]
        assert [len(s) for s in shards] == [16] * 4
        np.testing.assert_array_equal(np.concatenate(shards), padded)
    # A batch smaller than its padding repeats itself as often as needed.
    np.testing.assert_array_equal(sample_starts(0, 0, 10, 3, padded_batch=8), np.resize(sample_starts(0, 0, 10, 3), 8))


def test_bc_epochs_pad_their_batches_alike():
    plain = bc.EpochSampler(37, 10, seed=1)
    padded = [bc.EpochSampler(37, 10, seed=1, process_index=p, process_count=2, padded_batch=16) for p in range(2)]
    for step in range(9):
        idx = np.concatenate([s.indices(step) for s in padded])
        np.testing.assert_array_equal(idx[:10], plain.indices(step))
        np.testing.assert_array_equal(idx[10:], plain.indices(step)[:6])


def test_row_weights_average_the_real_rows():
    import jax.numpy as jnp

    assert parallel.row_weights(jnp.arange(8), 8, 8) is None
    w = np.asarray(parallel.row_weights(jnp.arange(8), 5, 8))
    x = np.arange(8.0) ** 2
    np.testing.assert_allclose(np.mean(w * x), np.mean(x[:5]), rtol=1e-6)
    assert np.all(w[5:] == 0)


# Runs in a fresh interpreter: the fake device count must be set before JAX starts.
_CHECK = textwrap.dedent(
    r"""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np, optax
    from test_allreduce import all_reduce_counts
    from test_phase1 import tiny_config
    from aime_jax import parallel
    from aime_jax.agents import bc, phase1, phase2

    # 10 real windows on 8 devices: padded to 16 rows, 2 per device; devices 5-7 hold only padding.
    B, T, A, PADDED = 10, 10, 6, 16
    config = tiny_config("lpomdp")
    config.world_model.idm.enabled = True  # every phase-1 loss term: ELBO, probe, inverse dynamics
    spec = {{"orientations": (14,), "height": (1,), "velocity": (9,)}}  # the last one probed
    bc_spec = {{"orientations": (14,), "height": (1,)}}
    rng = np.random.default_rng(0)

    def windows(rows, scale=1.0):
        out = {{k: scale * rng.normal(size=(rows, T) + s).astype(np.float32) for k, s in spec.items()}}
        out["pre_action"] = rng.uniform(-1, 1, (rows, T, A)).astype(np.float32)
        return out

    real = windows(B)
    # Padding rows unlike any real row: were they weighed at all, the results would move.
    junk = windows(PADDED - B, scale=5.0)
    padded = {{k: np.concatenate([real[k], junk[k]]) for k in real}}

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
    bc_real = {{k: rng.normal(size=(B, 3) + s).astype(np.float32) for k, s in bc_spec.items()}}
    bc_real[bc.TARGET] = rng.uniform(-1, 1, (B, A)).astype(np.float32)
    bc_padded = {{k: np.concatenate([v, 5.0 * rng.normal(size=(PADDED - B,) + v.shape[1:]).astype(np.float32)])
                 for k, v in bc_real.items()}}
    wm_state, policy_state, bc_state = jax.device_get((wm_state, policy_state, bc_state))

    def steps(mesh, batch, bc_batch):
        repl = lambda tree: parallel.replicate(tree, mesh)
        data = lambda tree: parallel.shard_batch(tree, mesh)
        return {{
            "phase1": (phase1.jit_train_step(model, config.world_model, wm_opt, mesh, B),
                       lambda: (repl(wm_state), data(batch))),
            "phase2": (phase2.jit_train_step(model, policy, loss_config, opt, mesh, B),
                       lambda: (repl(policy_state), repl(wm_state.params), data(batch))),
            "bc": (bc.jit_train_step(net, optax.adam(1e-3), mesh, B), lambda: (repl(bc_state), data(bc_batch))),
        }}

    one, eight = parallel.make_mesh(1), parallel.make_mesh(8)
    runs = {{"one": steps(one, real, bc_real), "eight": steps(eight, padded, bc_padded)}}
    counts = {{name: all_reduce_counts(step.lower(*args()).compile().as_text())
               for name, (step, args) in runs["eight"].items()}}
    results = {{}}
    for layout, named in runs.items():
        for name, (step, args) in named.items():
            state, *rest = args()
            for _ in range(3):
                state, metrics = step(state, *rest)
            results[layout, name] = jax.device_get((state.params, metrics))
    diffs = {{}}
    for name in ("phase1", "phase2", "bc"):
        (p1, m1), (p8, m8) = results["one", name], results["eight", name]
        diffs[name] = {{
            "params": max(float(np.max(np.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, (p1, p8)))),
            "metrics": {{k: [float(m1[k]), float(m8[k])] for k in m1}},
        }}

    # Phase-1 validation (the whole padded batch under one jit, no shard_map) weighs it alike.
    key = jax.random.PRNGKey(3)
    ev_one = jax.jit(phase1.make_eval_step(model, config.world_model, B))(wm_state.params, real, key)
    repl8, data8 = parallel.replicated(eight), parallel.batch_sharding(eight)
    ev_eight = jax.jit(phase1.make_eval_step(model, config.world_model, B), in_shardings=(repl8, data8, repl8))(
        wm_state.params, parallel.shard_batch(padded, eight), key)
    diffs["phase1_eval"] = {{"params": 0.0, "metrics": {{k: [float(ev_one[k]), float(ev_eight[k])] for k in ev_one}}}}
    print("RESULT " + json.dumps({{"counts": counts, "diffs": diffs}}))
    """
)


@pytest.mark.slow
def test_padded_steps_on_eight_devices_equal_the_one_device_step_of_the_real_rows():
    code = _CHECK.format(repo=REPO, tests=os.path.join(REPO, "tests"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    for name, counts in result["counts"].items():
        # The weights change no collective: one all-reduce per step, none inside a scan.
        assert counts["in_loops"] == 0 and counts["total"] == 1, (name, counts)
    assert result["counts"]["phase1"]["loops"] >= 2
    for name, diff in result["diffs"].items():
        # Three Adam steps on the padded batch over 8 devices and on the 10 real rows on one:
        # equal up to float summation order (the junk padding rows would move them far more).
        assert diff["params"] < 1e-5, (name, diff)
        for key, (one, eight) in diff["metrics"].items():
            assert abs(one - eight) <= 1e-4 * max(1.0, abs(one)), (name, key, one, eight)


# One script for 1 process x 1 device and for 2 processes x 2 devices (launch/local.sh): three
# phase-1 steps on a batch of 6 windows, which 4 devices split as 8 rows (process 1 holds real
# rows 4-5 and the 2 padding rows). Prints process 0's losses and parameter sums.
_PROCESSES = textwrap.dedent(
    r"""
    import json, sys
    sys.path.insert(0, {tests!r})
    from aime_jax import parallel
    parallel.initialize_distributed()
    import jax, numpy as np
    from test_phase1 import tiny_config
    from aime_jax.agents import phase1
    from aime_jax.data import EpisodeStore, WindowSampler

    B = 6
    config = tiny_config()
    mesh = parallel.make_mesh()
    store = EpisodeStore({data!r}, progress=False)
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
        print("RESULT " + json.dumps({{"rows": sampler.local_batch, "losses": losses, "sums": sums}}))
    """
)


@pytest.mark.slow
def test_two_processes_with_a_padded_batch_train_like_one_device(walker_random_dir):
    code = _PROCESSES.format(tests=os.path.join(REPO, "tests"), data=walker_random_dir)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    results = {}
    for name, args, extra in (("one", [sys.executable, "-c", code], {}),
                              ("two", [os.path.join(REPO, "launch", "local.sh"), "2", sys.executable, "-c", code],
                               {"AIME_LOCAL_DEVICES": "2"})):
        out = subprocess.run(args, env=dict(env, **extra), capture_output=True, text=True, timeout=600)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        assert out.returncode == 0 and len(lines) == 1, (name, out.stdout[-2000:], out.stderr[-3000:])
        results[name] = json.loads(lines[0][len("RESULT "):])
    one, two = results["one"], results["two"]
    assert (one["rows"], two["rows"]) == (6, 4)  # 2 processes x 4 rows: 6 real, 2 padding
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=2e-5)
    np.testing.assert_allclose(two["sums"], one["sums"], rtol=1e-4, atol=1e-4)
