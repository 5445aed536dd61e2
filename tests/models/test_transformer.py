"""Tests of the NNX transformer: KV-cache decoding, GQA, scanned layers, axis names, tying."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax.errors import UserError
from nlhf_jax.models import (
    Transformer,
    TransformerConfig,
    forward,
    forward_full,
    get_preset,
    init_cache,
    positions_from_mask,
)
from nlhf_jax.models.config import LOGICAL_AXES

# Small enough to compile in about a second; GQA (4 query heads share 2 kv heads).
SMALL = TransformerConfig(
    vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=96
)
# Identical f32 arithmetic up to reduction order (the cached pass reduces over max_len slots,
# masked ones contributing exact zeros): differences are a few ulps of O(1) logits, ~1e-7.
# 1e-5 leaves headroom for that and is far below any real masking or position bug (O(0.1)).
F32_TOL = 1e-5


def _split(config: TransformerConfig, seed: int = 0):
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def _left_padded_batch(vocab: int, lengths: list[int], width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens_bt = rng.integers(0, vocab, (len(lengths), width))
    mask_bt = np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None]
    tokens_bt = np.where(mask_bt, tokens_bt, 0)  # Pad id 0; it must not matter.
    return jnp.asarray(tokens_bt), jnp.asarray(mask_bt)


# Gemma 2's block and attention with a global layer after a local one: the layer stack reads
# each layer's window and RoPE base inside its scan; soft-caps near the values' scale.
GEMMA = dict(
    activation="gelu_tanh",
    norm_offset=1.0,
    embed_scale=True,
    post_norms=True,
    query_pre_attn_scalar=24,
    attn_softcap=3.0,
    final_softcap=5.0,
    layer_types=("sliding_attention", "full_attention"),
    rope_local_theta=100.0,
)


@pytest.mark.parametrize(
    "tie,window,gemma", [(True, 0, 0), (False, 0, 0), (True, 3, 0), (True, 3, 1)]
)
def test_cached_decoding_matches_full_forward_on_left_padded_rows(tie, window, gemma):
    # window 3 (Mistral's sliding window, or Gemma's on its local layers): rows of 4 to 10
    # tokens decode past it.
    config = SMALL.replace(tie_embeddings=tie, qkv_bias=not tie and not window)
    config = config.replace(sliding_window=window, **(GEMMA if gemma else {}))
    graphdef, state = _split(config)
    lengths, width, prefill = [10, 7, 4], 10, 6
    tokens_bt, mask_bt = _left_padded_batch(config.vocab_size, lengths, width)
    positions_bt = positions_from_mask(mask_bt)

    full_btv = jax.jit(forward_full, static_argnums=0)(graphdef, state, tokens_bt, mask_bt)

    fwd = jax.jit(forward, static_argnums=0, donate_argnames="cache")
    cache = init_cache(config, batch=3, max_len=16)
    first = slice(0, prefill)
    first_btv, cache = fwd(
        graphdef,
        state,
        tokens_bt[:, first],
        positions_bt[:, first],
        cache,
        input_mask_bt=mask_bt[:, first],
    )

    # Decode the remaining tokens one per step inside lax.while_loop with the cache donated, as
    # the sampler will: the cache must come back with the structure, shapes and dtypes it had.
    def step(carry):
        cache, logits_tbv = carry
        i = cache.end  # Every row writes slot `end`; per-row RoPE positions come separately.
        tok = jax.lax.dynamic_slice_in_dim(tokens_bt, i, 1, axis=1)
        pos = jax.lax.dynamic_slice_in_dim(positions_bt, i, 1, axis=1)
        logits_b1v, cache = forward(graphdef, state, tok, pos, cache)
        return cache, logits_tbv.at[i].set(logits_b1v[:, 0])

    def decode(cache, logits_tbv):
        return jax.lax.while_loop(lambda carry: carry[0].end < width, step, (cache, logits_tbv))

    logits_tbv = jnp.zeros((width, 3, config.vocab_size))
    cache, logits_tbv = jax.jit(decode, donate_argnums=(0, 1))(cache, logits_tbv)
    cached_btv = jnp.concatenate([first_btv, jnp.moveaxis(logits_tbv[prefill:], 0, 1)], axis=1)

    assert int(cache.end) == width
    np.testing.assert_array_equal(cache.key_valid[:, :width], mask_bt)
    assert not cache.key_valid[:, width:].any()
    valid = np.asarray(mask_bt)
    np.testing.assert_allclose(cached_btv[valid], full_btv[valid], atol=F32_TOL, rtol=F32_TOL)
    assert np.isfinite(np.asarray(cached_btv)).all()  # Padding queries too.

    # Padding is invisible: the shortest row alone, unpadded, gives the same logits.
    row = slice(width - lengths[-1], width)
    alone_1tv = forward_full(graphdef, state, tokens_bt[-1:, row], mask_bt[-1:, row])
    np.testing.assert_allclose(alone_1tv[0], full_btv[-1, row], atol=F32_TOL, rtol=F32_TOL)


def test_sliding_window_counts_positions_not_columns():
    """Padding inside a row (the preference model's packing) takes no part of the window: a row
    with two padding columns in the middle gives its real tokens the logits of the same tokens
    unpadded, and the window does change them (against no window)."""
    config = SMALL.replace(sliding_window=3)
    graphdef, state = _split(config)
    tokens = np.random.default_rng(1).integers(1, config.vocab_size, 6)
    gapped = np.concatenate([tokens[:3], [0, 0], tokens[3:]])[None]
    mask = np.array([[True] * 3 + [False] * 2 + [True] * 3])
    full = jax.jit(forward_full, static_argnums=0)
    with_gap = full(graphdef, state, jnp.asarray(gapped), jnp.asarray(mask))[0][mask[0]]
    plain = full(graphdef, state, jnp.asarray(tokens[None]), jnp.ones((1, 6), bool))[0]
    np.testing.assert_allclose(with_gap, plain, atol=F32_TOL, rtol=F32_TOL)
    unwindowed = full(*_split(SMALL), jnp.asarray(tokens[None]), jnp.ones((1, 6), bool))[0]
    assert np.abs(np.asarray(unwindowed[3:] - plain[3:])).max() > 1e-3  # positions 3+ see less
    np.testing.assert_allclose(unwindowed[:3], plain[:3], atol=F32_TOL, rtol=F32_TOL)


def test_gemma_layers_read_their_own_window_and_rope_base_inside_the_scan():
    """With local and global layers the scanned stack gives each its own: a local layer after a
    global one is not the same model as two global or two local layers, and a local layer's
    RoPE base is its own (changing it changes the logits; changing it on a model whose layers
    are all global does not)."""
    mixed = SMALL.replace(sliding_window=3, **GEMMA)
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, SMALL.vocab_size, (1, 8)))
    mask = jnp.ones((1, 8), bool)
    full = jax.jit(forward_full, static_argnums=0)

    def logits(config):
        return np.asarray(full(*_split(config), tokens, mask))

    reference = logits(mixed)
    for other in (
        mixed.replace(layer_types=("full_attention",) * 2),
        mixed.replace(layer_types=("sliding_attention",) * 2),
        mixed.replace(layer_types=("full_attention", "sliding_attention")),
        mixed.replace(rope_local_theta=10_000.0),
    ):
        assert np.abs(logits(other) - reference).max() > 1e-3, other
    all_global = mixed.replace(layer_types=("full_attention",) * 2)
    np.testing.assert_array_equal(
        logits(all_global.replace(rope_local_theta=10_000.0)), logits(all_global)
    )


def test_a_soft_cap_with_the_dot_product_kernel_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"attention='dot_product'.* has no soft-cap.*einsum"):
        SMALL.replace(**GEMMA, attention="dot_product")
    SMALL.replace(**{**GEMMA, "attn_softcap": 0.0}, attention="dot_product")  # no cap: allowed


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = SMALL  # 4 query heads, 2 kv heads: heads (0, 1) read kv head 0, (2, 3) kv head 1.
    mha = SMALL.replace(num_kv_heads=SMALL.num_heads)
    graphdef, state = _split(gqa)
    mha_graphdef, mha_state = _split(mha)
    pure = nnx.to_pure_dict(state)
    group = gqa.num_heads // gqa.num_kv_heads
    for name in ("k_proj", "v_proj"):  # [layers, embed, kv_heads, head_dim]
        pure["layers"]["attn"][name] = jnp.repeat(pure["layers"]["attn"][name], group, axis=2)
    nnx.replace_by_pure_dict(mha_state, pure)
    tokens_bt, mask_bt = _left_padded_batch(gqa.vocab_size, [8, 5], 8)
    np.testing.assert_allclose(
        forward_full(graphdef, state, tokens_bt, mask_bt),
        forward_full(mha_graphdef, mha_state, tokens_bt, mask_bt),
        atol=F32_TOL,
        rtol=F32_TOL,
    )


def _params(state):
    return [(path, v) for path, v in nnx.to_flat_state(state) if isinstance(v, nnx.Param)]


def test_params_are_stacked_on_a_leading_layer_axis_and_named():
    config = SMALL.replace(qkv_bias=True, tie_embeddings=False)
    _, state = _split(config)
    params = _params(state)
    assert len(params) == 15  # embed, lm_head, final norm, 2 norms, 4 attn, 3 biases, 3 mlp
    for path, var in params:
        names = var.get_metadata()["out_sharding"]
        assert len(names) == var.get_value().ndim, (path, names)
        assert set(names) <= set(LOGICAL_AXES), (path, names)
        if path[0] == "layers":
            assert names[0] == "layers" and var.get_value().shape[0] == config.num_layers, path
        else:
            assert "layers" not in names, path
    by_path = {"/".join(map(str, p)): v for p, v in params}
    names = {path: var.get_metadata()["out_sharding"] for path, var in by_path.items()}
    assert names["layers/attn/k_proj"] == ("layers", "embed", "kv_heads", "head_dim")
    assert names["layers/mlp/down_proj"] == ("layers", "mlp", "embed")
    assert names["embed"] == ("vocab", "embed")
    assert by_path["layers/attn/q_proj"].get_value().shape == (2, 64, 4, 16)


def test_depth_does_not_grow_the_program():
    """Layers run under one scan: the traced program is the same size for 2 and 6 layers."""

    def num_equations(num_layers):
        graphdef, state = _split(SMALL.replace(num_layers=num_layers))
        tokens_bt = jnp.zeros((1, 4), jnp.int32)
        trace = jax.make_jaxpr(functools.partial(forward_full, graphdef))
        return len(trace(state, tokens_bt, tokens_bt == 0).eqns)

    assert num_equations(2) == num_equations(6)


def test_tied_and_untied_output_projection():
    tied_graphdef, tied_state = _split(SMALL.replace(tie_embeddings=True))
    graphdef, state = _split(SMALL.replace(tie_embeddings=False))
    tied_names = {p[0] for p, _ in _params(tied_state)}
    assert "lm_head" not in tied_names and "lm_head" in {p[0] for p, _ in _params(state)}
    assert nnx.to_pure_dict(state)["lm_head"].shape == (SMALL.d_model, SMALL.vocab_size)

    # Untied with lm_head set to the transposed embedding is the tied model.
    pure = nnx.to_pure_dict(state)
    tied_pure = nnx.to_pure_dict(tied_state)
    pure.update(tied_pure, lm_head=tied_pure["embed"].T)
    nnx.replace_by_pure_dict(state, pure)
    tokens_bt, mask_bt = _left_padded_batch(SMALL.vocab_size, [6, 3], 6)
    tied_btv = forward_full(tied_graphdef, tied_state, tokens_bt, mask_bt)
    np.testing.assert_allclose(
        forward_full(graphdef, state, tokens_bt, mask_bt), tied_btv, atol=F32_TOL, rtol=F32_TOL
    )
    # And the untied head is really used: changing it changes the logits.
    pure["lm_head"] = pure["lm_head"] * 2.0
    nnx.replace_by_pure_dict(state, pure)
    assert not np.allclose(forward_full(graphdef, state, tokens_bt, mask_bt), tied_btv)


def test_bfloat16_compute_returns_float32_logits_close_to_float32():
    config = SMALL.replace(dtype="bfloat16")
    graphdef, state = _split(config)
    f32_graphdef, _ = _split(SMALL)
    tokens_bt, mask_bt = _left_padded_batch(SMALL.vocab_size, [6, 4], 6)
    bf16_btv = forward_full(graphdef, state, tokens_bt, mask_bt)
    f32_btv = forward_full(f32_graphdef, state, tokens_bt, mask_bt)
    assert bf16_btv.dtype == jnp.float32
    assert init_cache(config, 2, 8).k.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8 ~ 4e-3); a few roundings per layer on
    # logits of scale ~0.1 (init_std 0.02) stay well under 0.05.
    valid = np.asarray(mask_bt)
    np.testing.assert_allclose(bf16_btv[valid], f32_btv[valid], atol=0.05)


# Published parameter counts of the real checkpoints (tied embeddings).
@pytest.mark.parametrize(
    "name, count",
    [("llama-3.2-1b", 1_235_814_400), ("qwen2-0.5b", 494_032_768), ("qwen2-1.5b", 1_543_714_304)],
)
def test_presets_have_the_published_parameter_counts(name, count):
    config = get_preset(name)
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    assert sum(v.get_value().size for _, v in _params(nnx.state(abstract))) == count


def test_config_validation():
    with pytest.raises(ValueError, match="num_heads=6 must be a multiple of num_kv_heads=4"):
        SMALL.replace(num_heads=6, num_kv_heads=4)
    with pytest.raises(KeyError, match="unknown transformer preset 'gpt-5'"):
        get_preset("gpt-5")
    assert hash(get_preset("toy")) == hash(get_preset("toy"))  # Usable as a static jit arg.
