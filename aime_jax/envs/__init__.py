"""dm_control walker and cheetah with the paper's custom tasks and three observation modalities."""
import os

# dm_control picks its OpenGL backend when it is first imported; EGL renders offscreen both on a
# CPU (Mesa) and on NVIDIA GPUs. A backend the user chose is left alone.
os.environ.setdefault("MUJOCO_GL", "egl")

from aime_jax.envs.dmc import Env, Step, make, render_states  # noqa: E402
from aime_jax.envs.tasks import (  # noqa: E402
    DOMAINS,
    ENV_NAMES,
    MODALITIES,
    PROPRIO_KEYS,
    domain_of,
    observation_keys,
    probe_keys,
)

__all__ = [
    "DOMAINS",
    "ENV_NAMES",
    "MODALITIES",
    "PROPRIO_KEYS",
    "Env",
    "Step",
    "domain_of",
    "make",
    "observation_keys",
    "probe_keys",
    "render_states",
]
