"""Preference games on a finite response set.

A game is a matrix ``P[i, j] = P(y_i > y_j)`` with ``P + P.T = 1`` (so ``P[i, i] = 1/2``) and a
reference policy ``mu``. docs/algorithms.md section 0. Contextual games are stacks ``P[c, n, n]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def check_preference(P: Array, atol: float = 1e-6) -> None:
    """Raises ValueError unless ``P`` is a valid preference matrix (host-side, not jittable)."""
    P = jnp.asarray(P)
    if P.ndim < 2 or P.shape[-1] != P.shape[-2]:
        raise ValueError(f"preference matrix must be [..., n, n], got shape {P.shape}")
    if bool(jnp.any((P < -atol) | (P > 1 + atol))):
        raise ValueError("preference matrix has entries outside [0, 1]")
    err = float(jnp.max(jnp.abs(P + jnp.swapaxes(P, -1, -2) - 1.0)))
    if err > atol:
        raise ValueError(f"preference matrix is not complementary: max |P + P^T - 1| = {err:.3g}")


def from_antisymmetric(A: Array) -> Array:
    """``P = 1/2 + A`` for an antisymmetric ``A`` with entries in [-1/2, 1/2]."""
    return 0.5 + A


def random_preference(key: Array, n: int, scale: float = 0.5, dtype=None) -> Array:
    """A random preference matrix: ``P = 1/2 + scale * tanh(G - G^T)`` with Gaussian ``G``.

    ``scale`` <= 1/2 keeps entries in [0, 1]; the game is in general not transitive.
    """
    G = jax.random.normal(key, (n, n), dtype=dtype or jnp.result_type(float))
    return from_antisymmetric(scale * jnp.tanh(G - G.T))


def bradley_terry(scores: Array) -> Array:
    """The transitive game of Bradley-Terry scores: ``P[i, j] = sigmoid(s_i - s_j)``."""
    scores = jnp.asarray(scores, dtype=jnp.result_type(float))
    return jax.nn.sigmoid(scores[:, None] - scores[None, :])


def _cyclic3(a: float, b: float, c: float) -> Array:
    """A 3-cycle: y2 beats y1 by ``a``, y1 beats y3 by ``b``, y3 beats y2 by ``c``."""
    A = jnp.array([[0.0, -a, b], [a, 0.0, -c], [-b, c, 0.0]], dtype=jnp.result_type(float))
    return from_antisymmetric(A)


def rock_paper_scissors() -> Array:
    """Rock, paper, scissors: each beats the next with probability 1; NE is uniform."""
    return _cyclic3(0.5, 0.5, 0.5)


def nontransitive_dice() -> Array:
    """Efron-style dice: P(1>2) = P(2>3) = P(3>1) = 5/9; its NE is uniform."""
    d = 5.0 / 9.0 - 0.5
    return _cyclic3(-d, -d, -d)


def three_annotators(eps: float) -> Array:
    """NLHF section 3.2: three annotator types over three responses.

    Types with weights ``1/3 - eps``, ``1/3 + eps/2``, ``1/3 + eps/2`` prefer y2 > y1, y1 > y3 and
    y3 > y2 respectively, and are indifferent (1/2) on the other pairs. The population
    preference is the weighted average. Its unregularized NE is
    ``(1/3 + eps/2, 1/3 + eps/2, 1/3 - eps)``.
    """
    w1, w2, w3 = 1.0 / 3.0 - eps, 1.0 / 3.0 + eps / 2.0, 1.0 / 3.0 + eps / 2.0
    return _cyclic3(w1 / 2.0, w2 / 2.0, w3 / 2.0)


def three_annotators_nash(eps: float) -> Array:
    """The closed-form unregularized NE of :func:`three_annotators`."""
    return jnp.array([1.0 / 3.0 + eps / 2.0, 1.0 / 3.0 + eps / 2.0, 1.0 / 3.0 - eps])


def random_reference(key: Array, n: int, concentration: float = 1.0, dtype=None) -> Array:
    """A random reference policy from a symmetric Dirichlet (kept away from zero)."""
    dtype = dtype or jnp.result_type(float)
    mu = jax.random.dirichlet(key, jnp.full((n,), concentration, dtype))
    mu = mu + 1e-3 / n
    return mu / mu.sum()


def contextual_games(key: Array, num_contexts: int, n: int, scale: float = 0.5):
    """A batch of independent random games and references: ``P[c, n, n]``, ``mu[c, n]``.

    The contextual game plays every prompt's game independently, so every algorithm runs on
    it through ``jax.vmap``.
    """
    kp, km = jax.random.split(key)
    P = jax.vmap(lambda k: random_preference(k, n, scale))(jax.random.split(kp, num_contexts))
    mu = jax.vmap(lambda k: random_reference(k, n))(jax.random.split(km, num_contexts))
    return P, mu
