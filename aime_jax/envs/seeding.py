"""Seeds of simulator episodes: every producer of episodes (collection, evaluation, the experts'
training) starts episode i of a seed from the same state, whatever else it runs alongside."""
from __future__ import annotations

import numpy as np


def episode_seed(seed: int, index: int) -> int:
    """Seed of episode `index`, so that any episode can be collected again on its own."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
