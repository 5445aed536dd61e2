"""Token log-probs in chunks: equal to the dense computation in value and gradient, and no
``[batch, length, vocabulary]`` array in the compiled forward or backward pass."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax.logprobs import default_chunk_rows, score_tokens
from nlhf_jax.models import Transformer, TransformerConfig, forward_full

SMALL = TransformerConfig(
    vocab_size=97, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
    mlp_dim=48, init_std=0.2, tie_embeddings=False,
)  # fmt: skip


def _dense(graphdef, state, prompt, prompt_mask, response, response_mask):
    """The reference: every position's logits [b, t, V], log-softmax, the targets' entries."""
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1)
    logits = forward_full(graphdef, state, tokens, mask)
    p, n = prompt.shape[1], response.shape[1]
    logp = jax.nn.log_softmax(logits[:, p - 1 : p - 1 + n], axis=-1)
    logp = jnp.take_along_axis(logp, response[..., None], axis=-1)[..., 0]
    return jnp.where(response_mask, logp, 0.0)


def _batch(seed=0, b=3, p=5, n=7, vocab=97):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, vocab, (b, p)).astype(np.int32)
    prompt_mask = np.arange(p)[None] >= rng.integers(0, p, (b, 1))  # left-padded
    response = rng.integers(0, vocab, (b, n)).astype(np.int32)
    response_mask = np.arange(n)[None] < rng.integers(1, n + 1, (b, 1))  # right-padded
    return prompt, prompt_mask, response, response_mask


@pytest.mark.parametrize("chunk_rows", [None, 1, 4, 21])
def test_chunked_equals_dense_in_value_and_gradient(chunk_rows):
    """3 x 7 = 21 rows: one chunk (the default at this vocabulary), one row at a time, 4 (the last
    chunk padded) and exactly 21."""
    graphdef, state = nnx.split(Transformer(SMALL, rngs=nnx.Rngs(0)))
    batch = _batch()
    got = score_tokens(graphdef, state, *batch, chunk_rows=chunk_rows)
    want = _dense(graphdef, state, *batch)
    # float32: the same per-row arithmetic; only the matmul's blocking may differ.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.all(np.asarray(got)[~batch[3]] == 0)

    weights = jnp.asarray(np.random.default_rng(1).normal(size=batch[2].shape), jnp.float32)
    loss = lambda fn: lambda s: jnp.sum(weights * fn(s))
    g_chunk = jax.grad(loss(lambda s: score_tokens(graphdef, s, *batch, chunk_rows=chunk_rows)))(
        state
    )
    g_dense = jax.grad(loss(lambda s: _dense(graphdef, s, *batch)))(state)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(g_chunk), jax.tree.leaves(g_dense), strict=True
    ):
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(scale, 1.0), err_msg=str(path))
        assert scale > 0, path  # every parameter gets a gradient


def test_no_vocabulary_sized_buffer_of_the_whole_batch():
    """At 151,936 tokens and 4 x 256 response tokens a dense pass holds [1024, 151936] float32
    logits (622 MB) and as much for their gradient. The compiled gradient of the chunked path
    has no buffer of even a fifth of that."""
    vocab, b, p, n = 151_936, 4, 8, 256
    cfg = TransformerConfig(
        vocab_size=vocab, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
        mlp_dim=32,
    )  # fmt: skip
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    ints = lambda shape: jax.ShapeDtypeStruct(shape, jnp.int32)
    bools = lambda shape: jax.ShapeDtypeStruct(shape, jnp.bool_)
    args = (ints((b, p)), bools((b, p)), ints((b, n)), bools((b, n)))

    def loss(state, *batch):
        return jnp.sum(score_tokens(graphdef, state, *batch))

    assert default_chunk_rows(vocab, b * n) < b * n
    hlo = jax.jit(jax.grad(loss)).lower(abstract, *args).compile().as_text()
    shapes = re.findall(r"\bf32\[([0-9,]+)\]", hlo)
    largest = max(int(np.prod([int(d) for d in s.split(",")])) for s in shapes)
    assert largest * 5 < b * n * vocab, largest
