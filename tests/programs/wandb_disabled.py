"""A pipeline's wandb context and a run logger with wandb disabled (the default): wandb is never
imported. Run by tests/test_logging.py in a fresh interpreter, which has not imported wandb yet:
    wandb_disabled.py WORKDIR
Prints OK.
"""
import sys

import jax.numpy as jnp

from aime_jax import config as config_lib
from aime_jax.logging import RunLogger, pipeline_wandb

workdir = sys.argv[1]
config = config_lib.make_config("walker", "mdp")
assert config.wandb.mode == "disabled"
with pipeline_wandb(config, workdir) as run:
    assert run is None
    with RunLogger(workdir, total_steps=10) as logger:
        logger.log(1, {"loss": jnp.float32(1.0)})
assert "wandb" not in sys.modules, "wandb was imported"
print("OK")
