"""The paper's baselines: behavioural cloning (BC, the oracle) and BCO(0).

BC regresses the expert's actions from a stack of the last `bc.stack` observation embeddings
(identity for vectors, the CNN encoder for images, trained from scratch) with a deterministic
MLP policy (tanh output, MSE loss). The demonstrations are split 70/30 by episode; training stops
early once the validation MSE has not improved for `bc.patience` epochs (but not before
`bc.min_epochs`), and the best parameters on the validation split are kept.

BCO(0) first fits an inverse dynamics model (IDM) on the embodiment dataset: `stack + 1` frames
-> the action that led to the last one. The IDM labels the demonstrations, whose own actions are
never read, and BC learns from those labels with its encoder initialised from the IDM's.

Frame stacks reaching back before an episode's first frame repeat that first frame, in training
and in the simulator alike (`BCAgent`), so the first actions of an episode are trained on the
same inputs the policy sees when it acts.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from aime_jax import envs, parallel
from aime_jax.agents.loop import LoopConfig, train_loop
from aime_jax.checkpoint import Checkpointer
from aime_jax.data import EpisodeStore
from aime_jax.errors import ConfigError, DatasetError
from aime_jax.nets.cnn import ConvEncoder
from aime_jax.nets.mlp import MLP
from aime_jax.world_model import rssm

ACTION_KEY = "pre_action"
IMAGE_KEY = "image"
# The regression target in a batch: the expert's action (BC) or the IDM's label (BCO(0)).
TARGET = "target"
WEIGHT = "weight"
SUMMARY = ("loss", "grad_norm")
VAL_SUMMARY = ("action_mse", "best_action_mse", "mean_action_mse", "bad_evals")
METHOD_NAMES = {"aime": "AIME", "bc": "BC", "bco": "BCO(0)"}


class StackNet(nn.Module):
    """{key: (B, K, ...)} frames -> (B, action_dim) actions in (-1, 1).

    Each frame is embedded on its own (vectors as they are, images by the CNN encoder, named
    `encoder` so BCO(0) can hand the IDM's to the policy), the K embeddings are concatenated and
    an MLP with a tanh output maps them to the action.
    """

    obs_keys: Sequence[str]
    action_dim: int
    hidden_sizes: Sequence[int] = (128, 128)
    activation: str = "elu"
    cnn_depth: int = 32

    @nn.compact
    def __call__(self, frames: dict[str, jax.Array]) -> jax.Array:
        parts = []
        for key in self.obs_keys:
            x = frames[key]
            if key == IMAGE_KEY:
                x = ConvEncoder(self.cnn_depth, name="encoder")(x)
            parts.append(x.astype(jnp.float32))
        x = jnp.concatenate(parts, axis=-1)
        x = x.reshape(x.shape[0], -1)
        return jnp.tanh(MLP(self.hidden_sizes, self.action_dim, self.activation, name="head")(x))


def make_net(bc: ml_collections.ConfigDict, obs_keys: Sequence[str], action_dim: int) -> StackNet:
    return StackNet(tuple(obs_keys), action_dim, tuple(bc.hidden_sizes), bc.activation, bc.cnn_depth)


# ----------------------------------------------------------------------------------------------
# Data: (frame stack, target action) samples over an EpisodeStore


@dataclasses.dataclass
class StackData:
    """Samples of `frames` consecutive frames ending at an anchor step t, and a target action.

    `shift=1` (BC): the target is the action taken at t, stored as `pre_action[t + 1]`; anchors
    run over t = 0 .. L-2. `shift=0` (IDM): the target is the action that led to frame t,
    `pre_action[t]`; anchors run over t = 1 .. L-1. `actions` is indexed like the store's arrays
    (the store's own `pre_action`, or BCO(0)'s labels).
    """

    store: EpisodeStore
    keys: tuple[str, ...]
    frames: int
    shift: int
    actions: np.ndarray
    anchors: np.ndarray
    firsts: np.ndarray

    def __len__(self) -> int:
        return len(self.anchors)

    def frame_indices(self, idx: np.ndarray) -> np.ndarray:
        anchors, firsts = self.anchors[idx], self.firsts[idx]
        back = np.arange(self.frames - 1, -1, -1)
        return np.maximum(anchors[:, None] - back, firsts[:, None])

    def inputs(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        frame_idx = self.frame_indices(np.asarray(idx, np.int64))
        return {k: self.store.arrays[k][frame_idx] for k in self.keys}

    def targets(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.actions[self.anchors[np.asarray(idx, np.int64)] + self.shift], np.float32)

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {**self.inputs(idx), TARGET: self.targets(idx)}


def stack_data(store: EpisodeStore, keys: Sequence[str], frames: int, shift: int,
               actions: np.ndarray | None = None) -> StackData:
    if shift not in (0, 1):
        raise ValueError(f"shift must be 0 or 1, got {shift}")
    store.check_keys(keys)
    if actions is None:
        store.check_keys([ACTION_KEY])
        actions = store.arrays[ACTION_KEY]
    if store.lengths.min(initial=2) < 2:
        raise DatasetError(f"{store.folder!r} holds an episode of fewer than 2 steps; it has no action to learn")
    anchors, firsts = [], []
    for offset, length in zip(store.offsets, store.lengths):
        t = np.arange(1 - shift, length - shift)
        anchors.append(offset + t)
        firsts.append(np.full(len(t), offset))
    return StackData(store, tuple(keys), frames, shift, actions,
                     np.concatenate(anchors).astype(np.int64), np.concatenate(firsts).astype(np.int64))


def split_demos(store: EpisodeStore, val_fraction: float) -> tuple[EpisodeStore, EpisodeStore]:
    """The last `val_fraction` of the episodes (at least one) for validation, the rest for training."""
    n = store.num_episodes
    if n < 2:
        raise ConfigError(
            f"{store.folder!r}: BC and BCO(0) need at least 2 episodes (one is held out for early "
            f"stopping), got {n}; raise config.data.num_demos"
        )
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    return store.select(range(n - n_val)), store.select(range(n - n_val, n))


class EpochSampler:
    """Batches of sample indices as a pure function of (seed, step): epoch e = step // steps_per_epoch
    goes through a permutation drawn from (seed, e), so each sample is seen once per epoch (the last
    batch topped up from the permutation's start). Each batch is padded to `padded_batch` rows
    (default: none) by repeating its samples, which the train step weighs 0; process p takes the
    p-th slice of each (padded) batch."""

    def __init__(self, num: int, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
                 padded_batch: int | None = None):
        self.padded_batch = global_batch if padded_batch is None else padded_batch
        if self.padded_batch % process_count:
            raise ConfigError(f"batch size {self.padded_batch} is not divisible by the {process_count} processes")
        self.num, self.global_batch, self.seed = num, global_batch, seed
        self.process_index, self.process_count = process_index, process_count
        self.steps_per_epoch = max(1, math.ceil(num / global_batch))
        self._cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num)
            self._cache = (epoch, np.resize(perm, self.steps_per_epoch * self.global_batch))
        return self._cache[1]

    def indices(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        chosen = self._permutation(epoch)[i * self.global_batch : (i + 1) * self.global_batch]
        chosen = np.resize(chosen, self.padded_batch)
        per = self.padded_batch // self.process_count
        return chosen[self.process_index * per : (self.process_index + 1) * per]

    def iterate(self, data: StackData, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield data.gather(self.indices(step))
            step += 1


def chunks(num: int, size: int, process_index: int = 0, process_count: int = 1):
    """(indices, weights) of this process's slice of every `size` chunk of range(num); the last
    chunk is padded (weight 0), so every chunk has the same shape and compiles once."""
    per = size // process_count
    for start in range(0, num, size):
        idx = np.arange(start, start + size)
        weight = (idx < num).astype(np.float32)
        idx = np.where(idx < num, idx, 0)
        sl = slice(process_index * per, (process_index + 1) * per)
        yield idx[sl], weight[sl]


# ----------------------------------------------------------------------------------------------
# Training


@flax.struct.dataclass
class FitState:
    """A regressor's train state: the live parameters and the best ones on validation, with the
    early-stopping count, so a resumed run stops exactly where an uninterrupted one would."""

    step: jax.Array
    params: Any
    opt_state: Any
    best_params: Any
    best_loss: jax.Array
    bad_evals: jax.Array


def create_state(net: StackNet, spec: dict[str, tuple[int, ...]], frames: int, optimizer, seed: int,
                 init_params: Any = None) -> FitState:
    """A fresh state; `init_params` (a subtree of the parameters, e.g. an encoder) replaces the
    freshly initialised parameters of the same names."""
    dummy = {k: jnp.zeros((1, frames, *shape), jnp.uint8 if k == IMAGE_KEY else jnp.float32) for k, shape in spec.items()}
    params = net.init(jax.random.PRNGKey(seed), dummy)["params"]
    if init_params:
        params = {**params, **init_params}
    return FitState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        best_params=jax.tree.map(jnp.copy, params), best_loss=jnp.asarray(jnp.inf, jnp.float32),
        bad_evals=jnp.zeros((), jnp.int32),
    )


def make_train_step(net: StackNet, optimizer, mesh: Mesh, batch_size: int | None = None):
    """(state, batch) -> (state, metrics) over `mesh`: each device's shard's MSE and gradients,
    averaged over the devices once (`parallel.data_parallel`); jit it with the batch split over
    'data' (see `jit_train_step`). A global batch of `batch_size` samples padded to the devices
    weighs its padding rows 0."""

    def shard_grads(params, batch):
        inputs = {k: batch[k] for k in net.obs_keys}
        rows = batch[TARGET].shape[0]
        weights = None if batch_size is None else parallel.shard_row_weights(rows, batch_size)

        def loss_fn(params):
            pred = net.apply({"params": params}, inputs)
            return rssm.batch_mean(jnp.square(pred - batch[TARGET]), weights)

        return jax.value_and_grad(loss_fn)(params)

    mean_grads = parallel.data_parallel(shard_grads, mesh)

    def train_step(state: FitState, batch):
        loss, grads = mean_grads(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(net: StackNet, optimizer, mesh: Mesh, batch_size: int | None = None):
    """The step as `fit` runs it: jitted over `mesh`, the state replicated and donated, the batch
    (of `batch_size` real samples, padded to the devices) split over 'data'."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(make_train_step(net, optimizer, mesh, batch_size), in_shardings=(repl, data),
                   out_shardings=(repl, repl), donate_argnums=0)


def make_error_sums(net: StackNet):
    """(params, batch) -> (sum over weighted samples of the per-sample action MSE, weight sum)."""

    def sums(params, batch):
        pred = net.apply({"params": params}, {k: batch[k] for k in net.obs_keys})
        per_sample = jnp.mean(jnp.square(pred - batch[TARGET]), axis=-1)
        return jnp.sum(per_sample * batch[WEIGHT]), jnp.sum(batch[WEIGHT])

    return sums


def _keep_best(state: FitState, loss: jax.Array) -> FitState:
    better = loss < state.best_loss
    return state.replace(
        best_params=jax.tree.map(lambda p, b: jnp.where(better, p, b), state.params, state.best_params),
        best_loss=jnp.where(better, loss, state.best_loss),
        bad_evals=jnp.where(better, 0, state.bad_evals + 1),
    )


def baseline_mses(train: StackData, val: StackData) -> dict[str, float]:
    """What trivial predictors score on the validation targets: the training targets' mean action,
    and a uniform random policy (E[(u - a)^2] = 1/3 + a^2 for u ~ U[-1, 1])."""
    sample = np.random.default_rng(0).choice(len(train), min(len(train), 100_000), replace=False)
    mean = train.targets(np.sort(sample)).mean(axis=0)
    val_targets = val.targets(np.arange(len(val)))
    return {
        "mean_action_mse": float(np.mean(np.square(val_targets - mean))),
        "random_action_mse": float(1.0 / 3.0 + np.mean(np.square(val_targets))),
    }


@dataclasses.dataclass
class Schedule:
    """Validation every `eval_every` steps; stop after `patience` validations without improvement
    once `min_steps` are done, or at `max_steps`."""

    eval_every: int
    min_steps: int
    max_steps: int
    patience: int
    log_every: int
    keep: int = 2


def fit(
    *,
    name: str,
    workdir: str,
    net: StackNet,
    train: StackData,
    val: StackData,
    schedule: Schedule,
    lr: float,
    batch_size: int,
    seed: int,
    config: ml_collections.ConfigDict,
    meta: dict,
    mesh,
    init_params: Any = None,
) -> FitState:
    """Trains `net` to regress the targets of `train` (or resumes, or returns a finished run);
    validation MSE on `val` drives early stopping and picks `best_params`."""
    spec = {k: tuple(train.store.arrays[k].shape[1:]) for k in net.obs_keys}
    optimizer = optax.adam(lr)
    state = parallel.replicate(create_state(net, spec, train.frames, optimizer, seed, init_params), mesh)
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    train_step = jit_train_step(net, optimizer, mesh, batch_size)
    error_sums = jax.jit(make_error_sums(net), in_shardings=(repl, data), out_shardings=repl)
    keep_best = jax.jit(_keep_best, in_shardings=(repl, repl), out_shardings=repl, donate_argnums=0)
    padded = parallel.mesh_batch(batch_size, mesh)
    sampler = EpochSampler(len(train), batch_size, seed, jax.process_index(), jax.process_count(), padded)
    baselines = baseline_mses(train, val)
    val_chunk = padded * max(1, 1024 // padded)

    def validation_mse(params) -> float:
        total, count = 0.0, 0.0
        for idx, weight in chunks(len(val), val_chunk, jax.process_index(), jax.process_count()):
            batch = parallel.shard_batch({**val.gather(idx), WEIGHT: weight}, mesh)
            s, n = jax.device_get(error_sums(params, batch))
            total, count = total + float(s), count + float(n)
        return total / count

    def evaluate(state, step, logger):
        loss = validation_mse(state.params)
        state = keep_best(state, jnp.asarray(loss, jnp.float32))
        logger.log(step, {"action_mse": loss, "best_action_mse": state.best_loss,
                          "bad_evals": state.bad_evals, **baselines}, prefix="val", summary=VAL_SUMMARY)
        return state

    def stop(state) -> bool:
        step, bad = jax.device_get((state.step, state.bad_evals))
        return int(step) >= schedule.min_steps and int(bad) >= schedule.patience

    loop = LoopConfig(schedule.max_steps, schedule.log_every, schedule.eval_every, schedule.eval_every,
                      schedule.keep, config.data.prefetch, lr)
    fingerprint = meta["data_fingerprint"]
    meta = {**meta, "obs_spec": {k: list(v) for k, v in spec.items()}, "action_dim": net.action_dim,
            "frames": train.frames, "baselines": baselines, "config": config.to_dict()}
    return train_loop(
        name=name, workdir=workdir, state=state, train_step=train_step,
        batches=lambda start: sampler.iterate(train, start), mesh=mesh, loop=loop, meta=meta,
        evaluate=evaluate, summary=SUMMARY, data_dir=meta.get("data_dir", fingerprint), stop=stop,
    )


def load_fit(workdir: str, net_for, mesh=None) -> tuple[StackNet, Any, dict]:
    """(net, best params, meta) of a finished `fit` in `workdir`; `net_for(meta)` rebuilds the net."""
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        meta = ckpt.restore_meta()
        net = net_for(meta)
        spec = {k: tuple(v) for k, v in meta["obs_spec"].items()}
        target = jax.eval_shape(lambda: create_state(net, spec, meta["frames"], optax.adam(1.0), 0))
        if mesh is not None:
            repl = parallel.replicated(mesh)
            target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), target)
        state, _ = ckpt.restore(target)
    return net, state.best_params, meta


# ----------------------------------------------------------------------------------------------
# The learners


def _obs_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return envs.observation_keys(config.domain, config.modality)


def demo_split(config: ml_collections.ConfigDict, demos_dir: str) -> tuple[EpisodeStore, EpisodeStore, EpisodeStore]:
    """The first `data.num_demos` demonstrations, and their training and validation splits."""
    store = EpisodeStore(demos_dir, progress=jax.process_index() == 0)
    n = config.data.num_demos
    if n > store.num_episodes:
        raise ConfigError(
            f"config.data.num_demos={n}, but {demos_dir!r} holds {store.num_episodes} demonstrations; "
            "lower num_demos or add demonstrations"
        )
    demos = store.select(range(n))
    return (demos, *split_demos(demos, config.bc.val_fraction))


def bc_schedule(bc: ml_collections.ConfigDict, steps_per_epoch: int) -> Schedule:
    return Schedule(steps_per_epoch, bc.min_epochs * steps_per_epoch, bc.max_epochs * steps_per_epoch,
                    bc.patience, bc.log_every)


def train_bc(config: ml_collections.ConfigDict, workdir: str, demos_dir: str, mesh=None,
             labels: np.ndarray | None = None, labels_id: str = "", init_params: Any = None) -> "BCAgent":
    """BC on the demonstrations' actions, or (BCO(0)) on `labels`, indexed like the demos' arrays.

    Runs (or resumes) in `workdir`; returns the agent with the best validation parameters.
    """
    mesh = mesh or parallel.make_mesh(config.mesh.num_devices or None)
    bc = config.bc
    keys = _obs_keys(config)
    demos, train_store, val_store = demo_split(config, demos_dir)
    if labels is None:
        demos.check_keys([ACTION_KEY])
    train = stack_data(train_store, keys, bc.stack, 1, labels)
    val = stack_data(val_store, keys, bc.stack, 1, labels)
    action_dim = int(train.actions.shape[-1])
    net = make_net(bc, keys, action_dim)
    steps_per_epoch = EpochSampler(len(train), bc.batch_size, config.seed).steps_per_epoch
    suffix = f"+{labels_id}" if labels is not None else ""
    read = keys if labels is not None else (*keys, ACTION_KEY)
    meta = {"stage": "bco" if labels is not None else "bc", "demos_dir": os.path.abspath(demos_dir),
            "data_dir": demos_dir, "data_fingerprint": demos.fingerprint_of(read) + suffix,
            "data_fingerprint_files": demos.fingerprint + suffix, "steps_per_epoch": steps_per_epoch}
    state = fit(name="BC", workdir=workdir, net=net, train=train, val=val,
                schedule=bc_schedule(bc, steps_per_epoch), lr=bc.lr, batch_size=bc.batch_size,
                seed=config.seed + 7, config=config, meta=meta, mesh=mesh, init_params=init_params)
    return BCAgent(net, state.best_params, bc.stack)


def train_idm(config: ml_collections.ConfigDict, workdir: str, embodiment_dir: str, mesh=None) -> tuple[StackNet, Any]:
    """BCO(0)'s inverse dynamics model on the embodiment dataset: stack + 1 frames -> the action
    that led to the last frame. Returns (net, best validation params)."""
    mesh = mesh or parallel.make_mesh(config.mesh.num_devices or None)
    bc = config.bc
    keys = _obs_keys(config)
    store = EpisodeStore(embodiment_dir, progress=jax.process_index() == 0)
    if store.num_episodes < 2:
        raise DatasetError(f"{embodiment_dir!r} holds {store.num_episodes} episode; the IDM needs at least 2 "
                           "(one is held out for validation): collect more")
    n_val = min(store.num_episodes - 1, max(1, int(round(config.data.val_fraction * store.num_episodes))))
    frames = bc.stack + 1
    train = stack_data(store.select(range(store.num_episodes - n_val)), keys, frames, 0)
    val = stack_data(store.select(range(store.num_episodes - n_val, store.num_episodes)), keys, frames, 0)
    # Validation on a fixed subset keeps each evaluation cheap on datasets of millions of frames.
    if len(val) > bc.idm_val_samples:
        pick = np.sort(np.random.default_rng(config.seed).choice(len(val), bc.idm_val_samples, replace=False))
        val = dataclasses.replace(val, anchors=val.anchors[pick], firsts=val.firsts[pick])
    net = make_net(bc, keys, int(train.actions.shape[-1]))
    schedule = Schedule(bc.idm_eval_every, bc.idm_steps, bc.idm_max_steps, bc.patience, bc.log_every)
    meta = {"stage": "idm", "data_dir": embodiment_dir, "data_fingerprint": store.fingerprint_of((*keys, ACTION_KEY)),
            "data_fingerprint_files": store.fingerprint}
    state = fit(name="IDM", workdir=workdir, net=net, train=train, val=val, schedule=schedule, lr=bc.lr,
                batch_size=bc.batch_size, seed=config.seed + 11, config=config, meta=meta, mesh=mesh)
    return net, state.best_params


def load_idm(config: ml_collections.ConfigDict, workdir: str) -> tuple[StackNet, Any, dict]:
    return load_fit(workdir, lambda meta: make_net(config.bc, _obs_keys(config), meta["action_dim"]))


def label_actions(net: StackNet, params, store: EpisodeStore, frames: int, chunk: int = 512) -> np.ndarray:
    """The IDM's action for every step t >= 1 of the store's episodes, at t (like `pre_action`),
    in an array indexed like the store's arrays (zero elsewhere)."""
    data = stack_data(store, net.obs_keys, frames, 0, actions=np.zeros((store.arrays[net.obs_keys[0]].shape[0], 1)))
    params = jax.device_get(params)
    apply = jax.jit(lambda p, x: net.apply({"params": p}, x))
    labels = np.zeros((data.actions.shape[0], net.action_dim), np.float32)
    for idx, weight in chunks(len(data), chunk):
        pred = np.asarray(apply(params, data.inputs(idx)))
        rows = weight > 0
        labels[data.anchors[idx[rows]]] = pred[rows]
    return labels


def train_bco(config: ml_collections.ConfigDict, workdir: str, idm_dir: str, demos_dir: str, mesh=None) -> "BCAgent":
    """BCO(0)'s second half: the IDM of `idm_dir` labels the demonstrations, BC learns the labels
    (policy encoder initialised from the IDM's) in `workdir`."""
    idm_net, idm_params, idm_meta = load_idm(config, idm_dir)
    if tuple(idm_net.obs_keys) != _obs_keys(config) or idm_meta["frames"] != config.bc.stack + 1:
        raise ConfigError(f"the IDM in {idm_dir!r} was trained on other observations or another stack; "
                          "retrain it (delete that folder) with this config")
    demos, _, _ = demo_split(config, demos_dir)
    demos.check_keys(idm_net.obs_keys)
    labels = label_actions(idm_net, idm_params, demos, config.bc.stack + 1)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        np.save(os.path.join(workdir, "labels.npy"), labels[demos.offsets[0] : demos.offsets[-1] + demos.lengths[-1]])
    labels_id = f"idm:{idm_meta['data_fingerprint']}@{idm_meta['step']}"
    encoder = {"encoder": idm_params["encoder"]} if "encoder" in idm_params else None
    return train_bc(config, workdir, demos_dir, mesh, labels=labels, labels_id=labels_id, init_params=encoder)


def load_agent(config: ml_collections.ConfigDict, workdir: str) -> "BCAgent":
    """The agent of a finished BC or BCO(0) run in `workdir` (its best validation parameters)."""
    net, params, _ = load_fit(workdir, lambda meta: make_net(config.bc, _obs_keys(config), meta["action_dim"]))
    return BCAgent(net, params, config.bc.stack)


# ----------------------------------------------------------------------------------------------
# Acting in the simulator


class BCAgent:
    """The deterministic policy on the last `stack` observations; the stack lives in the carry and
    starts as the first observation repeated `stack` times."""

    CHUNK = 16

    def __init__(self, net: StackNet, params, stack: int):
        self.net, self.stack = net, stack
        # One device holds the parameters: acting is one small call per step, on this host.
        self.params = jax.device_put(jax.device_get(params), jax.local_devices()[0])
        self._act = jax.jit(lambda p, x: net.apply({"params": p}, x))

    def initial_carry(self, episode_seeds):
        return None

    def act(self, carry, observation, prev_action, is_first):
        obs = {k: np.asarray(observation[k]) for k in self.net.obs_keys}
        repeated = {k: np.repeat(v[:, None], self.stack, axis=1) for k, v in obs.items()}
        if carry is None:
            carry = repeated
        else:
            first = np.asarray(is_first, bool).reshape(-1)
            carry = {k: np.concatenate([carry[k][:, 1:], v[:, None]], axis=1) for k, v in obs.items()}
            for k in carry:
                carry[k][first] = repeated[k][first]
        n = len(next(iter(obs.values())))
        actions = []
        # Fixed chunk shapes: an episode's actions do not depend on how many ran together.
        for start in range(0, n, self.CHUNK):
            rows = min(self.CHUNK, n - start)
            chunk = {k: _pad_rows(v[start : start + self.CHUNK], self.CHUNK) for k, v in carry.items()}
            actions.append(np.asarray(self._act(self.params, chunk))[:rows])
        return carry, np.concatenate(actions).astype(np.float32)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    return np.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def action_mse(agent: BCAgent, data: StackData) -> float:
    """The agent's mean squared action error on every sample of `data` (analysis and tests)."""
    apply = jax.jit(lambda p, x: agent.net.apply({"params": p}, x))
    total, count = 0.0, 0
    for idx, weight in chunks(len(data), 512):
        pred = np.asarray(apply(agent.params, data.inputs(idx)))
        err = np.mean(np.square(pred - data.targets(idx)), axis=-1)
        total += float(np.sum(err * weight))
        count += int(weight.sum())
    return total / count
