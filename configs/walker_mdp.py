"""Walker in the MDP modality; `configs/walker_mdp.py:quick` is a small CPU run."""
from aime_jax.config import make_config


def get_config(arg: str = ""):
    return make_config("walker", "mdp", arg)
