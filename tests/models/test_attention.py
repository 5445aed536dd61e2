"""Attention implementations and rematerialization: `config.attention` and `config.remat` change
how the transformer is computed, never what it computes."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax.checkpoint import Checkpoints, transformer_config
from nlhf_jax.errors import UserError
from nlhf_jax.models import (
    Transformer,
    TransformerConfig,
    forward,
    forward_full,
    init_cache,
    positions_from_mask,
)
from nlhf_jax.models.attention import dot_product_attention, einsum_attention
from nlhf_jax.sampling import PolicySampler, SamplingConfig

# GQA (6 query heads read 2 kv heads) with biases; init_std 0.3 makes attention peaked and the
# logits O(10), so a wrong mask or a wrong head grouping moves them by O(1), not O(1e-3).
TINY = TransformerConfig(
    vocab_size=97, d_model=48, num_layers=2, num_heads=6, num_kv_heads=2, head_dim=8,
    mlp_dim=64, init_std=0.3, qkv_bias=True,
)  # fmt: skip
# Both kernels do the same float32 arithmetic (float32 scores and softmax; masked scores
# underflow to exact zeros after the max-subtraction, whichever large negative fills them) and
# differ only in reduction order, so their logits differ by a few ulps of the largest logit
# (measured 4.4e-6 on logits up to 9, i.e. 5e-7 relative). 1e-5 of the scale leaves 20x room and
# is far below a mask or grouping bug (test_a_wrong_mask_is_far_outside_the_tolerance).
F32_REL_TOL = 1e-5


def _models(config: TransformerConfig, **change):
    """The graphdefs of `config` and `config.replace(**change)`, and one shared state."""
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    other, _ = nnx.split(Transformer(config.replace(**change), rngs=nnx.Rngs(0)))
    return graphdef, other, state


def _left_padded(lengths: list[int], width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask_bt = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
    tokens_bt = np.where(mask_bt, rng.integers(1, TINY.vocab_size, (len(lengths), width)), 0)
    return jnp.asarray(tokens_bt), jnp.asarray(mask_bt)


def _assert_close(actual, expected, rel_tol=F32_REL_TOL):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel_tol * scale)


def test_dot_product_matches_einsum_on_left_padded_gqa_rows():
    einsum, dot, state = _models(TINY, attention="dot_product")
    tokens_bt, mask_bt = _left_padded([10, 7, 3], 10)
    full = jax.jit(forward_full, static_argnums=0)
    # Everywhere, padding positions included: both give a fully masked query uniform weights.
    _assert_close(full(dot, state, tokens_bt, mask_bt), full(einsum, state, tokens_bt, mask_bt))


def test_dot_product_matches_einsum_in_bfloat16_compute():
    config = TINY.replace(dtype="bfloat16")
    einsum, dot, state = _models(config, attention="dot_product")
    tokens_bt, mask_bt = _left_padded([8, 5], 8)
    a = forward_full(dot, state, tokens_bt, mask_bt)
    b = forward_full(einsum, state, tokens_bt, mask_bt)
    assert a.dtype == b.dtype == jnp.float32
    # Identical on CPU (measured: the same bf16 operations). Another backend may order a sum
    # differently: a rounding then lands one bf16 step (2^-8 relative) apart and carries through
    # two layers; 3e-2 of the scale is a few such steps, far below a mask bug (O(1) relative).
    _assert_close(a, b, rel_tol=3e-2)


def test_a_wrong_mask_is_far_outside_the_tolerance():
    """The agreement above can fail: dropping the padding from the mask moves the output O(1)."""
    q = 3 * jax.random.normal(jax.random.key(0), (3, 10, 6, 8))
    k = 3 * jax.random.normal(jax.random.key(1), (3, 10, 2, 8))
    v = jax.random.normal(jax.random.key(2), (3, 10, 2, 8))
    _, mask_bt = _left_padded([10, 7, 3], 10)
    causal_ts = jnp.tril(jnp.ones((10, 10), bool))
    mask_bts = causal_ts[None] & mask_bt[:, None, :]
    dot = jax.jit(functools.partial(dot_product_attention, scale=8**-0.5))
    reference = jax.jit(functools.partial(einsum_attention, scale=8**-0.5))(q, k, v, mask_bts)
    _assert_close(dot(q, k, v, mask_bts), reference)
    wrong = dot(q, k, v, jnp.broadcast_to(causal_ts, mask_bts.shape))
    with pytest.raises(AssertionError):
        _assert_close(wrong, reference, rel_tol=0.1)


def test_dot_product_matches_einsum_with_a_kv_cache():
    """The sampler's path: a left-padded prefill into the cache, then one token per step at each
    row's next position, attending to valid earlier slots only."""
    einsum, dot, state = _models(TINY, attention="dot_product")
    prompt_bt, prompt_mask_bt = _left_padded([6, 4, 2], 6)
    new_bn = jnp.asarray(np.random.default_rng(1).integers(1, TINY.vocab_size, (3, 5)))
    step = jax.jit(forward, static_argnums=0)

    def teacher_forced(graphdef):
        cache = init_cache(TINY, batch=3, max_len=11)
        positions_bt = positions_from_mask(prompt_mask_bt)
        logits_btv, cache = step(
            graphdef, state, prompt_bt, positions_bt, cache, input_mask_bt=prompt_mask_bt
        )
        out = [logits_btv[:, -1]]
        next_b1 = positions_bt[:, -1:] + 1
        for i in range(new_bn.shape[1]):
            logits_btv, cache = step(graphdef, state, new_bn[:, i : i + 1], next_b1 + i, cache)
            out.append(logits_btv[:, 0])
        return jnp.stack(out, axis=1)

    _assert_close(teacher_forced(dot), teacher_forced(einsum))
    settings = SamplingConfig(max_new_tokens=5, temperature=0.0)
    y_dot = PolicySampler(dot, TINY, settings)(state, prompt_bt, prompt_mask_bt, jax.random.key(0))
    y_ein = PolicySampler(einsum, TINY, settings)(
        state, prompt_bt, prompt_mask_bt, jax.random.key(0)
    )
    np.testing.assert_array_equal(y_dot.tokens, y_ein.tokens)
    np.testing.assert_allclose(y_dot.logprobs, y_ein.logprobs, rtol=0, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef, state, tokens_bt, mask_bt):
    def loss_fn(state):
        logp_btv = jax.nn.log_softmax(forward_full(graphdef, state, tokens_bt, mask_bt), -1)
        logp_bt = jnp.take_along_axis(logp_btv[:, :-1], tokens_bt[:, 1:, None], -1)[..., 0]
        return -jnp.sum(jnp.where(mask_bt[:, 1:], logp_bt, 0.0)) / jnp.sum(mask_bt[:, 1:])

    return jax.value_and_grad(loss_fn)(state)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(remat):
    plain, rematted, state = _models(TINY, remat=remat)
    tokens_bt, mask_bt = _left_padded([10, 7, 3], 10)
    loss, grads = _loss_and_grads(plain, state, tokens_bt, mask_bt)
    loss_r, grads_r = _loss_and_grads(rematted, state, tokens_bt, mask_bt)
    # The recomputation repeats the forward's float32 operations, but XLA fuses and orders the
    # backward's sums differently: measured up to 1.2e-6 of a gradient's largest entry (about 10
    # float32 ulps, over sums of 30 positions through 2 layers). 1e-5 is float32 rounding with
    # headroom; a recomputation that differs in substance (another mask, a stale input) is O(1).
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    for (path, g), (_, g_r) in zip(
        nnx.to_flat_state(grads), nnx.to_flat_state(grads_r), strict=True
    ):
        g, g_r = g.get_value(), g_r.get_value()
        scale = float(jnp.max(jnp.abs(g)))
        np.testing.assert_allclose(g_r, g, rtol=0, atol=1e-5 * scale, err_msg=str(path))

    # And it is really rematerialized: the backward recomputes matmuls of the forward, all of a
    # block's with "full", only the batched attention ones (scores, values) with "dots".
    def matmuls(graphdef):
        program = jax.make_jaxpr(_loss_and_grads, static_argnums=0)
        return str(program(graphdef, state, tokens_bt, mask_bt)).count("dot_general")

    _, full, _ = _models(TINY, remat="full")
    assert matmuls(plain) < matmuls(rematted) <= matmuls(full)
    assert (matmuls(rematted) < matmuls(full)) == (remat == "dots")


def test_config_refuses_unknown_choices():
    with pytest.raises(ValueError, match="attention='flash'"):
        TINY.replace(attention="flash")
    with pytest.raises(ValueError, match="remat='some'"):
        TINY.replace(remat="some")


def test_a_run_json_from_before_these_fields_loads_and_resumes(tmp_path):
    """Old run.json files lack `attention` and `remat`: they load with the defaults, and a run
    resumes under any choice of them, while a real architecture change is still refused."""
    old_model = {
        k: v for k, v in dataclasses.asdict(TINY).items() if k not in ("attention", "remat")
    }
    assert transformer_config(old_model) == TINY
    (tmp_path / "run.json").write_text(json.dumps({"method": "sft", "model": old_model}))
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    new_model = dataclasses.asdict(TINY.replace(attention="dot_product", remat="full"))
    Checkpoints(str(tmp_path), {"method": "sft", "model": new_model}, async_save=False)
    with pytest.raises(UserError, match=r"model\.d_model: 48 in the checkpoint, 64 now"):
        Checkpoints(str(tmp_path), {"method": "sft", "model": {**new_model, "d_model": 64}})
