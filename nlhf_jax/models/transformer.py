"""Decoder-only Llama/Mistral/Qwen/Gemma-family transformer in Flax NNX, with an explicit KV-cache
pytree.

Parameter tree (`nnx.state(model)`), with logical axis names in each Param's `out_sharding`:

    embed                  [vocab, embed]                          ("vocab", "embed")
    layers.attn_norm.scale [layers, embed]                         ("layers", "embed")
    layers.attn.q_proj     [layers, embed, heads, head_dim]        ("layers", "embed", "heads", ...)
    layers.attn.k_proj     [layers, embed, kv_heads, head_dim]     (..., "kv_heads", "head_dim")
    layers.attn.v_proj     [layers, embed, kv_heads, head_dim]
    layers.attn.{q,k,v}_bias  [layers, (kv_)heads, head_dim]       only if `config.qkv_bias`
    layers.attn.{q,k}_norm.scale [layers, head_dim]                only if `config.qk_norm`
    layers.attn.o_proj     [layers, heads, head_dim, embed]
    layers.post_attn_norm.scale [layers, embed]                    only if `config.post_norms`
    layers.mlp_norm.scale  [layers, embed]
    layers.post_mlp_norm.scale  [layers, embed]                    only if `config.post_norms`
    layers.mlp.gate_proj   [layers, embed, mlp]
    layers.mlp.up_proj     [layers, embed, mlp]
    layers.mlp.down_proj   [layers, mlp, embed]
    final_norm.scale       [embed]
    lm_head                [embed, vocab]                          only if not `tie_embeddings`

Layers are stacked on a leading axis and run with `jax.lax.scan`, so compile time does not grow
with depth; what differs between layers (Gemma's local and global attention: the window and the
RoPE base) is scanned over beside their parameters. Jitted code should call `forward` on the
`nnx.split` state, not the module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.models import lora
from nlhf_jax.models.attention import ATTENTION, apply_rope, rope_table
from nlhf_jax.models.config import TransformerConfig

Array = jax.Array


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, written slot by slot. A pytree: donate it to jit.

    Rows share slot indices, which is what makes left-padded prompts cheap: a prefill writes all
    rows at slots [0, t) and each decode step writes every row at slot `end`. Padding slots are
    marked invalid in `key_valid` and are never attended to. RoPE positions are per row and are
    passed to `forward` separately, so they need not equal the slot index.

    Attributes:
      k: keys after RoPE, [layers, batch, max_len, kv_heads, head_dim].
      v: values, [layers, batch, max_len, kv_heads, head_dim].
      key_valid: bool [batch, max_len]; True where the slot holds a real (non-padding) token.
      end: int32 scalar; slots [0, end) have been written. Writing past `max_len` is undefined
        (dynamic_update_slice clamps), so allocate `prompt_len + max_new_tokens` slots.
    """

    k: Array
    v: Array
    key_valid: Array
    end: Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def init_cache(
    config: TransformerConfig, batch: int, max_len: int, dtype: str | jnp.dtype | None = None
) -> KVCache:
    """Returns an empty cache for `batch` rows and `max_len` slots (dtype defaults to compute)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        key_valid=jnp.zeros((batch, max_len), bool),
        end=jnp.zeros((), jnp.int32),
    )


def positions_from_mask(mask_bt: Array) -> Array:
    """RoPE positions of (left- or right-) padded rows: 0 at each row's first real token."""
    return jnp.maximum(jnp.cumsum(mask_bt.astype(jnp.int32), axis=-1) - 1, 0)


def _param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple[str, ...], dtype) -> nnx.Param:
    # eager_sharding=False: the names are logical, not mesh axes; `parallel` maps them later.
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
    """Root-mean-square norm; the statistic is taken in float32 whatever the compute dtype. The
    scale is ``offset + w`` (Gemma: offset 1, w initialized to 0; Llama: offset 0, w to 1)."""

    def __init__(
        self,
        dim: int,
        eps: float,
        param_dtype,
        *,
        rngs: nnx.Rngs,
        axis: str = "embed",
        offset: float = 0.0,
    ):
        init = nnx.initializers.constant(1.0 - offset)
        self.scale = _param(rngs, init, (dim,), (axis,), param_dtype)
        self.eps = eps
        self.offset = offset

    def __call__(self, x_btd: Array) -> Array:
        x32 = x_btd.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # Gemma's: scaled in float32, cast last
            return (normed * (self.offset + self.scale[...].astype(jnp.float32))).astype(
                x_btd.dtype
            )
        # Cast before scaling, as HF's Llama does, so bf16 runs round at the same place.
        return self.scale[...].astype(x_btd.dtype) * normed.astype(x_btd.dtype)


def _norm(config: TransformerConfig, rngs: nnx.Rngs, dim: int | None = None, axis="embed"):
    return RMSNorm(
        dim or config.d_model,
        config.rms_norm_eps,
        config.jnp_param_dtype,
        rngs=rngs,
        axis=axis,
        offset=config.norm_offset,
    )


# config.remat -> the jax.checkpoint policy of each block (None: save nothing but the inputs).
CHECKPOINT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# (k_btkh, v_btkh) -> (keys_bskh, values_bskh, carry): where a layer's new keys go (a cache or not).
KVUpdate = Callable[[Array, Array], tuple[Array, Array, object]]


class Attention(nnx.Module):
    """Grouped-query attention with RoPE and optional q/k/v biases."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        c, pd = config, config.jnp_param_dtype
        normal = nnx.initializers.normal(c.init_std)
        zeros = nnx.initializers.zeros
        self.q_proj = _param(
            rngs, normal, (c.d_model, c.num_heads, c.head_dim), ("embed", "heads", "head_dim"), pd
        )
        kv_shape = (c.d_model, c.num_kv_heads, c.head_dim)
        kv_axes = ("embed", "kv_heads", "head_dim")
        self.k_proj = _param(rngs, normal, kv_shape, kv_axes, pd)
        self.v_proj = _param(rngs, normal, kv_shape, kv_axes, pd)
        self.o_proj = _param(
            rngs, normal, (c.num_heads, c.head_dim, c.d_model), ("heads", "head_dim", "embed"), pd
        )
        q_out = ((c.num_heads, c.head_dim), ("heads", "head_dim"))
        embed = ((c.d_model,), ("embed",))
        self.q_proj_lora = lora.adapter(c, "q_proj", *embed, *q_out, rngs)
        self.k_proj_lora = lora.adapter(c, "k_proj", *embed, kv_shape[1:], kv_axes[1:], rngs)
        self.v_proj_lora = lora.adapter(c, "v_proj", *embed, kv_shape[1:], kv_axes[1:], rngs)
        self.o_proj_lora = lora.adapter(c, "o_proj", *q_out, *embed, rngs)
        if c.qkv_bias:
            self.q_bias = _param(rngs, zeros, (c.num_heads, c.head_dim), ("heads", "head_dim"), pd)
            self.k_bias = _param(rngs, zeros, kv_shape[1:], kv_axes[1:], pd)
            self.v_bias = _param(rngs, zeros, kv_shape[1:], kv_axes[1:], pd)
        if c.qk_norm:
            self.q_norm = _norm(c, rngs, c.head_dim, axis="head_dim")
            self.k_norm = _norm(c, rngs, c.head_dim, axis="head_dim")
        self.config = config

    def __call__(
        self,
        x_btd: Array,
        positions_bt: Array,
        inv_freq_h: Array,
        mask_bts: Array,
        kv_update: KVUpdate,
    ) -> tuple[Array, object]:
        c, dt = self.config, self.config.jnp_dtype
        q = jnp.einsum("btd,dnh->btnh", x_btd, self.q_proj[...].astype(dt))
        k = jnp.einsum("btd,dkh->btkh", x_btd, self.k_proj[...].astype(dt))
        v = jnp.einsum("btd,dkh->btkh", x_btd, self.v_proj[...].astype(dt))
        if self.q_proj_lora is not None:
            q = q + self.q_proj_lora(x_btd)
        if self.k_proj_lora is not None:
            k = k + self.k_proj_lora(x_btd)
        if self.v_proj_lora is not None:
            v = v + self.v_proj_lora(x_btd)
        if c.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if c.qk_norm:  # per head, before RoPE (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions_bt, inv_freq_h)
        k = apply_rope(k, positions_bt, inv_freq_h)
        keys_bskh, values_bskh, carry = kv_update(k, v)
        attend = ATTENTION[c.attention]
        keys_bskh, values_bskh = keys_bskh.astype(dt), values_bskh.astype(dt)
        out = attend(q, keys_bskh, values_bskh, mask_bts, c.attention_scale, c.attn_softcap)
        y = jnp.einsum("btnh,nhd->btd", out, self.o_proj[...].astype(dt))
        if self.o_proj_lora is not None:
            y = y + self.o_proj_lora(out)
        return y, carry


ACTIVATION = {"silu": jax.nn.silu, "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class MLP(nnx.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)), SwiGLU (silu) or GeGLU (tanh gelu)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        c, pd = config, config.jnp_param_dtype
        normal = nnx.initializers.normal(c.init_std)
        self.gate_proj = _param(rngs, normal, (c.d_model, c.mlp_dim), ("embed", "mlp"), pd)
        self.up_proj = _param(rngs, normal, (c.d_model, c.mlp_dim), ("embed", "mlp"), pd)
        self.down_proj = _param(rngs, normal, (c.mlp_dim, c.d_model), ("mlp", "embed"), pd)
        embed, mlp = ((c.d_model,), ("embed",)), ((c.mlp_dim,), ("mlp",))
        self.gate_proj_lora = lora.adapter(c, "gate_proj", *embed, *mlp, rngs)
        self.up_proj_lora = lora.adapter(c, "up_proj", *embed, *mlp, rngs)
        self.down_proj_lora = lora.adapter(c, "down_proj", *mlp, *embed, rngs)
        self.dtype = c.jnp_dtype
        self.activation = c.activation

    def _project(self, name: str, x: Array) -> Array:
        y = x @ getattr(self, name)[...].astype(self.dtype)
        ad = getattr(self, f"{name}_lora")
        return y if ad is None else y + ad(x)

    def __call__(self, x_btd: Array) -> Array:
        gate = ACTIVATION[self.activation](self._project("gate_proj", x_btd))
        return self._project("down_proj", gate * self._project("up_proj", x_btd))


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(.)); with `post_norms`
    (Gemma 2/3) the attention and MLP outputs are normed too before they are added."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.attn_norm = _norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)
        if config.post_norms:
            self.post_attn_norm = _norm(config, rngs)
            self.post_mlp_norm = _norm(config, rngs)
        self.post_norms = config.post_norms

    def __call__(self, x_btd, positions_bt, inv_freq_h, mask_bts, kv_update):
        h, carry = self.attn(self.attn_norm(x_btd), positions_bt, inv_freq_h, mask_bts, kv_update)
        if self.post_norms:
            h = self.post_attn_norm(h)
        x_btd = x_btd + h
        h = self.mlp(self.mlp_norm(x_btd))
        if self.post_norms:
            h = self.post_mlp_norm(h)
        return x_btd + h, carry


def _stacked_blocks(config: TransformerConfig, rngs: nnx.Rngs) -> Block:
    """`num_layers` blocks whose params are stacked on a leading "layers" axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(rngs: nnx.Rngs) -> Block:
        return Block(config, rngs=rngs)

    return create(rngs)


class Transformer(nnx.Module):
    """Decoder-only transformer; see the module docstring for the parameter tree."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        c, pd = config, config.jnp_param_dtype
        normal = nnx.initializers.normal(c.init_std)
        self.config = config
        self.embed = _param(rngs, normal, (c.vocab_size, c.d_model), ("vocab", "embed"), pd)
        self.layers = _stacked_blocks(config, rngs)
        self.final_norm = _norm(c, rngs)
        if not c.tie_embeddings:
            self.lm_head = _param(rngs, normal, (c.d_model, c.vocab_size), ("embed", "vocab"), pd)

    def hidden(
        self,
        tokens_bt: Array,
        positions_bt: Array,
        cache: KVCache | None = None,
        input_mask_bt: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Final-normed hidden states [b, t, d_model] (compute dtype) and the updated cache.

        Without a cache, attention is causal within `tokens_bt` and skips keys where
        `input_mask_bt` is False. With one, the tokens are written at slots
        [cache.end, cache.end + t) and attend to every valid earlier slot.
        """
        c, dt = self.config, self.config.jnp_dtype
        b, t = tokens_bt.shape
        if input_mask_bt is None:
            input_mask_bt = jnp.ones((b, t), bool)
        input_mask_bt = input_mask_bt.astype(bool)
        x_btd = jnp.take(self.embed[...], tokens_bt, axis=0).astype(dt)
        if c.embed_scale:  # Gemma's sqrt(d_model), rounded to the compute dtype as HF's is
            x_btd = x_btd * jnp.asarray(c.d_model**0.5, dt)
        if cache is None:
            causal_ts = jnp.tril(jnp.ones((t, t), bool))
            mask_bts = causal_ts[None] & input_mask_bt[:, None, :]
            key_positions_bs = positions_bt
            kv_carry = (None, None)
        else:
            end = cache.end
            key_valid_bs = jax.lax.dynamic_update_slice(cache.key_valid, input_mask_bt, (0, end))
            # Causal in slot order (all rows share slots), and never onto a padding slot.
            causal_ts = jnp.arange(cache.max_len)[None, :] <= (end + jnp.arange(t))[:, None]
            mask_bts = causal_ts[None] & key_valid_bs[:, None, :]
            # A slot's position: the real tokens before it (how positions_from_mask counts).
            key_positions_bs = jnp.cumsum(key_valid_bs, axis=1) - 1
            kv_carry = (cache.k, cache.v)
        sliding = c.sliding_layers
        local_mask_bts = mask_bts
        if any(sliding):  # on positions: padding inside a row takes no part of the window
            near = positions_bt[:, :, None] - key_positions_bs[:, None, :] < c.sliding_window
            local_mask_bts = mask_bts & near

        layer_def, layer_state = nnx.split(self.layers)

        def run_block(x_btd, k_cache, v_cache, i, state, local, inv_freq_h):
            def kv_update(k_btkh, v_btkh):
                if k_cache is None:
                    return k_btkh, v_btkh, (None, None)
                # Write into the carried stacked cache in place; only layer i's slots change.
                at = (i, 0, cache.end, 0, 0)
                kc = jax.lax.dynamic_update_slice(k_cache, k_btkh[None].astype(k_cache.dtype), at)
                vc = jax.lax.dynamic_update_slice(v_cache, v_btkh[None].astype(v_cache.dtype), at)
                return kc[i], vc[i], (kc, vc)

            block = nnx.merge(layer_def, state)
            if all(sliding) or not any(sliding):  # every layer alike: no choice in the scan
                mask = local_mask_bts if all(sliding) else mask_bts
            else:
                mask = jnp.where(local, local_mask_bts, mask_bts)
            return block(x_btd, positions_bt, inv_freq_h, mask, kv_update)

        if cache is None and c.remat != "none":
            # On the split state, so plain jax.checkpoint (nnx.remat would re-split the block).
            # prevent_cse=False: inside scan the loop already keeps XLA from merging the
            # recomputation into the forward pass (jax.checkpoint's docstring).
            run_block = jax.checkpoint(
                run_block, prevent_cse=False, policy=CHECKPOINT_POLICIES[c.remat]
            )

        def body(carry, xs):
            x_btd, (k_cache, v_cache) = carry
            x_btd, kv = run_block(x_btd, k_cache, v_cache, *xs)
            return (x_btd, kv), None

        # Per layer: its index, parameters, whether it reads the window only, its RoPE.
        xs = (jnp.arange(c.num_layers), layer_state, jnp.asarray(sliding), rope_table(c))
        (x_btd, (k, v)), _ = jax.lax.scan(body, (x_btd, kv_carry), xs)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=k, v=v, key_valid=key_valid_bs, end=cache.end + t)
        return self.final_norm(x_btd), new_cache

    def output_weights(self) -> Array:
        """The output projection [d_model, vocab] in the compute dtype (the transposed embedding
        when tied)."""
        dt = self.config.jnp_dtype
        if self.config.tie_embeddings:
            return self.embed[...].astype(dt).T
        return self.lm_head[...].astype(dt)

    def project(self, h_xd: Array, columns: Array | None = None) -> Array:
        """Float32 logits ``[..., vocab]`` of final-normed hidden states ``[..., d_model]``, or
        of the vocabulary's ``columns`` only: the one output projection, which the full logits,
        the chunked log-probabilities (``nlhf_jax.logprobs``) and a causal-LM judge's answers
        all go through."""
        w_dv = self.output_weights()
        if columns is not None:
            w_dv = w_dv[:, columns]
        logits = jnp.einsum("...d,dv->...v", h_xd, w_dv, preferred_element_type=jnp.float32)
        cap = self.config.final_softcap
        return cap * jnp.tanh(logits / cap) if cap else logits

    def logits(self, h_btd: Array) -> Array:
        """Float32 logits [b, t, vocab] from final-normed hidden states."""
        return self.project(h_btd)

    def __call__(self, tokens_bt, positions_bt, cache=None, input_mask_bt=None):
        h_btd, cache = self.hidden(tokens_bt, positions_bt, cache, input_mask_bt)
        return self.logits(h_btd), cache


def forward(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens_bt: Array,
    positions_bt: Array,
    cache: KVCache | None = None,
    *,
    input_mask_bt: Array | None = None,
) -> tuple[Array, KVCache | None]:
    """Pure forward pass on split state: `(logits_btv float32, new_cache)`.

    Args:
      graphdef, state: from `nnx.split(model)`, done once outside jit.
      tokens_bt: int token ids.
      positions_bt: int RoPE positions per row (see `positions_from_mask` for padded rows).
      cache: None for a full causal pass (training); else a `KVCache` to write into and read from
        (prefill with the whole left-padded prompt, then one token per decode step).
      input_mask_bt: bool, False on padding tokens; they are never attended to. Default all True.

    Returns:
      Logits [b, t, vocab] in float32 (garbage but finite at padding positions) and the updated
      cache (None if none was given).
    """
    model = nnx.merge(graphdef, state)
    return model(tokens_bt, positions_bt, cache, input_mask_bt)


def forward_full(
    graphdef: nnx.GraphDef, state: nnx.State, tokens_bt: Array, input_mask_bt: Array
) -> Array:
    """Training forward without a cache: causal + padding mask, positions from the mask."""
    logits_btv, _ = forward(
        graphdef, state, tokens_bt, positions_from_mask(input_mask_bt), input_mask_bt=input_mask_bt
    )
    return logits_btv
