"""Walker in the visual modality; `configs/walker_visual.py:quick` is a small CPU run."""
from aime_jax.config import make_config


def get_config(arg: str = ""):
    return make_config("walker", "visual", arg)
