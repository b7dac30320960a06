"""Phase 2 of many AIME runs as one program: a demonstration-count curve and its seeds at once.

Each run is an ordinary phase-2 run (phase2.py): its own demonstrations (the first `num_demos`),
seed, policy initialisation and window stream, on a frozen world model that several runs may
share. Their policy states are stacked on a leading runs axis and one compiled step, `jax.vmap`
of the single run's step, trains them all; on a ('runs', 'data') mesh the runs are split over
'runs' and each run's batch over 'data', its gradients averaged over 'data' in one all-reduce.

Every run keeps the arithmetic of the same run trained alone (tests/test_many_runs.py measures
how close it is). A run whose loss or gradients turn non-finite is masked from that step on: its
parameters and optimiser state stay those of the step before, it is reported, and the others go
on. The stacked state is checkpointed (and resumed) as one Orbax checkpoint; at the end each run's
own final state is also saved in its run directory, in the layout of a single run, so that it is
evaluated, reported and resumed like one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from aime_jax import parallel
from aime_jax.agents import phase2
from aime_jax.agents.loop import LoopConfig, train_loop
from aime_jax.agents.phase1 import ACTION_KEY, load_world_model
from aime_jax.checkpoint import Checkpointer
from aime_jax.errors import AimeError, ConfigError
from aime_jax.logging import RunLogger

# What the program's summary line shows: means over the runs still training.
SUMMARY = ("loss", "nelbo_per_step", "action_mse", "grad_norm", "runs_active")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a program: its own config (num_demos and seed are what vary), the folder it
    writes to as a single run would, its world model and its demonstrations."""

    config: ml_collections.ConfigDict
    workdir: str
    world_model_dir: str
    demos_dir: str

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.workdir))

    @property
    def phase2_dir(self) -> str:
        return os.path.join(self.workdir, "phase2")


@flax.struct.dataclass
class RunsState:
    """The stacked phase-2 states of a program's runs (every leaf but `step` has a leading runs
    axis); the runs take their steps together."""

    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    rng: jax.Array  # (runs, 2)
    active: jax.Array  # (runs,) bool: False once a run went non-finite, and for the idle runs
    diverged_at: jax.Array  # (runs,) int32: the step whose update was non-finite; 0: none

    def run(self, r: int) -> phase2.PolicyState:
        """Run r's state as a single run holds it."""
        take = functools.partial(jax.tree.map, lambda x: x[r])
        return phase2.PolicyState(self.step, take(self.params), take(self.opt_state), self.rng[r])


def stack_states(states: Sequence[phase2.PolicyState], real: int) -> RunsState:
    """The single runs' states stacked; the runs from index `real` on are idle (filling the mesh)."""
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    runs = len(states)
    return RunsState(
        step=states[0].step,
        params=jax.tree.map(stack, *[s.params for s in states]),
        opt_state=jax.tree.map(stack, *[s.opt_state for s in states]),
        rng=jnp.stack([s.rng for s in states]),
        active=jnp.arange(runs) < real,
        diverged_at=jnp.zeros((runs,), jnp.int32),
    )


def state_shardings(state: RunsState, mesh: Mesh) -> RunsState:
    """The step on every device, every stacked leaf split over 'runs'."""
    repl, runs = parallel.replicated(mesh), parallel.runs_sharding(mesh)
    return jax.tree.map(lambda x: repl if jnp.ndim(x) == 0 else runs, state)


def _world_model_of(wm_stack, index):
    """Run `index`'s world model out of the stacked ones. Under vmap every run gets its own copy,
    also when they all share one: a matrix product then keeps the shapes of a single run's (a
    batch of them), where shared weights would fold the runs into the rows of one product, whose
    sums XLA may order otherwise, and each run's loss and gradients would no longer be those of
    the run alone to the bit."""
    return jax.tree.map(lambda x: x[index], wm_stack)


def _keep_where(ok, new, old):
    return jax.tree.map(lambda n, o: jnp.where(ok.reshape(ok.shape + (1,) * (n.ndim - 1)), n, o), new, old)


def make_runs_train_step(model, policy, loss_config, optimizer, mesh: Mesh, batch_size: int | None = None):
    """(state, wm_stack, wm_index, batch) -> (state, metrics): the single run's step
    (`phase2.make_train_step`) vmapped over the runs, with the non-finite runs masked.

    `wm_stack` holds the world models stacked on a leading axis, `wm_index` (runs,) which one each
    run uses; `batch` is {key: (runs, batch, T, ...)}, each run's `batch_size` windows padded to
    the 'data' devices. Metrics are (runs,) arrays, with `active` and `diverged_at` from the new
    state."""

    def local(per_run, wm_stack, batch):
        params, rng, index = per_run

        def one(params, rng, index, batch):
            wm_params = _world_model_of(wm_stack, index)
            return phase2.shard_grads(model, policy, loss_config, params, wm_params, rng, batch, batch_size)

        return jax.vmap(one)(params, rng, index, batch)

    mean_grads = parallel.runs_data_parallel(local, mesh)

    def train_step(state: RunsState, wm_stack, wm_index, batch):
        rng = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.step)
        grads, metrics = mean_grads((state.params, rng, wm_index), wm_stack, batch)
        metrics = phase2.with_action_std(metrics)
        updates, opt_state = jax.vmap(optimizer.update)(grads, state.opt_state, state.params)
        metrics["grad_norm"] = jax.vmap(optax.tree.norm)(grads)
        params = jax.vmap(optax.apply_updates)(state.params, updates)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        ok = state.active & finite
        diverged_at = jnp.where(state.active & ~finite, state.step + 1, state.diverged_at)
        metrics["active"], metrics["diverged_at"] = ok, diverged_at
        new = state.replace(
            step=state.step + 1, params=_keep_where(ok, params, state.params),
            opt_state=_keep_where(ok, opt_state, state.opt_state), active=ok, diverged_at=diverged_at,
        )
        return new, metrics

    return train_step


def jit_runs_train_step(model, policy, loss_config, optimizer, mesh: Mesh, state: RunsState,
                        batch_size: int | None = None):
    """The step as training runs it: the stacked state split over 'runs' and donated, the world
    models whole on every device, the batch split over 'runs' and 'data'."""
    runs = parallel.runs_sharding(mesh)
    return jax.jit(
        make_runs_train_step(model, policy, loss_config, optimizer, mesh, batch_size),
        in_shardings=(state_shardings(state, mesh), parallel.replicated(mesh), runs,
                      parallel.runs_batch_sharding(mesh)),
        out_shardings=(state_shardings(state, mesh), runs),
        donate_argnums=0,
    )


class RunsAgent:
    """The policies of many runs acting together in the simulator: for `runs` runs and n
    episodes each, the rows of a batch are run-major (rows [r * n, (r + 1) * n) are run r's,
    as `evaluate.evaluate_runs` lays them out), and one jitted call filters and acts for all.

    Each run acts on chunks of `AimeAgent.CHUNK` rows, as a single run's agent does, so an
    episode goes through the same computation whichever batch it ran in."""

    CHUNK = phase2.AimeAgent.CHUNK

    def __init__(self, model, wm_stack, wm_index, policy, params_stack):
        self.model = model
        self.runs = len(wm_index)
        self.wm_stack, self.params, self.wm_index = parallel.host_local(
            (wm_stack, params_stack, jnp.asarray(wm_index, jnp.int32))
        )
        act = functools.partial(phase2.act_step, model, policy)

        def act_runs(wm_stack, wm_index, params, state, keys, observation, prev_action):
            def one(index, params, state, keys, observation, prev_action):
                return act(_world_model_of(wm_stack, index), params, state, keys, observation, prev_action)

            return jax.vmap(one)(wm_index, params, state, keys, observation, prev_action)

        self._act = jax.jit(act_runs)

    def initial_carry(self, episode_seeds):
        return phase2.initial_carry(self.model.config, episode_seeds)

    def act(self, carry, observation, prev_action, is_first):
        state, keys = carry
        rows = len(keys)
        if rows % self.runs:
            raise AimeError(f"RunsAgent.act: {rows} episodes cannot be shared equally by {self.runs} runs")
        n = rows // self.runs
        obs = {k: np.asarray(observation[k]) for k in self.model.config.obs_keys}
        inputs = (state, keys, obs, np.asarray(prev_action, np.float32))
        inputs = jax.tree.map(lambda x: jnp.reshape(jnp.asarray(x), (self.runs, n, *x.shape[1:])), inputs)
        states, key_parts, actions = [], [], []
        for start in range(0, n, self.CHUNK):
            size = min(self.CHUNK, n - start)
            chunk = jax.tree.map(lambda x: _pad_axis1(x[:, start : start + self.CHUNK], self.CHUNK), inputs)
            state_c, keys_c, action_c = self._act(self.wm_stack, self.wm_index, self.params, *chunk)
            states.append(jax.tree.map(lambda x: x[:, :size], state_c))
            key_parts.append(keys_c[:, :size])
            actions.append(action_c[:, :size])
        flat = lambda x: jnp.reshape(x, (rows, *x.shape[2:]))  # noqa: E731
        state = jax.tree.map(lambda *xs: flat(jnp.concatenate(xs, axis=1)), *states)
        keys = flat(jnp.concatenate(key_parts, axis=1))
        return (state, keys), np.asarray(flat(jnp.concatenate(actions, axis=1)), np.float32)


def _pad_axis1(x, rows: int):
    return jnp.pad(x, [(0, 0), (0, rows - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


@dataclasses.dataclass
class _WorldModels:
    """The distinct world models of a program's runs, stacked, and which one each run uses."""

    model: Any
    stack: Any
    index: np.ndarray
    dirs: list[str]


def _load_world_models(config: ml_collections.ConfigDict, runs: Sequence[Run], mesh=None) -> _WorldModels:
    dirs = list(dict.fromkeys(run.world_model_dir for run in runs))
    loaded = [load_world_model(d, mesh, config) for d in dirs]
    model = loaded[0][0]
    for d, (_, params, _) in zip(dirs[1:], loaded[1:]):
        if jax.tree.structure(params) != jax.tree.structure(loaded[0][1]) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded[0][1]))
        ):
            raise ConfigError(f"the world models of {dirs[0]} and {d} differ in shape; a program of runs needs "
                              "world models of one architecture")
    stack = jax.tree.map(lambda *xs: jnp.stack(xs), *[params for _, params, _ in loaded])
    index = np.asarray([dirs.index(run.world_model_dir) for run in runs], np.int32)
    return _WorldModels(model, stack, index, dirs)


def _fingerprint(runs: Sequence[Run], fingerprints: Sequence[str]) -> str:
    """One fingerprint for the program: its runs (in order) and their demonstrations."""
    text = json.dumps([[run.name, f] for run, f in zip(runs, fingerprints)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_meta(run: Run, fingerprint: str, files: str, program_dir: str, diverged_at: int = 0) -> dict:
    """A run's checkpoint metadata: that of a single phase-2 run, and where it was trained."""
    meta = {"stage": "phase2", "demos_dir": os.path.abspath(run.demos_dir), "data_fingerprint": fingerprint,
            "data_fingerprint_files": files, "world_model_dir": os.path.abspath(run.world_model_dir),
            "config": run.config.to_dict(), "program_dir": os.path.abspath(program_dir)}
    if diverged_at:
        meta["diverged_at_step"] = diverged_at
    return meta


def train_aime_runs(
    config: ml_collections.ConfigDict,
    runs: Sequence[Run],
    workdir: str,
    mesh: Mesh | None = None,
    evaluate_runs: Callable[[RunsAgent, int], list[dict]] | None = None,
) -> tuple[RunsAgent, RunsState]:
    """Runs (or resumes) phase 2 of every run in `runs` as one program; returns (agent of the
    real runs, final stacked state).

    `config` holds the settings the runs share (phase 2, window, batch size, policy); `workdir`
    the program's checkpoints and metrics. Each run logs to its own phase2/metrics.jsonl and
    ends with its final state in its own phase2/checkpoints. `evaluate_runs(agent, episodes)`
    scores every run together (one summary dict per run) when given, as `phase2.train_aime`'s
    `evaluate_agent` does for one.
    """
    if not runs:
        raise ConfigError("a program of runs needs at least one run")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        raise ConfigError(f"two runs of the program share a folder name ({names}); give each its own workdir")
    mesh = mesh or parallel.make_runs_mesh(len(runs), config.mesh.num_devices or None, config.runs.data_devices)
    wms = _load_world_models(config, runs, mesh)
    model = wms.model
    obs_keys = tuple(model.config.obs_keys)
    spec = {k: dict(model.obs_spec)[k] for k in obs_keys}
    stores = [phase2.demos_store(run.demos_dir, run.config.data.num_demos, spec) for run in runs]
    # One set of keys for the stacked batch: the true actions (for analysis) only if every run has them.
    keys = obs_keys + ((ACTION_KEY,) if all(ACTION_KEY in s.keys for s in stores) else ())
    samplers = [phase2.demo_sampler(store, run.config, keys, mesh.shape[parallel.DATA_AXIS])
                for store, run in zip(stores, runs)]
    padded = parallel.padded_runs(len(runs), mesh)

    def batches(start: int):
        step = start
        while True:
            parts = [s.batch(step) for s in samplers]
            # The idle runs that fill the mesh train on run 0's windows, masked.
            parts += [parts[0]] * (padded - len(parts))
            yield {k: np.stack([p[k] for p in parts]) for k in keys}
            step += 1

    p = config.phase2
    policy = phase2.make_policy(p.policy, model.action_dim)
    optimizer = phase2.make_optimizer(p)
    features_size = model.config.deter_size + model.config.stoch_size
    singles = [phase2.create_policy_state(policy, features_size, optimizer, run.config.seed) for run in runs]
    state = stack_states(singles + [singles[0]] * (padded - len(runs)), len(runs))
    state = jax.device_put(state, state_shardings(state, mesh))
    wm_stack = parallel.replicate(wms.stack, mesh)
    wm_index = jax.device_put(np.concatenate([wms.index, np.zeros(padded - len(runs), np.int32)]),
                              parallel.runs_sharding(mesh))
    step_fn = jit_runs_train_step(model, policy, phase2.phase2_loss_config(model.config, p), optimizer, mesh, state,
                                  config.data.batch_size)

    def train_step(state, batch):
        return step_fn(state, wm_stack, wm_index, batch)

    def agent_of(state: RunsState) -> RunsAgent:
        params = jax.tree.map(lambda x: x[: len(runs)], state.params)
        return RunsAgent(model, wms.stack, wms.index, policy, params)

    fingerprints = [s.fingerprint_of(keys) for s in stores]
    meta = {"stage": "phase2-runs", "runs": [
        {"name": run.name, "workdir": os.path.abspath(run.workdir), "num_demos": run.config.data.num_demos,
         "seed": run.config.seed, "world_model_dir": os.path.abspath(run.world_model_dir),
         "demos_dir": os.path.abspath(run.demos_dir), "data_fingerprint": f}
        for run, f in zip(runs, fingerprints)],
        "padded_runs": padded, "data_fingerprint": _fingerprint(runs, fingerprints), "config": config.to_dict()}
    _check_padding(workdir, padded)

    with contextlib.ExitStack() as stack:
        loggers = [stack.enter_context(RunLogger(run.phase2_dir, p.steps, 0, p.log_every, progress=False))
                   for run in runs]
        told: set[int] = set()

        def report(step: int, fetched: dict, logger: RunLogger, logging_now: bool) -> str | None:
            active = np.asarray(fetched.pop("active"))[: len(runs)]
            diverged = np.asarray(fetched.pop("diverged_at"))[: len(runs)]
            for r in np.flatnonzero(diverged):
                if r not in told:
                    told.add(r)
                    print(f"run {names[r]} went non-finite at step {diverged[r]}: it keeps the parameters of step "
                          f"{diverged[r] - 1} and trains no more; {int(active.sum())} of {len(runs)} runs go on",
                          flush=True)
            if not active.any():
                return "every run went non-finite (" + ", ".join(
                    f"{names[r]} at step {diverged[r]}" for r in range(len(runs))) + ")"
            if logging_now:
                for r in np.flatnonzero(active):
                    loggers[r].log(step, {k: v[r] for k, v in fetched.items()})
                means = {k: float(np.mean(np.asarray(v)[: len(runs)][active])) for k, v in fetched.items()}
                logger.log(step, {**means, "runs_active": int(active.sum())}, summary=SUMMARY)
            return None

        def evaluate(state: RunsState, step: int, logger: RunLogger) -> None:
            if evaluate_runs is None:
                return
            summaries = evaluate_runs(agent_of(state), p.eval_episodes)
            shown = ("return_mean", "return_std", "normalised", "normalised_paper")
            for run_logger, summary in zip(loggers, summaries):
                run_logger.log(step, summary, prefix="eval", summary=shown)
            logger.log(step, {k: float(np.mean([s[k] for s in summaries])) for k in summaries[0]},
                       prefix="eval", summary=shown)

        state = train_loop(
            name="phase 2 (many runs)", workdir=workdir, state=state, train_step=train_step, batches=batches,
            mesh=mesh, loop=LoopConfig.from_config(p, config.data), meta=meta,
            evaluate=evaluate, data_dir=", ".join(dict.fromkeys(run.demos_dir for run in runs)),
            put=parallel.shard_runs_batch, report=report,
        )
    save_runs(state, runs, fingerprints, [s.fingerprint for s in stores], workdir)
    return agent_of(state), state


def _check_padding(workdir: str, padded: int) -> None:
    """Refuses to resume a program saved with another number of idle runs (another mesh)."""
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return
    with Checkpointer(folder, read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            return
        saved = ckpt.restore_meta().get("padded_runs")
    if saved is not None and saved != padded:
        raise ConfigError(
            f"{workdir} was saved with {saved} runs on its mesh (idle ones included), this mesh holds {padded}; "
            "resume on the same devices, or set config.runs.data_devices so that the 'runs' axis matches"
        )


def save_runs(state: RunsState, runs: Sequence[Run], fingerprints: Sequence[str], files: Sequence[str],
              program_dir: str) -> None:
    """Each run's final state in its own phase2/checkpoints, as a single run saves it (skipped
    where that step is saved already)."""
    step = int(jax.device_get(state.step))
    host = jax.device_get(state)
    diverged = np.asarray(host.diverged_at)
    local = jax.local_devices()[0]
    for r, run in enumerate(runs):
        single = jax.device_put(host.run(r), local)
        with Checkpointer(os.path.join(run.phase2_dir, "checkpoints"), max_to_keep=run.config.phase2.keep) as ckpt:
            ckpt.save(step, single, run_meta(run, fingerprints[r], files[r], program_dir, int(diverged[r])),
                      force=True)


def load_runs_agent(config: ml_collections.ConfigDict, runs: Sequence[Run]) -> tuple[RunsAgent, list[dict]]:
    """The agent of every run's latest phase-2 checkpoint (in its run directory) and the
    checkpoints' metadata, each restored into an abstract target."""
    wms = _load_world_models(config, runs)
    model = wms.model
    policy = phase2.make_policy(config.phase2.policy, model.action_dim)
    optimizer = phase2.make_optimizer(config.phase2)
    features_size = model.config.deter_size + model.config.stoch_size
    params, metas = [], []
    for run in runs:
        target = jax.eval_shape(lambda: phase2.create_policy_state(policy, features_size, optimizer, run.config.seed))
        with Checkpointer(os.path.join(run.phase2_dir, "checkpoints")) as ckpt:
            single, meta = ckpt.restore(target)
        params.append(single.params)
        metas.append(meta)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
    return RunsAgent(model, wms.stack, wms.index, policy, stacked), metas
