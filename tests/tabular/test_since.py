"""The methods published since the seeds, each paper's claim checked exactly against the
independent solvers (docs/algorithms.md section 10): MPO, ONPO / OMWU, COMAL, MNPO, EGPO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.tabular import algorithms as alg
from nlhf_jax.tabular import games, solvers

pytestmark = pytest.mark.usefixtures("x64")

ROUNDING = 1e-13  # float64 KL and gaps of converged iterates (tests/tabular/test_algorithms.py)


def _kl_to_nash(P, mu, tau, traj):
    star = jax.vmap(solvers.regularized_nash, (0, 0, None))(P, mu, tau)
    return np.asarray(jax.vmap(jax.vmap(solvers.kl, (None, 0)))(star, traj))


def _gaps(P, mu, tau, traj):
    return np.asarray(jax.vmap(lambda p: solvers.duality_gap(P, mu, tau, p))(traj))


def _average(traj):
    return jnp.cumsum(traj, 0) / jnp.arange(1, traj.shape[0] + 1)[:, None]


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_magnetic_mirror_descent_contracts_at_its_theorems_rate(tau):
    """MPO with a fixed magnet is magnetic mirror descent: for eta <= tau / L^2 (L = 1: entries
    of P in [0, 1], KL 1-strongly convex in l1) Sokota et al.'s theorem gives
    ``KL(pi*, pi_{t+1}) <= (1 + eta tau)^-t KL(pi*, pi_1)``: linear in the last iterate."""
    P, mu = games.contextual_games(jax.random.key(31), 8, 10)
    traj = jax.vmap(lambda p, m: alg.magnetic(p, m, tau, 400, eta=tau))(P, mu)
    kl = _kl_to_nash(P, mu, tau, traj)
    t = np.arange(1, 401)
    assert np.all(kl[:, 1:] <= kl[:, 1:2] * (1.0 + tau * tau) ** -(t - 1) + ROUNDING)


@pytest.mark.parametrize("method", ["egpo", "mpo"])
def test_last_iterate_rates_are_linear_not_polynomial(method):
    """EGPO's and MPO's claims: linear last-iterate convergence to the tau-regularized NE. A
    linear rate squares the remaining fraction when the steps double (KL(2T)/KL(T) ~ KL(T)/KL(0));
    O(1/t^k) would only halve it k times."""
    tau = 0.1
    P, mu = games.contextual_games(jax.random.key(31), 8, 10)
    run = {
        "egpo": lambda p, m: alg.extragradient(p, m, tau, 100),
        "mpo": lambda p, m: alg.magnetic(p, m, tau, 100, eta=1.0),
    }[method]
    kl = _kl_to_nash(P, mu, tau, jax.vmap(run)(P, mu)).max(0)
    first, second = kl[50] / kl[0], kl[100] / kl[50]
    assert first < 1e-3 and second < 10 * first, (first, second)


def _partial_support_games():
    """Random games whose unregularized NE leaves responses out, and a reference for which the
    tau = 0.1 NE is far from it (its unregularized exploitability is 0.18 to 0.33)."""
    out = []
    for seed, n in ((1, 5), (3, 8), (5, 6)):
        P = jnp.asarray(games.random_preference(jax.random.key(seed), n), jnp.float64)
        mu = jnp.asarray(games.random_reference(jax.random.key(7), n), jnp.float64)
        out.append((P, mu, solvers.nash_lp(P)[0]))
    return out


@pytest.mark.parametrize(
    "name,run",
    [
        ("mpo", lambda P, mu: alg.magnetic(P, mu, 0.1, 4000, eta=1.0, magnet_every=50)),
        ("comal", lambda P, mu: alg.comal(P, mu, 0.1, 4000, reset_every=50)),
    ],
)
def test_moving_the_anchor_reaches_the_unregularized_nash(name, run):
    """MPO's magnet moves and COMAL's reference resets: the iterates reach the NE of the
    *unregularized* game (its exploitability to 1e-4; the LP's NE), where the regularized NE
    they would reach with the anchor held (MPO without moves: magnetic mirror descent) is
    measurably elsewhere."""
    for P, mu, nash in _partial_support_games():
        held = alg.magnetic(P, mu, 0.1, 4000, eta=1.0)[-1]
        star = solvers.regularized_nash(P, mu, 0.1)
        np.testing.assert_allclose(held, star, atol=1e-10)
        assert float(solvers.duality_gap(P, mu, 0.0, star)) > 0.15
        last = run(P, mu)[-1]
        assert float(solvers.duality_gap(P, mu, 0.0, last)) < 1e-4
        assert float(jnp.abs(last - nash).sum()) < 1e-3


def test_comal_needs_an_inner_step_that_solves_its_rounds():
    """COMAL's guarantee assumes each round solved. With INPO's own ratio tau/eta = 1/3 as the
    inner solver (which alone converges on the first round's game), the rounds oscillate once
    the reference nears this game's partial-support NE; eta = 10 tau (the default) converges."""
    P, mu, _ = _partial_support_games()[2]
    first_round = alg.inpo(P, mu, 0.1, 2000)[-1]
    assert float(solvers.duality_gap(P, mu, 0.1, first_round)) < ROUNDING
    tight = alg.comal(P, mu, 0.1, 4000, reset_every=50, eta=0.3)
    assert float(solvers.duality_gap(P, mu, 0.0, tight[-1])) > 0.05
    default = alg.comal(P, mu, 0.1, 4000, reset_every=50)
    assert float(solvers.duality_gap(P, mu, 0.0, default[-1])) < 1e-4


@pytest.mark.parametrize("seed,n", [(1, 5), (3, 8)])
def test_optimism_bounds_the_average_iterates_gap_by_one_over_t(seed, n):
    """ONPO/OMWU at tau = 0 from the uniform policy: optimistic hedge's RVU regret bound (step
    eta <= 1/sqrt(8)) gives regret <= log(n)/eta, so the average iterate's exploitability is at
    most ``2 log(n) / (eta T)`` at every T: O(1/T). Plain multiplicative weights (SPPO's exact
    form) with the same step breaks that bound on these games."""
    P = jnp.asarray(games.random_preference(jax.random.key(seed), n), jnp.float64)
    uniform = jnp.full(n, 1.0 / n)
    eta, T = 0.3, 3000
    bound = 2.0 * np.log(n) / (eta * np.arange(1, T + 2))
    optimistic = _gaps(P, uniform, 0.0, _average(alg.optimistic(P, uniform, 0.0, T, eta=eta)))
    assert np.all(optimistic <= bound)
    plain = _gaps(P, uniform, 0.0, _average(alg.sppo(P, uniform, 1.0 / eta, T)))
    assert np.any(plain > bound)


def test_onpo_average_gap_falls_as_one_over_t_with_regularization():
    """ONPO (tau > 0): T x the average iterate's regularized gap keeps falling (O(1/T), the
    paper's claim; here the last iterate also converges linearly, which implies it)."""
    P, mu = games.contextual_games(jax.random.key(31), 4, 8)
    for p, m in zip(P, mu, strict=True):
        gaps = _gaps(p, m, 0.1, _average(alg.optimistic(p, m, 0.1, 2000, eta=0.3)))
        scaled = gaps * np.arange(1, 2002)
        assert scaled[2000] < scaled[1000] < scaled[100]


@pytest.mark.parametrize("seed,n", [(1, 5), (5, 6)])
def test_omwu_last_iterate_reaches_the_nash_linearly_after_a_burn_in(seed, n):
    """OMWU's claim (arXiv 2512.24818): the last iterate itself converges to the original
    game's NE, linearly once close: after the burn-in the exploitability falls by the same
    factor (over 20) in each 2,000 steps; a polynomial rate t^-k would need k > 7 for one such
    factor, and its factors would shrink."""
    P = jnp.asarray(games.random_preference(jax.random.key(seed), n), jnp.float64)
    uniform = jnp.full(n, 1.0 / n)
    traj = alg.optimistic(P, uniform, 0.0, 8000, eta=0.3)
    gaps = _gaps(P, uniform, 0.0, traj)
    factors = gaps[4000] / gaps[6000], gaps[6000] / gaps[8000]
    assert min(factors) > 20 and max(factors) < 3 * min(factors), factors
    assert gaps[8000] < 1e-7
    np.testing.assert_allclose(traj[-1], solvers.nash_lp(P)[0], atol=1e-6)


def test_mnpo_with_one_player_is_inpo_and_any_population_reaches_the_nash():
    P, mu = games.contextual_games(jax.random.key(31), 4, 8)
    tau = 0.1
    one = jax.vmap(lambda p, m: alg.mnpo(p, m, tau, 600))(P, mu)
    inpo = jax.vmap(lambda p, m: alg.inpo(p, m, tau, 600))(P, mu)
    np.testing.assert_allclose(one, inpo, rtol=0, atol=1e-12)
    three = jax.vmap(lambda p, m: alg.mnpo(p, m, tau, 600, weights=(0.5, 0.3, 0.2)))(P, mu)
    assert _kl_to_nash(P, mu, tau, three)[:, -1].max() < ROUNDING
    # The population is what it plays: a different mixture takes a different path.
    assert float(jnp.abs(three[5] - one[5]).max()) > 1e-3


def test_optimistic_step_is_the_equation():
    """One step of ``optimistic`` by hand, from a two-step history."""
    P = games.random_preference(jax.random.key(0), 4)
    mu = games.random_reference(jax.random.key(1), 4)
    traj = alg.optimistic(P, mu, 0.2, 2, eta=0.5)
    a = 0.5 * 0.2
    want = jax.nn.softmax(
        (1 - a) * jnp.log(traj[1]) + a * jnp.log(mu) + 0.5 * (2 * P @ traj[1] - P @ traj[0])
    )
    np.testing.assert_allclose(traj[2], want, rtol=1e-12)


def test_a_magnetic_step_is_the_minimizer_of_inpos_loss_toward_the_magnet():
    """Deep MPO (nlhf_jax/train/online/mpo.py) trains each magnetic step as INPO's loss with the
    magnet as reference and inverse step ``inpo_eta(eta, tau) = (1 + eta tau) / eta``: that
    loss's gradient vanishes at the exact magnetic step, and not with INPO's own step."""
    from nlhf_jax.tabular import objectives
    from nlhf_jax.train.online.mpo import inpo_eta

    P, _ = (a[0] for a in games.contextual_games(jax.random.key(41), 1, 6))
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(42), (6,)))
    magnet = jax.nn.softmax(jax.random.normal(jax.random.key(43), (6,)))
    tau, eta = 0.2, 1.0
    step = jax.nn.log_softmax(
        (jnp.log(pi) + eta * tau * jnp.log(magnet) + eta * P @ pi) / (1.0 + eta * tau)
    )
    grad = jax.grad(objectives.inpo_loss)
    args = (jnp.log(pi), jnp.log(magnet), P, tau)
    assert float(jnp.abs(grad(step, *args, inpo_eta(eta, tau))).max()) < 1e-12
    assert float(jnp.abs(grad(step, *args, eta)).max()) > 1e-3
    # The same step as the lab's magnetic mirror descent from pi with the magnet mu.
    np.testing.assert_allclose(
        alg.magnetic(P, magnet, tau, 1, eta=eta, pi0=pi)[1],
        jnp.exp(step),
        rtol=1e-12,
    )
