"""Runs a block of the paper's results table: one embodiment dataset x its target tasks x one
modality (the config's), at a budget, e.g.

  python experiments/reproduce.py --config=configs/walker_mdp.py --block=walker-stand-buffer \
      --budget=tenth --out=runs/repro

builds the missing datasets in config.data.root (the embodiment dataset, 100 demonstrations per
task), trains ONE world model and reuses it for every task, then per task runs AIME's phase 2 and
the final evaluation, BCO(0) and BC, and writes the block's table (<out>/<block>-<modality>-seed<seed>/
block-<budget>.md, .csv and .json). Rerunning the same command skips finished cells and resumes
the others. --cells runs some cells only (separate processes: datasets, then world_model, then
the task cells side by side). `--config.a.b=value` overrides any setting, as in main.py.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from aime_jax.hostmem import reexec_with_huge_pages

config_flags.DEFINE_config_file("config", None, "Config file of the block's domain and modality, e.g. "
                                "configs/walker_mdp.py.", lock_config=True)
flags.DEFINE_string("block", None, "Embodiment dataset, e.g. walker-stand-buffer, walker-mix, cheetah-random.")
flags.DEFINE_string("budget", "tenth", "full (100k phase-1, 50k phase-2 steps), tenth (10k, 5k) or config "
                    "(the config's phase1.steps and phase2.steps).")
flags.DEFINE_string("out", "runs/repro", "Folder of the block folders.")
flags.DEFINE_list("tasks", None, "Target tasks (default: the domain's, walker stand,walk,run; cheetah "
                  "run,runbackward,flip,flipbackward).")
flags.DEFINE_list("methods", None, "Methods among aime,bco,bc (default: all three).")
flags.DEFINE_list("phase1_steps", None, "World-model training lengths to run AIME from (default: the "
                  "budget's), e.g. 2500,5000,10000: one world model, snapshotted at each.")
flags.DEFINE_list("cells", None, "Run only these cells: datasets, world_model, aime:<task>, bco:<task>, "
                  "bc:<task> (default: every cell, in that order).")
flags.DEFINE_bool("report_only", False, "Write the block's report from what is on disk (cells not yet complete "
                  "are marked), running nothing; safe beside running cells.")
flags.DEFINE_integer("data_seed", 0, "Seed of the datasets (shared by every training seed, config.seed).",
                     lower_bound=0)
flags.DEFINE_string("name", "", "Name of a deviation from the paper's settings (any --config.* override that is "
                    "not a location, seed, logging or speed setting, or a config argument such as :quick): the "
                    "block gets its own folder <block>-<modality>-seed<seed>-<name> and its report lists them.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from aime_jax import parallel

    # A multi-process launch (launch/: a TPU pod, SLURM) connects first; one process is left alone.
    parallel.initialize_distributed()
    import jax

    from aime_jax import config as config_lib
    from aime_jax import reproduce
    from aime_jax.errors import one_line

    if FLAGS.config is None:
        sys.exit("error: --config is required, e.g. --config=configs/walker_mdp.py")
    if not FLAGS.block:
        sys.exit("error: --block is required, e.g. --block=walker-stand-buffer")
    try:
        steps = [int(n) for n in FLAGS.phase1_steps] if FLAGS.phase1_steps else None
    except ValueError:
        sys.exit(f"error: --phase1_steps={','.join(FLAGS.phase1_steps)}; give step counts, e.g. 2500,5000,10000")
    with one_line("rerun the same command to continue the block"):
        config = config_lib.resolve(FLAGS.config)
        # Planned (and the code's commit read) before JAX starts its threads.
        deviations = reproduce.deviations(config_flags.get_config_filename(FLAGS["config"]), sys.argv[1:])
        block = reproduce.make_block(FLAGS.block, config, FLAGS.budget, FLAGS.out, FLAGS.tasks, FLAGS.methods,
                                     steps, FLAGS.data_seed, FLAGS.name, deviations)
        if jax.process_index() != 0:
            sys.stdout = open(os.devnull, "w")
        config_lib.validate(block.config, config.mesh.num_devices or jax.device_count(), jax.process_count(),
                            jax.device_count())
        parallel.use_compile_cache(config.compile_cache_dir)
        if FLAGS.report_only:
            record = reproduce.write_report(block)
        else:
            record = reproduce.run_block(block, FLAGS.cells, parallel.make_mesh(config.mesh.num_devices or None))
    from aime_jax.report import block_markdown

    print(block_markdown(record))


def parse_flags(argv):
    from aime_jax.errors import parse_command_line

    return parse_command_line(argv, FLAGS)


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_flags)
