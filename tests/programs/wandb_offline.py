"""Two offline wandb runs of one run directory, the second resuming at step 2, each logging a
metric and a video. Run by tests/test_logging.py in a fresh interpreter (wandb's own processes
and settings stay out of pytest's):
    wandb_offline.py WORKDIR
Prints OK.
"""
import os
import sys

import jax.numpy as jnp
import numpy as np

from aime_jax import config as config_lib
from aime_jax.logging import RunLogger, pipeline_wandb

workdir = sys.argv[1]
config = config_lib.make_config("walker", "mdp")
config.wandb.mode = "offline"
for start in (0, 2):
    with pipeline_wandb(config, workdir):
        with RunLogger(os.path.join(workdir, "phase1"), total_steps=10, initial_step=start) as logger:
            logger.log(start + 1, {"loss": jnp.float32(1.0)})
            logger.video("eval", np.zeros((3, 16, 16, 3), np.uint8), step=start + 2)
print("OK")
