"""Checkpoints of a run: the train state and its JSON metadata, one Orbax step folder per save.

Layout: `<directory>/<step>/state` (any pytree: params, optimizer state, step, PRNG key, data
stream position), `<directory>/<step>/meta` (JSON: config, step, dataset fingerprint) and, for a
Checkpointer opened with `array_items`, those items: pytrees of host numpy arrays whose shapes
may change from one save to the next (an online learner's replay buffer), written in the same
atomic save and restored as numpy arrays on the host.

Saves are asynchronous (the device-to-host copy happens inside `save`, so the caller may
donate the state right after) and atomic: Orbax writes to `<step>.orbax-checkpoint-tmp-*` and
renames it when complete, so a killed run leaves its last complete checkpoint, and the
half-written folder is ignored and removed when the directory is opened again. A save that
fails in the background (a full disk) is reported by the next `check`, `save`, `wait` or
`close` as one `CheckpointError`; the checkpoints before it stay as they were. The directory
itself is created by the first save, so a run that fails before it leaves no empty folder.

Restoring takes a target pytree, concrete or abstract (`jax.ShapeDtypeStruct`, e.g. from
`jax.eval_shape`), and places every array on the target's sharding, so a checkpoint written on
N devices restores on M. Abstract leaves without a sharding are restored replicated over all
devices, the project's layout for train state. A newest checkpoint that cannot be read as it
was saved (a truncated array file, a lost manifest or metadata) is reported in one line and
the newest intact one is used instead; a writable directory moves the damaged step aside to
`<step>.damaged` (kept for the user, never deleted), so that the run saves that step again.

PRNG keys: the project keeps raw uint32 keys (`jax.random.PRNGKey`) in its state, plain arrays
to every tool; typed keys (`jax.random.key`) round-trip as well.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sys
from types import TracebackType
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from aime_jax import parallel
from aime_jax.errors import AimeError

STATE = "state"
META = "meta"
DAMAGED = ".damaged"
# Orbax writes step N to `N.orbax-checkpoint-tmp*` and renames it when the save is complete.
UNFINISHED = ".orbax-checkpoint-tmp"

T = TypeVar("T")


class CheckpointNotFoundError(AimeError, FileNotFoundError):
    """No complete checkpoint where one was expected."""


class CheckpointError(AimeError):
    """A checkpoint that cannot be written, or no checkpoint that can be read."""


def _absolute(directory: str | epath.PathLike) -> epath.Path:
    # Orbax refuses relative paths; cloud paths (gs://) are already absolute.
    path = epath.Path(directory)
    return path if path.is_absolute() else path.absolute()


def _abstract(target: Any) -> Any:
    """The target as ShapeDtypeStructs that all carry a sharding; other leaves kept as given."""
    fallback = parallel.replicated(parallel.make_mesh())

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=fallback)
        return x

    return jax.tree.map(leaf, target)


# What TensorStore's status codes mean for a file of a checkpoint that was complete when saved.
_STATUS = {"OUT_OF_RANGE": "file truncated", "NOT_FOUND": "file missing", "DATA_LOSS": "file corrupt"}


def _reason(error: BaseException) -> str:
    """A failure of Orbax or TensorStore in a few words: the OS error, else the status and array."""
    text = str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    os_code = re.search(r"os_error_code='(\d+)'", text)
    if os_code:
        return os.strerror(int(os_code.group(1)))
    status = re.match(r"([A-Z_]{4,}): .*?(?:Error reading|Metadata at) \"([^\"/]+)", text)
    if status:
        code, array = status.groups()
        return f"array {array}: {_STATUS.get(code, 'unreadable')} ({code})"
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 120 else first[:117] + "..."


def _from_orbax(filename: str) -> bool:
    return f"{os.sep}orbax{os.sep}" in filename


def _files(tb: TracebackType | None) -> list[str]:
    names = []
    while tb is not None:
        names.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return names


class _OrbaxLogs(logging.Filter):
    """Orbax logs a traceback from its own threads for every failed background save, which the
    Checkpointer raises as one line instead, and a warning for every read-only directory, which
    is what the Checkpointer asked for.

    Orbax may also swallow such a failure after logging it; `last_error` keeps it, so that the
    one line can still say why."""

    last_error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not _from_orbax(record.pathname):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            _OrbaxLogs.last_error = record.exc_info[1]
        return record.levelno < logging.ERROR and not record.getMessage().startswith("Given directory is read only")


class _AbandonedReads(logging.Filter):
    """A restore that fails leaves Orbax's other reads of that step unawaited; asyncio reports
    them when they are collected, after the Checkpointer has reported the damage in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
            return True
        error, tb = record.exc_info[1], record.exc_info[2]
        return not ("tensorstore" in str(error) or any(_from_orbax(name) for name in _files(tb)))


def _drop_abandoned_reads(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    # The same abandoned reads: their coroutines are closed unfinished, and TensorStore completes
    # them into an event loop that Orbax has already closed.
    def hook(unraisable: Any) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and _from_orbax(code.co_filename):
            return
        previous(unraisable)

    return hook


@functools.cache
def _quiet_orbax() -> None:
    logging.getLogger("absl").addFilter(_OrbaxLogs())
    logging.getLogger("asyncio").addFilter(_AbandonedReads())
    sys.unraisablehook = _drop_abandoned_reads(sys.unraisablehook)


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _as_saved_on_host(path: epath.Path) -> ocp.args.PyTreeRestore:
    """Restore arguments for the pytree item at `path`: every array as its saved metadata
    describes it, as host numpy (no target, no devices)."""
    reader = ocp.PyTreeCheckpointHandler()
    try:
        saved = reader.metadata(path).tree
    finally:
        reader.close()
    return ocp.args.PyTreeRestore(restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved))


class Checkpointer:
    """Saves and restores the checkpoints of one run directory, keeping the last `max_to_keep`.

    `save` writes only every `save_interval_steps` steps unless forced; a step that is already
    saved (a resumed run reaching its restored step again) is skipped. In a multi-process run
    every process makes the same calls: Orbax has each write its own shards and coordinates
    the commit. `read_only` opens another run's checkpoints (a world model to reuse): nothing
    in the directory is created, cleaned up or moved, and a missing directory is refused.
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1000,
        read_only: bool = False,
        array_items: tuple[str, ...] = (),
    ):
        self.directory = _absolute(directory)
        self.array_items = tuple(array_items)
        self.read_only = read_only
        if read_only and not self.directory.is_dir():
            raise CheckpointNotFoundError(
                f"checkpoint directory {self.directory} does not exist; point to the checkpoints/ folder "
                "of a finished run"
            )
        _quiet_orbax()
        if not read_only:
            self._remove_unfinished_saves()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else save_interval_steps,
            create=False,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, META, *self.array_items)
        )
        self._in_flight: int | None = None

    def _remove_unfinished_saves(self) -> None:
        # What a killed or failed save left. Orbax's own cleanup would run in the background and
        # could outlive this Checkpointer, deleting the same step's folder of the next one. The
        # other processes need not wait: Orbax starts every save with a barrier.
        if jax.process_index() == 0 and self.directory.is_dir():
            for path in self.directory.iterdir():
                if UNFINISHED in path.name:
                    path.rmtree()

    def save(self, step: int, state: Any, meta: dict, force: bool = False, arrays: dict[str, Any] | None = None) -> bool:
        """Starts saving `state`, `meta` and `arrays` ({array item: pytree of numpy arrays}, any of
        `array_items`) at `step`; returns whether a save was started. The numpy arrays must stay
        unchanged until the save is finished (`wait`).

        Raises CheckpointError if this save, or the one before it, could not be written."""
        arrays = arrays or {}
        unknown = sorted(set(arrays) - set(self.array_items))
        if unknown:
            raise ValueError(f"array items {unknown} were not declared when opening the Checkpointer")
        if self._in_flight is not None:
            self._finish()  # Orbax would wait for it before starting this one anyway
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)},
            **{name: ocp.args.PyTreeSave(tree) for name, tree in arrays.items()},
        )
        _OrbaxLogs.last_error = None
        try:
            started = self._manager.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 - any failure to write is the same for the run
            raise self._save_failed(step, e) from None
        if started:
            self._in_flight = step
        return started

    def check(self) -> None:
        """Raises CheckpointError if the save in flight has finished and failed; cheap, never waits."""
        if self._in_flight is not None and not self._manager.is_saving_in_progress():
            self._finish()

    def _finish(self) -> None:
        step, self._in_flight = self._in_flight, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_failed(step, e) from None
        if step not in self._manager.all_steps():
            raise self._save_failed(step, _OrbaxLogs.last_error)

    def _save_failed(self, step: int, error: BaseException | None) -> CheckpointError:
        self._manager.reload()
        steps = [s for s in self._manager.all_steps() if s != step]
        kept = f"the last good checkpoint, step {max(steps)}, is intact" if steps else "no checkpoint was saved yet"
        why = f" ({_reason(error)})" if error is not None else ""
        return CheckpointError(
            f"saving checkpoint step {step} in {self.directory} failed{why}; {kept}: free disk space or fix "
            "the folder's permissions, then rerun the same command to continue"
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def delete(self, step: int) -> None:
        """Removes the checkpoint of `step` (waits for the saves in flight first)."""
        self.wait()
        self._manager.delete(step)

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Returns (state, meta) of `step` (default: the newest intact one), shaped and sharded
        as `target`."""
        state, meta, _ = self.restore_with_arrays(target, (), step)
        return state, meta

    def restore_with_arrays(
        self, target: Any, names: tuple[str, ...], step: int | None = None
    ) -> tuple[Any, dict, dict[str, Any]]:
        """(state, meta, {name: pytree of numpy arrays}) of `step` (default: the newest intact
        one), the state shaped and sharded as `target`; `names` are array items the step holds
        (`holds`)."""
        def read(s: int) -> dict:
            args = {STATE: ocp.args.StandardRestore(_abstract(target)), META: ocp.args.JsonRestore()}
            return self._manager.restore(s, args=ocp.args.Composite(**args, **self._numpy_args(s, names)))

        restored = self._read(read, step)
        return restored[STATE], restored[META], {name: restored[name] for name in names}

    def restore_arrays(self, name: str, step: int | None = None) -> Any:
        """The array item `name` of `step` (default: the newest intact one) alone, as numpy arrays."""
        def read(s: int) -> Any:
            return self._manager.restore(s, args=ocp.args.Composite(**self._numpy_args(s, (name,))))[name]

        return self._read(read, step)

    def _numpy_args(self, step: int, names: tuple[str, ...]) -> dict[str, Any]:
        """Restore arguments that read the array items `names` of `step` as saved, on the host."""
        # The manager knows an item's metadata only once it has handled that item: read it here.
        return {name: _as_saved_on_host(self.directory / str(step) / name) for name in names}

    def holds(self, step: int, name: str) -> bool:
        """Whether the checkpoint of `step` has the item `name` (checkpoints of older versions
        may lack an array item)."""
        return (self.directory / str(step) / name).is_dir()

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of `step` (default: the newest intact one), without reading the state."""
        args = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        return self._read(lambda s: self._manager.restore(s, args=args), step)[META]

    def restore_subtree(self, abstract_tree: Any, step: int | None = None) -> Any:
        """Only the arrays of `abstract_tree`, a part of the saved state selected by dict keys."""
        abstract = _abstract(abstract_tree)
        args = ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
        )
        composite = ocp.args.Composite(**{STATE: args})
        return self._read(lambda s: self._manager.restore(s, args=composite), step)[STATE]

    def _read(self, read: Callable[[int], T], step: int | None) -> T:
        """`read` of `step`, or of the newest step it succeeds on, passing over damaged ones."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointNotFoundError(
                f"no complete checkpoint in {self.directory}; point to the checkpoints/ folder of a run "
                "that has saved at least once"
            )
        if step is not None and step not in steps:
            raise CheckpointNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; the saved steps are {sorted(steps)}"
            )
        damaged: list[tuple[int, str]] = []
        for candidate in [step] if step is not None else steps:
            try:
                result = read(candidate)
            except Exception:  # noqa: BLE001 - re-raised below unless the step itself is damaged
                reason = self._damage(candidate)
                if reason is None:
                    raise
                damaged.append((candidate, reason))
                continue
            if damaged:
                self._pass_over(damaged, candidate)
            return result
        listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} ({listed}); restore the folder from a copy, or move it "
            "aside to start again"
        )

    def _damage(self, step: int) -> str | None:
        """Why `step` cannot be read as it was saved, or None if it can (the caller's read failed
        for another reason, e.g. a target of other shapes)."""
        try:
            self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001
            return f"its metadata cannot be read: {_reason(e)}"
        # Every array as the saved metadata describes it, on the host: no target, no devices.
        for item in (STATE, *[name for name in self.array_items if self.holds(step, name)]):
            path = self.directory / str(step) / item
            reader = ocp.PyTreeCheckpointHandler()
            try:
                reader.restore(path, args=_as_saved_on_host(path))
            except Exception as e:  # noqa: BLE001
                return f"its arrays cannot be read: {_reason(e)}"
            finally:
                reader.close()
        return None

    def _pass_over(self, damaged: list[tuple[int, str]], used: int) -> None:
        for step, reason in damaged:
            if self.read_only:
                _say(f"checkpoint step {step} in {self.directory} is damaged ({reason}); using step {used}, "
                     "the newest intact one (the folder is left as it is)")
                continue
            aside = self._aside(step)
            if jax.process_index() == 0:
                (self.directory / str(step)).rename(aside)
            _say(f"checkpoint step {step} in {self.directory} is damaged ({reason}); moved it to {aside.name} "
                 f"and using step {used}, the newest intact one")
        if not self.read_only:
            self._manager.reload()

    def _aside(self, step: int) -> epath.Path:
        aside = self.directory / f"{step}{DAMAGED}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.directory / f"{step}{DAMAGED}-{n}"
        return aside

    def wait(self) -> None:
        """Blocks until the saves in flight are on disk; raises CheckpointError if one failed."""
        if self._in_flight is not None:
            self._finish()
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the saves in flight (raising CheckpointError if one failed) and releases
        Orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: type | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
            return
        # Already failing: that error is the one to report, not a save failure it caused.
        try:
            self.close()
        except CheckpointError:
            pass


def restore_params_tree(
    directory: str | epath.PathLike, abstract_tree: Any, step: int | None = None
) -> Any:
    """Restores (part of) the state saved in another run's checkpoint directory, read-only.

    `abstract_tree` mirrors the saved state or any part of it selected by dict keys, e.g.
    `{"params": jax.eval_shape(model.init, ...)["params"]}` to take a frozen world model out of
    a phase-1 checkpoint whose state also holds optimizer state; only those arrays are read.
    """
    with Checkpointer(directory, read_only=True) as ckpt:
        return ckpt.restore_subtree(abstract_tree, step)
