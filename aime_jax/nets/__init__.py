"""Flax modules shared by the world model, the policies and the baselines."""
from aime_jax.nets.cnn import ConvDecoder, ConvEncoder, image_to_float
from aime_jax.nets.mlp import MLP, GaussianMLP, get_activation, std_transform
from aime_jax.nets.policy import (
    TanhGaussianPolicy,
    tanh_gaussian_log_prob,
    tanh_gaussian_mode,
    tanh_gaussian_sample,
)

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianMLP",
    "TanhGaussianPolicy",
    "get_activation",
    "image_to_float",
    "std_transform",
    "tanh_gaussian_log_prob",
    "tanh_gaussian_mode",
    "tanh_gaussian_sample",
]
