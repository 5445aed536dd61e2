"""RLP's pure parts (docs/algorithms.md 8): the UML bottleneck's terms and SPG's pair selection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nlhf_jax import losses, spg
from nlhf_jax.models.bottleneck import MLP
from nlhf_jax.tasks.synthetic import SyntheticTask


def test_gaussian_kl_matches_monte_carlo():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=3), rng.normal(size=3)
    lv1, lv2 = rng.normal(size=3) * 0.5, rng.normal(size=3) * 0.5
    z = mu1 + np.exp(0.5 * lv1) * rng.normal(size=(400_000, 3))

    def logpdf(z, mu, lv):
        return -0.5 * np.sum(lv + (z - mu) ** 2 / np.exp(lv) + np.log(2 * np.pi), axis=-1)

    mc = np.mean(logpdf(z, mu1, lv1) - logpdf(z, mu2, lv2))
    got = float(losses.gaussian_kl(*(jnp.asarray(a)[None] for a in (mu1, lv1, mu2, lv2)))[0])
    assert got == pytest.approx(mc, abs=0.02)


def test_symmetric_kl_is_zero_with_zero_gradient_for_identical_views():
    mu, lv = jnp.array([[0.3, -1.0]]), jnp.array([[0.2, -0.4]])
    assert float(losses.symmetric_gaussian_kl(mu, lv, mu, lv)[0]) == 0.0
    grads = jax.grad(lambda m, v: losses.symmetric_gaussian_kl(m, v, mu, lv).sum(), (0, 1))(mu, lv)
    for g in grads:  # zero analytically; float32 rounds exp(v) / exp(v) to within 1 ulp
        np.testing.assert_allclose(g, 0.0, atol=1e-7)
    other = losses.symmetric_gaussian_kl(mu, lv, mu + 0.5, lv)
    assert float(other[0]) > 0
    # Symmetric: the same both ways.
    np.testing.assert_allclose(other, losses.symmetric_gaussian_kl(mu + 0.5, lv, mu, lv), rtol=1e-6)


def _fitted_estimate(dependent: bool, seed: int = 0) -> float:
    """Trains a critic on draws of (z1, z2) and returns the estimate on fresh draws."""
    rng = np.random.default_rng(seed)

    def draw(n):
        z1 = rng.normal(size=(n, 2)).astype(np.float32)
        z2 = z1 + 0.3 * rng.normal(size=(n, 2)) if dependent else rng.normal(size=(n, 2))
        return jnp.asarray(z1), jnp.asarray(z2.astype(np.float32))

    critic = MLP((4, 32, 1), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(critic)

    def estimate(params, z1, z2):
        T = lambda a, b: nnx.merge(graphdef, params)(jnp.concatenate([a, b], -1))[:, 0]
        return losses.jsd_mutual_information(T(z1, z2), T(z1, jnp.roll(z2, 1, axis=0)))

    tx = optax.adam(3e-3)
    opt = tx.init(params)
    step = jax.jit(lambda p, o, z1, z2: _ascend(tx, estimate, p, o, z1, z2))
    for _ in range(300):
        params, opt = step(params, opt, *draw(256))
    return float(estimate(params, *draw(20_000)))


def _ascend(tx, estimate, params, opt, z1, z2):
    grads = jax.grad(lambda p: -estimate(p, z1, z2))(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt


def test_jsd_estimator_is_positive_for_dependent_codes_and_not_for_independent():
    dependent, independent = _fitted_estimate(True), _fitted_estimate(False)
    # For independent codes the joint is the product of marginals, so every critic gives
    # E[-softplus(-T) - softplus(T)] + 2 log 2 <= 0; only sampling noise can lift it above.
    assert independent < 0.02
    assert dependent > 0.5  # at most 2 log 2 = 1.386
    assert dependent <= 2 * np.log(2) + 0.02


def test_bottleneck_loss_terms():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    mu, lv = z, jnp.zeros_like(z)
    critic = lambda a, b: jnp.sum(a * b, -1)
    loss, aux = losses.multiview_bottleneck_loss(critic, z, z, mu, lv, mu, lv)
    assert float(aux["uml/symmetric_kl"]) == 0.0
    assert float(loss) == pytest.approx(-float(aux["uml/mutual_information"]))
    _, apart = losses.multiview_bottleneck_loss(critic, z, z, mu, lv, mu + 1.0, lv)
    # Unit variances, means 1 apart in 3 dims: each direction is 3 * 1/2, and so is the mean.
    assert float(apart["uml/symmetric_kl"]) == pytest.approx(1.5, rel=1e-5)


def test_spg_keeps_exactly_the_confident_prompts_and_picks_from_the_right_groups():
    rng = np.random.default_rng(0)
    X, N, gamma = 400, 10, 0.5
    keys = [list(rng.integers(0, rng.integers(1, 5), N)) for _ in range(X)]
    scores = rng.normal(size=(X, N))
    sel = spg.spg_pairs(keys, scores, gamma, np.random.default_rng(1))
    for x, k in enumerate(keys):
        counts = {v: k.count(v) for v in k}
        top = max(counts.values())
        assert sel["confidence"][x] == top / N
        assert sel["keep"][x] == (top / N >= gamma and len(counts) > 1)
        if not sel["keep"][x]:
            assert sel["chosen"][x] == sel["rejected"][x] == -1
            continue
        largest = max(counts, key=lambda v: (counts[v], -k.index(v)))  # ties: first seen
        members = [i for i in range(N) if k[i] == largest]
        assert k[sel["chosen"][x]] == largest
        assert scores[x, sel["chosen"][x]] == max(scores[x, members])
        assert k[sel["rejected"][x]] != largest
    assert 0 < sel["keep"].sum() < X  # both branches were exercised


def test_spg_rejected_is_uniform_over_the_other_groups():
    keys = [["a"] * 6 + ["b", "c", "c", "d"]]  # others: indices 6..9
    draws = [
        spg.spg_pairs(keys, np.zeros((1, 10)), 0.5, np.random.default_rng(s))["rejected"][0]
        for s in range(4000)
    ]
    freq = np.bincount(draws, minlength=10)[6:] / len(draws)
    np.testing.assert_allclose(freq, 0.25, atol=4 * np.sqrt(0.25 * 0.75 / 4000))


def test_task_equivalence_groups_exactly_what_the_oracle_cannot_tell_apart():
    task = SyntheticTask()
    P = task.preference_matrices()  # [prompt, response, response]
    prompts, responses = task.prompts(), task.responses()
    X, R = len(prompts), len(responses)
    tokens = np.broadcast_to(responses, (X, R, responses.shape[1])).copy()
    keys = spg.equivalence_keys("task", prompts, tokens, np.ones_like(tokens, bool), task)
    for x in range(X):
        for i in range(R):
            for j in range(R):
                same_row = np.allclose(P[x, i], P[x, j], atol=1e-12)
                assert (keys[x][i] == keys[x][j]) == same_row
    exact = spg.equivalence_keys("exact", prompts, tokens, np.ones_like(tokens, bool))
    assert all(len(set(k)) == R for k in exact)


def test_mean_preference_scores_leave_out_the_diagonal():
    p = np.array([[[0.5, 0.9, 0.7], [0.1, 0.5, 0.2], [0.3, 0.8, 0.5]]])
    np.testing.assert_allclose(spg.mean_preference_scores(p), [[0.8, 0.15, 0.55]])


def test_a_user_key_function_groups_by_its_key():
    prompts = np.array([[1, 4], [1, 5]])
    tokens = np.array([[[7, 2, 0], [8, 2, 0], [7, 9, 2]], [[7, 2, 0], [7, 2, 0], [9, 9, 2]]])
    mask = tokens != 0
    by_first = lambda prompt, response: int(response[0])  # "same meaning": same first token
    keys = spg.equivalence_keys(by_first, prompts, tokens, mask)
    assert keys == [[7, 8, 7], [7, 7, 9]]
    # By name, as config.rlp.equivalence takes it: array_equal(prompt, response) is False for
    # every sample here, so each prompt's samples form one group.
    named = spg.equivalence_keys("numpy:array_equal", prompts, tokens, mask)
    assert named == [[False] * 3, [False] * 3]
