"""aime-jax: AIME (Action Inference by Maximising Evidence) in JAX/Flax."""
