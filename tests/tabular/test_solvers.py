"""Solvers: the exact regularized NE, best responses, the duality gap and the LP equilibrium."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.tabular import games, solvers

pytestmark = pytest.mark.usefixtures("x64")


def _game(n, seed):
    return games.random_preference(jax.random.key(seed), n), games.random_reference(
        jax.random.key(seed + 100), n
    )


@pytest.mark.parametrize("n", [3, 10, 50])
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.03, 0.01])
def test_regularized_nash_is_exact(n, tau):
    P, mu = _game(n, seed=n)
    pi = solvers.regularized_nash(P, mu, tau)
    assert pi.dtype == jnp.float64
    assert float(solvers.fixed_point_residual(P, mu, tau, pi)) <= 1e-12
    # Independent check of pi* ∝ mu exp(P pi*/tau), in numpy.
    Pn, mun, pin = (np.asarray(a) for a in (P, mu, pi))
    logits = np.log(mun) + Pn @ pin / tau
    target = np.exp(logits - logits.max())
    np.testing.assert_allclose(pin, target / target.sum(), rtol=1e-9, atol=1e-14)
    assert abs(float(solvers.duality_gap(P, mu, tau, pi))) <= 1e-12


def test_duality_gap_matches_its_definition():
    """The closed form equals max_p J(p, pi) - min_q J(pi, q) evaluated at the best responses,
    and no random p or q does better than those best responses."""
    n, tau = 6, 0.2
    P, mu = _game(n, seed=3)
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(4), (n,)))
    J = lambda p, q: p @ P @ q - tau * solvers.kl(p, mu) + tau * solvers.kl(q, mu)
    p_best = solvers.best_response(P, mu, tau, pi)
    q_best = jax.nn.softmax(jnp.log(mu) - P.T @ pi / tau)
    assert float(solvers.duality_gap(P, mu, tau, pi)) == pytest.approx(
        float(J(p_best, pi) - J(pi, q_best)), abs=1e-12
    )
    others = jax.nn.softmax(3 * jax.random.normal(jax.random.key(5), (2000, n)), -1)
    assert float(jnp.max(jax.vmap(lambda p: J(p, pi))(others))) <= float(J(p_best, pi)) + 1e-12
    assert float(jnp.min(jax.vmap(lambda q: J(pi, q))(others))) >= float(J(pi, q_best)) - 1e-12


def test_duality_gap_positive_away_from_nash():
    P, mu = _game(8, seed=7)
    tau = 0.1
    others = jax.nn.softmax(jax.random.normal(jax.random.key(8), (500, 8)), -1)
    gaps = jax.vmap(lambda p: solvers.duality_gap(P, mu, tau, p))(others)
    assert float(gaps.min()) > 0


def test_regularized_nash_batches_with_vmap():
    P, mu = games.contextual_games(jax.random.key(9), 6, 5)
    batched = jax.vmap(solvers.regularized_nash, in_axes=(0, 0, None))(P, mu, 0.05)
    for c in range(6):
        np.testing.assert_allclose(
            batched[c], solvers.regularized_nash(P[c], mu[c], 0.05), atol=1e-13
        )


@pytest.mark.parametrize("seed", range(5))
def test_lp_nash_has_zero_unregularized_gap(seed):
    P = games.random_preference(jax.random.key(seed), 9)
    pi, value = solvers.nash_lp(P)
    assert value == pytest.approx(0.5, abs=1e-9)
    assert float(solvers.duality_gap(P, None, 0, jnp.asarray(pi))) <= 1e-9


def test_uniform_nash_of_dice_and_rps():
    for P in (games.nontransitive_dice(), games.rock_paper_scissors()):
        np.testing.assert_allclose(solvers.nash_lp(P)[0], np.ones(3) / 3, atol=1e-9)
        uniform = jnp.ones(3) / 3
        np.testing.assert_allclose(solvers.regularized_nash(P, uniform, 0.1), uniform, atol=1e-14)
