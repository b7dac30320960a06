"""Mesh, batch sharding, prefetching and multi-process start-up (CPU only)."""
import jax
import numpy as np
import pytest

from aime_jax import parallel
from aime_jax.errors import ConfigError

from support import run_program


def test_four_fake_devices():
    # In a fresh interpreter: the fake device count must be set before JAX starts, and this
    # pytest process keeps whatever devices the other test files expect.
    result = run_program("four_devices", timeout=120)
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
