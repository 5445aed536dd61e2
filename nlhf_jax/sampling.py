"""Sampling with a KV cache: a jitted prefill, then a ``lax.while_loop`` decode with the caches
donated; and the two-cache geometric-mixture sampler of Nash-MD.

The mixture sampler carries one cache per model (policy and reference) and at every step
samples from ``softmax((1 - beta) l_pi + beta l_mu)`` given the shared prefix: two cached
forward passes per token, never a recomputation of the prefix. The product of these per-token
mixtures is *not* the sequence-level geometric mixture ``pi^(1-beta) mu^beta / Z`` (NLHF says so);
it is what Nash-MD-PG samples from. docs/algorithms.md section 2.

Prompts are left-padded ``[batch, prompt_len]`` with a mask; every row's last column is its last
real token, so one prefill serves rows of different lengths. The policy sampler is the mixture
sampler with a single model and weight 1, so ``beta = 0`` reproduces it bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.models.config import TransformerConfig
from nlhf_jax.models.transformer import KVCache, init_cache, positions_from_mask

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static decoding settings (hashable: passed to jit as a static argument).

    Attributes:
      max_new_tokens: tokens generated per row (fewer if every row has hit ``eos_id``).
      temperature: logits are divided by it; 0 means greedy (argmax).
      top_k: keep only the k most likely tokens (None: all).
      top_p: keep the smallest set of most likely tokens whose probability reaches p (None: all).
      eos_id: a row stops after emitting it (None: never stops early).
      pad_id: written after a row has stopped.
      cache_dtype: dtype of the KV caches (None: the model's compute dtype).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None
    pad_id: int = 0
    cache_dtype: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


@flax.struct.dataclass
class SampleOutput:
    """What a sampler returns; all arrays ``[batch, max_new_tokens]``.

    Attributes:
      tokens: sampled ids, ``pad_id`` after a row's EOS.
      mask: True on generated tokens up to and including the EOS.
      logprobs: log-probability of each token under the policy at temperature 1, untruncated:
        ``log_softmax(l_pi)[token]`` (what policy-gradient losses need).
      ref_logprobs: the same under the reference (mixture sampler only, else None).
      sample_logprobs: log-probability under the distribution actually sampled from (after the
        mixture, temperature, top-k and top-p); 0 for greedy decoding.
    """

    tokens: Array
    mask: Array
    logprobs: Array
    ref_logprobs: Array | None
    sample_logprobs: Array


def sampling_logprobs(logits_bv: Array, settings: SamplingConfig) -> Array:
    """Log-probabilities [b, v] of the sampling distribution: temperature, then top-k and top-p
    truncation (tokens outside the kept set get -inf). Ties at a cut-off are all kept."""
    x = logits_bv.astype(jnp.float32)
    if settings.temperature > 0:
        x = x / settings.temperature
    if settings.top_k is not None and settings.top_k < x.shape[-1]:
        kth_b1 = jax.lax.top_k(x, settings.top_k)[0][:, -1:]
        x = jnp.where(x < kth_b1, -jnp.inf, x)
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_bv = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_bv, axis=-1)
        # A token is kept if the mass strictly before it is below top_p (the first always is).
        kept = (jnp.cumsum(probs, axis=-1) - probs) < settings.top_p
        threshold_b1 = jnp.min(jnp.where(kept, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < threshold_b1, -jnp.inf, x)
    return jax.nn.log_softmax(x, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdefs", "configs", "max_len", "cache_dtype"))
def prefill(
    graphdefs: tuple[nnx.GraphDef, ...],
    configs: tuple[TransformerConfig, ...],
    states: tuple[nnx.State, ...],
    prompt_bt: Array,
    prompt_mask_bt: Array,
    *,
    max_len: int,
    cache_dtype: str | None = None,
) -> tuple[tuple[KVCache, ...], Array]:
    """Runs each model over the left-padded prompts into a fresh cache of ``max_len`` slots.

    Returns the caches and the logits at each row's last prompt token, ``[models, b, vocab]``.
    Only the last position goes through the output projection (a [b, t, vocab] tensor for long
    prompts and large vocabularies would dominate memory).
    """
    b, _ = prompt_bt.shape
    positions_bt = positions_from_mask(prompt_mask_bt)
    caches, last_logits = [], []
    for graphdef, config, state in zip(graphdefs, configs, states, strict=True):
        model = nnx.merge(graphdef, state)
        cache = init_cache(config, b, max_len, cache_dtype)
        h_btd, cache = model.hidden(prompt_bt, positions_bt, cache, prompt_mask_bt)
        caches.append(cache)
        last_logits.append(model.logits(h_btd[:, -1:])[:, 0])
    return tuple(caches), jnp.stack(last_logits)


def _mix(weights_m: Array, logits_mbv: Array) -> Array:
    # A plain weighted sum, term by term: with weights (1, 0) the result is l_pi bit for bit.
    # Weights are per model [M], or per model and row [M, b].
    w = weights_m if weights_m.ndim == 1 else weights_m[:, :, None]
    mixed = w[0] * logits_mbv[0]
    for m in range(1, logits_mbv.shape[0]):
        mixed = mixed + w[m] * logits_mbv[m]
    return mixed


@functools.partial(jax.jit, static_argnames=("graphdefs", "settings"), donate_argnames=("caches",))
def decode(
    graphdefs: tuple[nnx.GraphDef, ...],
    settings: SamplingConfig,
    states: tuple[nnx.State, ...],
    weights_m: Array,
    caches: tuple[KVCache, ...],
    last_logits_mbv: Array,
    prompt_len_b: Array,
    key: Array,
) -> tuple[SampleOutput, tuple[KVCache, ...]]:
    """Decodes ``settings.max_new_tokens`` tokens in a ``lax.while_loop`` (caches donated).

    Each step samples from ``sampling_logprobs(sum_m weights_m[m] * logits_m)`` and feeds the
    token to every model at the row's next RoPE position (``prompt_len_b + step``). The loop
    stops early once every row has emitted EOS. Returns the samples and the final caches: the
    returned caches alias the donated ones, so the loop updates them in place instead of first
    copying every cache.
    """
    n = settings.max_new_tokens
    b = last_logits_mbv.shape[1]
    num_models = len(graphdefs)
    models = [nnx.merge(g, s) for g, s in zip(graphdefs, states, strict=True)]

    def cond(carry):
        i, done_b = carry[0], carry[4]
        return (i < n) & ~jnp.all(done_b)

    def body(carry):
        i, caches, logits_mbv, key, done_b, tokens_bn, mask_bn, logp_mbn, sample_logp_bn = carry
        key, sub = jax.random.split(key)
        sample_logp_bv = sampling_logprobs(_mix(weights_m, logits_mbv), settings)
        if settings.temperature == 0:
            token_b = jnp.argmax(sample_logp_bv, axis=-1)
        else:
            token_b = jax.random.categorical(sub, sample_logp_bv, axis=-1)
        token_b = token_b.astype(jnp.int32)
        live_b = ~done_b
        pick = lambda lp_bv: jnp.take_along_axis(lp_bv, token_b[:, None], axis=-1)[:, 0]
        model_logp_mb = jnp.stack([pick(jax.nn.log_softmax(lg)) for lg in logits_mbv])
        token_b = jnp.where(live_b, token_b, settings.pad_id)
        tokens_bn = tokens_bn.at[:, i].set(token_b)
        mask_bn = mask_bn.at[:, i].set(live_b)
        logp_mbn = logp_mbn.at[:, :, i].set(jnp.where(live_b, model_logp_mb, 0.0))
        step_logp_b = 0.0 if settings.temperature == 0 else pick(sample_logp_bv)
        sample_logp_bn = sample_logp_bn.at[:, i].set(jnp.where(live_b, step_logp_b, 0.0))
        if settings.eos_id is not None:
            done_b = done_b | (token_b == settings.eos_id)
        positions_b1 = (prompt_len_b + i)[:, None]
        new_caches, new_logits = [], []
        for model, cache in zip(models, caches, strict=True):
            h_b1d, cache = model.hidden(token_b[:, None], positions_b1, cache, live_b[:, None])
            new_caches.append(cache)
            new_logits.append(model.logits(h_b1d)[:, 0])
        return (
            i + 1,
            tuple(new_caches),
            jnp.stack(new_logits),
            key,
            done_b,
            tokens_bn,
            mask_bn,
            logp_mbn,
            sample_logp_bn,
        )

    init = (
        jnp.zeros((), jnp.int32),
        caches,
        last_logits_mbv.astype(jnp.float32),
        key,
        jnp.zeros((b,), bool),
        jnp.full((b, n), settings.pad_id, jnp.int32),
        jnp.zeros((b, n), bool),
        jnp.zeros((num_models, b, n), jnp.float32),
        jnp.zeros((b, n), jnp.float32),
    )
    out = jax.lax.while_loop(cond, body, init)
    tokens_bn, mask_bn, logp_mbn, sample_logp_bn = out[5:]
    samples = SampleOutput(
        tokens=tokens_bn,
        mask=mask_bn,
        logprobs=logp_mbn[0],
        ref_logprobs=logp_mbn[1] if num_models > 1 else None,
        sample_logprobs=sample_logp_bn,
    )
    return samples, out[1]


def _check_prompts(prompt_bt: Array, prompt_mask_bt: Array) -> None:
    if prompt_bt.ndim != 2 or prompt_bt.shape != prompt_mask_bt.shape:
        raise ValueError(
            f"prompts must be [batch, len] with a mask of the same shape; got {prompt_bt.shape} "
            f"and {prompt_mask_bt.shape}"
        )


def _sample(graphdefs, configs, settings, states, weights_m, prompt_bt, prompt_mask_bt, key):
    _check_prompts(prompt_bt, prompt_mask_bt)
    prompt_mask_bt = jnp.asarray(prompt_mask_bt, bool)
    max_len = prompt_bt.shape[1] + settings.max_new_tokens
    caches, last_logits = prefill(
        graphdefs,
        configs,
        states,
        prompt_bt,
        prompt_mask_bt,
        max_len=max_len,
        cache_dtype=settings.cache_dtype,
    )
    prompt_len_b = jnp.sum(prompt_mask_bt, axis=-1, dtype=jnp.int32)
    samples, _ = decode(
        graphdefs, settings, states, weights_m, caches, last_logits, prompt_len_b, key
    )
    return samples


@dataclasses.dataclass(frozen=True)
class PolicySampler:
    """Samples continuations of left-padded prompts from one model.

    ``PolicySampler(graphdef, config, settings)(state, prompt_bt, prompt_mask_bt, key)``, with
    ``graphdef, state = nnx.split(model)`` done once.
    """

    graphdef: nnx.GraphDef
    config: TransformerConfig
    settings: SamplingConfig

    def __call__(self, state, prompt_bt, prompt_mask_bt, key) -> SampleOutput:
        weights = jnp.ones((1,), jnp.float32)
        return _sample(
            (self.graphdef,),
            (self.config,),
            self.settings,
            (state,),
            weights,
            prompt_bt,
            prompt_mask_bt,
            key,
        )


@dataclasses.dataclass(frozen=True)
class MixtureSampler:
    """Nash-MD's opponent: the token-level geometric mixture of a policy and a reference.

    ``MixtureSampler(policy_graphdef, ref_graphdef, config, settings)(policy_state, ref_state,
    beta, prompt_bt, prompt_mask_bt, key)`` samples each token from
    ``softmax((1 - beta) l_pi + beta l_mu)``; ``beta`` is traced (no recompile per value), a
    scalar or one weight per row ``[b]`` (rows with beta = 0 are samples of the policy itself:
    two samplers' rows decoded in one loop read each model's weights once per token).
    beta = 0 gives the policy sampler's tokens (same key), beta = 1 the reference's. The two
    models must share the vocabulary; ``ref_config`` defaults to ``config``.
    """

    graphdef: nnx.GraphDef
    ref_graphdef: nnx.GraphDef
    config: TransformerConfig
    settings: SamplingConfig
    ref_config: TransformerConfig | None = None

    def __call__(self, state, ref_state, beta, prompt_bt, prompt_mask_bt, key) -> SampleOutput:
        ref_config = self.ref_config or self.config
        if ref_config.vocab_size != self.config.vocab_size:
            raise ValueError(
                f"policy and reference vocabularies differ: {self.config.vocab_size} vs "
                f"{ref_config.vocab_size}"
            )
        beta = jnp.asarray(beta, jnp.float32)
        return _sample(
            (self.graphdef, self.ref_graphdef),
            (self.config, ref_config),
            self.settings,
            (state, ref_state),
            jnp.stack([1.0 - beta, beta]),
            prompt_bt,
            prompt_mask_bt,
            key,
        )
