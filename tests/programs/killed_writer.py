"""Writes one large episode (4000 64x64 images) to PATH, saying "writing" first, so that
tests/test_data.py can kill it mid-write:
    killed_writer.py PATH
"""
import sys

import numpy as np

from aime_jax.data.episodes import save_episode

rng = np.random.default_rng(0)
ep = {"image": rng.integers(0, 256, (4000, 64, 64, 3), dtype=np.uint8), "reward": np.zeros((4000, 1))}
print("writing", flush=True)
save_episode(sys.argv[1], ep)
