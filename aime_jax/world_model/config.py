"""World-model configurations: the two variants of the authors' release.

`rssm` is the walker model, `rssmo` the Dreamer-style cheetah model. Both start from the shared
defaults of `_base_config` and override only what differs. The caller fills in `obs_keys` (what
the model sees and reconstructs) and `probe_keys` (what detached probes predict).
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from aime_jax.errors import ConfigError

VARIANTS = ("rssm", "rssmo")
# Settings that change only how the same model is computed (kernels, chunking, loop unrolling),
# never its parameters or results: a run may resume with other values of them.
# `defer_weight_grads` is retired (it stays here so that configs saved with it still load).
SPEED_ONLY = ("cnn_impl", "cnn_chunk", "scan_unroll", "defer_weight_grads")


def _mlp(
    hidden_sizes: Sequence[int], activation: str, layer_norm: bool
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(hidden_sizes=tuple(hidden_sizes), activation=activation, layer_norm=layer_norm)
    )


def _gaussian(
    hidden_sizes: Sequence[int],
    activation: str,
    layer_norm: bool,
    separate: bool,
    std: str,
    min_std: float,
) -> ml_collections.ConfigDict:
    config = _mlp(hidden_sizes, activation, layer_norm)
    config.separate = separate
    config.std = std
    config.min_std = min_std
    return config


def _base_config() -> ml_collections.ConfigDict:
    """The `rssm` values; `rssmo` overrides what differs."""
    c = ml_collections.ConfigDict()
    c.variant = "rssm"
    c.obs_keys = ()
    c.probe_keys = ()
    # Compute dtype; parameters, the KL and the likelihoods are always float32.
    c.dtype = "float32"
    c.deter_size = 512
    c.stoch_size = 128
    c.cnn_depth = 32
    # Convolution kernels of the image encoder/decoder: "gemm" (matrix products, fastest on CPUs
    # and GPUs), "lax" (XLA's convolutions, for TPUs) or "auto" (by backend). Same parameters.
    c.cnn_impl = "auto"
    # Images per chunk of the image encoder/decoder (an nn.scan over chunks, for cache locality
    # on CPUs): 0 chooses (50 with the gemm kernels on a CPU, else none), -1 never chunks.
    c.cnn_chunk = 0
    # Time steps per iteration of the filtering scans (`lax.scan`'s unroll; phase 1 and phase 2):
    # fewer loop iterations for XLA to run at the price of a larger program. Results do not change.
    c.scan_unroll = 1
    # No hidden layers: the GRU reads [z, a] directly.
    c.pre_gru = _mlp((), "silu", False)
    # Prior p(z|h) and posterior q(z|h, e) heads share one description.
    c.latent = _gaussian((128, 128), "elu", False, separate=True, std="softplus", min_std=1e-6)
    # No hidden layers: the identity encoder, vector observations are their own embedding.
    c.vector_encoder = _mlp((), "silu", False)
    c.vector_decoder = _gaussian(
        (128, 128), "elu", False, separate=True, std="softplus", min_std=1e-6
    )
    c.probe = _mlp((128, 128), "elu", False)
    c.idm = _mlp((128, 128), "elu", False)
    c.idm.enabled = False
    c.idm.min_std = 1e-6
    c.loss = ml_collections.ConfigDict()
    c.loss.free_nats = 0.0
    c.loss.kl_balance = None
    c.loss.reweight = True
    c.loss.kl_scale = 1.0
    c.loss.kl_only = False
    return c


def rssm_config() -> ml_collections.ConfigDict:
    """Walker default: h 512, z 128, separate 128x2 ELU mean/std nets, Seitzer reweighting."""
    return _base_config()


def rssmo_config() -> ml_collections.ConfigDict:
    """Cheetah default, Dreamer-style: z 30, 512-wide LayerNorm SiLU nets, free nats 1.0,
    KL balancing 0.8, unit-variance decoders, no reweighting."""
    c = _base_config()
    c.variant = "rssmo"
    c.stoch_size = 30
    c.pre_gru = _mlp((512,), "silu", True)
    c.latent = _gaussian((512,), "silu", True, separate=False, std="sigmoid2", min_std=0.1)
    c.vector_encoder = _mlp((512, 512), "silu", True)
    c.vector_decoder = _gaussian((512, 512), "silu", True, separate=True, std="unit", min_std=0.0)
    c.probe = _mlp((512, 512), "silu", True)
    c.idm.hidden_sizes = (512, 512)
    c.loss.free_nats = 1.0
    c.loss.kl_balance = 0.8
    c.loss.reweight = False
    return c


def get_config(variant: str) -> ml_collections.ConfigDict:
    if variant == "rssm":
        return rssm_config()
    if variant == "rssmo":
        return rssmo_config()
    raise ConfigError(f"unknown world-model variant {variant!r}; choose one of {VARIANTS}")
