"""A SAC expert (experiments/train_expert.py): `configs/expert.py:<task>`, e.g.
`configs/expert.py:walker-stand`, is that task's run as the dataset builder trains it (its training
length at scale 1 and its settings); every value can be overridden (`--config.steps=40000
--config.sac.batch_size=64`). The settings: aime_jax/experts/config.py."""
from aime_jax.experts.config import expert


def get_config(arg: str = "walker-stand"):
    return expert(arg)
