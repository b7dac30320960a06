"""Cheetah in the MDP modality; `configs/cheetah_mdp.py:quick` is a small CPU run."""
from aime_jax.config import make_config


def get_config(arg: str = ""):
    return make_config("cheetah", "mdp", arg)
