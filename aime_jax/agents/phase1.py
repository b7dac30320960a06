"""Phase 1 of AIME: fit the world model to embodiment data by maximising the ELBO.

`make_train_step` returns the pure step `(state, batch) -> (state, metrics)`; it is jitted with
the train state replicated and donated and the batch split over the mesh's 'data' axis, so the
same code runs on one CPU, several GPUs or a TPU pod: each device computes its shard's loss and
gradients, averaged over the devices once per step (`parallel.data_parallel`).
`train_world_model(config, workdir)` owns the loop: data stream, checkpoints, validation, logging.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from aime_jax import parallel
from aime_jax.agents.loop import LoopConfig, train_loop
from aime_jax.checkpoint import CheckpointNotFoundError, Checkpointer
from aime_jax.data import EpisodeStore, WindowSampler
from aime_jax.errors import ConfigError, DatasetError
from aime_jax.logging import RunLogger
from aime_jax.world_model import config as wm_config
from aime_jax.world_model import rssm

ACTION_KEY = "pre_action"
# What the one-line summaries show; metrics.jsonl and wandb get everything.
SUMMARY = ("loss", "nelbo_per_step", "recon_per_step", "kl_per_step", "grad_norm")


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs; `rng` is a raw uint32 key, folded with `step` per step."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _detached_heads(params) -> dict[str, bool]:
    """Top-level parameter groups trained on detached features (probes, inverse dynamics)."""
    return {name: name.startswith(("probes_", "idm")) for name in params}


def _labels(params):
    return {name: "heads" if head else "model" for name, head in _detached_heads(params).items()}


def make_optimizer(lr: float, grad_clip: float) -> optax.GradientTransformation:
    """Adam with global-norm clipping, applied separately to the world model and to the detached
    heads, so that a probe's large gradients never shrink the world model's clipped step."""
    def adam():
        return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adam(lr))

    return optax.multi_transform({"model": adam(), "heads": adam()}, _labels)


def batch_keys(wm_config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return (*wm_config.obs_keys, *wm_config.probe_keys, ACTION_KEY)


def obs_spec(store: EpisodeStore, keys) -> dict[str, tuple[int, ...]]:
    store.check_keys(keys)
    return {k: tuple(store.arrays[k].shape[1:]) for k in keys}


def create_train_state(
    wm_config: ml_collections.ConfigDict,
    spec: Mapping[str, tuple[int, ...]],
    action_dim: int,
    optimizer: optax.GradientTransformation,
    seed: int,
) -> tuple[rssm.WorldModel, TrainState]:
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    model, params = rssm.init_world_model(wm_config, spec, action_dim, init_rng)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=train_rng
    )
    return model, state


def make_train_step(
    model: rssm.WorldModel,
    wm_config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    batch_size: int | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    """The phase-1 step over `mesh` (jit it with the batch split over 'data', see `jit_train_step`);
    every window draws its noise from the step key folded with its row in the global batch, so
    the result does not depend on the number of devices. `batch_size`: the real windows of a
    global batch padded to the devices (`parallel.padded_batch`; the rows past it weigh 0), or
    None when every row is real."""

    def shard_grads(replicated, batch: Mapping[str, jax.Array]):
        params, rng = replicated
        rows = batch[ACTION_KEY].shape[0]
        keys = rssm.row_keys(rng, parallel.shard_rows(rows))
        weights = None if batch_size is None else parallel.shard_row_weights(rows, batch_size)

        def loss_fn(params):
            return rssm.elbo_loss(model, params, batch, keys, wm_config, weights)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics

    mean_grads = parallel.data_parallel(shard_grads, mesh)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = mean_grads((state.params, rng), batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        heads = _detached_heads(grads)
        metrics["grad_norm"] = optax.tree.norm({k: g for k, g in grads.items() if not heads[k]})
        if any(heads.values()):
            metrics["head_grad_norm"] = optax.tree.norm({k: g for k, g in grads.items() if heads[k]})
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(
    model: rssm.WorldModel, wm_config: ml_collections.ConfigDict, optimizer: optax.GradientTransformation, mesh: Mesh,
    batch_size: int | None = None,
):
    """The phase-1 step as training runs it: jitted over `mesh`, the train state replicated and
    donated, the batch (of `batch_size` real windows, padded to the devices) split over 'data'."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        make_train_step(model, wm_config, optimizer, mesh, batch_size),
        in_shardings=(repl, data),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )


def make_eval_step(model: rssm.WorldModel, wm_config: ml_collections.ConfigDict, batch_size: int | None = None):
    """(params, batch, rng) -> the phase-1 metrics of a batch; of its first `batch_size` rows
    when it is padded (the others weigh 0)."""

    def eval_step(params, batch, rng):
        rows = batch[ACTION_KEY].shape[0]
        weights = None if batch_size is None else parallel.row_weights(jnp.arange(rows), batch_size, rows)
        return rssm.elbo_loss(model, params, batch, rng, wm_config, weights)[1]

    return eval_step


def open_loop_prediction(model: rssm.WorldModel, params, batch, rng, context: int) -> jax.Array:
    """Filters `context` frames, imagines the rest under the recorded actions; returns decoded
    image means (B, T, H, W, 3) in [0, 1]."""
    obs = {k: batch[k] for k in model.config.obs_keys}
    actions = batch[ACTION_KEY]
    embeds = model.apply({"params": params}, obs, method=rssm.WorldModel.embed)
    filter_rng, imagine_rng = jax.random.split(rng)
    states, _ = rssm.observe(model, params, embeds[:, :context], actions[:, :context], filter_rng)
    last = jax.tree.map(lambda x: x[:, -1], states)
    imagined, _ = rssm.imagine(model, params, last, actions[:, context:], imagine_rng)
    joined = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), states, imagined)
    dists = model.apply({"params": params}, rssm.features(joined), method=rssm.WorldModel.decode)
    return dists[rssm.IMAGE_KEY][0]


def split_episodes(store: EpisodeStore, val_fraction: float) -> tuple[EpisodeStore, EpisodeStore]:
    """The last `val_fraction` of the episodes (at least one) are held out for validation."""
    n = store.num_episodes
    if n < 2:
        raise DatasetError(
            f"{store.folder!r} holds {n} episode; phase 1 needs at least 2 (one is held out for "
            "validation): collect more"
        )
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    return store.select(range(n - n_val)), store.select(range(n - n_val, n))


class _Phase1:
    """The pieces of a phase-1 run, built from a config and a dataset folder."""

    def __init__(self, config: ml_collections.ConfigDict, data_dir: str, mesh):
        self.config = config
        self.mesh = mesh
        wm = config.world_model
        store = EpisodeStore(data_dir, progress=jax.process_index() == 0)
        self.keys = batch_keys(wm)
        spec = obs_spec(store, self.keys)
        self.action_dim = spec.pop(ACTION_KEY)[-1]
        self.spec = spec
        self.train_store, self.val_store = split_episodes(store, config.data.val_fraction)
        self.fingerprint = store.fingerprint_of(self.keys)
        self.files_fingerprint = store.fingerprint
        self.optimizer = make_optimizer(config.phase1.lr, config.phase1.grad_clip)
        self.model, state = create_train_state(wm, spec, self.action_dim, self.optimizer, config.seed)
        self.state = parallel.replicate(state, mesh)
        # A batch the devices do not divide is padded (masked rows); its real windows stay those
        # of a one-device run.
        batch_size, padded = config.data.batch_size, parallel.mesh_batch(config.data.batch_size, mesh)
        self.sampler = WindowSampler(
            self.train_store, config.data.window, batch_size, config.seed, self.keys,
            jax.process_index(), jax.process_count(), padded,
        )
        val_sampler = WindowSampler(
            self.val_store, config.data.window, batch_size, config.seed + 1, self.keys,
            jax.process_index(), jax.process_count(), padded,
        )
        # Host copies stay for the video; the device copies are made once, not at every evaluation.
        self.val_batches = [val_sampler.batch(i) for i in range(config.phase1.val_batches)]
        self.val_device = [parallel.shard_batch(b, mesh) for b in self.val_batches]
        repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        self.train_step = jit_train_step(self.model, wm, self.optimizer, mesh, batch_size)
        self.eval_step = jax.jit(
            make_eval_step(self.model, wm, batch_size), in_shardings=(repl, data, repl), out_shardings=repl
        )
        self.video_fn = None
        if rssm.IMAGE_KEY in wm.obs_keys:
            context = min(config.phase1.video_context, config.data.window - 1)
            self.video_fn = jax.jit(
                lambda params, batch, rng: open_loop_prediction(self.model, params, batch, rng, context)
            )

    def validate(self, params, step: int) -> dict[str, float]:
        rng = jax.random.PRNGKey(self.config.seed + step)
        totals: dict[str, float] = {}
        for batch in self.val_device:
            metrics = jax.device_get(self.eval_step(params, batch, rng))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / len(self.val_device)
        return totals

    def video(self, params, step: int) -> np.ndarray:
        """Truth | open-loop prediction, side by side, for the first validation window."""
        batch = {k: v[:1] for k, v in self.val_batches[0].items()}
        pred = jax.device_get(self.video_fn(params, batch, jax.random.PRNGKey(step)))[0]
        truth = batch[rssm.IMAGE_KEY][0]
        pred = np.clip(np.round(pred.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        return np.concatenate([truth, pred], axis=2)


def abstract_params(config: ml_collections.ConfigDict, spec, action_dim: int, mesh=None):
    """Shapes, dtypes and shardings of a world model's parameters (no optimiser), for restore."""
    shapes = jax.eval_shape(
        lambda: rssm.init_world_model(config.world_model, spec, action_dim, jax.random.PRNGKey(0))[1]
    )
    if mesh is None:
        return shapes
    repl = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def train_world_model(config: ml_collections.ConfigDict, workdir: str, data_dir: str, mesh=None) -> TrainState:
    """Runs (or resumes) phase 1 in `workdir`; returns the final train state.

    A rerun with the same workdir continues from the latest checkpoint and, because the data
    stream and the step RNG are functions of the step, ends with the parameters of an
    uninterrupted run.
    """
    mesh = mesh or parallel.make_mesh(config.mesh.num_devices or None)
    run = _Phase1(config, data_dir, mesh)
    meta = {"stage": "phase1", "data_dir": os.path.abspath(data_dir), "data_fingerprint": run.fingerprint,
            "data_fingerprint_files": run.files_fingerprint,
            "action_dim": int(run.action_dim), "obs_spec": {k: list(v) for k, v in run.spec.items()},
            "config": config.to_dict()}
    probes = tuple(f"probe_mse/{k}" for k in config.world_model.probe_keys)

    def evaluate(state, step: int, logger: RunLogger) -> None:
        logger.log(step, run.validate(state.params, step), prefix="val", summary=SUMMARY[:4] + probes)
        if run.video_fn is not None:
            logger.video("open_loop", run.video(state.params, step), step)

    return train_loop(
        name="phase 1", workdir=workdir, state=run.state, train_step=run.train_step,
        batches=run.sampler.iterate, mesh=mesh, loop=LoopConfig.from_config(config.phase1, config.data),
        meta=meta, evaluate=evaluate, summary=SUMMARY, data_dir=data_dir,
    )


def _world_model_checkpoints(run_dir: str) -> Checkpointer:
    """The phase-1 checkpoints of `run_dir`, opened read-only: a world model to reuse is an input."""
    nested = os.path.join(run_dir, "phase1")
    folder = os.path.join(nested if os.path.isdir(nested) else run_dir, "checkpoints")
    if not os.path.isdir(folder):
        raise CheckpointNotFoundError(
            f"world model {run_dir!r} holds no phase-1 checkpoints (no phase1/checkpoints/ or checkpoints/ "
            "folder); point world_model_dir at the run directory of a finished phase-1 run"
        )
    return Checkpointer(folder, read_only=True)


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_world_model_fits(config: ml_collections.ConfigDict, meta: Mapping, run_dir: str) -> None:
    """Refuses a world model saved for another domain, modality or architecture than `config`
    describes. The settings that change only how fast it computes may differ, and so may those
    its config predates (the model is rebuilt from its own config)."""
    saved = meta["config"]
    found = [(key, saved.get(key), config[key]) for key in ("domain", "modality") if saved.get(key) != config[key]]
    ours, theirs = _flat(config.world_model.to_dict()), _flat(saved["world_model"])
    found += [
        (f"world_model.{key}", theirs[key], ours[key])
        for key in sorted(set(ours) & set(theirs))
        if key.split(".")[0] not in wm_config.SPEED_ONLY and theirs[key] != ours[key]
    ]
    if found:
        shown = ", ".join(f"{key} {saved_value!r} (this run: {run_value!r})" for key, saved_value, run_value in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ConfigError(
            f"the world model in {run_dir} does not fit this run: {shown}{more}; point world_model_dir at a "
            "world model trained with this config, or run with the world model's settings"
        )


def world_model_meta(run_dir: str) -> dict:
    """The metadata of a phase-1 run's newest intact checkpoint (its config, obs_spec, action_dim)."""
    with _world_model_checkpoints(run_dir) as ckpt:
        return ckpt.restore_meta()


def load_world_model(
    run_dir: str, mesh=None, config: ml_collections.ConfigDict | None = None
) -> tuple[rssm.WorldModel, Any, ml_collections.ConfigDict]:
    """The trained world model of a phase-1 run: (model, params, phase-1 config).

    `run_dir` is a pipeline run directory (holding phase1/) or a phase-1 directory itself. Only
    the Orbax checkpoint is read, and nothing is written there: its metadata holds the config
    and shapes, the model is rebuilt from them and its parameters restored into an abstract
    target (no pickles). With `config`, a world model that does not fit that run is refused
    before its parameters are read.
    """
    with _world_model_checkpoints(run_dir) as ckpt:
        meta = ckpt.restore_meta()
        if config is not None:
            check_world_model_fits(config, meta, run_dir)
        saved = ml_collections.ConfigDict(meta["config"])
        spec = {k: tuple(v) for k, v in meta["obs_spec"].items()}
        action_dim = int(meta["action_dim"])
        # The parameters alone: the optimiser's moments and the training key stay on disk.
        params = ckpt.restore_subtree({"params": abstract_params(saved, spec, action_dim, mesh)})["params"]
    return rssm.build_world_model(saved.world_model, spec, action_dim), params, saved


def action_evidence(
    run_dir: str, demos_dir: str, num_demos: int, windows: int = 200, seed: int = 0, mesh=None
) -> dict[str, float]:
    """How much the demonstrations' true actions explain them under a trained world model.

    The negative ELBO per step (nats, unweighted) of `windows` windows of the first `num_demos`
    demonstrations, filtered with their true actions, with zero actions, and with the actions of
    other windows of the batch (shuffled: the right marginal, the wrong timing); every variant
    sees the same windows and posterior samples. A model that has learnt how actions move the
    body explains the true actions' windows clearly better (`zero_minus_true`,
    `shuffled_minus_true` well above 0); if it hardly does, phase 2 has little to infer from.
    """
    model, params, config = load_world_model(run_dir, mesh)
    wm = config.world_model
    store = EpisodeStore(demos_dir, progress=False)
    if ACTION_KEY not in store.keys:
        raise DatasetError(f"{demos_dir!r} holds no {ACTION_KEY!r}: the true actions are needed to measure this")
    store = store.select(range(min(num_demos, store.num_episodes)))
    batch_size = int(config.data.batch_size)
    sampler = WindowSampler(store, config.data.window, batch_size, seed + 3, (*wm.obs_keys, ACTION_KEY), 0, 1)

    @jax.jit
    def nelbo(batch, actions, rng):
        obs = {k: batch[k] for k in wm.obs_keys}
        embeds = model.apply({"params": params}, obs, method=rssm.WorldModel.embed)
        states, outs = rssm.observe(model, params, embeds, actions, rng)
        return rssm.negative_elbo(model, params, obs, states, outs, wm.loss)[1]["nelbo_per_step"]

    totals = {"true": 0.0, "zero": 0.0, "shuffled": 0.0}
    batches = max(1, -(-windows // batch_size))
    for i in range(batches):
        batch = jax.device_put(sampler.batch(i))
        true = batch[ACTION_KEY].astype(jnp.float32)
        rng = jax.random.PRNGKey(seed + i)
        perm = jax.random.permutation(jax.random.fold_in(rng, 1), batch_size)
        variants = {"true": true, "zero": jnp.zeros_like(true), "shuffled": true[perm]}
        for name, actions in variants.items():
            totals[name] += float(nelbo(batch, actions, rng)) / batches
    return {
        "nelbo_per_step_true": totals["true"],
        "nelbo_per_step_zero": totals["zero"],
        "nelbo_per_step_shuffled": totals["shuffled"],
        "zero_minus_true": totals["zero"] - totals["true"],
        "shuffled_minus_true": totals["shuffled"] - totals["true"],
        "windows": batches * batch_size,
    }
