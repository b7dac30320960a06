"""A block of the paper's results table: one embodiment dataset x its target tasks x one modality.

As in the paper, a block trains ONE world model on the embodiment dataset and reuses it for every
target task; per task it runs AIME's phase 2 and the final evaluation, and the baselines BCO(0)
(whose inverse dynamics model learns from the same embodiment dataset) and BC (the oracle, on the
demonstrations' actions) on the same demonstrations. A budget sets the training lengths:
`full` is the paper's 100k phase-1 and 50k phase-2 steps, `tenth` 10k and 5k, `config` whatever
the config says (small test blocks). Everything else is the config's (the paper's settings).

One folder per block, `<out>/<dataset>-<modality>-seed<seed>/`:

  world_model/                  the phase-1 run (a pipeline run directory); a longer budget or a
                                later milestone continues it (same data stream, bit-exact)
  world_model/phase1-<N>/       its checkpoint at N steps, copied there: what phase 2 reads
  <task>/aime-p1_<N>-p2_<M>/    AIME phase 2 (M steps) on the N-step world model, its evaluation
                                (results.json) and diagnostics.json
  <task>/bco/, <task>/bc/       the baselines (their length is the paper's early stopping)
  <report>.json, .md, .csv      every cell of the plan: scores, per-episode returns, wall time per
                                stage, the commit, diagnostics; the table beside the paper's

Every cell is a unit of work that resumes after a kill (its stages do) and is skipped once
complete, and each cell records its wall time per stage (`wall.json`, kept up to date while it
runs) and the commit of the code that finished it (`cell.json`). Cells can run as separate
processes (`cells=`): first `datasets`, then `world_model`, then the task cells side by side.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Iterable, Sequence

import jax
import ml_collections
import numpy as np

from aime_jax import envs, parallel, stages
from aime_jax.agents.phase1 import action_evidence
from aime_jax.atomic import check_local_path, write_json
from aime_jax.checkpoint import Checkpointer
from aime_jax.data.episodes import list_episodes
from aime_jax.errors import AimeError, ConfigError
from aime_jax.experts.build import EPISODES, build, given, parse_name, scaled
from aime_jax.report import block_csv, block_markdown, dataset_name, paper_cell
from aime_jax.world_model.config import SPEED_ONLY

# (phase-1 steps, phase-2 steps) of each budget; `config` keeps the config's own.
BUDGETS = {"full": (100_000, 50_000), "tenth": (10_000, 5_000), "config": None}
# The target tasks of each domain in the paper's table.
TARGET_TASKS = {"walker": ("stand", "walk", "run"), "cheetah": ("run", "runbackward", "flip", "flipbackward")}
METHODS = ("aime", "bco", "bc")
# How often a running stage rewrites its wall.json: a killed cell loses at most this much time.
WALL_HEARTBEAT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of a block: `datasets`, `world_model` (to `phase1_steps`), or a method on a task."""

    kind: str  # datasets | world_model | aime | bco | bc
    task: str = ""  # the environment, e.g. walker-walk
    phase1_steps: int = 0  # world_model and aime: the world model's training length

    @property
    def name(self) -> str:
        if not self.task:
            return self.kind
        return f"{self.kind}:{self.task.split('-', 1)[1]}"


@dataclasses.dataclass
class Block:
    """What one invocation runs: the cells of `tasks` x `methods` on one embodiment dataset."""

    dataset: str
    config: ml_collections.ConfigDict
    budget: str
    phase1_steps: tuple[int, ...]
    phase2_steps: int
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    out: str
    data_seed: int = 0
    # A deviation from the paper's settings is run under a name of its own (its own folder) and
    # lists the changed settings, e.g. ("phase1.lr=0.001",).
    name: str = ""
    deviations: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        suffix = f"-{self.name}" if self.name else ""
        return os.path.join(self.out, f"{self.dataset}-{self.config.modality}-seed{self.config.seed}{suffix}")

    @property
    def root(self) -> str:
        return self.config.data.root

    def cells(self) -> list[Cell]:
        cells = [Cell("datasets")]
        if "aime" in self.methods:
            cells += [Cell("world_model", phase1_steps=n) for n in self.phase1_steps]
        for task in self.tasks:
            if "aime" in self.methods:
                cells += [Cell("aime", task, n) for n in self.phase1_steps]
            cells += [Cell(m, task) for m in ("bco", "bc") if m in self.methods]
        return cells

    def cell_dir(self, cell: Cell) -> str:
        if cell.kind == "datasets":
            return os.path.join(self.folder, "datasets")
        if cell.kind == "world_model":
            return self.world_model_dir()
        leaf = f"aime-p1_{cell.phase1_steps}-p2_{self.phase2_steps}" if cell.kind == "aime" else cell.kind
        return os.path.join(self.folder, cell.task.split("-", 1)[1], leaf)

    def world_model_dir(self, steps: int | None = None) -> str:
        """The phase-1 run, or (with `steps`) its snapshot at that many steps."""
        base = os.path.join(self.folder, "world_model")
        return base if steps is None else os.path.join(base, f"phase1-{steps}")

    def demos_dir(self, task: str) -> str:
        return os.path.join(self.root, f"{task}-expert")

    def report_name(self) -> str:
        """`block-<budget>` for the whole block; a subset of it gets a name that says which."""
        domain = self.config.domain
        default_tasks = tuple(f"{domain}-{t}" for t in TARGET_TASKS[domain])
        budget_steps = BUDGETS[self.budget]
        default_p1 = (self.config.phase1.steps,) if budget_steps is None else (budget_steps[0],)
        parts = [self.budget]
        if self.tasks != default_tasks:
            parts.append("-".join(t.split("-", 1)[1] for t in self.tasks))
        if self.methods != METHODS:
            parts.append("-".join(self.methods))
        if self.phase1_steps != default_p1:
            parts.append("p1_" + "_".join(str(n) for n in self.phase1_steps))
        return "block-" + "-".join(parts)


def make_block(
    dataset: str,
    config: ml_collections.ConfigDict,
    budget: str,
    out: str,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    phase1_steps: Sequence[int] | None = None,
    data_seed: int = 0,
    name: str = "",
    deviations: Sequence[str] = (),
) -> Block:
    """Checks the plan (names, budget, domain) before anything runs; raises ConfigError.

    `deviations` (the settings changed from the paper's, as `key=value`) need a `name`: they are
    recorded in the report, and the block gets a folder of its own."""
    check_local_path(out, "--out")
    spec = parse_name(dataset)
    if spec.domain != config.domain:
        raise ConfigError(
            f"block {dataset!r} is a {spec.domain} dataset but the config is for {config.domain}; use "
            f"configs/{spec.domain}_{config.modality}.py"
        )
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    names = list(tasks) if tasks else list(TARGET_TASKS[config.domain])
    task_envs = []
    for t in names:
        env = t if t.startswith(config.domain + "-") else f"{config.domain}-{t}"
        if env not in envs.ENV_NAMES:
            valid = [n.split("-", 1)[1] for n in envs.ENV_NAMES if n.startswith(config.domain + "-")]
            raise ConfigError(f"unknown {config.domain} task {t!r}; choose from {', '.join(valid)}")
        task_envs.append(env)
    methods = tuple(methods) if methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    steps = BUDGETS[budget]
    p1 = (config.phase1.steps,) if steps is None else (steps[0],)
    p2 = config.phase2.steps if steps is None else steps[1]
    if phase1_steps:
        p1 = tuple(sorted(set(int(n) for n in phase1_steps)))
    if deviations and not name:
        raise ConfigError(
            f"{', '.join(deviations)} change(s) the paper's settings: name this deviation (--name=...), so "
            "that it is reported as one and gets a block folder of its own"
        )
    if name and (os.sep in name or name.startswith(".")):
        raise ConfigError(f"--name={name!r}; use a plain folder-name suffix, e.g. phase1_lr1e-3")
    if min(p1) < 1 or p2 < 1:
        raise ConfigError(f"training lengths must be >= 1 step, got phase 1 {p1}, phase 2 {p2}")
    code_commit()
    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.root = os.path.abspath(config.data.root)
    return Block(dataset, config, budget, p1, p2, tuple(dict.fromkeys(task_envs)),
                 tuple(m for m in METHODS if m in methods), os.path.abspath(out), data_seed, name, tuple(deviations))


# Overrides that leave the experiment the paper's: where data lives, the seed, logging and
# checkpointing cadence, devices, and settings that change only the speed of the same computation.
NOT_DEVIATIONS = (
    "data.root", "seed", "wandb.", "mesh.", "compile_cache_dir", "data.prefetch", "eval.num_envs", "eval.workers",
    *(f"{stage}.{key}" for stage in ("phase1", "phase2") for key in ("log_every", "eval_every", "save_every", "keep")),
)


def deviations(config_file: str, args: Sequence[str]) -> list[str]:
    """The paper's settings that a command line changes: a config argument (e.g. `:quick`) and
    every `--config.key=value` override but those of NOT_DEVIATIONS and speed-only settings."""
    harmless = NOT_DEVIATIONS + tuple(f"world_model.{k}" for k in SPEED_ONLY)
    out = []
    if ":" in os.path.basename(config_file):
        out.append(f"config {os.path.basename(config_file)}")
    for arg in args:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            if not key.startswith(harmless):
                out.append(arg[len("--config."):])
    return out


def cell_config(block: Block, cell: Cell) -> ml_collections.ConfigDict:
    """The pipeline config of a cell: the block's config with its data, stages and lengths."""
    c = copy.deepcopy(block.config)
    with c.unlocked():
        c.data.embodiment = block.dataset
        c.data.embodiment_dir = os.path.join(block.root, block.dataset)
        c.data.seed = block.data_seed
        if cell.task:
            c.env = cell.task
            c.data.demos_dir = block.demos_dir(cell.task)
        c.algo = "aime" if cell.kind in ("world_model", "aime") else cell.kind
        if cell.kind in ("world_model", "aime"):
            c.phase1.steps = cell.phase1_steps
        c.phase2.steps = block.phase2_steps
        c.stages = {"world_model": "phase1", "aime": "phase2,eval", "bco": "phase1,phase2,eval",
                    "bc": "phase2,eval"}[cell.kind]
        if cell.kind == "aime":
            c.world_model_dir = block.world_model_dir(cell.phase1_steps)
    return c


@functools.lru_cache(maxsize=None)
def code_commit() -> str:
    """The git commit of the code that runs (with `+dirty` for uncommitted changes), or 'unknown'.
    Asked once, when the block is planned: forking git later, with JAX's threads running, is unsafe."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


class WallClock:
    """Wall time per stage of one cell, summed over attempts, in `<dir>/wall.json`; a running
    stage rewrites it every WALL_HEARTBEAT_S, so a killed attempt loses at most that much."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, "wall.json")
        self.seconds: dict[str, float] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.seconds = json.load(f)

    def _write(self, name: str, base: float, start: float) -> None:
        self.seconds[name] = base + time.time() - start
        if jax.process_index() == 0:
            write_json(self.path, self.seconds)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Times the `with` body as stage `name`, on top of its earlier attempts."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        base, start = self.seconds.get(name, 0.0), time.time()
        done = threading.Event()

        def beat() -> None:
            while not done.wait(WALL_HEARTBEAT_S):
                self._write(name, base, start)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self._write(name, base, start)


def _complete(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _card(folder: str) -> dict | None:
    return _complete(os.path.join(folder, "card.json"))


def _ready(folder: str) -> bool:
    """A dataset the block can use: one we built (its card is written last), or one given as it
    is (episodes without our card or meta.json, e.g. the authors' published files)."""
    return _card(folder) is not None or given(folder)


def is_complete(block: Block, cell: Cell) -> bool:
    if cell.kind == "datasets":
        return all(_ready(f) for f in _dataset_folders(block))
    if cell.kind == "world_model":
        return os.path.isdir(block.world_model_dir(cell.phase1_steps))
    return os.path.exists(os.path.join(block.cell_dir(cell), "cell.json"))


def _needs_embodiment(methods: Iterable[str]) -> bool:
    return bool(set(methods) & {"aime", "bco"})


def _dataset_folders(block: Block) -> list[str]:
    folders = [os.path.join(block.root, block.dataset)] if _needs_embodiment(block.methods) else []
    return folders + [block.demos_dir(t) for t in block.tasks]


def _check_inputs(block: Block, cell: Cell) -> None:
    """A cell run on its own needs the cells before it: say which, in one line."""
    if cell.kind == "datasets":
        return
    needs = [os.path.join(block.root, block.dataset)] if cell.kind in ("world_model", "bco") else []
    needs += [block.demos_dir(cell.task)] if cell.task else []
    missing = [f for f in needs if not _ready(f)]
    if missing:
        raise AimeError(f"cell {cell.name} needs {', '.join(missing)}, which is not complete; run the "
                        "datasets cell first (--cells=datasets)")
    if cell.kind == "aime" and not is_complete(block, Cell("world_model", phase1_steps=cell.phase1_steps)):
        raise AimeError(f"cell {cell.name} needs the world model at {cell.phase1_steps} steps "
                        f"({block.world_model_dir(cell.phase1_steps)}); run the world_model cell first "
                        "(--cells=world_model)")


def run_cell(block: Block, cell: Cell, mesh=None) -> bool:
    """Runs one cell unless it is complete; returns whether it ran."""
    if is_complete(block, cell):
        print(f"== cell {cell.name}{_p1(cell)}: complete, skipped", flush=True)
        return False
    _check_inputs(block, cell)
    print(f"== cell {cell.name}{_p1(cell)} ({block.cell_dir(cell)})", flush=True)
    if cell.kind == "datasets":
        _run_datasets(block)
    elif cell.kind == "world_model":
        _run_world_model(block, cell, mesh)
    else:
        _run_method(block, cell, mesh)
    return True


def _p1(cell: Cell) -> str:
    return f" @ {cell.phase1_steps} phase-1 steps" if cell.kind in ("world_model", "aime") else ""


def _run_datasets(block: Block) -> None:
    d = block.config.data
    clock = WallClock(os.path.join(block.folder, "datasets"))
    names = [block.dataset] if _needs_embodiment(block.methods) else []
    names += [f"{t}-expert" for t in block.tasks]
    for name in names:
        folder = os.path.join(block.root, name)
        if given(folder):
            print(f"datasets: using {folder} as given ({len(list_episodes(folder))} episodes, not built by aime-jax)",
                  flush=True)
            continue
        episodes = max(scaled(EPISODES["expert"], d.scale), d.num_demos) if name.endswith("-expert") else None
        with clock.stage(name):
            parallel.on_main(
                lambda: build(name, block.config.modality, block.root, scale=d.scale, seed=block.data_seed,
                              expert_scale=d.expert_scale, episodes=episodes),
                f"building {name}",
            )


def _run_world_model(block: Block, cell: Cell, mesh) -> None:
    """Trains (or continues) the world model to `cell.phase1_steps` and snapshots that step."""
    run_dir = block.world_model_dir()
    snapshot = block.world_model_dir(cell.phase1_steps)
    ckpt_dir = os.path.join(run_dir, "phase1", "checkpoints")
    if os.path.isdir(ckpt_dir):
        with Checkpointer(ckpt_dir) as ckpt:
            latest = ckpt.latest_step()
        if latest is not None and latest > cell.phase1_steps:
            raise AimeError(
                f"the world model in {run_dir} has trained for {latest} steps, past {cell.phase1_steps}, "
                "without a snapshot there; ask for phase-1 steps in increasing order (one command with "
                "--phase1_steps=a,b,c does), or use another --out"
            )
    config = cell_config(block, cell)
    stages.run(config, run_dir, mesh, WallClock(run_dir).stage)
    def snapshot_step() -> None:
        tmp = snapshot + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(os.path.join(tmp, "checkpoints"))
        shutil.copytree(os.path.join(ckpt_dir, str(cell.phase1_steps)),
                        os.path.join(tmp, "checkpoints", str(cell.phase1_steps)))
        shutil.copy(os.path.join(run_dir, "config.json"), os.path.join(tmp, "config.json"))
        with open(os.path.join(run_dir, "wall.json")) as f:
            write_json(os.path.join(tmp, "wall.json"), json.load(f))
        write_json(os.path.join(tmp, "cell.json"), {"cell": cell.name, "phase1_steps": cell.phase1_steps,
                                                    "commit": code_commit()})
        os.replace(tmp, snapshot)

    parallel.on_main(snapshot_step, f"snapshotting {snapshot}")


def _run_method(block: Block, cell: Cell, mesh) -> None:
    workdir = block.cell_dir(cell)
    config = cell_config(block, cell)
    clock = WallClock(workdir)
    stages.run(config, workdir, mesh, clock.stage)
    record = {"cell": cell.name, "method": cell.kind, "task": cell.task, "commit": code_commit(),
              "command": " ".join(sys.argv)}
    if cell.kind == "aime":
        record.update(phase1_steps=cell.phase1_steps, phase2_steps=block.phase2_steps)
        with clock.stage("diagnostics"):
            evidence = action_evidence(config.world_model_dir, config.data.demos_dir, config.data.num_demos,
                                       seed=config.seed)
        parallel.on_main(lambda: write_json(os.path.join(workdir, "diagnostics.json"),
                                            {"action_evidence": evidence}), "writing diagnostics.json")
    parallel.on_main(lambda: write_json(os.path.join(workdir, "cell.json"), record), "writing cell.json")


def run_block(block: Block, cells: Iterable[str] | None = None, mesh=None) -> dict:
    """Runs the plan's cells (or those named, e.g. 'world_model', 'aime:walk') in order, then
    writes the block's report; returns it."""
    plan = block.cells()
    if cells:
        wanted = set(cells)
        unknown = wanted - {c.name for c in plan}
        if unknown:
            raise ConfigError(f"unknown cell(s) {sorted(unknown)}; this plan's cells: "
                              f"{', '.join(dict.fromkeys(c.name for c in plan))}")
        plan = [c for c in plan if c.name in wanted]
    for cell in plan:
        run_cell(block, cell, mesh)
    return write_report(block)


# ---- the report ---------------------------------------------------------------------------------

def _metrics(path: str, keys: Sequence[str]) -> list[dict]:
    """The lines of a metrics.jsonl that carry any of `keys`, reduced to step and those keys."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if any(k in entry for k in keys):
                rows.append({"step": entry["step"], **{k: entry[k] for k in keys if k in entry}})
    # A resumed run appends: keep the last line per step.
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def dataset_summary(folder: str) -> dict | None:
    """The episode returns of a dataset: the card's statistics (computed from the episodes for a
    dataset given as it is, marked `given`) plus quantiles and a histogram."""
    card = _card(folder)
    if card is None and not given(folder):
        return None
    returns, steps = [], 0
    for path in list_episodes(folder):
        with np.load(path) as z:
            returns.append(float(np.sum(z["reward"])))
            steps += len(z["reward"]) - 1
    returns = np.asarray(returns)
    counts, edges = np.histogram(returns, bins=10)
    if card is None:
        card = {"name": os.path.basename(os.path.normpath(folder)), "episodes": len(returns), "steps": steps,
                "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                "return_min": float(returns.min()), "return_max": float(returns.max()), "given": True}
    return {
        "name": card["name"], "episodes": card["episodes"], "steps": card["steps"],
        "return_mean": card["return_mean"], "return_std": card["return_std"],
        "return_min": card["return_min"], "return_max": card["return_max"],
        **({"given": True} if card.get("given") else {}),
        "return_quantiles": {f"q{int(q * 100)}": float(np.quantile(returns, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "return_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "returns": returns.tolist(),
        **({"expert_return": card["expert_return"]} if "expert_return" in card else {}),
        **({"expert": card["expert"]} if "expert" in card else {}),
    }


def collect_report(block: Block) -> dict:
    """The block's record: every cell of the plan (missing ones marked), data and world model."""
    wm_metrics = os.path.join(block.world_model_dir(), "phase1", "metrics.jsonl")
    data = {}
    for folder in _dataset_folders(block):
        data[os.path.basename(folder)] = dataset_summary(folder)
    world_model = None
    if "aime" in block.methods:
        world_model = {
            "phase1_steps": list(block.phase1_steps),
            "wall_s": _complete(os.path.join(block.world_model_dir(), "wall.json")),
            "snapshots": {str(n): _complete(os.path.join(block.world_model_dir(n), "cell.json"))
                          for n in block.phase1_steps},
            "trained_steps": max([r["step"] for r in _metrics(wm_metrics, ("train/nelbo_per_step",))], default=0),
            "val": _metrics(wm_metrics, ("val/nelbo_per_step", "val/recon_per_step", "val/kl_per_step")),
            "train": _metrics(wm_metrics, ("train/nelbo_per_step",)),
        }
    cells = []
    for cell in block.cells():
        if cell.kind in ("datasets", "world_model"):
            continue
        folder = block.cell_dir(cell)
        entry = {"cell": cell.name, "method": cell.kind, "task": cell.task, "dir": folder,
                 "complete": is_complete(block, cell)}
        if cell.kind == "aime":
            entry["phase1_steps"] = cell.phase1_steps
            entry["phase2_steps"] = block.phase2_steps
        results = _complete(os.path.join(folder, "results.json")) if entry["complete"] else None
        if results is not None:
            entry.update({k: results.get(k) for k in (
                "return_mean", "return_std", "normalised", "normalised_std", "normalised_paper", "returns",
                "expert_return", "paper_expert_return", "random", "episodes", "num_demos")})
        paper_dataset = dataset_name({"algo": cell.kind, "env": cell.task, "embodiment_name": block.dataset})
        entry["paper"] = paper_cell(block.config.domain, paper_dataset, cell.task.split("-", 1)[1],
                                    block.config.modality, cell.kind)
        entry["wall_s"] = _complete(os.path.join(folder, "wall.json"))
        record = _complete(os.path.join(folder, "cell.json"))
        entry["commit"] = record.get("commit") if record else None
        if cell.kind == "aime":
            entry["diagnostics"] = _complete(os.path.join(folder, "diagnostics.json"))
            p2 = os.path.join(folder, "phase2", "metrics.jsonl")
            entry["phase2_curve"] = _metrics(p2, ("train/action_mse", "train/action_mse_random",
                                                  "train/nelbo_per_step", "eval/normalised"))
        cells.append(entry)
    return {
        "block": block.dataset, "domain": block.config.domain, "modality": block.config.modality,
        "budget": block.budget, "phase1_steps": list(block.phase1_steps), "phase2_steps": block.phase2_steps,
        "seed": block.config.seed, "data_seed": block.data_seed, "num_demos": block.config.data.num_demos,
        "command": " ".join(sys.argv), "commit": code_commit(), "folder": block.folder,
        "name": block.name, "deviations": list(block.deviations),
        "datasets_wall_s": _complete(os.path.join(block.folder, "datasets", "wall.json")),
        "data": data, "world_model": world_model, "cells": cells,
        "config": json.loads(block.config.to_json()),
    }


def write_report(block: Block) -> dict:
    """Writes `<report>.json`, `.md` and `.csv` into the block folder; returns the record."""
    record = collect_report(block)
    base = os.path.join(block.folder, block.report_name())

    def write() -> None:
        write_json(base + ".json", record)
        with open(base + ".md", "w") as f:
            f.write(block_markdown(record))
        block_csv(record, base + ".csv")

    parallel.on_main(write, "writing the block report")
    print(f"wrote {base}.json, .md and .csv")
    return record
