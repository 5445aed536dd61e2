"""Transformer policies and their HF interop.

Public face: `TransformerConfig`, `get_preset`, `Transformer`, `forward`, `forward_full`,
`KVCache`, `init_cache`, `positions_from_mask`; the pairwise judges' models `PreferenceModel`,
`RewardModel`, `pair_logits`, `pair_loss` (in `nlhf_jax.models.preference`, metrics in
`nlhf_jax.models.metrics`). Checkpoint and tokenizer
I/O live in the submodules `nlhf_jax.models.hf` and `nlhf_jax.models.tokenizer` (imported on
demand, since they pull in transformers).
"""

from nlhf_jax.models.config import PRESETS, RopeScaling, TransformerConfig, get_preset
from nlhf_jax.models.preference import (
    PreferenceModel,
    RewardModel,
    pair_logits,
    pair_loss,
)
from nlhf_jax.models.transformer import (
    KVCache,
    Transformer,
    forward,
    forward_full,
    init_cache,
    positions_from_mask,
)

__all__ = [
    "PRESETS",
    "KVCache",
    "PreferenceModel",
    "RewardModel",
    "RopeScaling",
    "Transformer",
    "TransformerConfig",
    "forward",
    "forward_full",
    "get_preset",
    "init_cache",
    "pair_logits",
    "pair_loss",
    "positions_from_mask",
]
