"""The experiment configuration: shared defaults for every configs/<domain>_<modality>.py file.

`make_config(domain, modality, arg)` returns the paper's settings (arg '') or a small run that
finishes on a 2-core CPU in minutes (arg 'quick'). `resolve(config)` fills in what follows from
the chosen domain and modality (observed and probed keys), and `validate(config)` reports
config errors before anything is compiled.
"""
from __future__ import annotations

import copy
import os

import ml_collections

from aime_jax import envs
from aime_jax.errors import ConfigError
from aime_jax.world_model.config import get_config as world_model_config

SCALES = ("", "quick")
STAGES = ("datasets", "phase1", "phase2", "eval")
# AIME, or one of the paper's baselines: BC (the oracle, on the expert's actions) and BCO(0).
ALGOS = ("aime", "bc", "bco")
# The world model of the release for each domain.
DEFAULT_VARIANT = {"walker": "rssm", "cheetah": "rssmo"}
DEFAULT_TASK = {"walker": "walker-walk", "cheetah": "cheetah-run"}


def make_config(domain: str, modality: str, arg: str = "") -> ml_collections.ConfigDict:
    if arg not in SCALES:
        raise ConfigError(f"unknown config argument {arg!r}; use one of {SCALES} (e.g. configs/walker_mdp.py:quick)")
    envs.observation_keys(domain, modality)
    c = ml_collections.ConfigDict()
    c.domain = domain
    c.modality = modality
    c.env = DEFAULT_TASK[domain]
    c.seed = 0
    # For bc and bco, stage phase1 trains BCO(0)'s inverse dynamics model (bc: nothing) and stage
    # phase2 the BC policy; see aime_jax/agents/bc.py.
    c.algo = "aime"
    c.stages = "datasets,phase1,phase2,eval"
    # The world model's folder, instead of <workdir>/phase1; it may name config values, e.g.
    # runs/sweep/world_model_seed{seed}. A finished phase-1 run there is reused. Otherwise the
    # phase1 stage trains it there, once: runs with the same phase-1 settings (everything phase 1
    # reads) share it, one trains while the others wait (aime_jax/stages.py, shared_world_model).
    c.world_model_dir = ""

    c.data = ml_collections.ConfigDict()
    # Datasets live in <root>/<name>; an absolute `embodiment_dir` overrides that.
    c.data.root = "data"
    c.data.embodiment = f"{domain}-random"
    c.data.embodiment_dir = ""
    # The datasets stage builds missing datasets with aime_jax/experts/build.py: `scale` multiplies
    # their episode counts (random 1000, demonstrations 100, buffers 1000), `expert_scale` the
    # training lengths of the agents they need (SAC experts, the exploration agent).
    c.data.scale = 1.0
    c.data.expert_scale = 1.0
    # The seed of the datasets it builds (episodes, experts), independent of the training seed
    # `seed`: runs of several seeds share one data root. Datasets of another data seed need
    # another root (a folder holds one build, whose card records its seed).
    c.data.seed = 0
    c.data.window = 50
    c.data.batch_size = 50
    c.data.val_fraction = 0.05
    c.data.prefetch = 2
    # Demonstrations: <root>/<demos> (default '<env>-expert'), or an explicit demos_dir.
    c.data.demos = ""
    c.data.demos_dir = ""
    c.data.num_demos = 100

    c.world_model = world_model_config(DEFAULT_VARIANT[domain])

    c.phase1 = ml_collections.ConfigDict()
    c.phase1.steps = 100_000  # 1000 epochs x 100 batches, as in the release
    c.phase1.lr = 3e-4
    c.phase1.grad_clip = 100.0
    c.phase1.log_every = 100
    c.phase1.eval_every = 1000
    c.phase1.save_every = 1000
    c.phase1.keep = 3
    c.phase1.val_batches = 4
    # Open-loop video (visual): filter this many frames, then imagine the rest of the window.
    c.phase1.video_context = 5

    c.phase2 = ml_collections.ConfigDict()
    c.phase2.steps = 50_000  # 500 epochs x 100 batches, as in the release
    c.phase2.lr = 3e-4
    c.phase2.grad_clip = 100.0
    c.phase2.kl_only = False  # drop the reconstruction term
    c.phase2.kl_scale = 1.0  # 0: reconstruction only
    c.phase2.log_every = 100
    c.phase2.eval_every = 1000  # 10 epochs
    c.phase2.eval_episodes = 10
    c.phase2.save_every = 1000
    c.phase2.keep = 3
    c.phase2.policy = ml_collections.ConfigDict(
        dict(hidden_sizes=(128, 128), activation="elu", layer_norm=False, min_std=1e-6)
    )

    # The baselines, with the release's settings (PAPER.md): a deterministic MLP policy on a stack
    # of the last `stack` observation embeddings (1 in MDP), Adam 1e-3, batch 50, a 70/30 split of
    # the demonstrations, early stopping with patience 3 after at least 50 epochs.
    c.bc = ml_collections.ConfigDict()
    c.bc.stack = 1 if modality == "mdp" else 5
    c.bc.hidden_sizes = (128, 128)
    c.bc.activation = "elu"
    c.bc.cnn_depth = 32
    c.bc.lr = 1e-3
    c.bc.batch_size = 50
    c.bc.val_fraction = 0.3
    c.bc.patience = 3
    c.bc.min_epochs = 50
    c.bc.max_epochs = 500
    c.bc.log_every = 500
    # BCO(0)'s inverse dynamics model: validated every idm_eval_every steps, early-stopped (same
    # patience) after at least idm_steps, at most idm_max_steps.
    c.bc.idm_steps = 5000
    c.bc.idm_max_steps = 50_000
    c.bc.idm_eval_every = 500
    c.bc.idm_val_samples = 20_000

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 100
    c.eval.num_envs = 10
    c.eval.workers = 1 if modality != "visual" else 2
    c.eval.seed = 12345

    c.mesh = ml_collections.ConfigDict()
    # 0: every device (of every process). A single-process run may use the first N devices.
    c.mesh.num_devices = 0
    # JAX's persistent compilation cache (a folder, or a gs:// URL, which JAX writes itself):
    # runs that compile the same steps (a sweep's runs, a resumed run) load them from there
    # instead of compiling again. Empty: off.
    c.compile_cache_dir = ""

    # Many AIME runs as one program (docs/many_runs.md): one run per number of demonstrations x
    # seed, e.g. num_demos="1,2,5,10,20,50,100", seeds="0,1,2"; one world model per seed, every
    # phase-2 run of the grid trained together. Empty: the single run of data.num_demos and seed.
    c.runs = ml_collections.ConfigDict()
    c.runs.num_demos = ""
    c.runs.seeds = ""
    # Devices that split each run's batch; the others hold different runs. 0: chosen.
    c.runs.data_devices = 0

    c.wandb = ml_collections.ConfigDict()
    # One wandb run per pipeline run (docs/pipeline.md): named after the run directory unless
    # `name` is given; grouped by `group`, else by the sweep under `wandb agent`, else by algo,
    # task and modality.
    c.wandb.mode = "disabled"  # 'online' or 'offline' turns it on
    c.wandb.project = "aime-jax"  # under `wandb agent`, the sweep file's `project` instead
    c.wandb.name = ""
    c.wandb.group = ""

    if arg == "quick":
        # 30 random episodes, experts trained for a few minutes (walker-walk 40k steps, cheetah-run
        # 50k), in a folder of their own so that they never meet the full-size datasets.
        c.data.root = os.path.join("data", "quick")
        c.data.scale = 0.03
        c.data.expert_scale = 0.5 if domain == "walker" else 0.1
        c.data.batch_size = 16
        c.data.window = 32
        vector = modality != "visual"
        if domain == "walker":
            # A cell that 30 episodes and minutes of training can show honestly: walker-stand
            # imitated with the stand expert's training buffer as the embodiment data (its
            # first 30 episodes, mostly early, clumsy behaviour). From 30 random episodes, walk
            # is beyond a quick run (the paper's full-size random->walk MDP score is 17.6).
            c.env = "walker-stand"
            c.data.embodiment = "walker-stand-buffer"
        c.phase1.steps = 5000 if vector else 600
        c.phase1.log_every = 250 if vector else 50
        c.phase1.eval_every = 1000 if vector else 200
        c.phase1.save_every = 1000 if vector else 200
        c.phase1.val_batches = 2
        c.data.num_demos = 10
        c.phase2.steps = 2000 if vector else 300
        c.phase2.log_every = 100 if vector else 50
        c.phase2.eval_every = 500 if vector else 300
        c.phase2.save_every = 500 if vector else 300
        c.phase2.eval_episodes = 4
        c.eval.episodes = 10
        wm = c.world_model
        wm.deter_size = 128
        wm.stoch_size = 16 if domain == "cheetah" else 32
        small = 64 if modality != "visual" else 128
        for head in (wm.latent, wm.vector_decoder, wm.probe, wm.idm, wm.vector_encoder, wm.pre_gru):
            head.hidden_sizes = tuple(small for _ in head.hidden_sizes)
        wm.cnn_depth = 8
        c.bc.cnn_depth = 8
        c.bc.min_epochs = 3
        c.bc.max_epochs = 20
        c.bc.log_every = 50
        c.bc.idm_steps = 300
        c.bc.idm_max_steps = 1000
        c.bc.idm_eval_every = 100
        c.bc.idm_val_samples = 2000
    return c


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fills in the keys the world model observes and probes for the configured modality."""
    validate_names(config)
    with config.unlocked():
        config.world_model.obs_keys = envs.observation_keys(config.domain, config.modality)
        config.world_model.probe_keys = envs.probe_keys(config.domain, config.modality)
    return config


def validate_names(config: ml_collections.ConfigDict) -> None:
    if config.modality not in envs.MODALITIES:
        raise ConfigError(f"config.modality={config.modality!r}; choose one of {', '.join(envs.MODALITIES)}")
    if config.domain not in envs.DOMAINS:
        raise ConfigError(f"config.domain={config.domain!r}; choose one of {', '.join(envs.DOMAINS)}")
    if config.env not in envs.ENV_NAMES or envs.domain_of(config.env) != config.domain:
        valid = [n for n in envs.ENV_NAMES if n.startswith(config.domain + "-")]
        raise ConfigError(f"config.env={config.env!r}; for {config.domain} choose one of {', '.join(valid)}")


def stages(config: ml_collections.ConfigDict) -> list[str]:
    names = [s.strip() for s in config.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ConfigError(f"config.stages names unknown stage(s) {unknown}; valid stages: {', '.join(STAGES)}")
    return names


def embodiment_dir(config: ml_collections.ConfigDict) -> str:
    return config.data.embodiment_dir or os.path.join(config.data.root, config.data.embodiment)


def demos_dir(config: ml_collections.ConfigDict) -> str:
    return config.data.demos_dir or os.path.join(config.data.root, config.data.demos or f"{config.env}-expert")


def _whole_numbers(config: ml_collections.ConfigDict, name: str, minimum: int, example: str) -> list[int]:
    text = config.runs[name]
    values = []
    for part in str(text).split(","):
        try:
            value = int(part.strip())
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ConfigError(
                f"config.runs.{name}={text!r}; give whole numbers >= {minimum} separated by commas, e.g. {example}"
            )
        values.append(value)
    if len(set(values)) < len(values):
        raise ConfigError(f"config.runs.{name}={text!r} names a value twice; give each once")
    return values


def many_runs(config: ml_collections.ConfigDict) -> bool:
    """Whether the config asks for many runs as one program (config.runs)."""
    return bool(str(config.runs.num_demos).strip() or str(config.runs.seeds).strip())


def run_grid(config: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    """The (num_demos, seed) of every run of config.runs, seed by seed; one run when it is empty."""
    demos = _whole_numbers(config, "num_demos", 1, "1,2,5,10") if str(config.runs.num_demos).strip() \
        else [config.data.num_demos]
    seeds = _whole_numbers(config, "seeds", 0, "0,1,2") if str(config.runs.seeds).strip() else [config.seed]
    return [(n, s) for s in seeds for n in demos]


def run_dirname(num_demos: int, seed: int) -> str:
    """A run's folder in a program of runs (the name launch/sweeps/num_demos.yaml gives it too)."""
    return f"demos{num_demos}_seed{seed}"


def run_config(
    config: ml_collections.ConfigDict, num_demos: int, seed: int, world_model_dir: str = ""
) -> ml_collections.ConfigDict:
    """The config of one run of a program of runs: that of the single run it stands for (the same
    one `--config.data.num_demos=N --config.seed=S` would give, reusing `world_model_dir`)."""
    c = copy.deepcopy(config)
    c.data.num_demos = num_demos
    c.seed = seed
    c.world_model_dir = world_model_dir
    c.runs.num_demos = ""
    c.runs.seeds = ""
    c.runs.data_devices = 0
    return c


def seed_world_model_dir(config: ml_collections.ConfigDict, seed: int) -> str:
    """The world model folder of seed `seed`'s runs in a program of runs: config.world_model_dir
    with its {...} fields filled from that seed's run (e.g. runs/curve/world_model_seed{seed});
    '' when it is unset."""
    if not config.world_model_dir:
        return ""
    largest = max(n for n, _ in run_grid(config))
    return config.world_model_dir.format_map(run_config(config, largest, seed))


def world_model_dirs(config: ml_collections.ConfigDict) -> list[str]:
    """The world model folders a run (or every seed of a program of runs) names; [] when unset."""
    if not config.world_model_dir:
        return []
    if many_runs(config):
        return list(dict.fromkeys(seed_world_model_dir(config, s) for s in dict.fromkeys(s for _, s in run_grid(config))))
    return [config.world_model_dir]


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1,
             available: int | None = None) -> None:
    """Checks that need no compilation; raises ConfigError naming the value and the fix.

    `num_devices`: the devices of the run's mesh; `available`: all the devices of its processes
    (checked against config.mesh.num_devices), when known. A batch the devices do not divide is
    padded with masked rows (aime_jax/parallel.py, `padded_batch`), so any batch size runs on any
    number of devices."""
    from aime_jax.atomic import check_local_path
    from aime_jax.parallel import check_num_devices

    validate_names(config)
    stage_names = stages(config)
    d = config.data
    for name in ("window", "batch_size"):
        if d[name] < 1:
            raise ConfigError(f"config.data.{name} must be >= 1, got {d[name]}")
    if not isinstance(config.mesh.num_devices, int) or config.mesh.num_devices < 0:
        raise ConfigError(f"config.mesh.num_devices={config.mesh.num_devices!r}; use a number of devices, or 0 for all")
    if available is not None:
        check_num_devices(config.mesh.num_devices, available, process_count)
    for name, path in (("config.data.root", d.root), ("config.data.embodiment_dir", d.embodiment_dir),
                       ("config.data.demos_dir", d.demos_dir), ("config.world_model_dir", config.world_model_dir)):
        check_local_path(path, name)
    if many_runs(config):
        validate_runs(config, num_devices, process_count)
    if not (d.scale > 0 and d.expert_scale > 0):
        raise ConfigError(f"config.data.scale and expert_scale must be > 0, got {d.scale}, {d.expert_scale}")
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"config.data.val_fraction must be in (0, 1), got {d.val_fraction}")
    for stage, names in (
        ("phase1", ("steps", "log_every", "eval_every", "save_every", "keep", "val_batches")),
        ("phase2", ("steps", "log_every", "eval_every", "save_every", "keep", "eval_episodes")),
        ("eval", ("episodes", "num_envs", "workers")),
    ):
        for name in names:
            if config[stage][name] < 1:
                raise ConfigError(f"config.{stage}.{name} must be >= 1, got {config[stage][name]}")
    if d.num_demos < 1:
        raise ConfigError(f"config.data.num_demos must be >= 1, got {d.num_demos}")
    if not isinstance(d.seed, int) or d.seed < 0:
        raise ConfigError(f"config.data.seed must be a whole number >= 0, got {d.seed!r}")
    trains_it = "phase1" in stage_names and config.algo == "aime"
    missing = [folder for folder in world_model_dirs(config) if not os.path.isdir(folder)]
    if missing and not trains_it:
        raise ConfigError(
            f"config.world_model_dir={missing[0]!r} does not exist; point it at the run "
            "directory of a finished phase-1 run, or add the phase1 stage to train it there"
        )
    if config.wandb.mode not in ("disabled", "online", "offline"):
        raise ConfigError(f"config.wandb.mode={config.wandb.mode!r}; use disabled, online or offline")
    if config.world_model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.world_model.dtype={config.world_model.dtype!r}; use float32 or bfloat16")
    validate_bc(config)
    if config.world_model.variant not in ("rssm", "rssmo"):
        raise ConfigError(f"config.world_model.variant={config.world_model.variant!r}; use rssm or rssmo")
    if config.world_model.cnn_impl not in ("auto", "gemm", "lax"):
        raise ConfigError(f"config.world_model.cnn_impl={config.world_model.cnn_impl!r}; use auto, gemm or lax")
    if not isinstance(config.world_model.scan_unroll, int) or config.world_model.scan_unroll < 1:
        raise ConfigError(
            f"config.world_model.scan_unroll={config.world_model.scan_unroll}; use a number of time steps >= 1"
        )
    if config.world_model.cnn_chunk < -1:
        raise ConfigError(
            f"config.world_model.cnn_chunk={config.world_model.cnn_chunk}; use a number of images per chunk, "
            "0 (auto) or -1 (no chunking)"
        )
    if "datasets" in stage_names:
        return
    folder = embodiment_dir(config)
    reuses = config.algo == "aime" and config.world_model_dir and not missing
    if "phase1" in stage_names and config.algo != "bc" and not reuses and not os.path.isdir(folder):
        raise ConfigError(
            f"embodiment dataset {folder!r} does not exist; add the 'datasets' stage to "
            "config.stages, set config.data.embodiment_dir, or collect it with experiments/collect.py"
        )
    demos = demos_dir(config)
    if "phase2" in stage_names and not os.path.isdir(demos):
        raise ConfigError(
            f"demonstrations {demos!r} do not exist; add the 'datasets' stage to config.stages to "
            "build them, or set config.data.demos_dir to a folder of expert episodes (observations are enough)"
        )


def validate_runs(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """config.runs: the grid, the algorithm, and how the runs share the devices."""
    run_grid(config)  # refuses a malformed grid
    if config.algo != "aime":
        raise ConfigError(
            f"config.runs trains many AIME runs as one program, not {config.algo}; run the baselines one by "
            "one (e.g. experiments/sweep.py launch/sweeps/num_demos.yaml) or set config.algo=aime"
        )
    if process_count > 1:
        raise ConfigError(
            "config.runs (many runs as one program) needs a single-process run for now; leave it empty "
            "in a multi-process run, or start one process per host, each with its own runs"
        )
    data_devices = config.runs.data_devices
    if not isinstance(data_devices, int) or data_devices < 0 or (data_devices and num_devices % data_devices):
        raise ConfigError(
            f"config.runs.data_devices={data_devices} does not divide the {num_devices} devices; use a divisor "
            f"of {num_devices}, or 0 to choose"
        )


def validate_bc(config: ml_collections.ConfigDict) -> None:
    """The algorithm choice and the baselines' settings."""
    if config.algo not in ALGOS:
        raise ConfigError(f"config.algo={config.algo!r}; choose one of {', '.join(ALGOS)}")
    if config.algo == "aime":
        return
    bc = config.bc
    for name in ("stack", "batch_size", "patience", "min_epochs", "max_epochs", "log_every",
                 "idm_steps", "idm_max_steps", "idm_eval_every", "idm_val_samples", "cnn_depth"):
        if bc[name] < 1:
            raise ConfigError(f"config.bc.{name} must be >= 1, got {bc[name]}")
    if not bc.hidden_sizes or any(h < 1 for h in bc.hidden_sizes):
        raise ConfigError(f"config.bc.hidden_sizes must be positive layer widths, got {tuple(bc.hidden_sizes)}")
    if bc.max_epochs < bc.min_epochs:
        raise ConfigError(f"config.bc.max_epochs={bc.max_epochs} is below config.bc.min_epochs={bc.min_epochs}")
    if bc.idm_max_steps < bc.idm_steps:
        raise ConfigError(f"config.bc.idm_max_steps={bc.idm_max_steps} is below config.bc.idm_steps={bc.idm_steps}")
    if not bc.lr > 0:
        raise ConfigError(f"config.bc.lr must be positive, got {bc.lr}")
    if not 0.0 < bc.val_fraction < 1.0:
        raise ConfigError(f"config.bc.val_fraction must be in (0, 1), got {bc.val_fraction}")
    if bc.activation not in ("elu", "silu", "relu", "tanh"):
        raise ConfigError(f"config.bc.activation={bc.activation!r}; use elu, silu, relu or tanh")
    if config.data.num_demos < 2:
        raise ConfigError(
            f"config.data.num_demos={config.data.num_demos}, but {config.algo} holds out "
            f"{bc.val_fraction:.0%} of the demonstrations for early stopping; use at least 2"
        )
