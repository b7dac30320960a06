"""Checkpointer: bit-identical roundtrips, retention, abstract and resharded restores, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aime_jax.checkpoint import CheckpointNotFoundError, Checkpointer, restore_params_tree

from support import run_program


def make_state(seed: int = 0) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {
        "enc": {"w": jax.random.normal(keys[0], (5, 4)), "b": jnp.zeros(4)},
        "gru": {"w": jax.random.normal(keys[1], (4, 8), jnp.bfloat16)},
    }
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    # One real update so that the Adam moments and count are not trivial.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, opt_state, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(1234, jnp.int32),
        "rng": keys[2],
        "typed_key": jax.random.key(seed + 7),
        "data_position": np.asarray([3, 99], np.int64),
    }


def assert_identical(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


META = {"config": {"seed": 0, "model": {"hidden": [200, 200]}}, "step": 1234, "fingerprint": "ab12"}


def test_roundtrip_is_bit_identical(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path / "ckpt", save_interval_steps=1) as ckpt:
        assert ckpt.save(1234, state, META)
        ckpt.wait()
        restored, meta = ckpt.restore(make_state(seed=1))
    assert_identical(restored, state)
    assert restored["rng"].dtype == jnp.uint32
    assert meta == META


def test_restore_with_abstract_target(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(5, state, META)
        ckpt.wait()
        restored, _ = ckpt.restore(jax.eval_shape(make_state))
    assert_identical(restored, jax.tree.map(jnp.asarray, state))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))


def test_keep_last_k_and_latest_step(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=10) as ckpt:
        assert ckpt.latest_step() is None
        saved = [ckpt.save(step, state, {"step": step}) for step in (0, 5, 10, 20, 30)]
        assert saved == [True, False, True, True, True]
        assert ckpt.save(35, state, {"step": 35}, force=True)
        # A resumed run reaches its restored step again: nothing to write.
        assert not ckpt.save(35, state, {"step": 35}, force=True)
        ckpt.wait()
        assert ckpt.latest_step() == 35
        assert ckpt.restore_meta() == {"step": 35}
        assert ckpt.restore_meta(30) == {"step": 30}
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [30, 35]


def test_interrupted_save_is_ignored(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(10, make_state(), {"step": 10})
    # What a run killed while writing step 20 leaves behind.
    partial = tmp_path / "20.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        # Removed when the folder is opened, before anything can save that step again.
        assert not partial.exists()
        assert ckpt.latest_step() == 10
        assert ckpt.restore_meta() == {"step": 10}
        assert ckpt.save(20, make_state(), {"step": 20})
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_meta() == {"step": 20}


def test_missing_directory_and_step_errors(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(CheckpointNotFoundError, match=str(missing)):
        restore_params_tree(missing, {"params": jax.eval_shape(make_state)["params"]})
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointNotFoundError, match="empty"):
            ckpt.restore(make_state())
        ckpt.save(1, make_state(), {}, force=True)
        ckpt.wait()
        with pytest.raises(CheckpointNotFoundError, match=r"step 2 .*\[1\]"):
            ckpt.restore_meta(2)
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_restore_params_tree_reads_a_subtree(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
        ckpt.save(100, state, META)
    abstract = {"params": jax.eval_shape(make_state)["params"]}
    restored = restore_params_tree(tmp_path, abstract)
    assert_identical(restored, {"params": state["params"]})


def test_restore_onto_two_devices(tmp_path):
    state = {"w": jnp.arange(12, dtype=jnp.float32).reshape(4, 3), "rng": jax.random.PRNGKey(3)}
    np.savez(tmp_path / "expected.npz", **jax.device_get(state))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(7, state, {"devices": 1}, force=True)
    # Restored in a fresh interpreter that sees two devices (the fake device count must be set
    # before JAX starts).
    result = run_program("reshard_restore", tmp_path / "ckpt", tmp_path / "expected.npz", timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
