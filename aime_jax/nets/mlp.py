"""Multi-layer perceptrons and the Gaussian heads built from them."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aime_jax.errors import ConfigError

Dtype = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": nn.elu,
    "silu": nn.silu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
}

STD_TRANSFORMS = ("softplus", "sigmoid2", "unit")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Dense -> [LayerNorm] -> activation per hidden layer, then an optional linear head.

    With `out_size=None` the output is the last hidden layer (an encoder trunk); with no hidden
    sizes and no head the module is the identity.
    """

    hidden_sizes: Sequence[int]
    out_size: Optional[int] = None
    activation: str = "elu"
    layer_norm: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        x = x.astype(self.dtype)
        for size in self.hidden_sizes:
            x = nn.Dense(size, dtype=self.dtype)(x)
            if self.layer_norm:
                x = nn.LayerNorm(dtype=self.dtype)(x)
            x = act(x)
        if self.out_size is not None:
            x = nn.Dense(self.out_size, dtype=self.dtype)(x)
        return x


def std_transform(x: jax.Array, kind: str, min_std: float) -> jax.Array:
    """Maps an unconstrained network output to a positive standard deviation."""
    if kind == "softplus":
        return nn.softplus(x) + min_std
    if kind == "sigmoid2":
        # DreamerV2's parameterisation: bounded in (min_std, 2 + min_std), so the KL stays tame.
        return 2.0 * nn.sigmoid(x / 2.0) + min_std
    raise ConfigError(f"unknown std transform {kind!r}; choose one of {STD_TRANSFORMS}")


class GaussianMLP(nn.Module):
    """A diagonal Gaussian over `size` dims: returns (mean, std), both in the compute dtype.

    `separate=True` uses two MLPs (one for the mean, one for the std); otherwise one MLP emits
    both halves. `std="unit"` fixes std to 1 (the MSE decoders) and builds only the mean net.
    """

    size: int
    hidden_sizes: Sequence[int]
    activation: str = "elu"
    layer_norm: bool = False
    separate: bool = True
    std: str = "softplus"
    min_std: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        def mlp(out_size: int, name: str) -> MLP:
            return MLP(
                self.hidden_sizes,
                out_size,
                self.activation,
                self.layer_norm,
                self.dtype,
                name=name,
            )

        if self.std == "unit":
            mean = mlp(self.size, "mean")(x)
            return mean, jnp.ones_like(mean)
        if self.separate:
            mean = mlp(self.size, "mean")(x)
            raw_std = mlp(self.size, "std")(x)
        else:
            mean, raw_std = jnp.split(mlp(2 * self.size, "mean_std")(x), 2, axis=-1)
        return mean, std_transform(raw_std, self.std, self.min_std)
