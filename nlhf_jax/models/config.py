"""Static shape and numerics settings of the decoder-only transformer, and named presets."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from nlhf_jax.errors import UserError

# The projections a LoRA adapter (`nlhf_jax.models.lora`) may target.
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Which projections get adapters, their rank and scale (``alpha / rank``).

    Attributes:
      rank: the adapters' rank r.
      alpha: the scale numerator; the update is ``(alpha / rank) x A B``.
      targets: names from ``TARGETS``.
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        unknown = sorted(set(self.targets) - set(TARGETS))
        if unknown or not self.targets:
            raise ValueError(f"lora targets {unknown or '()'}: choose from {TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


# The logical axis names every parameter is annotated with. `nlhf_jax.parallel` maps them to mesh
# axes; keep this list and its rules in sync.
LOGICAL_AXES = ("layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "lora")
ATTENTION_IMPLEMENTATIONS = ("einsum", "dot_product")
REMAT_POLICIES = ("none", "full", "dots")
# Fields that choose how the model is computed, not which function or parameters it has: a run
# may change them when it resumes (see `nlhf_jax.checkpoint.Checkpoints`).
EXECUTION_FIELDS = ("attention", "remat")
ACTIVATIONS = ("silu", "gelu_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
# The checkpoint families and the features that set them apart: (q/k/v biases, per-head q/k
# RMSNorm, the Gemma block: GeGLU, RMSNorm scale 1 + w, embeddings scaled by sqrt(d_model), norms
# on the attention and MLP outputs too). Names are Hugging Face's ``model_type`` but Gemma 3's,
# whose text model is ``gemma3_text`` there.
FAMILIES = {
    "llama": (False, False, False),
    "mistral": (False, False, False),
    "qwen2": (True, False, False),
    "qwen3": (False, True, False),
    "gemma2": (False, False, True),
    "gemma3": (False, True, True),
}
# The families whose layers may read a sliding window.
WINDOWED = ("mistral", "gemma2", "gemma3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (HF `rope_type="llama3"`).

    Attributes:
      factor: how much longer the target context is than `original_max_position_embeddings`.
      low_freq_factor: wavelengths longer than `original / low_freq_factor` are divided by `factor`.
      high_freq_factor: wavelengths shorter than `original / high_freq_factor` are left unchanged;
        those in between are interpolated smoothly.
      original_max_position_embeddings: the context length the model was pretrained with.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a Llama, Mistral, Qwen2/3 or Gemma 2/3 decoder. Frozen and hashable: pass
    it statically to jit.

    Attributes:
      vocab_size: rows of the embedding table (may exceed the tokenizer's vocabulary).
      d_model: width of the residual stream.
      num_layers: number of decoder blocks; their parameters are stacked and scanned over.
      num_heads: query heads.
      num_kv_heads: key/value heads; `num_heads % num_kv_heads == 0` (grouped-query attention).
      head_dim: width of one attention head.
      mlp_dim: hidden width of the gated MLP.
      rope_theta: base of the rotary position embedding frequencies.
      rope_scaling: optional Llama-3 frequency scaling; None for plain RoPE.
      rms_norm_eps: epsilon inside the RMSNorm square root.
      tie_embeddings: if True the output projection is the transposed embedding table.
      qkv_bias: if True the q, k and v projections have biases (Qwen2).
      qk_norm: if True each query and key head is RMS-normed over head_dim before RoPE, with
        one learned scale per head dimension shared by the heads (Qwen3).
      param_dtype: storage dtype of the parameters.
      dtype: compute dtype of matmuls and activations (bfloat16 on accelerators, float32 on CPU).
        Norms, softmax and the returned logits are always float32.
      max_position_embeddings: the longest context the checkpoint is meant for (informational,
        written back on HF export).
      init_std: standard deviation of the normal initializer of every matrix.
      attention: how attention is computed (not what: both give the same function). "einsum":
        the reference implementation in `transformer.py`, what every published figure used;
        "dot_product": `jax.nn.dot_product_attention` with `implementation=None` (the backend
        chooses; in jax 0.10 that is always XLA's own kernel, a fused one may come later).
      remat: rematerialization of each decoder block in the backward pass, trading compute for
        activation memory. "none": keep every activation; "full": keep only each block's input
        (`jax.checkpoint`); "dots": keep the outputs of matmuls without batch dimensions (the
        projections), recompute the rest (`dots_with_no_batch_dims_saveable`). No effect
        without differentiation (sampling, evaluation).
      lora: low-rank adapters on the projections it targets (``nlhf_jax.models.lora``), or
        None. A model with adapters trains only them; the rest is its frozen base.
      sliding_window: 0, or how many positions a query reads, itself included (``q - k <
        window`` on token positions, not columns: padding inside a row does not count); on every
        layer (Mistral's), or on the layers ``layer_types`` marks "sliding_attention" (Gemma's).
      family: the checkpoint family it reads and exports as (``FAMILIES``), set by the loader;
        empty (the presets, runs recorded before the field) means the one its features imply
        (``model_family``).
      activation: the gate's nonlinearity: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, Gemma's
        ``gelu_pytorch_tanh``).
      norm_offset: every RMSNorm scales by ``norm_offset + w`` (Gemma: 1, with w stored around
        0); with an offset the norm runs in float32 and casts last, as Gemma's does.
      embed_scale: embeddings are multiplied by sqrt(d_model) (Gemma).
      post_norms: each block norms its attention and MLP outputs too before adding them to the
        residual stream (Gemma 2 and 3: four norms a block).
      query_pre_attn_scalar: attention scores are ``q.k / sqrt(query_pre_attn_scalar)``; 0 means
        head_dim (Gemma's models set it, not always to head_dim).
      attn_softcap: 0, or attention scores become ``cap * tanh(score / cap)`` (Gemma 2).
      final_softcap: 0, or the logits become ``cap * tanh(logit / cap)`` (Gemma 2).
      layer_types: empty (every layer alike), or per layer "full_attention" or
        "sliding_attention" (Gemma 2 alternates, Gemma 3 has five local layers to one global).
        Read inside the scanned layer stack: the stack is not unrolled.
      rope_local_theta: 0, or the RoPE base of the "sliding_attention" layers (Gemma 3: 10,000,
        its global layers ``rope_theta``).
      rope_linear_factor: positions are divided by it (linear RoPE scaling) on every layer but
        the "sliding_attention" ones of a model with ``layer_types`` (Gemma 3 4B and larger: 8).
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = True
    qkv_bias: bool = False
    qk_norm: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"
    max_position_embeddings: int = 2048
    init_std: float = 0.02
    attention: str = "einsum"
    remat: str = "none"
    lora: LoRAConfig | None = None
    sliding_window: int = 0
    family: str = ""
    activation: str = "silu"
    norm_offset: float = 0.0
    embed_scale: bool = False
    post_norms: bool = False
    query_pre_attn_scalar: int = 0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    layer_types: tuple[str, ...] = ()
    rope_local_theta: float = 0.0
    rope_linear_factor: float = 1.0

    @property
    def gemma_block(self) -> bool:
        """Whether the blocks are Gemma's (``FAMILIES``' third feature)."""
        return (self.activation, self.norm_offset, self.embed_scale, self.post_norms) == (
            "gelu_tanh",
            1.0,
            True,
            True,
        )

    @property
    def model_family(self) -> str:
        """``family``, or where it is empty the family its features imply: Gemma's blocks
        (Gemma 3 with q/k norms), Qwen3 norms q and k, Qwen2 has q/k/v biases, Llama neither."""
        if self.family:
            return self.family
        if self.gemma_block:
            return "gemma3" if self.qk_norm else "gemma2"
        if self.qk_norm or self.qkv_bias:
            return "qwen3" if self.qk_norm else "qwen2"
        return "mistral" if self.sliding_window else "llama"

    @property
    def attention_scale(self) -> float:
        """What q.k is multiplied by: ``query_pre_attn_scalar ** -0.5`` (head_dim's if 0)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def sliding_layers(self) -> tuple[bool, ...]:
        """Per layer, whether it reads the sliding window only."""
        if self.layer_types:
            return tuple(
                t == "sliding_attention" and self.sliding_window > 0 for t in self.layer_types
            )
        return (self.sliding_window > 0,) * self.num_layers

    def __post_init__(self):
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.family and self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: choose one of {tuple(FAMILIES)}")
        features = (self.qkv_bias, self.qk_norm, self.gemma_block)
        if self.family and FAMILIES[self.family] != features:
            bias, norm, gemma = FAMILIES[self.family]
            raise ValueError(
                f"family={self.family!r} has qkv_bias={bias}, qk_norm={norm} and Gemma's blocks "
                f"{gemma} (activation, norm_offset, embed_scale, post_norms), not {features}"
            )
        if self.sliding_window and self.model_family not in WINDOWED:
            raise ValueError(
                f"sliding_window={self.sliding_window}: only the {WINDOWED} families have one here"
            )
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window={self.sliding_window} must be 0 (none) or positive")
        if self.layer_types and (
            len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES)
        ):
            raise ValueError(
                f"layer_types={self.layer_types}: one of {LAYER_TYPES} for each of the "
                f"{self.num_layers} layers"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: choose one of {ACTIVATIONS}")
        for field in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "rope_local_theta"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field}={getattr(self, field)} must be 0 (none) or positive")
        if self.rope_linear_factor <= 0:
            raise ValueError(f"rope_linear_factor={self.rope_linear_factor} must be positive")
        if self.attn_softcap and self.attention == "dot_product":
            # A user's choice (config.model.attention) against a checkpoint: one line.
            raise UserError(
                "attention='dot_product' (jax.nn.dot_product_attention) has no soft-cap, and "
                f"this model soft-caps its attention scores (attn_softcap={self.attn_softcap}): "
                "use attention='einsum'"
            )
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention={self.attention!r}: choose one of {ATTENTION_IMPLEMENTATIONS}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}: choose one of {REMAT_POLICIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for field in ("param_dtype", "dtype"):
            jnp.dtype(getattr(self, field))  # Fails early on an unknown dtype name.

    @property
    def jnp_dtype(self) -> jnp.dtype:
        """The compute dtype as a numpy dtype."""
        return jnp.dtype(self.dtype)

    @property
    def jnp_param_dtype(self) -> jnp.dtype:
        """The parameter dtype as a numpy dtype."""
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> TransformerConfig:
        """Returns a copy with `changes` applied (e.g. `dtype="bfloat16"`)."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TransformerConfig] = {
    # Small enough to train on 2 CPU cores in tests and the default task.
    "toy": TransformerConfig(
        vocab_size=512,
        d_model=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=384,
        max_position_embeddings=512,
    ),
    "llama-3.2-1b": TransformerConfig(
        vocab_size=128_256,
        d_model=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=8192,
        rope_theta=500_000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
        rms_norm_eps=1e-5,
        tie_embeddings=True,
        param_dtype="bfloat16",
        dtype="bfloat16",
        max_position_embeddings=131_072,
    ),
    "qwen2-0.5b": TransformerConfig(
        vocab_size=151_936,
        d_model=896,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=4864,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
        param_dtype="bfloat16",
        dtype="bfloat16",
        max_position_embeddings=32_768,
    ),
    "qwen2-1.5b": TransformerConfig(
        vocab_size=151_936,
        d_model=1536,
        num_layers=28,
        num_heads=12,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=8960,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_embeddings=True,
        qkv_bias=True,
        param_dtype="bfloat16",
        dtype="bfloat16",
        max_position_embeddings=32_768,
    ),
}


def get_preset(name: str, **overrides) -> TransformerConfig:
    """Returns the preset `name` (see `PRESETS`) with `overrides` applied.

    Raises:
      KeyError: naming the unknown preset and the known ones.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown transformer preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
