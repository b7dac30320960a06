"""Records episodes of the MPPI planner on the true simulator (demonstrations for SAC), e.g.

  python experiments/plan.py --config=configs/planner.py:cheetah-flip --out=data/planner/cheetah-flip
  python experiments/train_expert.py --config=configs/expert.py:cheetah-flip --workdir=runs/experts/cheetah-flip \
      --config.sac.demo_dir=data/planner/cheetah-flip

`--config.x.y=value` overrides any setting (--config.episodes=6, --config.mppi.samples=128; see
aime_jax/experts/config.py). Rerunning the same command continues an interrupted run (finished
episodes are kept).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from aime_jax.errors import one_line, parse_command_line, required_config
from aime_jax.hostmem import reexec_with_huge_pages

config_flags.DEFINE_config_file("config", None, "Config file and task, e.g. configs/planner.py:cheetah-flip.",
                                lock_config=True)
flags.DEFINE_string("out", None, "Output folder.", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from aime_jax.errors import ConfigError
    from aime_jax.experts.config import as_dict, validate_mppi
    from aime_jax.experts.mppi import plan_episodes

    config = required_config(FLAGS, "configs/planner.py:cheetah-flip")
    with one_line("rerun the same command to continue (finished episodes are kept)"):
        if config.episodes < 1 or config.seed < 0:
            raise ConfigError(f"config.episodes must be >= 1 and config.seed >= 0, got {config.episodes}, {config.seed}")
        validate_mppi(config.mppi)
        results = plan_episodes(config.env, FLAGS.out, config.episodes, config.seed, config.mppi)
    done = ", ".join(f"{r['return']:.1f}" for r in results) or "none (all there already)"
    print(f"{config.episodes} planner episodes in {FLAGS.out}; returns of those planned now: {done}")
    print(f"settings: {as_dict(config.mppi)}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
