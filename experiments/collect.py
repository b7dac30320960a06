"""Collects episodes in the simulator, e.g.

  python experiments/collect.py --env=walker-walk --modality=visual --policy=random --episodes=2 --out=DIR

Rerunning the same command continues an interrupted collection.
"""
from absl import app, flags, logging

from aime_jax.data.collect import collect
from aime_jax.errors import one_line, parse_command_line
from aime_jax.hostmem import reexec_with_huge_pages

flags.DEFINE_string("env", "walker-walk", "Environment, e.g. walker-walk or cheetah-run.")
flags.DEFINE_string("modality", "mdp", "mdp, lpomdp or visual (visual also stores images).")
flags.DEFINE_string("policy", "random", "Policy that acts: 'random', an expert's run directory "
                    "(experiments/train_expert.py; its latest checkpoint) or RUN/best (its best evaluation).")
flags.DEFINE_integer("episodes", 10, "Number of episodes.", lower_bound=1)
flags.DEFINE_string("out", None, "Output folder.", required=True)
flags.DEFINE_integer("seed", 0, "Seed; episode i depends only on (seed, i).", lower_bound=0)
flags.DEFINE_integer("action_repeat", 2, "Simulator steps per agent step.", lower_bound=1)
flags.DEFINE_integer("image_size", 64, "Image height and width (visual).", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from aime_jax.experts.sac import load_policy  # jax loads after the huge-pages restart

    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    with one_line("rerun the same command to continue the collection"):
        paths = collect(
            FLAGS.env, FLAGS.modality, FLAGS.out, FLAGS.episodes, load_policy(FLAGS.policy), FLAGS.seed,
            FLAGS.action_repeat, FLAGS.image_size, policy_name=FLAGS.policy,
        )
    print(f"{len(paths)} episodes in {FLAGS.out}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
