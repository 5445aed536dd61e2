"""Exact solutions of preference games: the regularized Nash equilibrium, the unregularized NE by
linear programming, best responses and the duality gap. docs/algorithms.md section 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


def kl(p: Array, q: Array) -> Array:
    """KL(p || q) over the last axis, with 0 log 0 = 0."""
    p, q = jnp.asarray(p), jnp.asarray(q)
    safe_q = jnp.where(p > 0, q, 1.0)
    return jnp.sum(
        jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(safe_q)), 0.0), -1
    )


def best_response(P: Array, mu: Array, tau: float, opponent: Array) -> Array:
    """``argmax_p P(p > opponent) - tau KL(p || mu)`` = ``softmax(log mu + P opponent / tau)``."""
    return jax.nn.softmax(jnp.log(mu) + P @ opponent / tau)


def fixed_point_residual(P: Array, mu: Array, tau: float, pi: Array) -> Array:
    """``|| pi - softmax(log mu + P pi / tau) ||_1``: zero exactly at the regularized NE."""
    return jnp.sum(jnp.abs(pi - best_response(P, mu, tau, pi)), -1)


def duality_gap(P: Array, mu: Array, tau: float, pi: Array) -> Array:
    """Exploitability of ``pi`` in the regularized game ``J(p, q) = P(p > q) - tau KL(p||mu) +
    tau KL(q||mu)``: ``max_p J(p, pi) - min_q J(pi, q)``. Zero iff ``pi`` is the NE.

    Both best responses are in closed form; with ``P^T = 1 - P`` the gap is
    ``2 tau logsumexp(log mu + P pi / tau) - 1 + 2 tau KL(pi || mu)``. ``tau = 0`` gives the
    unregularized gap ``2 max_i (P pi)_i - 1``.
    """
    if isinstance(tau, (int, float)) and tau == 0:
        return 2.0 * jnp.max(P @ pi, -1) - 1.0
    lse = jax.nn.logsumexp(jnp.log(mu) + P @ pi / tau, -1)
    return 2.0 * tau * lse - 1.0 + 2.0 * tau * kl(pi, mu)


def _mirror_prox_logits(P, mu, tau, logpi, eta):
    """One Nash-MP iteration in log space (docs/algorithms.md section 4, closed form)."""

    def prox(opp):
        return jax.nn.log_softmax((logpi + eta * jnp.log(mu) + (eta / tau) * P @ opp) / (1 + eta))

    half = prox(jnp.exp(logpi))
    return prox(jnp.exp(half))


def _newton_step(P, mu, tau, logpi):
    """Newton on ``[x - log mu - P e^x / tau - c ; sum e^x - 1] = 0`` for ``x = log pi``."""
    n = logpi.shape[-1]
    pi = jnp.exp(logpi)
    F = jnp.concatenate([logpi - jnp.log(mu) - P @ pi / tau, jnp.array([jnp.sum(pi) - 1.0])])
    # The constant c is eliminated by centering: solve for (dx, dc) jointly.
    c = jnp.sum(pi * (logpi - jnp.log(mu) - P @ pi / tau))
    F = F.at[:n].add(-c)
    J = jnp.block(
        [[jnp.eye(n) - P * pi[None, :] / tau, -jnp.ones((n, 1))], [pi[None, :], jnp.zeros((1, 1))]]
    )
    delta = jnp.linalg.solve(J, -F)
    return jax.nn.log_softmax(logpi + delta[:n])


@functools.partial(jax.jit, static_argnames=("max_prox_steps", "newton_steps"))
def regularized_nash(
    P: Array,
    mu: Array,
    tau: float,
    max_prox_steps: int = 20_000,
    newton_steps: int = 30,
    prox_tol: float = 1e-7,
) -> Array:
    """The unique NE of the tau-regularized preference game: ``pi* ∝ mu exp(P pi* / tau)``.

    Nash mirror prox (linearly convergent for every tau > 0) brings the iterate to a residual
    of ``prox_tol``; damped Newton steps on the fixed-point equation in log space then polish it
    to machine precision (residual below 1e-12 in float64 down to tau = 0.01). Each Newton step
    is kept only if it lowers the residual, so the polish can never make things worse.
    """
    tau = jnp.asarray(tau, dtype=mu.dtype)
    eta = 2.0 * tau

    def cond(carry):
        i, logpi = carry
        return (i < max_prox_steps) & (fixed_point_residual(P, mu, tau, jnp.exp(logpi)) > prox_tol)

    def body(carry):
        i, logpi = carry
        return i + 1, _mirror_prox_logits(P, mu, tau, logpi, eta)

    _, logpi = jax.lax.while_loop(cond, body, (0, jnp.log(mu)))

    def polish(logpi, _):
        new = _newton_step(P, mu, tau, logpi)
        better = fixed_point_residual(P, mu, tau, jnp.exp(new)) < fixed_point_residual(
            P, mu, tau, jnp.exp(logpi)
        )
        return jnp.where(better & jnp.all(jnp.isfinite(new)), new, logpi), None

    logpi, _ = jax.lax.scan(polish, logpi, None, length=newton_steps)
    return jnp.exp(logpi)


def regularized_nash_batch(P_xnn, mu_xn, tau: float) -> np.ndarray:
    """``regularized_nash`` of every context's game ``P[x]`` against ``mu[x]``, solved in float64
    (inputs converted inside the x64 context, so nothing is rounded to float32 first)."""
    with jax.enable_x64(True):
        P64, mu64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (P_xnn, mu_xn))
        return np.asarray(jax.vmap(regularized_nash, (0, 0, None))(P64, mu64, tau))


def nash_lp(P) -> tuple[np.ndarray, float]:
    """The unregularized NE of a symmetric preference game, by linear programming (scipy).

    Maximizes ``v`` subject to ``P(pi > y_j) = (P^T pi)_j >= v`` for all j, ``pi`` in the simplex.
    The value of a symmetric game is 1/2. Host-side (numpy), not jittable. Returns (pi, value).
    """
    from scipy.optimize import linprog

    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    c = np.zeros(n + 1)
    c[-1] = -1.0  # maximize v
    A_ub = np.hstack([-P.T, np.ones((n, 1))])  # v - (P^T pi)_j <= 0
    A_eq = np.concatenate([np.ones(n), [0.0]])[None, :]
    bounds = [(0, None)] * n + [(None, None)]
    res = linprog(
        c, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0], bounds=bounds, method="highs"
    )
    if not res.success:
        raise RuntimeError(f"linear program failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    return pi / pi.sum(), float(res.x[-1])
