"""The pure losses of docs/algorithms.md sections 2, 4, 5, 6 on an enumerable sequence policy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nlhf_jax import losses
from nlhf_jax.tabular import games

V, N_TOK = 3, 2  # vocabulary and response length: 9 sequences, enumerable
SEQS = jnp.array(list(itertools.product(range(V), repeat=N_TOK)))  # [9, 2]


def _token_logps(theta, y_bn):
    """Autoregressive tabular policy: theta = (first-token logits [V], next-token logits [V, V])."""
    first, second = theta
    lp1 = jax.nn.log_softmax(first)[y_bn[:, 0]]
    lp2 = jax.nn.log_softmax(second[y_bn[:, 0]], -1)[jnp.arange(len(y_bn)), y_bn[:, 1]]
    return jnp.stack([lp1, lp2], -1)  # [b, 2]


def _setup(seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    theta = (jax.random.normal(k[0], (V,)), jax.random.normal(k[1], (V, V)))
    ref = (jax.random.normal(k[2], (V,)), jax.random.normal(k[3], (V, V)))
    P = games.random_preference(k[4], len(SEQS))  # P[y, y'] over the 9 sequences
    opp = jax.nn.softmax(jax.random.normal(jax.random.key(seed + 7), (len(SEQS),)))
    return theta, ref, P, opp


def test_nash_md_pg_estimate_is_unbiased_against_exact_enumeration():
    """Mean of the surrogate's per-sample gradients (y ~ pi, y' ~ opponent, 300k pairs) equals the
    exact gradient of E[P(y > y')] - tau KL(pi || mu), computed by enumerating all 9 sequences,
    within 5 standard errors per parameter (false alarm < 1e-5 for the 12 parameters)."""
    theta, ref, P, opp = _setup()
    tau, num = 0.3, 300_000
    ref_logp_all = _token_logps(ref, SEQS).sum(-1)

    def exact(th):
        logp = _token_logps(th, SEQS).sum(-1)
        pi = jnp.exp(logp)
        return pi @ P @ opp - tau * jnp.sum(pi * (logp - ref_logp_all))

    exact_grad = jax.grad(exact)(theta)
    pi = jnp.exp(_token_logps(theta, SEQS).sum(-1))
    ky, ko = jax.random.split(jax.random.key(1))
    y_idx = jax.random.choice(ky, len(SEQS), (num,), p=pi)
    o_idx = jax.random.choice(ko, len(SEQS), (num,), p=opp)

    def per_sample(yi, oi):
        y = SEQS[yi][None]
        loss = lambda th: losses.nash_md_pg_loss(
            _token_logps(th, y),
            _token_logps(ref, y),
            jnp.ones((1, N_TOK), bool),
            P[yi, oi][None],
            tau,
        )
        return jax.grad(lambda th: -loss(th))(theta)

    grads = jax.vmap(per_sample)(y_idx, o_idx)
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(exact_grad), strict=True):
        mean, se = g.mean(0), g.std(0) / np.sqrt(num)
        assert bool(jnp.all(jnp.abs(mean - e) < 5 * se + 1e-7)), (mean, e, se)
        assert float(jnp.abs(e).max()) > 10 * float(se.max())  # the test has power


def test_naive_kl_term_has_no_gradient_but_the_score_function_form_does():
    """docs/algorithms.md 2's pitfall: E[grad tau (sum log pi - sum log mu)] = 0 (y resampled),
    while grad tau KL(pi || mu) is not; our KL enters with the score function (P = 1/2: no
    signal)."""
    theta, ref, _, _ = _setup(seed=3)
    tau, num = 0.5, 200_000
    pi = jnp.exp(_token_logps(theta, SEQS).sum(-1))
    y = SEQS[jax.random.choice(jax.random.key(2), len(SEQS), (num,), p=pi)]
    ones, half = jnp.ones((num, N_TOK), bool), jnp.full((num,), 0.5)
    ref_lp = _token_logps(ref, y)
    naive = jax.grad(lambda th: tau * jnp.mean(_token_logps(th, y).sum(-1) - ref_lp.sum(-1)))(theta)
    ours = jax.grad(
        lambda th: losses.nash_md_pg_loss(_token_logps(th, y), ref_lp, ones, half, tau)
    )(theta)
    ref_all = _token_logps(ref, SEQS).sum(-1)
    kl = lambda th: jnp.sum(
        jnp.exp(_token_logps(th, SEQS).sum(-1)) * (_token_logps(th, SEQS).sum(-1) - ref_all)
    )
    exact = jax.grad(lambda th: tau * kl(th))(theta)
    for n, o, e in zip(
        jax.tree.leaves(naive), jax.tree.leaves(ours), jax.tree.leaves(exact), strict=True
    ):
        assert float(jnp.abs(n).max()) < 0.01  # zero-mean: only sampling noise
        np.testing.assert_allclose(o, e, atol=0.02)  # our loss's gradient = grad tau KL
    # The KL gradient is far above the naive form's noise bound (measured max 0.161).
    assert max(float(jnp.abs(e).max()) for e in jax.tree.leaves(exact)) > 10 * 0.01


def test_kl_term_and_its_gradient_vanish_when_policy_is_reference():
    theta, _, _, _ = _setup(seed=5)
    y = SEQS
    mask = jnp.ones((len(y), N_TOK), bool).at[0, 1].set(False)

    def loss(th):
        lp = _token_logps(th, y)
        # pi = mu: the reference log-probs equal the policy's (held constant).
        return losses.nash_md_pg_loss(
            lp, jax.lax.stop_gradient(lp), mask, jnp.full((len(y),), 0.5), 0.7
        )

    assert float(loss(theta)) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(jax.grad(loss)(theta)))
    lp = _token_logps(theta, y)
    assert float(losses.sequence_kl_estimate(lp, lp, mask)) == 0.0


def test_inpo_first_round_is_ipo_with_tau_replaced_by_eta():
    k = jax.random.split(jax.random.key(8), 5)
    la, lb, ra, rb = (jax.random.normal(kk, (16, 4)) for kk in k[:4])
    ma = jnp.ones((16, 4), bool).at[:, 3].set(False)
    mb = jnp.ones((16, 4), bool)
    label = jax.random.uniform(k[4], (16,))
    tau, eta = 0.1, 0.25
    inpo = losses.inpo_loss(la, ra, ra, ma, lb, rb, rb, mb, label, tau, eta)  # pi_t = mu
    ipo = losses.ipo_loss(la, ra, ma, lb, rb, mb, label, eta)
    assert float(inpo) == pytest.approx(float(ipo), rel=1e-6)
    # And not with the original tau: the replacement matters.
    assert float(losses.ipo_loss(la, ra, ma, lb, rb, mb, label, tau)) != pytest.approx(float(ipo))


def test_ipo_loss_is_the_soft_label_formula():
    h_target = 1 / (2 * 0.2)
    la = jnp.array([[0.5, -1.0]])
    ra = jnp.array([[0.1, 0.1]])
    lb = jnp.array([[-0.2, 0.3]])
    rb = jnp.array([[0.0, -0.4]])
    m = jnp.ones((1, 2), bool)
    h = (-0.5 - 0.2) - (0.1 - (-0.4))
    p = 0.8
    expected = p * (h - h_target) ** 2 + (1 - p) * (h + h_target) ** 2
    assert float(losses.ipo_loss(la, ra, m, lb, rb, m, jnp.array([p]), 0.2)) == pytest.approx(
        expected, rel=1e-6
    )


def test_ema_follows_its_recursion():
    """With constant params p, k updates from e0 give d^k e0 + (1 - d^k) p."""
    e0 = {"w": jnp.array([1.0, -2.0])}
    p = {"w": jnp.array([3.0, 0.5])}
    d = 0.9
    e = e0
    for _ in range(25):
        e = losses.ema_update(e, p, d)
    np.testing.assert_allclose(e["w"], d**25 * e0["w"] + (1 - d**25) * p["w"], rtol=1e-5)


def test_reward_to_go_sft_and_leave_one_out_baseline():
    x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    m = jnp.array([[True, True, True, False]])
    np.testing.assert_array_equal(losses.reward_to_go(x, m), [[6.0, 5.0, 3.0, 0.0]])
    assert float(losses.sft_loss(-x, m)) == pytest.approx(2.0)
    # The RLHF baseline of a row excludes that row, so its gradient stays unbiased.
    lp = jnp.zeros((3, 1))
    advantage = losses.leave_one_out_advantage(jnp.array([1.0, 2.0, 6.0]))
    g = jax.grad(
        lambda lp: losses.rlhf_pg_loss(lp, lp * 0, jnp.ones((3, 1), bool), advantage, 0.0)
    )(lp)
    np.testing.assert_allclose(-g[:, 0] * 3, [1 - 4, 2 - 3.5, 6 - 1.5])


def test_sppo_loss_over_every_pair_of_a_uniform_pi_t_is_minimized_by_the_sppo_step():
    """The deep SPPO loss on the batch of every ordered pair (y, y') of n responses (one token
    each) is its population loss for a uniform pi_t. Its minimizer over the log-ratios is
    ``eta (P(y > pi_t) - 1/2)``, so the policy it asks for is the tabular SPPO step
    ``pi' ∝ pi_t exp(eta P pi_t)``; a wrong sign or a missing 1/2 moves the gradient off 0."""
    from nlhf_jax.tabular import algorithms

    n, eta = 5, 3.0
    P = games.random_preference(jax.random.key(3), n)
    ys, ys2 = (jnp.asarray(v) for v in zip(*itertools.product(range(n), repeat=2), strict=True))
    prev = jnp.full((n,), -jnp.log(n))
    mask = jnp.ones((n * n, 1), bool)

    def loss(delta):
        lp = (prev + delta)[:, None]
        return losses.sppo_loss(
            lp[ys], prev[ys][:, None], mask, lp[ys2], prev[ys2][:, None], mask, P[ys, ys2], eta
        )

    best = eta * (P.mean(axis=1) - 0.5)
    assert float(jnp.abs(jax.grad(loss)(best)).max()) < 1e-6
    assert float(jnp.abs(jax.grad(loss)(best + 0.1)).max()) > 1e-3
    step = algorithms.sppo(P, jnp.full((n,), 1.0 / n), 1.0 / eta, 1)[1]
    np.testing.assert_allclose(jax.nn.softmax(prev + best), step, rtol=1e-5)
