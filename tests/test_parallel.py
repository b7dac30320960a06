"""Mesh, batch sharding, prefetching and multi-process start-up (CPU only)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from aime_jax import parallel
from aime_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the fake device count must be set before JAX starts, and this
# pytest process keeps whatever devices the other test files expect.
FOUR_DEVICE_CHECK = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from aime_jax import parallel
    from aime_jax.errors import ConfigError

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
    """
)


def test_four_fake_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICE_CHECK], env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def _batches(n: int):
    size = 2 * jax.device_count()
    for i in range(n):
        yield {"x": np.full((size, 3), i, np.float32)}


def test_prefetcher_yields_every_batch_in_order():
    mesh = parallel.make_mesh()
    with parallel.Prefetcher(_batches(5), mesh, depth=2) as it:
        got = [b for b in it]
    assert [float(b["x"][0, 0]) for b in got] == [0, 1, 2, 3, 4]
    assert all(isinstance(b["x"], jax.Array) for b in got)
    assert got[0]["x"].sharding == parallel.batch_sharding(mesh)
    with pytest.raises(StopIteration):
        next(it)


def test_prefetcher_reraises_producer_error():
    def failing():
        yield from _batches(2)
        raise RuntimeError("disk on fire")

    it = parallel.Prefetcher(failing(), parallel.make_mesh())
    assert float(next(it)["x"][0, 0]) == 0
    assert float(next(it)["x"][0, 0]) == 1
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(it)
    it.close()


def test_prefetcher_close_stops_an_endless_producer():
    def endless():
        while True:
            yield from _batches(1)

    it = parallel.Prefetcher(endless(), parallel.make_mesh(), depth=1)
    next(it)
    it.close()
    assert not it._thread.is_alive()


_LAUNCH_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def calls(monkeypatch):
    """Records jax.distributed.initialize calls instead of connecting anywhere."""
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: recorded.append(kw))
    return recorded


def test_initialize_distributed_is_a_no_op_in_a_single_process(calls, monkeypatch):
    assert parallel.initialize_distributed() is False
    assert parallel.initialize_distributed(num_processes=1) is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert parallel.initialize_distributed() is False
    assert calls == []


def test_initialize_distributed_detects_launchers(calls, monkeypatch):
    assert parallel.initialize_distributed("host:1234", 2, 1) is True
    assert calls[-1] == {"coordinator_address": "host:1234", "num_processes": 2, "process_id": 1}

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert parallel.initialize_distributed() is True
    assert calls[-1] == {"coordinator_address": None, "num_processes": 4, "process_id": 3}
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)

    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert parallel.initialize_distributed() is True
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert parallel.initialize_distributed() is True
    assert len(calls) == 4
    # A process driving all its node's GPUs lists them.
    monkeypatch.setenv("AIME_LOCAL_DEVICE_IDS", "0,1,2,3")
    assert parallel.initialize_distributed() is True
    assert calls[-1]["local_device_ids"] == [0, 1, 2, 3]
    monkeypatch.setenv("AIME_LOCAL_DEVICE_IDS", "gpu0")
    with pytest.raises(ConfigError, match="AIME_LOCAL_DEVICE_IDS='gpu0'"):
        parallel.initialize_distributed()


def test_make_mesh_rejects_impossible_device_counts():
    with pytest.raises(ConfigError, match="available"):
        parallel.make_mesh(jax.device_count() + 1)
