import os
import sys

# Tests run on the CPU whatever the machine has, and never talk to wandb.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def walker_random_dir(tmp_path_factory):
    """Three real walker-walk episodes from the random policy (MDP, no images)."""
    from aime_jax.data.collect import collect

    out = str(tmp_path_factory.mktemp("walker_random"))
    collect("walker-walk", "mdp", out, episodes=3, seed=0, progress=False)
    return out
