"""Trains a soft actor-critic expert on proprioceptive state, e.g.

  python experiments/train_expert.py --env=walker-stand --workdir=runs/expert-walker-stand --steps=100000

Rerunning the same command continues an interrupted run from its last checkpoint; a larger
--steps extends a finished one. The checkpoint of the best evaluation so far is kept in
WORKDIR/best/ (`load_expert_policy(WORKDIR, best=True)`). `--episode_dir=DIR` also writes every
training episode there in the authors' layout (`<i>.npz`, no images): the first 1000 are the
task's `-buffer` dataset.
`--set=key=value` (repeatable) overrides any SAC setting, e.g. --set=batch_size=128
--set=hidden_sizes=[128,128].
"""
import json
import sys

from absl import app, flags, logging

from aime_jax.errors import one_line, parse_command_line
from aime_jax.hostmem import reexec_with_huge_pages

flags.DEFINE_string("env", "walker-stand", "Task, e.g. walker-stand, walker-walk, cheetah-run.")
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, replay buffer, metrics).", required=True)
flags.DEFINE_integer("steps", 100_000, "Agent steps to train for (action repeat 2), rounded up to whole episodes.",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed; training episode i starts from episode_seed(seed, i).", lower_bound=0)
flags.DEFINE_string("episode_dir", None, "Also save every training episode here (<i>.npz).")
flags.DEFINE_multi_string("set", [], "SAC setting override key=value (value as JSON, else a string).")
FLAGS = flags.FLAGS


def _overrides(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set needs key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    from aime_jax.experts.sac import default_config, train_expert

    try:
        overrides = _overrides(FLAGS.set)
    except ValueError as e:
        sys.exit(f"error: bad command line: {e}")
    with one_line("rerun the same command to continue from the last checkpoint"):
        config = default_config(FLAGS.env, **overrides)
        summary = train_expert(FLAGS.env, FLAGS.workdir, FLAGS.steps, FLAGS.seed, config, FLAGS.episode_dir)
    final = summary["eval_return"]
    shown = "n/a" if final is None else f"{final:.1f}"
    best = summary["best_eval"]
    best_shown = "" if best is None else f" (best {best['return']:.1f} at {best['env_steps']}, in best/)"
    print(f"done: {FLAGS.env} {summary['env_steps']} env steps, eval return {shown}{best_shown}, in {FLAGS.workdir}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
