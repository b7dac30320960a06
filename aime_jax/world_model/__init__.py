"""The AIME world model: RSSM transition, observe/imagine scans and the ELBO."""
from aime_jax.world_model import distributions
from aime_jax.world_model.config import get_config, rssm_config, rssmo_config
from aime_jax.world_model.rssm import (
    IMAGE_KEY,
    WorldModel,
    elbo_loss,
    features,
    imagine,
    init_world_model,
    initial_state,
    negative_elbo,
    observe,
)

__all__ = [
    "IMAGE_KEY",
    "WorldModel",
    "distributions",
    "elbo_loss",
    "features",
    "get_config",
    "imagine",
    "init_world_model",
    "initial_state",
    "negative_elbo",
    "observe",
    "rssm_config",
    "rssmo_config",
]
