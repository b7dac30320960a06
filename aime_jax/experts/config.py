"""The settings of the experts as ml_collections ConfigDicts, the dialect of every config in the
project: each setting is overridden the same way on every command line (`--config.sac.utd=0.5`).

`sac()`, `explore()` and `mppi()` hold the defaults of the SAC learner and its loop, of the
exploration agent (its SAC under `sac`) and of the MPPI planner. `tasks()` is the dataset
builder's table: per task, the SAC expert's training length at scale 1, its settings over the
defaults and the planner episodes it learns from. `expert(env)` is a task's SAC run as the
builder trains it (configs/expert.py), `planner(env)` a task's planner episodes
(configs/planner.py). `override` applies a dict of settings (JSON from a
checkpoint, a build's settings) with one line for an unknown key or a value of the wrong type;
the `validate_*` functions refuse impossible values in one line.
"""
from __future__ import annotations

import copy
import json
import math
from typing import Any

import ml_collections
from ml_collections import config_dict

from aime_jax import envs
from aime_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def sac() -> ConfigDict:
    """The SAC learner and its online loop. Env steps are agent steps.

    Chosen for wall-clock speed on a CPU (see `sac.default_config`): 128 x 2 ReLU MLPs with
    LayerNorm, Adam lr 1e-3, batch 128, one update per env step.
    """
    c = ConfigDict()
    c.hidden_sizes = (128, 128)
    c.layer_norm = True
    c.actor_lr = 1e-3
    c.critic_lr = 1e-3
    c.temperature_lr = 1e-3
    c.batch_size = 128
    c.discount = 0.99
    c.tau = 0.005
    c.init_temperature = 0.1
    # None: -action_dim.
    c.target_entropy = config_dict.placeholder(float)
    c.log_std_min = -5.0
    c.log_std_max = 2.0
    # Uniform random actions for the first seed_steps env steps; updates start after them.
    c.seed_steps = 5000
    # Updates per env step, and updates per jitted call: the updates run in chunks of
    # updates_per_call (every updates_per_call / utd env steps), because each call costs ~1 ms
    # of dispatch and batch transfer on a CPU, a third of a default update (benchmarks/sac.py).
    c.utd = 1.0
    c.updates_per_call = 10
    # n-step TD targets (sum of n discounted rewards, then the bootstrap), as in DrQ-v2; 1 is SAC's
    # one-step target. The entropy bonus enters at the bootstrap state only.
    c.n_step = 1
    c.num_envs = 1
    c.action_repeat = 2
    # Exploration aid for the flip tasks: training episodes (never evaluation ones) start with the
    # body turned about the y axis by an angle uniform in +-start_pitch radians (pi: every
    # orientation), dropped and settled (`Env.reset(pitch=...)`); 0 keeps the suite's starts.
    c.start_pitch = 0.0
    # The networks see the root's pitch angle as (sin, cos) instead of the unbounded angle, so a
    # full turn returns to the same input (cheetah; walker observes orientations already).
    c.periodic_pitch = False
    # Train on the task's shaped reward (`envs.tasks.Task.shaped`; the flip tasks have one) in
    # place of its reward; evaluations, logged returns and episode files keep the task's reward.
    c.shaped_reward = False
    # SAC from demonstrations (RLPD's symmetric sampling): the episodes in demo_dir (this task's,
    # the aime-jax layout: `<i>.npz` with the MDP keys, pre_action, reward, is_terminal) stay in a
    # buffer of their own, rewarded as training is, and every update batch draws demo_fraction
    # of its transitions from them. "" (default): none.
    c.demo_dir = ""
    c.demo_fraction = 0.5
    c.buffer_size = 1_000_000
    # Evaluation, checkpoints and buffer episodes happen at episode boundaries after these counts.
    c.eval_every = 10_000
    c.eval_episodes = 10
    c.save_every = 10_000
    c.log_every = 1000
    return c


def explore() -> ConfigDict:
    """The exploration agent's ensemble; `sac` holds its policy learner's and loop's settings."""
    c = ConfigDict()
    c.ensemble_size = 5
    c.model_hidden_sizes = (128, 128)
    c.model_lr = 1e-3
    # The intrinsic reward is intrinsic_scale x the disagreement of the normalised predictions.
    c.intrinsic_scale = 10.0
    c.sac = sac()
    return c


def mppi() -> ConfigDict:
    c = ConfigDict()
    c.samples = 256
    c.horizon = 40  # agent steps (x action_repeat physics steps)
    c.noise = 0.8
    c.temperature = 0.3
    c.action_repeat = 2
    return c


def tasks() -> ConfigDict:
    """Per task: `steps`, the agent steps (action repeat 2, 500 per episode) its SAC expert trains
    for at scale 1 before its demonstrations are recorded; `sac`, its settings over `sac()` (the
    `expert_config` of a build overrides them); `planner_demos`, the MPPI episodes planned first
    into `<expert workdir>-planner/` for its `demo_dir` (0: none).

    The lengths: measured on walker (benchmarks/results/sac_cpu.json and the SAC note: 90 % of
    the paper's expert return at ~35k stand, ~40k walk, ~80k run) with margin; cheetah-run learns
    far more slowly (256x2 networks: 797-828 from 860k to 1M); the flips, from planner
    demonstrations, 90 % at ~190k (flip) and ~60k (flipbackward). Flip's evaluations still rise
    after 300k (two builder runs: mean 425-435 over 200k-300k, 450-458 over 310k-500k), and its
    -buffer trains to 500k anyway, hence 500k. The other custom tasks are estimates.
    The settings: cheetah-run reaches 90 % of the paper's expert return only with 256-wide
    networks (820 at 1M steps, 800 first at 860k, where 128x2 had 714 at 600k;
    benchmarks/results/sac_experts_cpu.json). The flips' experts see the pitch as (sin, cos):
    their demonstrations turn many times over. SAC alone rocks back and forth on the flips,
    hence their planner demonstrations (aime_jax/experts/mppi.py, scaled like the length).
    """
    steps = {
        "walker-stand": 60_000,
        "walker-walk": 80_000,
        "walker-run": 200_000,
        "walker-walkbackward": 100_000,
        "walker-runbackward": 200_000,
        "walker-flip": 150_000,
        "walker-flipbackward": 150_000,
        "walker-jump": 150_000,
        "cheetah-run": 1_000_000,
        "cheetah-runbackward": 300_000,
        "cheetah-flip": 500_000,
        "cheetah-flipbackward": 300_000,
    }
    settings = {
        "cheetah-run": {"hidden_sizes": [256, 256]},
        "cheetah-flip": {"periodic_pitch": True},
        "cheetah-flipbackward": {"periodic_pitch": True},
    }
    demos = {"cheetah-flip": 6, "cheetah-flipbackward": 6}
    table = ConfigDict({env: {"steps": n, "sac": settings.get(env, {}), "planner_demos": demos.get(env, 0)}
                        for env, n in steps.items()})
    table.lock()
    return table


def expert(env: str) -> ConfigDict:
    """A task's SAC run (experiments/train_expert.py) as the builder trains it at scale 1:
    `env`, `steps`, `seed`, `episode_dir` ("": none) and `sac` with the task's settings."""
    table = tasks()
    if env not in table:
        raise ConfigError(f"unknown config argument {env!r}; give a task, one of {', '.join(table)}")
    c = ConfigDict()
    c.env = env
    c.steps = table[env].steps
    # Training episode i starts from episode_seed(seed, i).
    c.seed = 0
    # Every training episode is also saved here (<i>.npz, no images): the first 1000 are the
    # task's -buffer dataset.
    c.episode_dir = ""
    c.sac = override(sac(), table[env].sac.to_dict(), "SAC")
    return c


def planner(env: str) -> ConfigDict:
    """Planner episodes of a task (experiments/plan.py): `env`, `episodes` (the builder's count
    for the task's expert, 6 for a task without one), `seed` (episode i starts from
    episode_seed(seed, i)) and the planner's settings `mppi`."""
    table = tasks()
    if env not in table:
        raise ConfigError(f"unknown config argument {env!r}; give a task, one of {', '.join(table)}")
    c = ConfigDict()
    c.env = env
    c.episodes = table[env].planner_demos or 6
    c.seed = 0
    c.mppi = mppi()
    return c


def as_dict(config: ConfigDict) -> dict[str, Any]:
    """The settings as JSON gives them back (lists for tuples): what checkpoints save and compare."""
    return json.loads(config.to_json())


def override(config: ConfigDict, values: dict[str, Any], what: str) -> ConfigDict:
    """A copy of `config` with `values` (nested dicts for nested settings) in place, locked.
    Unknown keys are refused with the known ones listed; every value must have its default's
    type (ints count as floats, a list of whole numbers for a tuple)."""
    out = copy.deepcopy(config)
    _apply(out, values, what)
    out.lock()
    return out


def _apply(config: ConfigDict, values: dict[str, Any], what: str) -> None:
    unknown = sorted(set(values) - set(config.keys()))
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; known: {sorted(config.keys())}")
    for key, value in values.items():
        default = config[key]
        if isinstance(default, ConfigDict):
            if not isinstance(value, (dict, ConfigDict)):
                raise ConfigError(f"{what} setting {key}={value!r}: give a dict of its settings")
            _apply(default, dict(value), "SAC" if key == "sac" else key)
            continue
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not all(_is_int(h) for h in value):
                raise ConfigError(f"{what} setting {key}={value!r}: give a list of layer widths, e.g. [128, 128]")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{what} setting {key}={value!r}: give true or false")
        elif isinstance(default, int):
            if not _is_int(value):
                raise ConfigError(f"{what} setting {key}={value!r}: give a whole number")
        elif isinstance(default, float) or (default is None and value is not None):
            if not _is_number(value):
                raise ConfigError(f"{what} setting {key}={value!r}: give a number")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{what} setting {key}={value!r}: give a string")
        config[key] = value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_widths(sizes: Any, what: str) -> None:
    # A command line gives a tuple of whatever it was given ('abc' -> ('a', 'b', 'c')).
    if not sizes or not all(_is_int(h) and h >= 1 for h in sizes):
        raise ConfigError(f"{what}={sizes!r}: give a non-empty list of positive layer widths, e.g. 128,128")


def validate_sac(c: ConfigDict) -> ConfigDict:
    positive = ("batch_size", "n_step", "num_envs", "action_repeat", "buffer_size", "eval_every", "eval_episodes",
                "save_every", "log_every")
    bad = [k for k in positive if c[k] < 1]
    if bad:
        raise ConfigError(f"SAC settings {bad} must be >= 1, got {[c[k] for k in bad]}")
    _check_widths(c.hidden_sizes, "SAC setting hidden_sizes")
    if c.utd <= 0 or c.updates_per_call < 1:
        raise ConfigError(f"utd and updates_per_call must be positive, got {c.utd}, {c.updates_per_call}")
    if not 0.0 < c.tau <= 1.0 or not 0.0 <= c.discount <= 1.0:
        raise ConfigError(f"need 0 < tau <= 1 and 0 <= discount <= 1, got {c.tau}, {c.discount}")
    if c.demo_dir and not 0.0 < c.demo_fraction < 1.0:
        raise ConfigError(f"demo_fraction must be in (0, 1) with a demo_dir, got {c.demo_fraction}")
    if not 0.0 <= c.start_pitch <= math.pi:
        raise ConfigError(f"start_pitch must be in [0, pi] radians, got {c.start_pitch}")
    if c.seed_steps < 0 or c.init_temperature <= 0 or c.log_std_min >= c.log_std_max:
        raise ConfigError(
            "need seed_steps >= 0, init_temperature > 0 and log_std_min < log_std_max, got "
            f"{c.seed_steps}, {c.init_temperature}, ({c.log_std_min}, {c.log_std_max})"
        )
    return c


def validate_explore(c: ConfigDict) -> ConfigDict:
    if c.ensemble_size < 2:
        raise ConfigError(f"ensemble_size must be >= 2 (disagreement needs two models), got {c.ensemble_size}")
    _check_widths(c.model_hidden_sizes, "exploration setting model_hidden_sizes")
    if c.model_lr <= 0 or c.intrinsic_scale <= 0:
        raise ConfigError(f"model_lr and intrinsic_scale must be > 0, got {c.model_lr}, {c.intrinsic_scale}")
    validate_sac(c.sac)
    if c.sac.num_envs != 1:
        raise ConfigError("the exploration agent steps one environment (sac.num_envs must be 1)")
    if c.sac.start_pitch or c.sac.periodic_pitch:
        raise ConfigError("sac.start_pitch and sac.periodic_pitch are expert-trainer settings; "
                          "the exploration agent does not support them (remove them)")
    return c


def validate_mppi(c: ConfigDict) -> ConfigDict:
    if c.samples < 1 or c.horizon < 1 or c.action_repeat < 1:
        raise ConfigError(f"samples, horizon and action_repeat must be >= 1, got {c.samples}, {c.horizon}, "
                          f"{c.action_repeat}")
    if c.noise <= 0 or c.temperature <= 0:
        raise ConfigError(f"noise and temperature must be > 0, got {c.noise}, {c.temperature}")
    return c


def validate_expert(c: ConfigDict) -> ConfigDict:
    """An `expert(env)` config after command-line overrides."""
    envs.domain_of(c.env)  # an unknown task fails here, with the valid names
    if c.steps < 1 or c.seed < 0:
        raise ConfigError(f"config.steps must be >= 1 and config.seed >= 0, got {c.steps}, {c.seed}")
    validate_sac(c.sac)
    return c
