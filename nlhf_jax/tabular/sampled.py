"""Methods that see the game only through sampled pairs: stochastic Nash-MD-PG on softmax logits
and the Bradley-Terry RLHF baseline. docs/algorithms.md sections 2 and 3.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from nlhf_jax.tabular.algorithms import _trajectory, nash_md_schedule


def pg_gradient_estimate(
    theta: Array, log_mu: Array, y: Array, y_opp: Array, P: Array, tau
) -> Array:
    """The Nash-MD-PG estimate of the gradient of ``P(pi > opp) - tau KL(pi || mu)`` w.r.t. the
    logits ``theta`` from sampled pairs ``y ~ pi``, ``y' ~ opp`` (docs/algorithms.md 2):
    ``mean[grad log pi(y) (P[y, y'] - 1/2 - tau log(pi(y)/mu(y)))]``. The 1/2 is the baseline.
    """
    logpi = jax.nn.log_softmax(theta)
    advantage = P[y, y_opp] - 0.5 - tau * (logpi[y] - log_mu[y])
    score = jax.nn.one_hot(y, theta.shape[-1], dtype=theta.dtype) - jnp.exp(logpi)
    return jnp.mean(score * advantage[:, None], 0)


@functools.partial(jax.jit, static_argnames=("num_steps", "batch_size"))
def nash_md_pg(
    P, mu, tau, num_steps: int, key: Array, beta=0.125, lr=0.5, batch_size: int = 64, pi0=None
) -> Array:
    """Nash-MD-PG on a softmax policy ``pi = softmax(theta)`` with sampled pairs (docs/algorithms.md
    section 2).

    Each step draws ``y ~ pi`` and ``y' ~ pi^(1-beta) mu^beta`` (stop-gradient), and ascends
    :func:`pg_gradient_estimate`: the KL enters in score-function form. A response is one action
    here, so the token-level mixture is the sequence-level one. With constant ``beta > 0`` the
    expected dynamics' fixed point is the best response to the NE at ``tau/(1-beta)``, not
    ``pi*_tau`` itself: the tabular Nash-MD's mixture weight ``eta_t tau`` decays, the deep
    version's ``beta`` does not.
    """
    log_mu = jnp.log(mu)
    theta0 = log_mu if pi0 is None else jnp.log(pi0)
    keys = jax.random.split(key, num_steps)

    def step(t, theta):
        k_pi, k_opp = jax.random.split(keys[t])
        logpi = jax.nn.log_softmax(theta)
        y = jax.random.categorical(k_pi, logpi, shape=(batch_size,))
        y_opp = jax.random.categorical(
            k_opp, (1 - beta) * logpi + beta * log_mu, shape=(batch_size,)
        )
        g = pg_gradient_estimate(theta, log_mu, y, y_opp, P, tau)
        return jax.nn.log_softmax(theta + lr * g)

    return _trajectory(step, theta0, num_steps)


def _bt_nll(r: Array, W: Array, Y: Array) -> Array:
    """Bradley-Terry negative log-likelihood: pair weights ``W[i, j]``, label rates ``Y[i, j]``."""
    d = r[:, None] - r[None, :]
    return jnp.sum(W * (Y * jax.nn.softplus(-d) + (1.0 - Y) * jax.nn.softplus(d)))


@functools.partial(jax.jit, static_argnames=("num_pairs", "newton_steps"))
def fit_bradley_terry(
    P, sampling, num_pairs: int | None = None, key=None, ridge=1e-6, newton_steps: int = 50
) -> Array:
    """Maximum-likelihood BT scores from pairs ``(y, y') ~ sampling x sampling`` labelled by ``P``.

    ``num_pairs=None`` fits the infinite-data limit (exact expectations); otherwise ``num_pairs``
    pairs and Bernoulli labels are drawn with ``key``. A small ridge fixes the scores' free
    constant and keeps them finite when a pair is never seen. Newton's method on a convex loss.
    """
    n = P.shape[-1]
    if num_pairs is None:
        W, Y = sampling[:, None] * sampling[None, :], P
    else:
        k_y, k_y2, k_lab = jax.random.split(key, 3)
        y = jax.random.categorical(k_y, jnp.log(sampling), shape=(num_pairs,))
        y2 = jax.random.categorical(k_y2, jnp.log(sampling), shape=(num_pairs,))
        wins = jax.random.bernoulli(k_lab, P[y, y2]).astype(P.dtype)
        W = jnp.zeros((n, n), P.dtype).at[y, y2].add(1.0) / num_pairs
        Y = jnp.zeros((n, n), P.dtype).at[y, y2].add(wins) / num_pairs
        Y = jnp.where(W > 0, Y / jnp.where(W > 0, W, 1.0), 0.5)
    loss = lambda r: _bt_nll(r, W, Y) + 0.5 * ridge * jnp.sum(r**2)

    def newton(r, _):
        H = jax.hessian(loss)(r)
        return r - jnp.linalg.solve(H, jax.grad(loss)(r)), None

    r, _ = jax.lax.scan(newton, jnp.zeros((n,), P.dtype), None, length=newton_steps)
    return r - jnp.mean(r)


@functools.partial(jax.jit, static_argnames=("num_steps", "num_pairs"))
def bt_rlhf(
    P, mu, tau, num_steps: int, sampling=None, num_pairs: int | None = None, key=None, pi0=None
) -> Array:
    """The RLHF baseline: fit BT scores ``r`` on pairs from ``sampling`` (default ``mu``), then
    KL-regularized mirror descent on ``r`` toward its optimum ``pi ∝ mu exp(r / tau)``.

    With the Nash-MD schedule ``eta_0 tau = 1`` the first step lands exactly on that optimum: RLHF
    is a single-agent problem. What makes it differ from the NE is the BT fit, which cannot
    represent a cycle and depends on the sampling distribution.
    """
    sampling = mu if sampling is None else sampling
    r = fit_bradley_terry(P, sampling, num_pairs, key)
    log_mu = jnp.log(mu)

    def step(t, logpi):
        a = nash_md_schedule(tau, t) * tau
        return jax.nn.log_softmax((1.0 - a) * logpi + a * (log_mu + r / tau))

    return _trajectory(step, log_mu if pi0 is None else jnp.log(pi0), num_steps)
