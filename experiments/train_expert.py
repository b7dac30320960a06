"""Trains a soft actor-critic expert on proprioceptive state, e.g.

  python experiments/train_expert.py --config=configs/expert.py:walker-stand --workdir=runs/expert-walker-stand \
      --config.steps=100000

`--config.x.y=value` overrides any setting (aime_jax/experts/config.py), e.g.
--config.sac.batch_size=64 --config.sac.hidden_sizes=256,256. Rerunning the same command continues
an interrupted run from its last checkpoint; a larger --config.steps extends a finished one. The
checkpoint of the best evaluation so far is kept in WORKDIR/best/ (`load_expert_policy(WORKDIR,
best=True)`). `--config.episode_dir=DIR` also writes every training episode there in the authors'
layout (`<i>.npz`, no images): the first 1000 are the task's `-buffer` dataset.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from aime_jax.errors import one_line, parse_command_line, required_config
from aime_jax.hostmem import reexec_with_huge_pages

config_flags.DEFINE_config_file("config", None, "Config file and task, e.g. configs/expert.py:walker-stand.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints with the replay buffer, metrics).", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    from aime_jax.experts.config import validate_expert
    from aime_jax.experts.sac import train_expert

    config = required_config(FLAGS, "configs/expert.py:walker-stand")
    with one_line("rerun the same command to continue from the last checkpoint"):
        validate_expert(config)
        summary = train_expert(config.env, FLAGS.workdir, config.steps, config.seed, config.sac,
                               config.episode_dir or None)
    final = summary["eval_return"]
    shown = "n/a" if final is None else f"{final:.1f}"
    best = summary["best_eval"]
    best_shown = "" if best is None else f" (best {best['return']:.1f} at {best['env_steps']}, in best/)"
    print(f"done: {config.env} {summary['env_steps']} env steps, eval return {shown}{best_shown}, in {FLAGS.workdir}")


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
