"""Samplers: cached decoding, the mixture sampler's limits and its exact distribution."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from nlhf_jax.logprobs import score_tokens
from nlhf_jax.models import Transformer, TransformerConfig, forward_full, get_preset
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig, sampling_logprobs

# A vocabulary small enough to enumerate sequences; large init so distributions are far from
# uniform and the policy and reference differ clearly.
TINY = TransformerConfig(
    vocab_size=5, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
    mlp_dim=32, init_std=0.6,
)  # fmt: skip


def _split(config, seed):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


@pytest.fixture(scope="module")
def toy():
    config = get_preset("toy")
    (g, s), (_, s_ref) = _split(config, 0), _split(config, 1)
    return config, g, s, s_ref


def _prompts():
    """Three left-padded prompts of lengths 6, 3 and 1."""
    tokens = jnp.array([[5, 9, 13, 2, 8, 7], [0, 0, 0, 4, 4, 30], [0, 0, 0, 0, 0, 11]])
    mask = jnp.array([[1] * 6, [0, 0, 0, 1, 1, 1], [0] * 5 + [1]], bool)
    return tokens, mask


def test_beta_zero_is_the_policy_sampler_and_beta_one_the_reference(toy):
    config, g, s, s_ref = toy
    settings = SamplingConfig(max_new_tokens=12, temperature=1.0)
    prompt, mask = _prompts()
    key = jax.random.key(3)
    policy = PolicySampler(g, config, settings)
    mixture = MixtureSampler(g, g, config, settings)
    from_policy = policy(s, prompt, mask, key)
    from_ref = policy(s_ref, prompt, mask, key)
    mix0 = mixture(s, s_ref, 0.0, prompt, mask, key)
    mix1 = mixture(s, s_ref, 1.0, prompt, mask, key)
    np.testing.assert_array_equal(mix0.tokens, from_policy.tokens)
    np.testing.assert_array_equal(mix1.tokens, from_ref.tokens)
    # The policy's and the reference's log-probs of what was sampled are both reported.
    np.testing.assert_array_equal(mix0.logprobs, from_policy.logprobs)
    np.testing.assert_array_equal(mix1.ref_logprobs, from_ref.logprobs)
    assert not np.array_equal(from_policy.tokens, from_ref.tokens)  # the models do differ


def test_returned_logprobs_equal_teacher_forced_scores(toy):
    """The cached decode's per-token log-probs equal a full forward pass over prompt + response."""
    config, g, s, s_ref = toy
    prompt, mask = _prompts()
    out = MixtureSampler(g, g, config, SamplingConfig(max_new_tokens=10))(
        s, s_ref, 0.3, prompt, mask, jax.random.key(4)
    )
    scored = score_tokens(g, s, prompt, mask, out.tokens, out.mask)
    scored_ref = score_tokens(g, s_ref, prompt, mask, out.tokens, out.mask)
    np.testing.assert_allclose(out.logprobs, scored, atol=2e-5)
    np.testing.assert_allclose(out.ref_logprobs, scored_ref, atol=2e-5)


def test_greedy_padded_batch_equals_rows_alone(toy):
    """Per-row prompt lengths: each row of a left-padded batch decodes as it would alone."""
    config, g, s, _ = toy
    sampler = PolicySampler(g, config, SamplingConfig(max_new_tokens=8, temperature=0.0))
    prompt, mask = _prompts()
    batch = sampler(s, prompt, mask, jax.random.key(0))
    for row in range(3):
        real = prompt[row][mask[row]][None]
        alone = sampler(s, real, jnp.ones_like(real, bool), jax.random.key(0))
        np.testing.assert_array_equal(batch.tokens[row], alone.tokens[0])
    # Greedy: each token is the argmax of the teacher-forced distribution.
    full = forward_full(
        g, s, jnp.concatenate([prompt, batch.tokens], 1), jnp.concatenate([mask, batch.mask], 1)
    )
    np.testing.assert_array_equal(batch.tokens, jnp.argmax(full[:, 5:-1], -1))


def test_eos_stops_rows_and_pads():
    """Sample once without EOS, declare a token that occurred to be EOS, sample again with the
    same key: identical up to its first occurrence in each row, padding and mask False after."""
    g, s = _split(TINY, 0)
    prompt, mask = jnp.array([[1, 2], [3, 4], [2, 2]]), jnp.ones((3, 2), bool)
    free = PolicySampler(g, TINY, SamplingConfig(max_new_tokens=20))(
        s, prompt, mask, jax.random.key(5)
    )
    eos = int(free.tokens[0, 3])
    out = PolicySampler(g, TINY, SamplingConfig(max_new_tokens=20, eos_id=eos, pad_id=7))(
        s, prompt, mask, jax.random.key(5)
    )
    for row in range(3):
        toks, m = np.asarray(out.tokens[row]), np.asarray(out.mask[row])
        hits = np.flatnonzero(np.asarray(free.tokens[row]) == eos)
        stop = hits[0] if hits.size else 19
        np.testing.assert_array_equal(toks[: stop + 1], np.asarray(free.tokens[row])[: stop + 1])
        assert m[: stop + 1].all() and not m[stop + 1 :].any()
        assert (toks[stop + 1 :] == 7).all()
        assert (np.asarray(out.logprobs[row])[stop + 1 :] == 0).all()
    assert int(out.mask[0].sum()) <= 4  # row 0 has EOS at step 3 or earlier


def test_top_k_and_top_p_truncate():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1]]))
    top2 = jnp.exp(sampling_logprobs(logits, SamplingConfig(1, top_k=2)))
    np.testing.assert_allclose(top2, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)
    # top_p = 0.7: 0.5 alone is below 0.7, so 0.25 is kept too; 0.15 is not needed.
    top_p = jnp.exp(sampling_logprobs(logits, SamplingConfig(1, top_p=0.7)))
    np.testing.assert_allclose(top_p, [[2 / 3, 1 / 3, 0, 0]], atol=1e-6)
    hot = jnp.exp(sampling_logprobs(logits, SamplingConfig(1, temperature=0.5)))
    np.testing.assert_allclose(hot, jnp.array([[25, 6.25, 2.25, 1]]) / 34.5, rtol=1e-5)


def test_top_k_sampler_never_leaves_the_top_k():
    g, s = _split(TINY, 2)
    prompt, mask = jnp.zeros((400, 1), jnp.int32), jnp.ones((400, 1), bool)
    out = PolicySampler(g, TINY, SamplingConfig(max_new_tokens=1, top_k=2))(
        s, prompt, mask, jax.random.key(6)
    )
    logits = forward_full(g, s, prompt[:1], mask[:1])[0, -1]
    allowed = set(np.argsort(np.asarray(logits))[-2:].tolist())
    assert set(np.asarray(out.tokens[:, 0]).tolist()) == allowed


def test_mixture_sampler_matches_exact_per_token_mixture():
    """On a 5-token vocabulary, 3 new tokens: the empirical distribution of 40k sequences matches
    the exact product of per-token mixtures softmax((1-beta) l_pi + beta l_mu) over all 125
    sequences (computed by full forward passes, no cache). Chi-square test at a false-alarm
    rate of 1e-4; cells with expected count < 5 are pooled."""
    beta, n_new, N = 0.35, 3, 40_000
    (g, s), (_, s_ref) = _split(TINY, 10), _split(TINY, 11)
    prompt = jnp.array([[3, 1]])
    seqs = jnp.array(list(itertools.product(range(5), repeat=n_new)))  # [125, 3]
    full = jnp.concatenate([jnp.broadcast_to(prompt, (125, 2)), seqs], 1)
    ones = jnp.ones_like(full, bool)
    mixed = (1 - beta) * forward_full(g, s, full, ones) + beta * forward_full(g, s_ref, full, ones)
    logp = jax.nn.log_softmax(mixed[:, 1:-1], -1)  # predictions of positions 2, 3, 4
    exact = jnp.exp(jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1))
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-5)

    sampler = MixtureSampler(g, g, TINY, SamplingConfig(max_new_tokens=n_new))
    out = sampler(
        s, s_ref, beta, jnp.tile(prompt, (N, 1)), jnp.ones((N, 2), bool), jax.random.key(7)
    )
    index = np.asarray(out.tokens) @ (5 ** np.arange(n_new)[::-1])
    observed = np.bincount(index, minlength=125)
    expected = np.asarray(exact, np.float64) * N
    expected *= N / expected.sum()
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=len(obs) - 1), chi2
    # The reported sampling log-probs are those of the exact per-token mixture.
    np.testing.assert_allclose(
        np.exp(np.asarray(out.sample_logprobs).sum(-1)), np.asarray(exact)[index], rtol=1e-4
    )


def test_bad_settings_are_clear_errors(toy):
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(4, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(0)
    config, g, s, _ = toy
    with pytest.raises(ValueError, match="prompts must be"):
        PolicySampler(g, config, SamplingConfig(2))(
            s, jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 4), bool), jax.random.key(0)
        )
    other = config.replace(vocab_size=600)
    with pytest.raises(ValueError, match="vocabularies differ: 512 vs 600"):
        MixtureSampler(g, g, config, SamplingConfig(2), ref_config=other)(
            s, s, 0.5, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool), jax.random.key(0)
        )
