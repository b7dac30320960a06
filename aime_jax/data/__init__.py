"""Episode files, the memory-mapped training store, window sampling, collection and rendering."""
from aime_jax.data.episodes import (
    episode_from_steps,
    list_episodes,
    load_episode,
    save_episode,
)
from aime_jax.data.sampler import WindowSampler, sample_starts
from aime_jax.data.store import EpisodeStore

__all__ = [
    "EpisodeStore",
    "WindowSampler",
    "episode_from_steps",
    "list_episodes",
    "load_episode",
    "sample_starts",
    "save_episode",
]
