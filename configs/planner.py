"""The MPPI planner's episodes (experiments/plan.py): `configs/planner.py:<task>`, e.g.
`configs/planner.py:cheetah-flip` (a task whose reward reads the velocity alone); every value can
be overridden (`--config.episodes=6 --config.mppi.samples=128`). The settings:
aime_jax/experts/config.py."""
from aime_jax.experts.config import planner


def get_config(arg: str = "cheetah-flip"):
    return planner(arg)
