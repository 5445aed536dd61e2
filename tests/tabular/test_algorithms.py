"""Convergence of the exact dynamics against theory (docs/algorithms.md sections 1, 4-7 and 9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.tabular import algorithms as alg
from nlhf_jax.tabular import games, objectives, solvers

pytestmark = pytest.mark.usefixtures("x64")

# KL between float64 distributions computed as sum p (log p - log q) carries rounding of a few
# 1e-16 per term; bounds are checked with this slack so that a converged run (KL ~ 0) passes.
ROUNDING = 1e-13


def _batch(n, num_games, seed):
    return games.contextual_games(jax.random.key(seed), num_games, n)


def _kl_to_nash(P, mu, tau, traj):
    pi_star = jax.vmap(solvers.regularized_nash, (0, 0, None))(P, mu, tau)
    return jax.vmap(jax.vmap(solvers.kl, (None, 0)))(pi_star, traj)


def test_nash_md_step_is_the_equation():
    """One step against an independent numpy implementation: mixture, then exp-weights."""
    P, mu = (np.asarray(a[0]) for a in _batch(5, 1, seed=0))
    pi0 = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(1), (5,))))
    tau, eta = 0.3, 0.7
    mix = pi0 ** (1 - eta * tau) * mu ** (eta * tau)
    mix /= mix.sum()
    new = mix * np.exp(eta * P @ mix)
    new /= new.sum()
    traj = alg.nash_md(jnp.asarray(P), jnp.asarray(mu), tau, 1, eta=eta, pi0=jnp.asarray(pi0))
    np.testing.assert_allclose(traj[1], new, rtol=1e-12)
    np.testing.assert_allclose(traj[0], pi0, rtol=1e-14)


@pytest.mark.parametrize("n", [3, 10, 30])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_nash_md_theorem_1(n, tau):
    """KL(pi*, pi_{t+1}) <= (1 - eta_t tau) KL(pi*, pi_t) + 2 eta_t^2 at every step, hence
    KL(pi*, pi_T) <= 8 / (tau^2 (T + 1)), on 16 random games; and the last iterate converges."""
    P, mu = _batch(n, 16, seed=n)
    T = 400
    kl = _kl_to_nash(P, mu, tau, jax.vmap(alg.nash_md, (0, 0, None, None))(P, mu, tau, T))
    t = jnp.arange(T)
    eta = 2.0 / (tau * (t + 2.0))
    assert bool(jnp.all(kl[:, 1:] <= (1 - eta * tau) * kl[:, :-1] + 2 * eta**2 + ROUNDING))
    assert bool(jnp.all(kl <= 8.0 / (tau**2 * (jnp.arange(T + 1) + 1.0)) + ROUNDING))
    assert float(kl[:, -1].max()) < 1e-2 * float(kl[:, 0].min())


@pytest.mark.parametrize("eta_tau", [0.1, 0.5, 1.0])
def test_nash_md_constant_step_bound(eta_tau):
    """Constant eta with eta tau <= 1: KL_T <= (1 - eta tau)^T KL_0 + 2 eta / tau."""
    tau = 0.1
    eta = eta_tau / tau
    P, mu = _batch(8, 16, seed=11)
    pi0 = jax.nn.softmax(jax.random.normal(jax.random.key(12), (16, 8)), -1)
    traj = jax.vmap(lambda p, m, s: alg.nash_md(p, m, tau, 100, eta=eta, pi0=s))(P, mu, pi0)
    kl = _kl_to_nash(P, mu, tau, traj)
    bound = (1 - eta * tau) ** jnp.arange(101) * kl[:, :1] + 2 * eta / tau
    assert bool(jnp.all(kl <= bound + ROUNDING))


def test_mixture_is_what_makes_nash_md_converge():
    """Rock-paper-scissors, tau = 0.15, constant eta tau = 0.6: Nash-MD converges, while OMD (the
    same update with the preference against pi_t instead of the mixture) stays on a cycle. The
    linearization predicts it: per-step factors (1-a)^2 (1 + a^2 x^2) = 0.50 and
    (1-a)^2 + a^2 x^2 = 1.23 with a = 0.6, x = 0.29 / 0.15."""
    P, mu, pi0 = games.rock_paper_scissors(), jnp.ones(3) / 3, jnp.array([0.6, 0.3, 0.1])
    tau, eta = 0.15, 0.6 / 0.15
    pi_star = solvers.regularized_nash(P, mu, tau)
    md = solvers.kl(pi_star, alg.nash_md(P, mu, tau, 300, eta=eta, pi0=pi0))
    omd = solvers.kl(pi_star, alg.online_mirror_descent(P, mu, tau, 300, eta=eta, pi0=pi0))
    assert float(md[-1]) < 1e-12
    assert float(omd[100:].min()) > 0.1


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_nash_mirror_prox_envelope(beta):
    """eta = 2 beta: KL(pi*, pi_k) <= (1 + 2 beta)^(-k) KL(pi*, pi_0) on 60 random games."""
    P, mu = _batch(6, 60, seed=int(beta * 100))
    K = 200
    kl = _kl_to_nash(
        P, mu, beta, jax.vmap(alg.nash_mirror_prox, (0, 0, None, None))(P, mu, beta, K)
    )
    envelope = (1.0 + 2.0 * beta) ** (-jnp.arange(K + 1.0)) * kl[:, :1]
    assert bool(jnp.all(kl <= envelope + ROUNDING))


def test_nash_mirror_prox_half_step_is_the_prox_argmin():
    """The closed form minimizes (1/beta) P(pi_k > pi) + KL(pi||mu) + (1/eta) KL(pi||pi_k): its
    gradient in logit space vanishes there."""
    P, mu = (a[0] for a in _batch(5, 1, seed=21))
    pi_k = jax.nn.softmax(jax.random.normal(jax.random.key(22), (5,)))
    beta, eta = 0.2, 0.7
    objective = lambda z: (
        (1 / beta) * pi_k @ P @ jax.nn.softmax(z)
        + solvers.kl(jax.nn.softmax(z), mu)
        + (1 / eta) * solvers.kl(jax.nn.softmax(z), pi_k)
    )
    half = alg.nash_mirror_prox(P, mu, beta, 1, eta=eta, pi0=pi_k)  # full step uses the half
    logit_half = (jnp.log(pi_k) + eta * jnp.log(mu) + (eta / beta) * P @ pi_k) / (1 + eta)
    assert float(jnp.abs(jax.grad(objective)(logit_half)).max()) < 1e-12
    # And a perturbed point is worse.
    assert float(objective(logit_half + 0.01 * jnp.arange(5.0))) > float(objective(logit_half))
    assert half.shape == (2, 5)


@pytest.mark.parametrize(
    "name,run",
    [
        ("egpo", lambda P, mu, tau: alg.extragradient(P, mu, tau, 1000)),
        ("omd", lambda P, mu, tau: alg.online_mirror_descent(P, mu, tau, 2000)),
        ("inpo", lambda P, mu, tau: alg.inpo(P, mu, tau, 1000)),
        ("online_ipo", lambda P, mu, tau: alg.online_ipo(P, mu, tau, 2000)),
        ("fictitious_play", lambda P, mu, tau: alg.fictitious_play(P, mu, tau, 2000)),
    ],
)
def test_methods_converge_to_the_regularized_nash(name, run):
    """Measured on 8 random 10-response games at tau = 0.1 (docs/algorithms.md 9)."""
    tau = 0.1
    P, mu = _batch(10, 8, seed=31)
    kl = _kl_to_nash(P, mu, tau, jax.vmap(run, (0, 0, None))(P, mu, tau))
    # Fictitious play and OMD with eta_t ~ 1/t converge polynomially; the rest linearly.
    limit = {"fictitious_play": 1e-5, "omd": 1e-7}.get(name, 1e-12)
    assert float(kl[:, -1].max()) < limit, float(kl[:, -1].max())


def test_mwu_self_play_on_rps_drifts_away():
    """Unregularized multiplicative weights self-play moves away from the uniform NE: the KL to
    it grows at every step (the continuous-time flow conserves it; the discrete map spirals out)."""
    P, uniform = games.rock_paper_scissors(), jnp.ones(3) / 3
    traj = alg.sppo(P, uniform, 1.0, 200, pi0=jnp.array([0.5, 0.3, 0.2]))
    kl = solvers.kl(uniform, traj)
    assert bool(jnp.all(jnp.diff(kl) > 0))
    assert float(kl[-1]) > 10 * float(kl[0])


@pytest.mark.parametrize("beta", [0.0, 0.125, 0.5])
def test_ipo_md_mixture_is_the_nash_at_rescaled_tau(beta):
    """IPO-MD's fixed point: the mixture pi^(1-beta) mu^beta is the NE at tau / (1 - beta)."""
    tau = 0.1
    P, mu = _batch(7, 4, seed=41)
    pi = jax.vmap(lambda p, m: alg.ipo_md(p, m, tau, 3000, beta=beta)[-1])(P, mu)
    mix = jax.nn.softmax((1 - beta) * jnp.log(pi) + beta * jnp.log(mu), -1)
    target = jax.vmap(solvers.regularized_nash, (0, 0, None))(P, mu, tau / (1 - beta))
    np.testing.assert_allclose(mix, target, atol=1e-10)


def test_ipo_loss_minimizer():
    """The IPO population loss is stationary at log(pi/mu) = P m / tau + c (the derivation behind
    the IPO-MD fixed point), and only there."""
    P, mu = (a[0] for a in _batch(6, 1, seed=51))
    m = jax.nn.softmax(jax.random.normal(jax.random.key(52), (6,)))
    tau = 0.2
    best = jnp.log(mu) + P @ m / tau
    grad = jax.grad(objectives.ipo_loss)(best, jnp.log(m), jnp.log(mu), P, tau)
    assert float(jnp.abs(grad).max()) < 1e-12
    grad_off = jax.grad(objectives.ipo_loss)(
        best + 0.1 * jnp.arange(6.0), jnp.log(m), jnp.log(mu), P, tau
    )
    assert float(jnp.abs(grad_off).max()) > 1e-3


def test_inpo_step_minimizes_inpo_loss_and_first_round_is_ipo():
    P, mu = (a[0] for a in _batch(6, 1, seed=61))
    pi_t = jax.nn.softmax(jax.random.normal(jax.random.key(62), (6,)))
    tau, eta = 0.1, 0.3
    step = alg.inpo(P, mu, tau, 1, eta=eta, pi0=pi_t)[1]
    grad = jax.grad(objectives.inpo_loss)(jnp.log(step), jnp.log(pi_t), jnp.log(mu), P, tau, eta)
    assert float(jnp.abs(grad).max()) < 1e-12
    # With pi_t = mu, INPO's loss is IPO's with tau replaced by eta (pairs from mu).
    z = jax.random.normal(jax.random.key(63), (6,))
    log_mu = jnp.log(mu)
    inpo = objectives.inpo_loss(z, log_mu, log_mu, P, tau, eta)
    ipo = objectives.ipo_loss(z, log_mu, log_mu, P, eta)
    assert float(inpo) == pytest.approx(float(ipo), rel=1e-13)


def test_algorithms_batch_over_contexts_with_vmap():
    P, mu = _batch(5, 4, seed=71)
    batched = jax.vmap(alg.nash_md, (0, 0, None, None))(P, mu, 0.2, 30)
    for c in range(4):
        np.testing.assert_allclose(batched[c], alg.nash_md(P[c], mu[c], 0.2, 30), rtol=1e-12)
    assert batched.shape == (4, 31, 5)
