"""Builds one of the paper's datasets by name, training the agents it needs first, e.g.

  python experiments/datasets.py --name=walker-mix --modality=lpomdp --root=data
  python experiments/datasets.py --name=walker-walk-expert --modality=visual --root=data --scale=0.01

Names: <domain>-random, <domain>-explore-buffer, <task>-expert, <task>-buffer, walker-mix (see
aime_jax/experts/build.py). Rerunning the same command continues an interrupted build and gives
the same files; a complete dataset is skipped. --scale multiplies the episode counts and the
agents' training lengths (tiny versions for tests); --expert_scale sets the training lengths alone.
"""
import sys

from absl import app, flags, logging

from aime_jax.errors import one_line, parse_command_line
from aime_jax.hostmem import reexec_with_huge_pages

flags.DEFINE_string("name", None, "Dataset name, e.g. walker-random, walker-walk-expert, walker-mix.")
flags.DEFINE_string("modality", "mdp", "mdp, lpomdp (the same state files) or visual (renders images).")
flags.DEFINE_string("root", "data", "Folder that holds the datasets (<root>/<name>) and agents (<root>/experts).")
flags.DEFINE_float("scale", 1.0, "Multiplies episode counts and training lengths (e.g. 0.01 for a tiny build).")
flags.DEFINE_float("expert_scale", None, "Multiplies the agents' training lengths alone (default: --scale).")
flags.DEFINE_integer("episodes", None, "Episodes of this dataset (default: the paper's count x --scale).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed; episode i of a dataset depends only on (seed, i).", lower_bound=0)
flags.register_validator("scale", lambda v: v > 0, "--scale must be > 0")
flags.register_validator("expert_scale", lambda v: v is None or v > 0, "--expert_scale must be > 0")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    from aime_jax.experts.build import build, dataset_names, read_card

    if not FLAGS.name:
        sys.exit(f"error: --name is required; valid names: {', '.join(dataset_names())}")
    with one_line("rerun the same command to continue the build"):
        folder = build(FLAGS.name, FLAGS.modality, FLAGS.root, scale=FLAGS.scale, seed=FLAGS.seed,
                       expert_scale=FLAGS.expert_scale, episodes=FLAGS.episodes)
    card = read_card(folder)
    line = (f"done: {FLAGS.name} in {folder}: {card['episodes']} episodes, {card['steps']} steps, return "
            f"{card['return_mean']:.1f} ± {card['return_std']:.1f}, {card['size_bytes'] / 2**20:.1f} MiB")
    if "expert_return" in card:
        line += f", expert return {card['expert_return']:.1f}"
    print(line)


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
