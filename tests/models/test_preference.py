"""Tests of the preference and reward models, their losses, metrics and judges
(docs/algorithms.md section 3)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nlhf_jax.judges import Judge, ModelJudge
from nlhf_jax.models import Transformer, TransformerConfig
from nlhf_jax.models.metrics import expected_calibration_error, log_loss, pairwise_accuracy
from nlhf_jax.models.preference import (
    PAIR_FIELDS,
    PreferenceModel,
    RewardModel,
    load_backbone,
    pair_logits,
    pair_loss,
    preference_cross_entropy,
)

# init_std 0.2 and a random head: logits of order 1-10, so exactness tests are not trivially met
# by a near-zero model.
SMALL = TransformerConfig(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    mlp_dim=64,
    init_std=0.2,
)
SEP = 2
MODELS = ("preference", "reward")
JUDGE_KIND = {"preference": "preference_model", "reward": "reward_model"}


def _random_model(kind: str, seed: int = 0, config: TransformerConfig = SMALL):
    if kind == "preference":
        model = PreferenceModel(config, sep_id=SEP, rngs=nnx.Rngs(seed))
    else:
        model = RewardModel(config, rngs=nnx.Rngs(seed))
    # The head is zero-initialised; randomise it so the logits are not identically zero.
    model.head.w[...] = jax.random.normal(jax.random.key(seed + 1), (config.d_model,))
    return nnx.split(model)


def _random_batch(seed: int, b: int = 12, p: int = 6, ra: int = 7, rb: int = 5, pad_id: int = 0):
    """Left-padded prompts (some empty), right-padded non-empty responses, random soft labels."""
    rng = np.random.default_rng(seed)
    plen, alen, blen = (
        rng.integers(0, p + 1, b),
        rng.integers(1, ra + 1, b),
        rng.integers(1, rb + 1, b),
    )
    pm = np.arange(p)[None] >= p - plen[:, None]
    am, bm = np.arange(ra)[None] < alen[:, None], np.arange(rb)[None] < blen[:, None]

    def tokens(mask):
        return np.where(mask, rng.integers(3, SMALL.vocab_size, mask.shape), pad_id).astype(
            np.int32
        )

    return {
        "prompt": tokens(pm),
        "prompt_mask": pm,
        "response_a": tokens(am),
        "response_a_mask": am,
        "response_b": tokens(bm),
        "response_b_mask": bm,
        "label": rng.uniform(size=b).astype(np.float32),
    }


def _swap(batch, rows=None):
    """The batch with a and b swapped (in `rows` only, if given) and labels 1 - p."""
    rows = np.ones(len(batch["label"]), bool) if rows is None else rows
    out = dict(batch)
    for x, y in (("response_a", "response_b"), ("response_a_mask", "response_b_mask")):
        w = max(batch[x].shape[1], batch[y].shape[1])
        xa = np.pad(batch[x], ((0, 0), (0, w - batch[x].shape[1])))
        ya = np.pad(batch[y], ((0, 0), (0, w - batch[y].shape[1])))
        out[x], out[y] = np.where(rows[:, None], ya, xa), np.where(rows[:, None], xa, ya)
    out["label"] = np.where(rows, 1 - batch["label"], batch["label"])
    return out


@functools.cache
def _jitted(kind: str):
    del kind  # both models expose the same logit
    return jax.jit(pair_logits, static_argnums=0)


def _judge_batch(judge, batch):
    return judge(*(batch[k] for k in PAIR_FIELDS))


@pytest.mark.parametrize("kind", MODELS)
def test_logit_is_exactly_antisymmetric(kind):
    graphdef, state = _random_model(kind)
    logits = _jitted(kind)
    for seed in range(3):
        batch = _random_batch(seed)
        d_ab = np.asarray(logits(graphdef, state, batch))
        assert np.abs(d_ab).mean() > 0.5  # A real test: the logits are far from zero.
        np.testing.assert_array_equal(d_ab, -np.asarray(logits(graphdef, state, _swap(batch))))
        # Swapping only some rows flips exactly those rows: no dependence on the batch around.
        rows = np.random.default_rng(seed).uniform(size=len(d_ab)) < 0.5
        d_mixed = np.asarray(logits(graphdef, state, _swap(batch, rows)))
        np.testing.assert_array_equal(d_mixed, np.where(rows, -d_ab, d_ab))


@pytest.mark.parametrize("kind", MODELS)
def test_a_response_ties_with_itself_exactly(kind):
    graphdef, state = _random_model(kind)
    batch = _random_batch(1)
    # Same real tokens; b gets a different pad id and extra padding columns: still the same y.
    same_b = np.where(batch["response_a_mask"], batch["response_a"], 7)
    batch |= {
        "response_b": np.pad(same_b, ((0, 0), (0, 3)), constant_values=9),
        "response_b_mask": np.pad(batch["response_a_mask"], ((0, 0), (0, 3))),
    }
    d = _jitted(kind)(graphdef, state, batch)
    np.testing.assert_array_equal(np.asarray(jax.nn.sigmoid(d)), 0.5)


@pytest.mark.parametrize("kind", MODELS)
def test_both_orders_sum_to_one_within_one_ulp(kind):
    graphdef, state = _random_model(kind)
    judge = ModelJudge(graphdef, state, kind=JUDGE_KIND[kind])
    batch = _random_batch(2, b=32)
    p_ab = np.asarray(jax.jit(_judge_batch)(judge, batch))
    p_ba = np.asarray(jax.jit(_judge_batch)(judge, _swap(batch)))
    # In float32; one ulp of 1 is 2**-23 (above) or 2**-24 (below).
    total = p_ab.astype(np.float32) + p_ba.astype(np.float32)
    assert np.all(np.abs(total.astype(np.float64) - 1.0) <= np.spacing(np.float32(1.0)))


def _padded(batch, pad_id):
    """Four more prompt columns on the left, three and five more response columns on the right,
    filled with ``pad_id``."""
    padded = dict(batch)
    for key, left, right in (("prompt", 4, 0), ("response_a", 0, 3), ("response_b", 0, 5)):
        mask = np.pad(batch[key + "_mask"], ((0, 0), (left, right)))
        toks = np.pad(batch[key], ((0, 0), (left, right)))
        padded[key], padded[key + "_mask"] = np.where(mask, toks, pad_id).astype(np.int32), mask
    return padded


@pytest.mark.parametrize("kind", MODELS)
def test_padding_does_not_change_the_probability(kind):
    graphdef, state = _random_model(kind)
    logits = lambda batch: np.asarray(_jitted(kind)(graphdef, state, batch))
    batch = _random_batch(3)
    d = logits(batch)
    # What a masked slot holds never matters: bit for bit, at the same shapes.
    np.testing.assert_array_equal(logits(_padded(batch, 5)), logits(_padded(batch, 9)))
    # More masked columns: the same real tokens at the same positions, each masked key adding an
    # exact zero to its softmax; only XLA's reduction blocking over the longer rows changes. In
    # the preference model the extra columns of response a sit inside the sequence
    # [prompt, a, SEP, b], and float32 reassociation through two layers of a random model with
    # scores f of up to ~12 moves d = f(a, b) - f(b, a) by up to 7.2e-6 (measured on an Intel
    # Xeon; ~90 float32 ulps of the larger score). A pad that leaks into attention moves d by
    # O(1): counting response a's pads as real tokens moves it by more than 1 (checked below).
    padded = logits(_padded(batch, 5))
    np.testing.assert_allclose(padded, d, rtol=0, atol=1e-4)
    leaky = _padded(batch, 5)
    leaky["response_a_mask"] = leaky["response_a_mask"] | (leaky["response_a"] == 5)
    assert np.abs(logits(leaky) - d).max() > 1.0


def test_cross_entropy_matches_the_formula_and_is_stable():
    d = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 30.0], np.float32)
    p = np.array([1.0, 0.0, 0.3, 0.5, 1.0, 0.9, 0.0], np.float32)
    d64, p64 = d.astype(np.float64), p.astype(np.float64)
    # -log sigmoid(d) = log(1 + exp(-d)), evaluated exactly in float64 (1 - sigmoid(30) in
    # float64 would itself lose 3 digits).
    want = p64 * np.logaddexp(0, -d64) + (1 - p64) * np.logaddexp(0, d64)
    got = np.asarray(preference_cross_entropy(jnp.asarray(d), jnp.asarray(p)))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 evaluation of an O(1..30) value.


@pytest.mark.parametrize("kind", MODELS)
def test_loss_gradient_is_finite_and_reaches_every_parameter(kind):
    graphdef, state = _random_model(kind)
    loss_fn = jax.value_and_grad(lambda s, b: pair_loss(graphdef, s, b), has_aux=True)
    (loss, logit_b), grads = jax.jit(loss_fn)(state, _random_batch(4))
    batch = _random_batch(4)
    want = np.mean(np.asarray(preference_cross_entropy(logit_b, jnp.asarray(batch["label"]))))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_metrics_on_hand_computed_examples():
    # Probabilities away from bin edges (x.0), so float32 rounding cannot move one across.
    prob = jnp.array([0.92, 0.23, 0.5, 0.74, 0.63, 0.96])
    label = jnp.array([1.0, 0.0, 1.0, 0.5, 0.0, 0.8])
    # Row 3 (label 1/2) is excluded; rows 0, 1, 5 right, row 2 a tie (1/2), row 4 wrong: 3.5/5.
    np.testing.assert_allclose(pairwise_accuracy(prob, label), 3.5 / 5, rtol=1e-6)
    assert np.isnan(pairwise_accuracy(prob[3:4], label[3:4]))
    q, p = np.asarray(prob, np.float64), np.asarray(label, np.float64)
    want = -np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))
    np.testing.assert_allclose(log_loss(prob, label), want, rtol=1e-6)
    assert np.isfinite(log_loss(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0])))

    # ECE, 10 bins, given order only; per bin |sum q - sum p|: bin 2 {.23 vs 0}: .23, bin 5
    # {.5 vs 1}: .5, bin 6 {.63 vs 0}: .63, bin 7 {.74 vs .5}: .24, bin 9 {.92+.96 vs 1+.8}: .08.
    np.testing.assert_allclose(
        expected_calibration_error(prob, label, both_orders=False), 1.68 / 6, rtol=1e-5
    )
    # Both orders add the swaps (1-q, 1-p): bin 0 {.08+.04 vs 0+.2}: .08, bin 2 {.23+.26 vs
    # 0+.5}: .01, bin 3 {.37 vs 1}: .63, bin 5 {.5+.5 vs 1+0}: 0, bin 6: .63, bin 7 {.74+.77 vs
    # .5+1}: .01, bin 9: .08. Total 1.44 over 12 rows.
    np.testing.assert_allclose(expected_calibration_error(prob, label), 1.44 / 12, rtol=1e-5)
    # A perfectly calibrated judge: q equal to the soft label.
    np.testing.assert_allclose(expected_calibration_error(label, label), 0.0, atol=1e-7)


def test_judges_fit_the_protocol_and_run_under_jit():
    def uniform_oracle(
        prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
    ):
        return jnp.full(prompt.shape[0], 0.5, jnp.float32)

    batch = _random_batch(5)
    for kind in MODELS:
        graphdef, state = _random_model(kind)
        judge = ModelJudge(graphdef, state, kind=JUDGE_KIND[kind])
        assert isinstance(judge, Judge) and judge.jittable
        assert judge.has_reward == (kind == "reward")
        prob = jax.jit(_judge_batch)(judge, batch)
        assert prob.dtype == jnp.float32 and prob.shape == (12,)
        np.testing.assert_allclose(
            prob, jax.nn.sigmoid(_jitted(kind)(graphdef, state, batch)), rtol=1e-6
        )
    uniform_oracle.jittable = True
    assert isinstance(uniform_oracle, Judge)  # Any callable of the right arity is a judge.
    assert np.all(_judge_batch(uniform_oracle, batch) == 0.5)


def test_a_reward_judge_gives_the_rewards_its_probability_is_made_of():
    graphdef, state = _random_model("reward")
    judge = ModelJudge(graphdef, state, kind="reward_model")
    batch = _random_batch(8)
    x, xm = batch["prompt"], batch["prompt_mask"]
    r_a = judge.reward(x, xm, batch["response_a"], batch["response_a_mask"])
    r_b = judge.reward(x, xm, batch["response_b"], batch["response_b_mask"])
    # Bradley-Terry: P(a > b) = sigmoid(r(a) - r(b)), to float32 rounding of the difference.
    np.testing.assert_allclose(_judge_batch(judge, batch), jax.nn.sigmoid(r_a - r_b), atol=1e-6)
    with pytest.raises(TypeError, match="no scalar reward"):
        ModelJudge(*_random_model("preference"), kind="preference_model").reward(
            x, xm, batch["response_a"], batch["response_a_mask"]
        )


def test_load_backbone_copies_a_policy_and_rejects_another_shape():
    policy = Transformer(SMALL.replace(tie_embeddings=False), rngs=nnx.Rngs(7))
    model = PreferenceModel(SMALL, rngs=nnx.Rngs(0))
    load_backbone(model, nnx.state(policy))
    np.testing.assert_array_equal(model.backbone.embed[...], policy.embed[...])
    np.testing.assert_array_equal(
        model.backbone.layers.mlp.up_proj[...], policy.layers.mlp.up_proj[...]
    )
    wider = Transformer(SMALL.replace(d_model=48), rngs=nnx.Rngs(7))
    with pytest.raises(ValueError, match="do not fit the backbone"):
        load_backbone(RewardModel(SMALL, rngs=nnx.Rngs(0)), nnx.state(wider))


# The non-transitive task: a one-token prompt <bos>; responses are single tokens A, B, C; the true
# preference is the cycle A > B > C > A, each won with probability 0.9 (rock-paper-scissors).
BOS, A, B, C = 1, 3, 4, 5
CYCLE_P = 0.9
TINY = TransformerConfig(
    vocab_size=8, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64
)


def _cyclic_pairs():
    """The 6 ordered pairs of distinct responses and their true P(a > b)."""
    beats = {(A, B), (B, C), (C, A)}
    pairs = [(x, y) for x in (A, B, C) for y in (A, B, C) if x != y]
    prob = np.array([CYCLE_P if (x, y) in beats else 1 - CYCLE_P for x, y in pairs], np.float32)
    return np.array(pairs, np.int32), prob


def _pair_batch(pairs_b2, label_b):
    b = len(label_b)
    ones = np.ones((b, 1), bool)
    return {
        "prompt": np.full((b, 1), BOS, np.int32),
        "prompt_mask": ones,
        "response_a": pairs_b2[:, :1],
        "response_a_mask": ones,
        "response_b": pairs_b2[:, 1:],
        "response_b_mask": ones,
        "label": label_b,
    }


def _train_on_the_cycle(model, steps=300, batch_size=64, seed=0):
    """Adam on hard labels sampled from the true preference; returns the trained split model."""
    graphdef, state = nnx.split(model)
    tx = optax.adam(3e-3)
    opt_state = tx.init(state)
    pairs, prob = _cyclic_pairs()

    @jax.jit
    def step(state, opt_state, key):
        k_pair, k_label = jax.random.split(key)
        idx = jax.random.randint(k_pair, (batch_size,), 0, len(pairs))
        label = jax.random.bernoulli(k_label, jnp.asarray(prob)[idx]).astype(jnp.float32)
        batch = _pair_batch(jnp.asarray(pairs)[idx], label)
        (loss, _), grads = jax.value_and_grad(lambda s, b: pair_loss(graphdef, s, b), has_aux=True)(
            state, batch
        )
        updates, opt_state = tx.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    for key in jax.random.split(jax.random.key(seed), steps):
        state, opt_state, _ = step(state, opt_state, key)
    return graphdef, state


def test_preference_model_learns_a_cycle_that_a_reward_model_cannot():
    pairs, prob = _cyclic_pairs()
    eval_batch = _pair_batch(pairs, prob)
    pref = _train_on_the_cycle(PreferenceModel(TINY, rngs=nnx.Rngs(0)))
    reward = _train_on_the_cycle(RewardModel(TINY, rngs=nnx.Rngs(0)))
    p_pref = jax.nn.sigmoid(pair_logits(*pref, eval_batch))
    p_reward = jax.nn.sigmoid(pair_logits(*reward, eval_batch))
    acc_pref = float(pairwise_accuracy(p_pref, jnp.asarray(prob)))
    acc_reward = float(pairwise_accuracy(p_reward, jnp.asarray(prob)))
    print(f"cycle accuracy: preference {acc_pref:.3f}, reward {acc_reward:.3f}")
    print(f"P(a>b) preference {np.round(p_pref, 3)}, reward {np.round(p_reward, 5)}")
    # The preference model reads both responses, so it can put every pair on the right side.
    assert acc_pref == 1.0
    np.testing.assert_allclose(p_pref, prob, atol=0.08)
    # A scalar reward orders A, B, C on a line, so at most 2 of the 3 cyclic pairs (r_A > r_B >
    # r_C gets A>B and B>C right but C>A wrong; ties score 1/2): accuracy <= 2/3 over the 6
    # ordered pairs whatever the training. The BT optimum on this symmetric cycle is r_A = r_B =
    # r_C, so its probabilities stay near 1/2 instead of 0.9/0.1.
    assert acc_reward <= np.float32(2 / 3)  # The metric is float32: 4/6 rounds up in float32.
    assert np.all(np.abs(np.asarray(p_reward) - 0.5) < 0.15)
    log_pref, log_reward = log_loss(p_pref, prob), log_loss(p_reward, prob)
    print(f"log-loss vs true P: preference {log_pref:.3f}, reward {log_reward:.3f}")
    assert log_pref < log_reward - 0.2  # Entropy floor H(0.9) = 0.325 vs log 2 = 0.693.
