"""Checkpoints of a run: the train state and its JSON metadata, one Orbax step folder per save.

Layout: `<directory>/<step>/state` (any pytree: params, optimizer state, step, PRNG key, data
stream position) and `<directory>/<step>/meta` (JSON: config, step, dataset fingerprint).

Saves are asynchronous (the device-to-host copy happens inside `save`, so the caller may
donate the state right after) and atomic: Orbax writes to `<step>.orbax-checkpoint-tmp-*` and
renames it when complete, so a killed run leaves its last complete checkpoint, and the
half-written folder is ignored and cleaned up when the directory is opened again.

Restoring takes a target pytree, concrete or abstract (`jax.ShapeDtypeStruct`, e.g. from
`jax.eval_shape`), and places every array on the target's sharding, so a checkpoint written on
N devices restores on M. Abstract leaves without a sharding are restored replicated over all
devices, the project's layout for train state.

PRNG keys: the project keeps raw uint32 keys (`jax.random.PRNGKey`) in its state, plain arrays
to every tool; typed keys (`jax.random.key`) round-trip as well.
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from aime_jax import parallel
from aime_jax.errors import AimeError

STATE = "state"
META = "meta"


class CheckpointNotFoundError(AimeError, FileNotFoundError):
    """No complete checkpoint where one was expected."""


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


def _resolve_step(manager: ocp.CheckpointManager, directory: epath.Path, step: int | None) -> int:
    steps = manager.all_steps()
    if not steps:
        raise CheckpointNotFoundError(
            f"no complete checkpoint in {directory}; point to the checkpoints/ folder of a run "
            "that has saved at least once"
        )
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointNotFoundError(
            f"no checkpoint for step {step} in {directory}; the saved steps are {sorted(steps)}"
        )
    return step


class Checkpointer:
    """Saves and restores the checkpoints of one run directory, keeping the last `max_to_keep`.

    `save` writes only every `save_interval_steps` steps unless forced; a step that is already
    saved (a resumed run reaching its restored step again) is skipped. In a multi-process run
    every process makes the same calls: Orbax has each write its own shards and coordinates
    the commit.
    """

    def __init__(
        self, directory: str | epath.PathLike, max_to_keep: int = 3, save_interval_steps: int = 1000
    ):
        self.directory = _absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, META)
        )

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Starts saving `state` and `meta` at `step`; returns whether a save was started."""
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        )
        return self._manager.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def delete(self, step: int) -> None:
        """Removes the checkpoint of `step` (waits for the saves in flight first)."""
        self._manager.wait_until_finished()
        self._manager.delete(step)

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
        """Returns (state, meta) of `step` (default: the latest), shaped and sharded as `target`."""
        step = _resolve_step(self._manager, self.directory, step)
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(_abstract(target)), META: ocp.args.JsonRestore()}
        )
        restored = self._manager.restore(step, args=args)
        return restored[STATE], restored[META]

    def restore_meta(self, step: int | None = None) -> dict:
        """The JSON metadata of `step` (default: the latest), without reading the state."""
        step = _resolve_step(self._manager, self.directory, step)
        args = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        return self._manager.restore(step, args=args)[META]

    def wait(self) -> None:
        """Blocks until the saves in flight are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the saves in flight and releases Orbax's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def restore_params_tree(
    directory: str | epath.PathLike, abstract_tree: Any, step: int | None = None
) -> Any:
    """Restores (part of) the state saved in another run's checkpoint directory, read-only.

    `abstract_tree` mirrors the saved state or any part of it selected by dict keys, e.g.
    `{"params": jax.eval_shape(model.init, ...)["params"]}` to take a frozen world model out of
    a phase-1 checkpoint whose state also holds optimizer state; only those arrays are read.
    """
    path = _absolute(directory)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"checkpoint directory {path} does not exist; point to the checkpoints/ folder of a "
            "finished run"
        )
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(path, options=options, item_names=(STATE, META)) as manager:
        step = _resolve_step(manager, path, step)
        abstract = _abstract(abstract_tree)
        args = ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
        )
        return manager.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE]
