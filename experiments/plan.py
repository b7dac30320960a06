"""Records episodes of the MPPI planner on the true simulator (demonstrations for SAC), e.g.

  python experiments/plan.py --env=cheetah-flip --episodes=6 --out=data/planner/cheetah-flip
  python experiments/train_expert.py --env=cheetah-flip --workdir=runs/experts/cheetah-flip \
      --set=demo_dir=data/planner/cheetah-flip --set=periodic_pitch=true

Rerunning the same command continues an interrupted run (finished episodes are kept).
"""
import dataclasses

from absl import app, flags, logging

from aime_jax.errors import one_line, parse_command_line
from aime_jax.experts.mppi import MPPIConfig, plan_episodes
from aime_jax.hostmem import reexec_with_huge_pages

_D = MPPIConfig()
flags.DEFINE_string("env", "cheetah-flip", "Task (its reward must read the velocity alone, e.g. the flips).")
flags.DEFINE_integer("episodes", 6, "Number of episodes.", lower_bound=1)
flags.DEFINE_string("out", None, "Output folder.", required=True)
flags.DEFINE_integer("seed", 0, "Seed; episode i depends only on (seed, i).", lower_bound=0)
flags.DEFINE_integer("samples", _D.samples, "Action sequences sampled per step.", lower_bound=1)
flags.DEFINE_integer("horizon", _D.horizon, "Agent steps each sequence looks ahead.", lower_bound=1)
flags.DEFINE_float("noise", _D.noise, "Std of the sampling noise around the plan.", lower_bound=0.0)
flags.DEFINE_float("temperature", _D.temperature, "Softmax temperature over the sequences' returns.")
flags.register_validator("temperature", lambda t: t > 0, "--temperature must be > 0")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    with one_line("rerun the same command to continue (finished episodes are kept)"):
        config = MPPIConfig(FLAGS.samples, FLAGS.horizon, FLAGS.noise, FLAGS.temperature)
        results = plan_episodes(FLAGS.env, FLAGS.out, FLAGS.episodes, FLAGS.seed, config)
    done = ", ".join(f"{r['return']:.1f}" for r in results) or "none (all there already)"
    print(f"{FLAGS.episodes} planner episodes in {FLAGS.out}; returns of those planned now: {done}")
    print(f"settings: {dataclasses.asdict(config)}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
