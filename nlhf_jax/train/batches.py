"""What each trainer's batch holds (field -> dtype and rank; every field shares the leading
axis) and the chex check of a batch against it, at the step's boundary (``nlhf_jax.train.step``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax.numpy as jnp

PROMPTS = {"prompt": (jnp.int32, 2), "prompt_mask": (jnp.bool_, 2)}
DEMONSTRATIONS = {**PROMPTS, "response": (jnp.int32, 2), "response_mask": (jnp.bool_, 2)}
PAIRS = {
    **PROMPTS,
    "response_a": (jnp.int32, 2),
    "response_a_mask": (jnp.bool_, 2),
    "response_b": (jnp.int32, 2),
    "response_b_mask": (jnp.bool_, 2),
    "label": (jnp.float32, 1),
}
# What an online method's ``prepare`` adds to its prompts (before the method's own fields).
JUDGED_PAIR = {
    **{k: v for k, v in PAIRS.items() if k != "label"},
    "ref_logp_a": (jnp.float32, 2),
    "preference": (jnp.float32, 1),
}


def check_batch(batch: Mapping[str, Any], spec: Mapping[str, tuple[Any, int]]) -> None:
    """chex: every field of ``spec`` is present with its dtype and rank, all of one batch size."""
    missing = sorted(set(spec) - set(batch))
    if missing:
        raise AssertionError(f"batch lacks {missing}; it has {sorted(batch)}")
    arrays = [batch[k] for k in spec]
    chex.assert_type(arrays, [dtype for dtype, _ in spec.values()])
    chex.assert_rank(arrays, [rank for _, rank in spec.values()])
    chex.assert_equal_shape_prefix(arrays, 1)
