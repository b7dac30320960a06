"""The AIME pipeline: runs the stages the config names, each resumable, e.g.

  python experiments/main.py --config=configs/walker_mdp.py:quick --workdir=runs/walker_mdp_quick

`--config.a.b=value` overrides any setting. Rerunning the same command continues where an
interrupted run stopped. `--config.runs.num_demos=1,2,5 --config.runs.seeds=0,1` trains a grid
of runs as one program, one results.json per run (docs/many_runs.md). A multi-process run (TPU pod, SLURM, launch/local.sh, or explicit
--coordinator_address/--num_processes/--process_id) connects its processes first; see launch/.
"""
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from aime_jax.hostmem import reexec_with_huge_pages


def define_flags(flag_values: flags.FlagValues, argv: list[str] | None = None) -> None:
    """This program's flags; `argv` is where the config overrides are read (default sys.argv)."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/walker_mdp.py:quick.", lock_config=True, flag_values=flag_values,
        sys_argv=argv,
    )
    flags.DEFINE_string(
        "workdir", None, "Run directory (default: runs/<config name>). May name config values, e.g. "
        "runs/demos{data.num_demos}_seed{seed}, which a sweep uses for one directory per run.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0.", flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Multi-process runs: number of processes.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_bool(
        "dry_run", False, "Check the command (config file, overrides, settings) and print the run directory "
        "and stages, without starting JAX's runtime or running anything.", flag_values=flag_values,
    )


define_flags(flags.FLAGS)
FLAGS = flags.FLAGS


def load_config(flag_values: flags.FlagValues):
    """(config, workdir) of parsed flags, resolved; exits with one line on a bad config file."""
    from aime_jax import config as config_lib
    from aime_jax.atomic import check_local_path
    from aime_jax.errors import required_config

    config = required_config(flag_values, "configs/walker_mdp.py:quick")
    config_lib.resolve(config)
    # configs/walker_mdp.py:quick -> runs/walker_mdp_quick
    name = os.path.basename(config_flags.get_config_filename(flag_values["config"])).replace(".py", "").replace(":", "_")
    workdir = _fill(flag_values.workdir or os.path.join("runs", name), "--workdir", config)
    check_local_path(workdir, "--workdir")
    # e.g. runs/sweep/world_model_seed{seed}: one world model per seed, shared by the runs that
    # differ in what phase 1 does not read (config.world_model_dir in aime_jax/config.py).
    filled = _fill(config.world_model_dir, "--config.world_model_dir", config)
    if not config_lib.many_runs(config):
        config.world_model_dir = filled
    # A program of runs keeps the pattern: each seed fills it (config_lib.seed_world_model_dir).
    return config, workdir


def _fill(pattern: str, flag: str, config) -> str:
    """`pattern` with its {...} fields filled from the config."""
    from aime_jax.errors import ConfigError

    try:
        return pattern.format_map(config)
    except (AttributeError, KeyError, IndexError, ValueError) as e:
        detail = str(e)
        if isinstance(e, (KeyError, AttributeError)) and e.args:
            # ml_collections' error holds the name and, on a second line, its suggestion.
            name, *hint = str(e.args[0]).split("\n")
            suggestion = re.search(r'Did you mean "(\w+)"', " ".join(hint))
            detail = repr(name.strip("'\"")) + (f"; did you mean {suggestion.group(1)!r}?" if suggestion else "")
        raise ConfigError(
            f"{flag}={pattern!r} names a config value that does not exist ({detail}); use names such as "
            "{data.num_demos} or {seed}, and {{ }} for literal braces"
        ) from None


def check_command(argv: list[str], num_devices: int | None = None, process_count: int = 1, plan: dict | None = None):
    """Parses a command line of this program (argv[0] is the program) with its own flags and
    makes the checks the run makes before it computes anything (the config, and what is on disk:
    the run directory, the datasets it would build, a shared world model), without writing;
    returns (config, workdir, stage names). `num_devices`: the devices of all `process_count`
    processes (None: unknown, as one). `plan` collects what the commands checked so far will write, so that a sweep's
    later run that clashes with an earlier one is refused too. Raises SystemExit with one line on
    a bad command (what `experiments/sweep.py --dry_run` uses)."""
    from aime_jax import config as config_lib
    from aime_jax import stages
    from aime_jax.errors import AimeError

    flag_values = flags.FlagValues()
    define_flags(flag_values, list(argv))
    parse_flags(list(argv), flag_values)
    try:
        config, workdir = load_config(flag_values)
        config_lib.validate(config, config.mesh.num_devices or num_devices or 1, process_count, num_devices)
        stages.preflight(config, workdir, plan)
        return config, workdir, config_lib.stages(config)
    except AimeError as e:
        sys.exit(f"error: {e}")


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    if FLAGS.dry_run:
        import jax

        from aime_jax import parallel

        # The processes a launcher started (no connection is made): with the devices of this
        # process standing for all of them, e.g. fake CPU devices for a cluster's command.
        processes = FLAGS.num_processes or parallel.launched_process_count()
        config, workdir, names = check_command(sys.argv, jax.device_count(), processes)
        from aime_jax import config as config_lib

        runs = len(config_lib.run_grid(config))
        many = f" for {runs} runs as one program" if config_lib.many_runs(config) else ""
        devices = config.mesh.num_devices or jax.device_count()
        print(f"dry run: stages {','.join(names)}{many} in {workdir} on {devices} devices "
              f"({processes} process{'es' if processes > 1 else ''}){_padding_note(config, devices)}; "
              "the command is valid")
        return
    from aime_jax import parallel

    # Before any other JAX call: the backend must see every process's devices.
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    import jax

    from aime_jax import config as config_lib
    from aime_jax import stages
    from aime_jax.errors import one_line

    if jax.process_index() != 0:
        # One report per run: process 0 prints (and writes); the others keep only their errors.
        sys.stdout = open(os.devnull, "w")
    with one_line():
        config, workdir = load_config(FLAGS)
        mesh_devices = config.mesh.num_devices or jax.device_count()
        config_lib.validate(config, mesh_devices, jax.process_count(), jax.device_count())
        parallel.use_compile_cache(config.compile_cache_dir)
        note = _padding_note(config, mesh_devices)
        if note and not config_lib.many_runs(config):
            print(f"{mesh_devices} devices{note}", flush=True)
        names = stages.run(config, workdir, parallel.make_mesh(config.mesh.num_devices or None))
    print(f"done: {', '.join(names)} in {workdir}")


def _padding_note(config, devices: int) -> str:
    """', the global batch of B windows is padded to P rows (...)' when the devices do not divide it."""
    from aime_jax import parallel

    padded = parallel.padded_batch(config.data.batch_size, devices)
    if padded == config.data.batch_size:
        return ""
    return (f", the global batch of {config.data.batch_size} windows is padded to {padded} rows "
            f"({padded - config.data.batch_size} masked, weight 0)")


def parse_flags(argv, flag_values: flags.FlagValues = FLAGS):
    from aime_jax.errors import parse_command_line

    return parse_command_line(argv, flag_values)


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_flags)
