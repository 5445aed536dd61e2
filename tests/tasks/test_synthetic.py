"""The synthetic task's oracle, enumeration, exact equilibria and data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax.tabular import solvers
from nlhf_jax.tasks.synthetic import BOS, EOS, PAD, SEP, SyntheticTask, style_of

TASK = SyntheticTask(num_symbols=4, length=3)  # 64 responses; the default task is smaller


def _prompt(*target):
    return np.array([[BOS, *(TASK.prompt_symbol(t) for t in target), SEP]])


def _resp(*symbols, eos=True):
    return np.array([[*(TASK.response_symbol(s) for s in symbols), *([EOS] if eos else [])]])


def _p(x, a, b):
    ones = lambda t: np.ones_like(t, bool)
    return float(TASK(x, ones(x), a, ones(a), b, ones(b))[0])


def test_oracle_by_hand():
    x = _prompt(0, 1, 2)
    # q = 3, style 0 % 3 = 0  vs  q = 2, style 1; style 1 beats style 0: d = 1 - 2 = -1.
    assert _p(x, _resp(0, 1, 2), _resp(1, 1, 2)) == pytest.approx(1 / (1 + np.exp(1.0)), rel=1e-6)
    # A malformed response (no EOS) has quality -2 and no style: a q = 0 response beats it by 2.
    assert _p(x, _resp(3, 3, 3), _resp(0, 1, 2, eos=False)) == pytest.approx(
        1 / (1 + np.exp(-2.0)), rel=1e-6
    )


def test_style_is_a_cycle():
    """Equal quality (0 matches of target 3,3,3), styles 0, 1, 2: each beats the one before."""
    x = _prompt(3, 3, 3)
    s0, s1, s2 = _resp(0, 1, 1), _resp(1, 1, 1), _resp(2, 1, 1)  # first symbols 0, 1, 2
    assert _p(x, s1, s0) > 0.5 and _p(x, s2, s1) > 0.5 and _p(x, s0, s2) > 0.5


def test_oracle_antisymmetric_on_random_token_sequences():
    """Random (often malformed) responses and paddings: P(a>b) + P(b>a) = 1 to float32 rounding,
    and P(y>y) = 1/2 exactly."""
    rng = np.random.default_rng(0)
    n = 2000
    x = np.asarray(TASK.prompts())[rng.integers(0, 64, n)]
    a = rng.integers(0, TASK.vocab_size, (n, 5)).astype(np.int32)
    b = rng.integers(0, TASK.vocab_size, (n, 5)).astype(np.int32)
    am, bm = rng.random((n, 5)) < 0.8, rng.random((n, 5)) < 0.8
    xm = np.ones_like(x, bool)
    pab, pba = TASK(x, xm, a, am, b, bm), TASK(x, xm, b, bm, a, am)
    np.testing.assert_allclose(pab + pba, 1.0, atol=2e-7)
    np.testing.assert_array_equal(TASK.logit(x, xm, a, am, b, bm), -TASK.logit(x, xm, b, bm, a, am))
    assert bool(jnp.all(TASK(x, xm, a, am, a, am) == 0.5))


def test_left_padded_prompt_and_foreign_prompt():
    x = _prompt(0, 1, 2)
    padded = np.concatenate([[[PAD, PAD]], x], 1)
    mask = padded != PAD
    a, b = _resp(0, 1, 2), _resp(3, 3, 3)
    ones = np.ones_like(a, bool)
    assert float(TASK(padded, mask, a, ones, b, ones)[0]) == pytest.approx(_p(x, a, b))
    # A prompt whose pattern is padding is not a task prompt: NaN, never a silent number.
    assert np.isnan(float(TASK(padded[:, :5], mask[:, :5], a, ones, b, ones)[0]))


def test_enumeration_and_exact_nash_per_prompt():
    P = TASK.preference_matrices()
    assert P.shape == (64, 64, 64)
    np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-15)
    mu = TASK.behaviour_policy()
    tau = 0.1
    ne = TASK.exact_nash(mu, tau)
    with jax.enable_x64(True):
        gap = jax.vmap(solvers.duality_gap, (0, 0, None, 0))
        gaps_ne = np.asarray(gap(jnp.asarray(P), jnp.asarray(mu), tau, jnp.asarray(ne)))
        gaps_mu = np.asarray(gap(jnp.asarray(P), jnp.asarray(mu), tau, jnp.asarray(mu)))
    assert np.abs(gaps_ne).max() < 1e-12
    # The behaviour policy is exploitable through the style cycle (measured mean gap 0.236).
    assert gaps_mu.min() > 0.05


def test_data_follows_the_behaviour_policy_and_the_oracle():
    n = 20_000
    demo = TASK.demonstrations(n, seed=1)
    assert demo["prompt"].shape == (n, 5) and demo["response"].shape == (n, 4)
    style0 = (style_of(demo["response"][:, :3] - TASK.response_symbol(0)) == 0).mean()
    expected = (TASK.behaviour_policy()[:, style_of(TASK.patterns()) == 0]).sum(-1).mean()
    assert abs(style0 - expected) < 5 * np.sqrt(expected * (1 - expected) / n)
    pairs = TASK.preference_pairs(n, seed=2)
    p = pairs["probability"].astype(np.float64)
    # Labels are Bernoulli(p): their mean matches within 5 standard errors.
    assert abs(pairs["label"].mean() - p.mean()) < 5 * np.sqrt((p * (1 - p)).sum()) / n
    assert set(np.unique(pairs["label"])) <= {0.0, 1.0}
