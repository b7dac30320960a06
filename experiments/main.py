"""The AIME pipeline: runs the stages the config names, each resumable, e.g.

  python experiments/main.py --config=configs/walker_mdp.py:quick --workdir=runs/walker_mdp_quick

`--config.a.b=value` overrides any setting. Rerunning the same command continues where an
interrupted run stopped.
"""
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/walker_mdp.py:quick.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    from aime_jax import parallel

    # Before any other JAX call: the backend must see every process's devices.
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)

    import jax

    from aime_jax import config as config_lib
    from aime_jax import stages
    from aime_jax.errors import AimeError

    try:
        config = FLAGS.config
        if config is not None:
            config.keys()  # the config file is loaded lazily: fail here, not later
    except OSError as e:  # ml_collections reports a config file it could not load this way
        sys.exit(f"error: {e}")
    if config is None:
        sys.exit("error: --config is required, e.g. --config=configs/walker_mdp.py:quick")
    # configs/walker_mdp.py:quick -> runs/walker_mdp_quick
    name = os.path.basename(config_flags.get_config_filename(FLAGS["config"])).replace(".py", "").replace(":", "_")
    workdir = FLAGS.workdir or os.path.join("runs", name)
    try:
        config_lib.resolve(config)
        mesh_devices = config.mesh.num_devices or jax.device_count()
        config_lib.validate(config, mesh_devices, jax.process_count())
        names = config_lib.stages(config)
        if jax.process_index() == 0:
            stages.write_config(config, workdir)
        mesh = parallel.make_mesh(config.mesh.num_devices or None)
        for name in names:
            print(f"== stage {name} ({workdir})", flush=True)
            stages.stage_fn(config, name)(config, workdir, mesh)
    except AimeError as e:
        sys.exit(f"error: {e}")
    print(f"done: {', '.join(names)} in {workdir}")


def parse_flags(argv):
    """absl's parser, with config errors (unknown key, wrong type) as one line."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        message = str(e)
        hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', message)
        if hint:
            message = f"unknown config key {hint.group(2)!r} (did you mean {hint.group(1)!r}?)"
        elif isinstance(e, (AttributeError, KeyError)):
            message = f"unknown config key {message}"
        sys.exit(f"error: bad command line: {message}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
