"""Games: valid preference matrices and the closed-form equilibria of docs/algorithms.md
section 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.tabular import games, solvers

ALL_GAMES = {
    "random": lambda: games.random_preference(jax.random.key(0), 7),
    "bt": lambda: games.bradley_terry(jnp.array([0.3, -1.0, 2.0, 0.0])),
    "rps": games.rock_paper_scissors,
    "dice": games.nontransitive_dice,
    "three": lambda: games.three_annotators(0.1),
}


@pytest.mark.parametrize("name", sorted(ALL_GAMES))
def test_games_are_complementary(name):
    P = np.asarray(ALL_GAMES[name](), np.float64)
    np.testing.assert_allclose(P + P.T, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.diag(P), 0.5, atol=1e-7)
    assert P.min() >= 0.0 and P.max() <= 1.0
    games.check_preference(P)


def test_dice_values():
    P = np.asarray(games.nontransitive_dice())
    for i, j in [(0, 1), (1, 2), (2, 0)]:
        assert P[i, j] == pytest.approx(5 / 9)


def test_check_preference_rejects_bad_matrices():
    with pytest.raises(ValueError, match="outside"):
        games.check_preference(jnp.array([[0.5, 1.5], [-0.5, 0.5]]))
    with pytest.raises(ValueError, match="complementary"):
        games.check_preference(jnp.array([[0.5, 0.9], [0.9, 0.5]]))
    with pytest.raises(ValueError, match="shape"):
        games.check_preference(jnp.ones((2, 3)))


@pytest.mark.parametrize("eps", [-0.2, -0.05, 0.0, 0.05, 0.3])
def test_three_annotator_nash_formula(eps, x64):
    P = games.three_annotators(eps)
    pi = games.three_annotators_nash(eps)
    # Every response is exactly at parity with the NE: (P^T pi)_j = 1/2, so no deviation gains.
    np.testing.assert_allclose(np.asarray(P).T @ np.asarray(pi), 0.5, atol=1e-15)
    lp_pi, value = solvers.nash_lp(P)
    np.testing.assert_allclose(lp_pi, pi, atol=1e-7)
    assert value == pytest.approx(0.5, abs=1e-9)


def test_contextual_games_shapes_and_validity():
    P, mu = games.contextual_games(jax.random.key(1), num_contexts=5, n=4)
    assert P.shape == (5, 4, 4) and mu.shape == (5, 4)
    games.check_preference(P)
    np.testing.assert_allclose(mu.sum(-1), 1.0, atol=1e-6)
    assert float(mu.min()) > 0
    # Contexts are independent draws, not copies.
    assert float(jnp.abs(P[0] - P[1]).max()) > 1e-3
