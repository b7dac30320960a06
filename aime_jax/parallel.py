"""Data parallelism over one mesh axis, 'data': parameters replicated, batches split on axis 0.

The same code runs on 1 CPU, 8 GPUs or a TPU pod. In a multi-process run every process holds
only its own slice of the global batch; `shard_batch` stitches the slices into global arrays.
A train step computes each shard's loss and gradients on its own device and averages them over
the devices once (`data_parallel`).

A global batch that the devices do not divide (the paper's 50 windows on 8, 16 or 32 devices)
is padded to the next multiple of their number (`padded_batch`): the padding rows repeat real
windows and carry weight 0 in every loss and metric (`row_weights`), so a step equals the step
of the real rows alone on one device.

Many independent runs (seeds, demonstration counts) train as one program on a 2-D mesh
('runs', 'data'): their states are stacked on a leading runs axis split over 'runs', each run's
batch split over 'data' (`make_runs_mesh`, `runs_data_parallel`).
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from aime_jax.errors import AimeError, ConfigError

DATA_AXIS = "data"
RUNS_AXIS = "runs"

T = TypeVar("T")


def _launched_multiprocess() -> bool:
    """True when the environment shows that a launcher started several processes for this run."""
    env = os.environ
    if "JAX_NUM_PROCESSES" in env:
        return int(env["JAX_NUM_PROCESSES"]) > 1
    if "JAX_COORDINATOR_ADDRESS" in env or "JAX_PROCESS_ID" in env:
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    tpu_hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return len(tpu_hosts.split(",")) > 1


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Connects the processes of a multi-process run; returns whether it did.

    Call it first thing in `main`, before any other JAX call (even `jax.devices()`): the
    backend is fixed the first time JAX touches it, and a backend created before
    `jax.distributed.initialize` sees only this process's devices.

    A single-process run (no arguments, no launcher in the environment) is left alone. Explicit
    arguments win; otherwise `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`
    (our local launcher), SLURM (`srun` with more than one task) or a multi-worker TPU slice
    (`TPU_WORKER_HOSTNAMES`, or JAX_NUM_PROCESSES set by the pod launcher) mark a multi-process
    launch, and JAX's own cluster detection fills in whatever the arguments leave out.
    """
    if num_processes is not None:
        if num_processes <= 1:
            return False
    elif not _launched_multiprocess():
        return False
    env = os.environ
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    # CPU processes exchange collectives through gloo (the default CPU backend has none across
    # processes); GPUs and TPUs ignore the setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX gives each SLURM/MPI task on GPUs one device (its local rank); a process that drives
    # all its node's GPUs lists them here, e.g. AIME_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7.
    local_ids = env.get("AIME_LOCAL_DEVICE_IDS")
    extra = {}
    if local_ids:
        try:
            extra["local_device_ids"] = [int(i) for i in local_ids.split(",")]
        except ValueError:
            raise ConfigError(
                f"AIME_LOCAL_DEVICE_IDS={local_ids!r}; list this process's GPUs as integers, e.g. 0,1,2,3"
            ) from None
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **extra
    )
    return True


def use_compile_cache(folder: str) -> None:
    """Turns on JAX's persistent compilation cache in `folder` (a path or a URL JAX's file
    layer understands, such as gs://...): a later run that compiles the same step (the next run
    of a sweep, a resumed run) loads it instead of compiling. Call it before the first
    compilation; '' leaves the cache off."""
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name`; nothing in a single-process run."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def on_main(fn: Callable[[], Any], name: str) -> None:
    """Runs `fn` on process 0 alone (building datasets, writing config.json) while the others
    wait; if it fails there, the others raise too instead of waiting forever for it."""
    if jax.process_count() == 1:
        fn()
        return
    from jax.experimental import multihost_utils

    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except BaseException as e:  # re-raised below, after telling the other processes
            error = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if error is not None:
        raise error
    if int(failed):
        raise AimeError(f"{name} failed on process 0 (its output says why); fix that and rerun")


def agreed(fn: Callable[[], bool], name: str) -> bool:
    """`fn()` asked on process 0 alone, its answer given to every process: a decision about files
    on a shared disk that another run may change while the processes look."""
    if jax.process_count() == 1:
        return bool(fn())
    from jax.experimental import multihost_utils

    answer = [False]
    on_main(lambda: answer.__setitem__(0, bool(fn())), name)
    return bool(int(multihost_utils.broadcast_one_to_all(np.int32(answer[0]))))


def host_local(tree: Any) -> Any:
    """A copy of a replicated pytree on this process's first device, for work that each process
    does on its own (acting in the simulator), which must not launch computations over the
    global mesh."""
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def allgather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenates every process's `rows` (same shape everywhere) in process order, bit-exact:
    float64 travels as its raw bits, as JAX would round it to float32."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils

    rows = np.ascontiguousarray(rows)
    bits = rows.view(np.uint32) if rows.dtype.itemsize == 8 else rows
    gathered = np.asarray(multihost_utils.process_allgather(bits, tiled=True))
    return gathered.view(rows.dtype) if rows.dtype.itemsize == 8 else gathered.astype(rows.dtype)


def launched_process_count() -> int:
    """The number of processes a launcher started for this run, read from the environment (as
    `initialize_distributed` finds it) without connecting them: for checks made before JAX's
    runtime starts (`main.py --dry_run`)."""
    env = os.environ
    for name in ("JAX_NUM_PROCESSES", "SLURM_NTASKS"):
        if env.get(name, "").isdigit():
            return max(1, int(env[name]))
    tpu_hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return max(1, len([h for h in tpu_hosts.split(",") if h]))


def check_num_devices(num_devices: int, available: int, process_count: int) -> None:
    """Refuses a `config.mesh.num_devices` that the devices (`available`, over all processes)
    cannot give: more than there are, or part of them in a multi-process run."""
    if not 0 <= num_devices <= available:
        raise ConfigError(
            f"config.mesh.num_devices={num_devices} but {available} devices are available; set it between "
            f"1 and {available}, or 0 for every device"
        )
    if 0 < num_devices < available and process_count > 1:
        raise ConfigError(
            f"config.mesh.num_devices={num_devices} selects part of the {available} devices of this "
            f"{process_count}-process run, which only a single-process run can do; set it to 0 (or "
            f"{available}) and choose the devices with the launcher (fewer processes or hosts, "
            "AIME_LOCAL_DEVICE_IDS on GPUs)"
        )


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named 'data' over all global devices, or the first `num_devices` of them (in a
    multi-process run only all of them: every process must hold a part of the mesh)."""
    devices = jax.devices()
    if num_devices is not None:
        if num_devices < 1:
            raise ConfigError(f"a mesh needs at least 1 device, got {num_devices}; give a device count, or None for all")
        check_num_devices(num_devices, len(devices), jax.process_count())
        devices = devices[:num_devices]
    # Auto axes: the train step is written without sharding-in-types, XLA propagates shardings.
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data', the other axes whole on every device."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def padded_batch(batch_size: int, devices: int) -> int:
    """The rows a step computes for a global batch of `batch_size` windows split over `devices`
    devices: `batch_size` rounded up to a multiple of `devices`. The rows past `batch_size` are
    padding (weight 0, see `row_weights`)."""
    return -(-batch_size // devices) * devices


def mesh_batch(batch_size: int, mesh: Mesh) -> int:
    """`padded_batch` for the 'data' axis of `mesh`."""
    return padded_batch(batch_size, mesh.shape[DATA_AXIS])


def row_weights(rows: jax.Array, real: int, padded: int) -> jax.Array | None:
    """(len(rows),) float32 weights of the global batch rows `rows` of a batch of `real` windows
    padded to `padded` rows: padded / real for a real row, 0 for a padding row; None when
    nothing is padded (every loss then stays a plain mean).

    A mean over the padded rows of weight * x is the mean of x over the real rows alone; the mean
    over the devices of each shard's weighted mean is too (`data_parallel`), so the padding
    changes no loss, gradient or metric."""
    if padded == real:
        return None
    return jnp.where(rows < real, padded / real, 0.0).astype(jnp.float32)


def shard_row_weights(rows: int, real: int) -> jax.Array | None:
    """`row_weights` of this device's `rows` rows of a global batch of `real` windows (padded to
    the devices); only inside `data_parallel`."""
    return row_weights(shard_rows(rows), real, rows * jax.lax.axis_size(DATA_AXIS))


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Turns this process's share of a batch (a pytree of numpy arrays) into global jax.Arrays.

    Every process passes the same local batch size; the global batch is the concatenation of the
    local ones in process order along axis 0. In a single-process run the local batch is the
    whole batch.
    """
    return _shard(local_batch, batch_sharding(mesh), mesh.shape[DATA_AXIS], axis=0)


def _shard(local_batch: Any, sharding: NamedSharding, num_devices: int, axis: int) -> Any:
    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        global_shape = list(x.shape)
        global_shape[axis] *= jax.process_count()
        if global_shape[axis] % num_devices:
            raise ConfigError(
                f"the global batch size {global_shape[axis]} is not divisible by the {num_devices} "
                f"devices of the '{DATA_AXIS}' mesh axis; set the batch size to a multiple of "
                f"{num_devices} or run on a number of devices that divides {global_shape[axis]}"
            )
        return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

    return jax.tree.map(put, local_batch)


def make_runs_mesh(num_runs: int, num_devices: int | None = None, data_devices: int = 0) -> Mesh:
    """A 2-D mesh ('runs', 'data') over all devices (or the first `num_devices`) for `num_runs`
    independent runs trained as one program.

    `data_devices` devices split each run's batch; the others hold different runs. 0 chooses:
    as many devices on 'runs' as there are runs at most (the largest such divisor of the device
    count), the rest on 'data'. A runs axis that does not divide `num_runs` is filled with idle
    runs (`padded_runs`). One process only: the runs axis is not spread over processes yet.
    """
    if jax.process_count() > 1:
        raise ConfigError(
            "many runs in one program (config.runs) need a single-process run for now; start one "
            "process per host with its own runs, or run them one by one (experiments/sweep.py)"
        )
    devices = make_mesh(num_devices).devices.reshape(-1)
    runs, data = runs_layout(num_runs, len(devices), data_devices)
    return Mesh(devices.reshape(runs, data), (RUNS_AXIS, DATA_AXIS), axis_types=(AxisType.Auto,) * 2)


def runs_layout(num_runs: int, num_devices: int, data_devices: int = 0) -> tuple[int, int]:
    """The ('runs', 'data') shape of `make_runs_mesh` over `num_devices` devices."""
    if num_runs < 1:
        raise ConfigError(f"a program of runs needs at least one run, got {num_runs}")
    if data_devices:
        if data_devices < 0 or num_devices % data_devices:
            raise ConfigError(
                f"config.runs.data_devices={data_devices} does not divide the {num_devices} devices; use a "
                f"divisor of {num_devices}, or 0 to choose"
            )
        return num_devices // data_devices, data_devices
    runs = max(d for d in range(1, num_devices + 1) if num_devices % d == 0 and d <= num_runs)
    return runs, num_devices // runs


def padded_runs(num_runs: int, mesh: Mesh) -> int:
    """`num_runs` rounded up to a multiple of the mesh's 'runs' axis (the idle runs fill it)."""
    per = mesh.shape[RUNS_AXIS]
    return -(-num_runs // per) * per


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """A stacked state: the leading runs axis split over 'runs', whole over 'data'."""
    return NamedSharding(mesh, P(RUNS_AXIS))


def runs_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Stacked batches (runs, batch, ...): runs over 'runs', each run's rows over 'data'."""
    return NamedSharding(mesh, P(RUNS_AXIS, DATA_AXIS))


def shard_runs_batch(batch: Any, mesh: Mesh) -> Any:
    """Stacked host batches (runs, batch, ...) as global arrays split over the runs mesh."""
    return _shard(batch, runs_batch_sharding(mesh), mesh.shape[DATA_AXIS], axis=1)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree (params, optimizer state, keys) as a full copy on every device.

    In a multi-process run every process must pass the same values (e.g. built from the same
    seed), as JAX does not check that they agree.
    """
    return jax.device_put(tree, replicated(mesh))


def data_parallel(fn: Callable[[Any, Any], T], mesh: Mesh | AbstractMesh) -> Callable[[Any, Any], T]:
    """`fn(replicated, batch)` run on every device with its shard of `batch`; returns the mean
    over the devices of its outputs, in one all-reduce.

    `fn` must return means over its shard's rows (a loss, its gradients, metrics): shards are
    equal (`shard_batch` checks it), so the mean of the shards' means is the global batch's. A
    padded batch's `fn` weights its rows with `shard_row_weights`, which keeps that true of the
    real rows.
    `replicated` (parameters, keys) is whole on every device, `batch` is split on axis 0 over
    'data'. Use it inside `jax.jit`; `shard_rows` gives a shard the global indices of its rows.
    A `mesh.abstract_mesh` lowers the same program without devices (e.g. to count FLOPs).

    Why not let XLA partition the step: with the parameters replicated and the batch split, its
    partitioner all-reduces the weight gradients where they arise, inside the backward scan over
    time, once per time step. Here nothing inside `fn` talks to another device, and the gradient
    tree crosses devices once, after the scans.
    """

    def local(replicated: Any, batch: Any) -> T:
        out = fn(replicated, batch)
        if mesh.shape[DATA_AXIS] == 1:
            # Compiled, a pmean over one device stays an all-reduce (a copy of the gradients).
            return out
        # One buffer: gloo (CPU processes) runs an all-reduce of many arrays as one collective
        # per array (a phase-1 gradient tree has about 40).
        flat, unravel = ravel_pytree(out)
        return unravel(jax.lax.pmean(flat, DATA_AXIS))

    # check_vma=False: with it, JAX would sum a replicated parameter's gradient over the devices
    # where the parameter meets the split batch, inside the scans again; here every device keeps
    # its own gradients until the one pmean.
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False)


def runs_data_parallel(fn: Callable[[Any, Any, Any], T], mesh: Mesh | AbstractMesh) -> Callable[[Any, Any, Any], T]:
    """`data_parallel` for stacked runs on a ('runs', 'data') mesh: `fn(per_run, shared, batch)`
    sees its device's runs (`per_run` and `batch` split on axis 0 over 'runs', `batch` also on
    axis 1 over 'data'; `shared` whole) and returns per-run means over its rows, averaged over
    'data' in one all-reduce. The runs never meet: nothing crosses the 'runs' axis."""

    def local(per_run: Any, shared: Any, batch: Any) -> T:
        out = fn(per_run, shared, batch)
        if mesh.shape[DATA_AXIS] == 1:
            return out
        flat, unravel = ravel_pytree(out)
        return unravel(jax.lax.pmean(flat, DATA_AXIS))

    return jax.shard_map(
        local, mesh=mesh, in_specs=(P(RUNS_AXIS), P(), P(RUNS_AXIS, DATA_AXIS)), out_specs=P(RUNS_AXIS),
        check_vma=False,
    )


def shard_rows(rows: int) -> jax.Array:
    """(rows,) int32: the global batch indices of this device's `rows` rows; only inside
    `data_parallel`. Shard i holds the rows [i * rows, (i + 1) * rows) of the global batch, in
    multi-process runs too (the mesh orders devices by process, as `shard_batch` stitches them)."""
    return jax.lax.axis_index(DATA_AXIS) * rows + jnp.arange(rows, dtype=jnp.int32)


class _End:
    """Marks the end of the producer's iterator in the queue."""


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Iterates over device-sharded batches, copying the next ones while the train step runs.

    A background thread pulls host batches from `batches`, calls `put(batch, mesh)` (default
    `shard_batch`) on them and keeps at most `depth` of them in a queue. An exception raised by
    the host iterator (or by the copy) is re-raised from `__next__`. Use as a context manager, or
    call `close()`, so that an abandoned iteration does not leave the thread blocked on a full
    queue.
    """

    def __init__(self, batches: Iterable[Any], mesh: Mesh, depth: int = 2,
                 put: Callable[[Any, Mesh], Any] | None = None):
        if depth < 1:
            raise ConfigError(f"prefetch depth must be at least 1, got {depth}")
        self._mesh = mesh
        self._shard = put or shard_batch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=self._produce, args=(iter(batches),), name="Prefetcher", daemon=True
        )
        self._thread.start()

    def _produce(self, batches: Iterator[Any]) -> None:
        try:
            for batch in batches:
                if not self._put(self._shard(batch, self._mesh)):
                    return
            self._put(_End())
        except BaseException as error:  # re-raised by the consumer in __next__
            self._put(_Failure(error))

    def _put(self, item: Any) -> bool:
        # A timed put so that close() can stop a producer blocked on a full queue.
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, (_End, _Failure)):
            self._finished = True
            self._thread.join()
            if isinstance(item, _Failure):
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        """Stops the producer thread and frees the batches it had prepared."""
        self._stop.set()
        self._finished = True
        self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
