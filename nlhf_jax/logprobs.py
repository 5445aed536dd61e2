"""Token log-probabilities without the ``[batch, length, vocabulary]`` logits tensor.

Every user of teacher-forced log-probs (SFT's loss, the online losses, the reference's and a
method's extra scores, exact and sampled evaluation, RLP) calls ``score_tokens``. It runs the
transformer to its final hidden states ``[b, t, d]``, keeps the response positions, and only then
projects to the vocabulary, in chunks of ``chunk_rows`` rows (positions of the flattened batch):
each chunk's logits ``[chunk_rows, V]`` exist for one step of a ``lax.map`` and are recomputed in
the backward pass (the chunk is ``jax.checkpoint``ed), so neither the forward nor the backward
pass ever holds more than one chunk of logits. With a 151,936-token vocabulary a dense
``[8, 384, V]`` float32 tensor is 1.9 GB, and its gradient another; a chunk of the default
budget is 64 MB.

The arithmetic per row is the dense one (``log_softmax`` of the float32 logits, then the
target's entry), so chunked and dense agree to float32 rounding in value and gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.models.transformer import positions_from_mask

Array = jax.Array

# Logits elements per chunk (float32): 2**24 = 64 MiB of logits; the log-softmax and its
# gradient take a few such buffers at a time.
LOGITS_BUDGET = 2**24


def default_chunk_rows(vocab_size: int, rows: int) -> int:
    """Rows per chunk: as many as fit ``LOGITS_BUDGET`` logits, at most ``rows`` (one chunk when
    the vocabulary is small, so small models compute exactly the dense product)."""
    return max(1, min(rows, LOGITS_BUDGET // vocab_size))


def token_logprobs(
    h_nd: Array, project: Callable[[Array], Array], targets_n: Array, chunk_rows: int
) -> Array:
    """``log softmax(project(h_n))[targets_n]`` [n] float32, ``chunk_rows`` rows of logits at a
    time.

    Args:
      h_nd: final hidden states of the rows whose next token is scored (compute dtype).
      project: hidden states ``[c, d]`` to float32 logits ``[c, vocab]`` (the model's
        ``Transformer.project``).
      targets_n: the next token of each row.
      chunk_rows: rows of logits computed at once; the last chunk is padded.
    """
    n, d = h_nd.shape
    chunks = -(-n // chunk_rows)
    pad = chunks * chunk_rows - n
    h = jnp.pad(h_nd, ((0, pad), (0, 0))).reshape(chunks, chunk_rows, d)
    y = jnp.pad(targets_n, (0, pad)).reshape(chunks, chunk_rows)

    @jax.checkpoint  # the backward pass recomputes this chunk's logits instead of storing them
    def one(h_cd, y_c):
        logits_cv = project(h_cd)
        logp_cv = jax.nn.log_softmax(logits_cv, axis=-1)
        return jnp.take_along_axis(logp_cv, y_c[:, None], axis=-1)[:, 0]

    if chunks == 1:
        return one(h[0], y[0])[:n]
    return jax.lax.map(lambda xs: one(*xs), (h, y)).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_rows"))
def score_tokens(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_bt: Array,
    prompt_mask_bt: Array,
    response_bn: Array,
    response_mask_bn: Array,
    chunk_rows: int | None = None,
) -> Array:
    """Teacher-forced per-token log-probabilities ``[b, n]`` of a response given its left-padded
    prompt (no cache; 0 where the response mask is False), without materializing the logits of
    the whole batch (``token_logprobs``; ``chunk_rows`` default: ``default_chunk_rows``)."""
    tokens = jnp.concatenate([prompt_bt, response_bn], axis=1)
    mask = jnp.concatenate([prompt_mask_bt, response_mask_bn], axis=1).astype(bool)
    model = nnx.merge(graphdef, state)
    h_btd, _ = model.hidden(tokens, positions_from_mask(mask), input_mask_bt=mask)
    (b, p), n = prompt_bt.shape, response_bn.shape[1]
    # Position p - 1 + i predicts response token i; the last position predicts nothing here.
    h_nd = h_btd[:, p - 1 : p - 1 + n].reshape(b * n, -1)
    rows = chunk_rows or default_chunk_rows(model.config.vocab_size, b * n)
    logp_bn = token_logprobs(h_nd, model.project, response_bn.reshape(-1), rows).reshape(b, n)
    return jnp.where(response_mask_bn, logp_bn, 0.0)
