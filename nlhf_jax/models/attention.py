"""Rotary position embeddings and the attention kernels of the transformer (``config.attention``
chooses one; every kernel computes the same function)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from nlhf_jax.models.config import TransformerConfig

Array = jax.Array
_NEG_INF = float(jnp.finfo(jnp.float32).min)  # Finite, so fully masked rows stay NaN-free.


def rope_inv_freq(config: TransformerConfig, local: bool = False) -> Array:
    """Inverse frequencies [head_dim // 2] of RoPE. ``local``: of a "sliding_attention" layer of
    a model with ``layer_types`` (base ``rope_local_theta`` if set, no scaling); else base
    ``rope_theta`` with Llama-3 scaling and linear scaling if configured."""
    exponent = jnp.arange(0, config.head_dim, 2, dtype=jnp.float32) / config.head_dim
    if local:
        return 1.0 / ((config.rope_local_theta or config.rope_theta) ** exponent)
    inv_freq = 1.0 / (config.rope_theta**exponent) / config.rope_linear_factor
    s = config.rope_scaling
    if s is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    original = s.original_max_position_embeddings
    # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
    smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    low_freq_wavelen = original / s.low_freq_factor
    high_freq_wavelen = original / s.high_freq_factor
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x_btnh: Array, positions_bt: Array, inv_freq_h: Array) -> Array:
    """Rotates halves (HF `rotate_half` layout) of every head by per-row positions."""
    angles_bth = positions_bt[..., None].astype(jnp.float32) * inv_freq_h
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    cos = jnp.cos(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    sin = jnp.sin(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    x1, x2 = jnp.split(x_btnh, 2, axis=-1)
    return x_btnh * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def rope_table(config: TransformerConfig) -> Array:
    """Inverse frequencies of every layer [layers, head_dim // 2] (``rope_inv_freq`` of each
    layer's type), read inside the scanned layer stack."""
    local = [t == "sliding_attention" for t in config.layer_types] or [False] * config.num_layers
    table = {flag: rope_inv_freq(config, flag) for flag in set(local)}
    return jnp.stack([table[flag] for flag in local])


def einsum_attention(
    q_btnh: Array,
    k_bskh: Array,
    v_bskh: Array,
    mask_bts: Array,
    scale: float,
    softcap: float = 0.0,
) -> Array:
    """The reference attention [b, t, heads, head_dim]: float32 scores (``q.k * scale``, then
    ``softcap * tanh(score / softcap)`` if ``softcap``) and softmax, probabilities cast to the
    compute dtype (q's) for the value product. Query head n reads kv head n // (heads //
    kv_heads), as HF's repeat_kv does. `mask_bts`: query t may read key slot s; a query with no
    key left gets uniform weights (finite garbage, as at padding positions)."""
    b, t, n, h = q_btnh.shape
    kv, dt = k_bskh.shape[2], q_btnh.dtype
    q_btkgh = q_btnh.reshape(b, t, kv, n // kv, h)
    scores = (
        jnp.einsum("btkgh,bskh->bkgts", q_btkgh, k_bskh, preferred_element_type=jnp.float32) * scale
    )
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask_bts[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v_bskh)
    return out.reshape(b, t, n, h)


def dot_product_attention(
    q_btnh: Array,
    k_bskh: Array,
    v_bskh: Array,
    mask_bts: Array,
    scale: float,
    softcap: float = 0.0,
) -> Array:
    """`jax.nn.dot_product_attention` with the same mask, scale and grouping as the reference.

    `implementation=None` lets JAX choose the kernel. Its XLA kernel also takes the softmax in
    float32 and fills masked scores with a large finite negative (-0.7 * float32 max; the
    reference uses the float32 min), so fully masked queries get the same uniform weights. It
    has no soft-cap: ``TransformerConfig`` refuses one with this kernel."""
    if softcap:
        raise ValueError("jax.nn.dot_product_attention has no soft-cap; use attention='einsum'")
    mask_b1ts = mask_bts[:, None]  # Broadcast over heads.
    return jax.nn.dot_product_attention(
        q_btnh, k_bskh, v_bskh, mask=mask_b1ts, scale=scale, implementation=None
    )


# config.attention -> (q_btnh, k_bskh, v_bskh, mask_bts, scale, softcap) -> out_btnh, all in the
# compute dtype.
ATTENTION = {"einsum": einsum_attention, "dot_product": dot_product_attention}
