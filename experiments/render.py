"""Re-renders the `image` key of a folder of episodes from their stored physics states, e.g.

  python experiments/render.py --data=DIR --size=64 --workers=4

Rerunning continues an interrupted render (files that already have images of --size are skipped).
"""
from absl import app, flags, logging

from aime_jax.data.render import render_folder
from aime_jax.errors import one_line, parse_command_line

flags.DEFINE_string("data", None, "Folder of episodes.", required=True)
flags.DEFINE_integer("size", 64, "Image height and width.", lower_bound=1)
flags.DEFINE_integer("workers", None, "Rendering processes (default: all cores).", lower_bound=1)
flags.DEFINE_integer("camera", 0, "MuJoCo camera id.", lower_bound=0)
flags.DEFINE_enum("domain", None, ["walker", "cheetah"], "Domain (default: from meta.json or the keys).")
flags.DEFINE_bool("force", False, "Render again even where images of this size exist.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        # Orbax and dm_control log every detail at INFO; --verbosity=0 brings it back.
        logging.set_verbosity(logging.WARNING)
    with one_line("rerun the same command to continue rendering"):
        n = render_folder(FLAGS.data, FLAGS.size, FLAGS.workers, FLAGS.camera, FLAGS.domain, FLAGS.force)
    print(f"rendered {n} episodes in {FLAGS.data}")


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: parse_command_line(argv, FLAGS))
