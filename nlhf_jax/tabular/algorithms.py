"""Exact (population) dynamics of the NLHF family on one preference game.

Every algorithm has the shape ``f(P, mu, tau_or_beta, num_steps, ...) -> pi[num_steps + 1, n]``
(the initial policy first), is jitted with ``num_steps`` static, runs as a ``lax.scan`` over log
probabilities (so tiny probabilities stay exact), and batches over games, contexts or
hyper-parameters with ``jax.vmap``. Equations: docs/algorithms.md sections 1, 4, 5, 6 and 7.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array

from nlhf_jax.tabular import objectives
from nlhf_jax.tabular.solvers import _mirror_prox_logits


def _start(mu: Array, pi0: Array | None) -> Array:
    return jnp.log(mu if pi0 is None else pi0)


def _trajectory(step, logpi0: Array, num_steps: int) -> Array:
    """Runs ``logpi <- step(t, logpi)`` for t = 0..num_steps-1; returns ``exp`` of all iterates."""

    def body(logpi, t):
        new = step(t, logpi)
        return new, new

    _, logpis = jax.lax.scan(body, logpi0, jnp.arange(num_steps))
    return jnp.exp(jnp.concatenate([logpi0[None], logpis], 0))


def nash_md_schedule(tau, t):
    """Theorem 1's step size ``eta_t = 2 / (tau (t + 2))``."""
    return 2.0 / (tau * (t + 2.0))


@functools.partial(jax.jit, static_argnames="num_steps")
def nash_md(P, mu, tau, num_steps: int, eta=None, pi0=None) -> Array:
    """Nash-MD (docs/algorithms.md 1): a mirror-descent step against the geometric mixture.

    ``pi^mu ∝ pi^(1 - eta tau) mu^(eta tau)``, ``pi' ∝ pi^mu exp(eta P pi^mu)``. ``eta=None`` uses
    ``eta_t = 2 / (tau (t + 2))``, for which ``KL(pi*, pi_T) <= 8 / (tau^2 (T + 1))``.
    """
    log_mu = jnp.log(mu)

    def step(t, logpi):
        eta_t = nash_md_schedule(tau, t) if eta is None else eta
        log_mix = jax.nn.log_softmax((1.0 - eta_t * tau) * logpi + eta_t * tau * log_mu)
        return jax.nn.log_softmax(log_mix + eta_t * P @ jnp.exp(log_mix))

    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def online_mirror_descent(P, mu, tau, num_steps: int, eta=None, pi0=None) -> Array:
    """OMD: the same KL centre as Nash-MD, but the preference is against ``pi_t`` itself.

    ``log pi' = (1 - eta tau) log pi + eta tau log mu + eta P pi + c``. ``eta=None`` uses the
    Nash-MD schedule so the two differ only in the opponent.
    """
    log_mu = jnp.log(mu)

    def step(t, logpi):
        eta_t = nash_md_schedule(tau, t) if eta is None else eta
        a = eta_t * tau
        return jax.nn.log_softmax((1.0 - a) * logpi + a * log_mu + eta_t * P @ jnp.exp(logpi))

    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def inpo(P, mu, tau, num_steps: int, eta=None, pi0=None) -> Array:
    """INPO's rounds with the exact minimizer of its population loss (docs/algorithms.md 6).

    Minimizing ``E_{y, y' ~ pi_t}[(h_t(pi, y_w, y_l) - 1/(2 eta))^2]`` gives
    ``log pi_{t+1} = (tau/eta) log mu + (1 - tau/eta) log pi_t + P pi_t / eta + c``: OMD with step
    ``1/eta`` (see :func:`nlhf_jax.tabular.objectives.inpo_loss`). ``eta=None`` uses the public
    code's ratio ``tau/eta = 1/3``.
    """
    eta = 3.0 * tau if eta is None else eta
    return online_mirror_descent(P, mu, tau, num_steps, eta=1.0 / eta, pi0=pi0)


@functools.partial(jax.jit, static_argnames="num_steps")
def nash_mirror_prox(P, mu, beta, num_steps: int, eta=None, pi0=None) -> Array:
    """Nash-MP (docs/algorithms.md 4): two prox steps per iteration, both anchored at ``pi_k``.

    Closed form ``log pi' = [log pi_k + eta log mu + (eta/beta) P opp] / (1 + eta) + c`` with
    ``opp = pi_k`` for the half step and ``pi_{k+1/2}`` for the full one. ``eta=None`` is
    ``2 beta``,
    where ``KL(pi*, pi_k) <= (1 + 2 beta)^(-k) KL(pi*, pi_0)`` was observed.
    """
    eta = 2.0 * beta if eta is None else eta
    step = lambda t, logpi: _mirror_prox_logits(P, mu, beta, logpi, eta)
    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def extragradient(P, mu, beta, num_steps: int, lr=None, pi0=None) -> Array:
    """EGPO's tabular form (docs/algorithms.md 7): extragradient in logit space on the operator
    ``F(theta) = beta (theta - log mu) - P softmax(theta)``, evaluated in full at the half step.

    ``lr=None`` uses ``1 / (beta + 1)``: ``F`` is ``(beta + 1/2)``-Lipschitz (the softmax Jacobian
    has norm <= 1/2 and ``|P| <= 1``), and extragradient needs ``lr`` below ``1/L``.
    """
    lr = 1.0 / (beta + 1.0) if lr is None else lr
    log_mu = jnp.log(mu)
    F = lambda theta: beta * (theta - log_mu) - P @ jax.nn.softmax(theta)

    def step(t, theta):
        half = theta - lr * F(theta)
        return jax.nn.log_softmax(theta - lr * F(half))

    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def sppo(P, mu, beta, num_steps: int, pi0=None) -> Array:
    """SPPO / multiplicative weights self-play: ``pi' ∝ pi exp(P pi / beta)``, no KL to ``mu``.

    The exact minimizer of SPPO's loss ``((log pi - log pi_t) - (P pi_t - 1/2)/beta)^2``. Only its
    average iterate has guarantees; on rock-paper-scissors the last iterate cycles outward.
    ``mu`` is only the starting policy.
    """
    step = lambda t, logpi: jax.nn.log_softmax(logpi + P @ jnp.exp(logpi) / beta)
    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def fictitious_play(P, mu, tau, num_steps: int, pi0=None) -> Array:
    """Fictitious play on the regularized game: the average policy moves toward the regularized
    best response to itself, ``pi_bar' = pi_bar + (BR(pi_bar) - pi_bar) / (t + 2)``. Returns the
    average iterate (the one that converges)."""
    log_mu = jnp.log(mu)

    def step(t, logpi):
        pi = jnp.exp(logpi)
        br = jax.nn.softmax(log_mu + P @ pi / tau)
        return jnp.log(pi + (br - pi) / (t + 2.0))

    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def ipo_md(P, mu, tau, num_steps: int, beta=0.125, lr=0.05, pi0=None) -> Array:
    """IPO-MD (docs/algorithms.md 5): descent on the population IPO loss with pairs drawn
    (stop-gradient) from the geometric mixture ``pi^(1-beta) mu^beta``, labels weighted by ``P``.

    Each step is a natural-gradient step on :func:`objectives.ipo_loss` (the gradient divided by
    its diagonal curvature ``4 m(y)``). Its fixed point's mixture is the NE at ``tau/(1-beta)``;
    ``beta = 0`` is online IPO, whose fixed point is the NE at ``tau``.
    """
    log_mu = jnp.log(mu)
    grad = jax.grad(objectives.ipo_loss)

    def step(t, logpi):
        log_m = jax.lax.stop_gradient(jax.nn.log_softmax((1.0 - beta) * logpi + beta * log_mu))
        g = grad(logpi, log_m, log_mu, P, tau)
        return jax.nn.log_softmax(logpi - lr * g / (4.0 * jnp.exp(log_m)))

    return _trajectory(step, _start(mu, pi0), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def online_ipo(P, mu, tau, num_steps: int, lr=0.05, pi0=None) -> Array:
    """Online IPO: :func:`ipo_md` with pairs from the policy itself (beta = 0)."""
    return ipo_md(P, mu, tau, num_steps, beta=0.0, lr=lr, pi0=pi0)


# --- the methods published since the seeds (docs/algorithms.md sections 9-13) ---------------


@functools.partial(jax.jit, static_argnames=("num_steps", "magnet_every"))
def magnetic(P, mu, tau, num_steps: int, eta=1.0, magnet_every: int = 0, pi0=None) -> Array:
    """MPO's exact form (arXiv 2410.16714): magnetic mirror descent in self-play,
    ``log pi' = (log pi + eta tau log m + eta P pi) / (1 + eta tau) + c``, pulled toward the
    magnet ``m`` (at first ``mu``). ``magnet_every = K > 0`` moves the magnet to the current
    policy every K steps (MPO's schedule): each stretch of K steps approaches the NE of the game
    regularized toward the last magnet, and the magnets approach the NE of the unregularized
    game. ``magnet_every = 0`` keeps ``m = mu``: linear last-iterate convergence to the
    tau-regularized NE (magnetic mirror descent, Sokota et al. 2023)."""

    def step(t, carry):
        logpi, log_m = carry
        new = jax.nn.log_softmax(
            (logpi + eta * tau * log_m + eta * P @ jnp.exp(logpi)) / (1.0 + eta * tau)
        )
        if magnet_every:
            log_m = jnp.where((t + 1) % magnet_every == 0, new, log_m)
        return new, log_m

    return _carried(step, (_start(mu, pi0), jnp.log(mu)), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def optimistic(P, mu, tau, num_steps: int, eta=0.5, pi0=None) -> Array:
    """Optimistic online mirror descent on the tau-regularized game: ONPO's exact form (arXiv
    2502.16852) for tau > 0, optimistic multiplicative weights (OMWU, arXiv 2512.24818) for
    tau = 0. The payoff is extrapolated from the last two iterates:
    ``log pi' = (1 - eta tau) log pi + eta tau log mu + eta (2 P pi_t - P pi_{t-1}) + c``
    (``pi_{-1} = pi_0``). ONPO claims an O(1/T) duality gap for the average iterate; OMWU a
    linear last-iterate rate to the unregularized NE."""
    log_mu = jnp.log(mu)

    def step(t, carry):
        logpi, prev = carry
        a = eta * tau
        payoff = 2.0 * P @ jnp.exp(logpi) - P @ jnp.exp(prev)
        return jax.nn.log_softmax((1.0 - a) * logpi + a * log_mu + eta * payoff), logpi

    start = _start(mu, pi0)
    return _carried(step, (start, start), num_steps)


@functools.partial(jax.jit, static_argnames=("num_steps", "reset_every"))
def comal(P, mu, tau, num_steps: int, reset_every: int = 50, eta=None, pi0=None) -> Array:
    """COMAL (arXiv 2410.23223): a conceptual proximal-point outer loop. Each round runs
    ``reset_every`` INPO steps (:func:`inpo`, step ``1/eta``) on the game regularized toward
    the round's reference, then resets the reference to the last iterate. Rounds solved exactly
    are the proximal point method on the unregularized game, whose iterates converge to its NE
    (not the tau-regularized one). ``eta=None`` is ``10 tau``: at INPO's own ``3 tau`` the
    rounds oscillate once the reference nears a partial-support NE (tests/tabular)."""
    eta = 10.0 * tau if eta is None else eta
    r = tau / eta

    def step(t, carry):
        logpi, log_ref = carry
        new = jax.nn.log_softmax(r * log_ref + (1.0 - r) * logpi + P @ jnp.exp(logpi) / eta)
        return new, jnp.where((t + 1) % reset_every == 0, new, log_ref)

    return _carried(step, (_start(mu, pi0), jnp.log(mu)), num_steps)


@functools.partial(jax.jit, static_argnames="num_steps")
def mnpo(P, mu, tau, num_steps: int, weights=(1.0,), eta=None, pi0=None) -> Array:
    """MNPO (arXiv 2509.23102): INPO against a population of the last ``len(weights)`` iterates
    with weights ``lambda_j`` (summing to 1, the most recent first). The exact minimizer of its
    squared loss, as :func:`inpo`'s, is ``log pi' = r log mu + (1 - r) sum_j lambda_j
    log pi_{t-j} + P sum_j lambda_j pi_{t-j} / eta + c`` with ``r = tau / eta`` (``eta`` default
    ``3 tau``); iterates before the start are the start. One weight is INPO; the fixed point is
    the tau-regularized NE for any weights."""
    eta = 3.0 * tau if eta is None else eta
    r = tau / eta
    lam = jnp.asarray(weights, dtype=mu.dtype)
    log_mu = jnp.log(mu)

    def step(t, past):  # past[j] = log pi_{t-j}
        mixed_log = jnp.tensordot(lam, past, 1)
        opponent = jnp.tensordot(lam, jnp.exp(past), 1)
        new = jax.nn.log_softmax(r * log_mu + (1.0 - r) * mixed_log + P @ opponent / eta)
        return jnp.concatenate([new[None], past[:-1]], 0)

    start = _start(mu, pi0)
    return _carried(step, jnp.broadcast_to(start, (lam.shape[0], *start.shape)), num_steps)


def _carried(step, carry0, num_steps: int) -> Array:
    """Runs ``carry <- step(t, carry)`` for t = 0..num_steps-1, where ``carry[0]`` is the log
    policy (the rest: what the method remembers); returns ``exp`` of every ``carry[0]``."""

    def body(carry, t):
        carry = step(t, carry)
        return carry, carry[0]

    _, logpis = jax.lax.scan(body, carry0, jnp.arange(num_steps))
    return jnp.exp(jnp.concatenate([carry0[0][None], logpis], 0))
