"""Population losses of the pairwise methods on a tabular game, exact expectations over pairs.

These are the tabular counterparts of the deep losses: the tests check that the closed-form
updates in :mod:`algorithms` are their minimizers.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def _pairwise(v: Array) -> Array:
    """``v[y] - v[y']`` as an ``[n, n]`` matrix."""
    return v[:, None] - v[None, :]


def ipo_loss(logpi: Array, log_m: Array, log_mu: Array, P: Array, tau) -> Array:
    """Online IPO / IPO-MD population loss with soft labels (docs/algorithms.md 5).

    Pairs ``(y, y') ~ m x m``; the ordering ``y > y'`` has weight ``P[y, y']`` and the reverse
    ``1 - P[y, y']``: ``E[p (h - 1/(2 tau))^2 + (1 - p)(-h - 1/(2 tau))^2]`` with
    ``h = log pi(y)/mu(y) - log pi(y')/mu(y')``.
    """
    h = _pairwise(logpi - log_mu)
    target = 1.0 / (2.0 * tau)
    w = jnp.exp(log_m)[:, None] * jnp.exp(log_m)[None, :]
    return jnp.sum(w * (P * (h - target) ** 2 + (1.0 - P) * (-h - target) ** 2))


def inpo_loss(logpi: Array, logpi_t: Array, log_mu: Array, P: Array, tau, eta) -> Array:
    """INPO's population loss (docs/algorithms.md 6): pairs from ``pi_t``, ordered by the
    preference.

    ``h_t = log pi(y)/pi(y') - (tau/eta) log mu(y)/mu(y') - (1 - tau/eta) log pi_t(y)/pi_t(y')``,
    ``L = E[(h_t(y_w, y_l) - 1/(2 eta))^2]``; the pair (y, y') is ordered y_w = y with probability
    ``P[y, y']``.
    """
    r = tau / eta
    h = _pairwise(logpi) - r * _pairwise(log_mu) - (1.0 - r) * _pairwise(logpi_t)
    target = 1.0 / (2.0 * eta)
    w = jnp.exp(logpi_t)[:, None] * jnp.exp(logpi_t)[None, :]
    # h is antisymmetric, so the ordering (y', y) contributes (-h - target)^2 with weight 1 - P.
    return jnp.sum(w * (P * (h - target) ** 2 + (1.0 - P) * (-h - target) ** 2))
