"""aime-jax: AIME (Action Inference by Maximising Evidence) in JAX/Flax."""
from setuptools import find_packages, setup

# mujoco 4.x removed attributes that dm_control 1.0.50 reads (`suite.load` fails on a missing
# `flex_vertedge`), so the pair is pinned together.
INSTALL_REQUIRES = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.5",
    "chex>=0.1.88",
    "orbax-checkpoint>=0.11",
    "ml_collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "dm_control==1.0.50",
    "mujoco>=3.17,<3.18",
    "wandb>=0.19",
    "av>=12",  # videos encoded in-process (an ffmpeg subprocess would fork the JAX process)
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "PyYAML>=6.0",  # experiments/sweep.py reads wandb sweep files
]

setup(
    name="aime-jax",
    version="0.1.0",
    description="AIME: zero-shot imitation from observation with world models, in JAX",
    packages=find_packages(include=["aime_jax", "aime_jax.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "imageio>=2.34"],
        "cuda": ["jax[cuda12]"],
    },
)
