"""Cheetah in the LPOMDP modality; `configs/cheetah_lpomdp.py:quick` is a small CPU run."""
from aime_jax.config import make_config


def get_config(arg: str = ""):
    return make_config("cheetah", "lpomdp", arg)
