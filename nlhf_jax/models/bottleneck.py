"""RLP-UML's multi-view information bottleneck heads (docs/algorithms.md 8), on a judge's last
layer.

Two Gaussian encoders, ``mu(h)`` and ``logvar(h)``, each a three-layer MLP on the judge's final
hidden state ``h`` of a view, and a critic ``T(z1, z2)`` (an MLP on the concatenated codes) for
the Jensen-Shannon estimate of I(z1; z2). A judge trained with them keeps them in its checkpoint;
they play no part in its judgement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class MLP(nnx.Module):
    """Linear layers ``layer0, layer1, ...`` with GELU between them, float32."""

    def __init__(self, sizes: tuple[int, ...], *, rngs: nnx.Rngs):
        self.depth = len(sizes) - 1
        for i in range(self.depth):  # named attributes: checkpoint keys are strings
            setattr(self, f"layer{i}", nnx.Linear(sizes[i], sizes[i + 1], rngs=rngs))

    def __call__(self, x: Array) -> Array:
        for i in range(self.depth):
            x = getattr(self, f"layer{i}")(x)
            if i < self.depth - 1:
                x = jax.nn.gelu(x)
        return x


class Bottleneck(nnx.Module):
    """Gaussian codes of views and the critic of the mutual-information estimate.

    Attributes:
      mu, logvar: three-layer MLPs ``d_model -> hidden -> hidden -> code_dim``.
      critic: ``2 code_dim -> hidden -> 1``.
    """

    def __init__(self, d_model: int, code_dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.mu = MLP((d_model, hidden, hidden, code_dim), rngs=rngs)
        self.logvar = MLP((d_model, hidden, hidden, code_dim), rngs=rngs)
        self.critic_mlp = MLP((2 * code_dim, hidden, 1), rngs=rngs)

    def encode(self, h_bd: Array, key: Array) -> tuple[Array, Array, Array]:
        """``(z, mu, logvar)`` [b, code_dim]: a reparameterized draw from N(mu, e^logvar)."""
        h_bd = h_bd.astype(jnp.float32)
        mu, logvar = self.mu(h_bd), jnp.clip(self.logvar(h_bd), -10.0, 10.0)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        return z, mu, logvar

    def critic(self, z1: Array, z2: Array) -> Array:
        """T(z1, z2) [b]."""
        return self.critic_mlp(jnp.concatenate([z1, z2], axis=-1))[:, 0]


def bottleneck_heads(d_model: int, sizes, rngs: nnx.Rngs) -> Bottleneck | None:
    """RLP-UML's heads for a judge, ``sizes = (code_dim, hidden)``, or None (trained without)."""
    if not sizes:
        return None
    code_dim, hidden = sizes
    return Bottleneck(d_model, code_dim, hidden, rngs=rngs)
