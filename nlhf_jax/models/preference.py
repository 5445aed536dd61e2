"""Pairwise preference model and Bradley-Terry reward model on the transformer backbone.

docs/algorithms.md section 3. Both models read the batch format used for preference pairs across the
project (numpy or jax arrays):

    prompt            int   [b, P]  LEFT-padded
    prompt_mask       bool  [b, P]
    response_a        int   [b, R]  RIGHT-padded
    response_a_mask   bool  [b, R]
    response_b        int   [b, R'] RIGHT-padded (R' may differ from R)
    response_b_mask   bool  [b, R']
    label             float [b]     P(a > b) in [0, 1], hard (0/1) or soft

Preference model. One sequence per ordered pair, `[prompt, first, (SEP), second]`, with every
padding token masked out: RoPE positions come from the concatenated mask, so the real tokens sit
at positions 0..n-1 exactly as in an unpadded sequence, and attention never reads a padding key.
A linear head reads the hidden state at the last real token: f(x, y, y'). The logit is

    d(x, a, b) = f(x, a, b) - f(x, b, a),      P(a > b) = sigmoid(d),

antisymmetric by construction: d(a, b) = -d(b, a), P(a > b) + P(b > a) = 1 and P(y > y) = 1/2.
Both orders run in one forward pass of 2b rows ([y, y'] stacked over [y', y]), with each pair put
in a canonical order first (`_canonical_pairs`), so swapping a and b feeds the pass the same
input and negates d bit for bit, on any backend.

Without a separator the split between the two responses is ambiguous (a="xy", b="z" and a="x",
b="yz" pack identically); pass `sep_id` unless responses end in an EOS token that marks it.

Reward model. `[prompt, response]`, a scalar head at the last real token: r(x, y);
P(a > b) = sigmoid(r(x, a) - r(x, b)) (Bradley-Terry). Both responses run in one pass of 2b rows.

Heads are zero-initialised, so a fresh model is the indifferent judge (P = 1/2, loss log 2).
Their parameter `head.w [embed]` carries the logical axis ("embed",). The backbone never
produces token logits, so it is built tied (no `lm_head` parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.models.bottleneck import bottleneck_heads
from nlhf_jax.models.config import TransformerConfig
from nlhf_jax.models.transformer import Transformer, positions_from_mask

Array = jax.Array

PAIR_FIELDS = (
    "prompt",
    "prompt_mask",
    "response_a",
    "response_a_mask",
    "response_b",
    "response_b_mask",
)


class ScalarHead(nnx.Module):
    """A linear map from the residual stream to one float32 score (no bias: it would cancel)."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        # eager_sharding=False: "embed" is a logical name, mapped to mesh axes by `parallel`.
        init = nnx.with_partitioning(nnx.initializers.zeros, ("embed",), eager_sharding=False)
        self.w = nnx.Param(init(rngs.params(), (config.d_model,), config.jnp_param_dtype))

    def __call__(self, h_bd: Array) -> Array:
        # Float32 readout whatever the compute dtype: the score is a difference of two of these.
        return jnp.einsum("bd,d->b", h_bd.astype(jnp.float32), self.w[...].astype(jnp.float32))


def _backbone(config: TransformerConfig, rngs: nnx.Rngs) -> Transformer:
    return Transformer(config.replace(tie_embeddings=True), rngs=rngs)


def _last_real_hidden(
    backbone: Transformer, tokens_bt: Array, mask_bt: Array, skip_id: int | None = None
) -> Array:
    """Hidden state [b, d] at each row's last real token (position 0 if a row is all padding);
    with ``skip_id``, the last real token that is not ``skip_id``."""
    mask_bt = mask_bt.astype(bool)
    h_btd, _ = backbone.hidden(tokens_bt, positions_from_mask(mask_bt), input_mask_bt=mask_bt)
    t = tokens_bt.shape[1]
    read_bt = mask_bt if skip_id is None else mask_bt & (tokens_bt != skip_id)
    last_b = jnp.max(jnp.where(read_bt, jnp.arange(t), 0), axis=1)
    return jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)[:, 0]


class PreferenceModel(nnx.Module):
    """Backbone + linear head on the packed pair; `logit(...)` is antisymmetric (module doc).

    Attributes:
      backbone: a `Transformer` (tied, its LM head unused).
      head: `ScalarHead` reading the last real token of `[prompt, first, (SEP), second]`.
      sep_id: token id inserted between the two responses, or None for none.
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        sep_id: int | None = None,
        bottleneck: tuple[int, int] | None = None,
        rngs: nnx.Rngs,
    ):
        if sep_id is not None and not 0 <= sep_id < config.vocab_size:
            raise ValueError(f"sep_id={sep_id} is outside the vocabulary [0, {config.vocab_size})")
        self.backbone = _backbone(config, rngs)
        self.head = ScalarHead(config, rngs=rngs)
        self.sep_id = sep_id
        self.bottleneck = bottleneck_heads(config.d_model, bottleneck, rngs)

    def features(self, prompt_bp, prompt_mask_bp, response_br, response_mask_br) -> Array:
        """The last layer's hidden state [b, d] of one response in context: the input
        ``[prompt, y, (SEP), y]``, the pair of y with itself (RLP-UML's view of y)."""
        return self._hidden(
            prompt_bp, prompt_mask_bp, response_br, response_mask_br, response_br, response_mask_br
        )

    def _hidden(
        self, prompt_bp, prompt_mask_bp, first_br, first_mask_br, second_bs, second_mask_bs
    ):
        tokens, masks = [prompt_bp, first_br], [prompt_mask_bp, first_mask_br]
        if self.sep_id is not None:
            b = prompt_bp.shape[0]
            tokens.append(jnp.full((b, 1), self.sep_id, prompt_bp.dtype))
            masks.append(jnp.ones((b, 1), bool))
        tokens += [second_bs.astype(prompt_bp.dtype)]
        masks += [second_mask_bs]
        tokens_bt = jnp.concatenate(tokens, axis=1)
        mask_bt = jnp.concatenate([m.astype(bool) for m in masks], axis=1)
        return _last_real_hidden(self.backbone, tokens_bt, mask_bt)

    def score(
        self,
        prompt_bp: Array,
        prompt_mask_bp: Array,
        first_br: Array,
        first_mask_br: Array,
        second_bs: Array,
        second_mask_bs: Array,
    ) -> Array:
        """f(x, first, second) [b] float32: one score per ordered pair (not antisymmetric)."""
        return self.head(
            self._hidden(
                prompt_bp, prompt_mask_bp, first_br, first_mask_br, second_bs, second_mask_bs
            )
        )

    def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
        """d(x, a, b) = f(x, a, b) - f(x, b, a), [b] float32, from one pass over 2b rows."""
        lo, lo_mask, hi, hi_mask, sign_b = _canonical_pairs(
            response_a, response_a_mask, response_b, response_b_mask
        )
        f_2b = self.score(
            jnp.concatenate([prompt, prompt], axis=0),
            jnp.concatenate([prompt_mask, prompt_mask], axis=0),
            jnp.concatenate([lo, hi], axis=0),
            jnp.concatenate([lo_mask, hi_mask], axis=0),
            jnp.concatenate([hi, lo], axis=0),
            jnp.concatenate([hi_mask, lo_mask], axis=0),
        )
        b = prompt.shape[0]
        return sign_b * (f_2b[:b] - f_2b[b:])


class RewardModel(nnx.Module):
    """Backbone + scalar head: r(x, y) at the last real token of `[prompt, response]`.

    Attributes:
      backbone: a `Transformer` (tied, its LM head unused).
      head: `ScalarHead`.
      pad_id: None, or the pad id of a Hugging Face sequence classifier
        (`nlhf_jax.models.hf.load_reward_model`): the score is then read where transformers
        reads it, at the last real token that is not this id (a trailing EOS that doubles as
        the pad token is skipped).
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        bottleneck: tuple[int, int] | None = None,
        pad_id: int | None = None,
        rngs: nnx.Rngs,
    ):
        self.backbone = _backbone(config, rngs)
        self.head = ScalarHead(config, rngs=rngs)
        self.bottleneck = bottleneck_heads(config.d_model, bottleneck, rngs)
        self.pad_id = pad_id

    def features(self, prompt_bp, prompt_mask_bp, response_br, response_mask_br) -> Array:
        """The last layer's hidden state [b, d] at the last real token of [prompt, response]."""
        tokens_bt = jnp.concatenate([prompt_bp, response_br.astype(prompt_bp.dtype)], axis=1)
        mask_bt = jnp.concatenate(
            [prompt_mask_bp.astype(bool), response_mask_br.astype(bool)], axis=1
        )
        return _last_real_hidden(self.backbone, tokens_bt, mask_bt, self.pad_id)

    def reward(self, prompt_bp, prompt_mask_bp, response_br, response_mask_br) -> Array:
        """r(x, y) [b] float32. Only differences are meaningful (BT is shift invariant)."""
        return self.head(self.features(prompt_bp, prompt_mask_bp, response_br, response_mask_br))

    def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
        """r(x, a) - r(x, b), [b] float32, from one pass over 2b rows."""
        lo, lo_mask, hi, hi_mask, sign_b = _canonical_pairs(
            response_a, response_a_mask, response_b, response_b_mask
        )
        r_2b = self.reward(
            jnp.concatenate([prompt, prompt], axis=0),
            jnp.concatenate([prompt_mask, prompt_mask], axis=0),
            jnp.concatenate([lo, hi], axis=0),
            jnp.concatenate([lo_mask, hi_mask], axis=0),
        )
        b = prompt.shape[0]
        return sign_b * (r_2b[:b] - r_2b[b:])


def _canonical_pairs(a_br, a_mask_br, b_bs, b_mask_bs):
    """Orders each pair's responses canonically: `(lo, lo_mask, hi, hi_mask, sign_b)`.

    A batched forward pass is not exactly row-wise on every backend (XLA:CPU's matmuls round
    differently at different row offsets), so "swap a and b" cannot rely on the pass treating
    the two halves of a stacked batch alike. Instead each pair is stacked in an order that does
    not depend on which response is called a: lexicographic on the masked token ids. Swapping a
    and b then feeds the pass the very same input and only flips `sign_b`, which makes the logit
    antisymmetric bit for bit. A pair of identical responses gets sign 0, so d(y, y) = 0 exactly.
    Both responses are right-padded to one width first.
    """
    width = max(a_br.shape[1], b_bs.shape[1])
    a_br, a_mask_br = _pad_right(a_br, a_mask_br, width)
    b_br, b_mask_br = _pad_right(b_bs, b_mask_bs, width)
    key_a = jnp.where(a_mask_br, a_br, -1)  # Padding ids must not count; -1 is no real id.
    key_b = jnp.where(b_mask_br, b_br, -1)
    differ_br = key_a != key_b
    first_b = jnp.argmax(differ_br, axis=1)[:, None]
    a_lo_b = (
        jnp.take_along_axis(key_a, first_b, axis=1) < jnp.take_along_axis(key_b, first_b, axis=1)
    )[:, 0]
    sign_b = jnp.where(jnp.any(differ_br, axis=1), jnp.where(a_lo_b, 1.0, -1.0), 0.0)
    col = a_lo_b[:, None]
    lo = jnp.where(col, a_br, b_br.astype(a_br.dtype))
    hi = jnp.where(col, b_br.astype(a_br.dtype), a_br)
    return (
        lo,
        jnp.where(col, a_mask_br, b_mask_br),
        hi,
        jnp.where(col, b_mask_br, a_mask_br),
        sign_b,
    )


def _pad_right(tokens_br: Array, mask_br: Array, width: int) -> tuple[Array, Array]:
    tokens_br, mask_br = jnp.asarray(tokens_br), jnp.asarray(mask_br).astype(bool)
    extra = width - tokens_br.shape[1]
    if extra == 0:
        return tokens_br, mask_br
    return jnp.pad(tokens_br, ((0, 0), (0, extra))), jnp.pad(mask_br, ((0, 0), (0, extra)))


def _pair_args(batch: Mapping[str, Any]) -> list[Array]:
    return [jnp.asarray(batch[k]) for k in PAIR_FIELDS]


# Pure functions on split state (`graphdef, state = nnx.split(model)` once, outside jit), and
# the loss (docs/algorithms.md section 3: cross-entropy on pairwise labels, hard or soft).


def pair_logits(graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, Any]) -> Array:
    """d(x, a, b) [b] float32 of a `PreferenceModel`, or r(x, a) - r(x, b) of a `RewardModel`;
    P(a > b) = sigmoid of it. `label` is unused."""
    return nnx.merge(graphdef, state).logit(*_pair_args(batch))


def preference_cross_entropy(logit_b: Array, label_b: Array) -> Array:
    """Per-row -(p log sigmoid(d) + (1 - p) log sigmoid(-d)), [b] float32.

    log_sigmoid keeps it finite for any finite logit; with soft labels its minimum over d is the
    label's entropy, reached at sigmoid(d) = p, not zero.
    """
    logit_b = logit_b.astype(jnp.float32)
    p_b = label_b.astype(jnp.float32)
    return -(p_b * jax.nn.log_sigmoid(logit_b) + (1.0 - p_b) * jax.nn.log_sigmoid(-logit_b))


def pair_loss(
    graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, Any]
) -> tuple[Array, Array]:
    """The mean cross-entropy of a judge model on a labelled batch, and its logits
    (`pair_logits`): Bradley-Terry for a `RewardModel`. What the judge trainer minimizes."""
    logit_b = pair_logits(graphdef, state, batch)
    return jnp.mean(preference_cross_entropy(logit_b, jnp.asarray(batch["label"]))), logit_b


# Initialisation from a policy.


def load_backbone(model: PreferenceModel | RewardModel, policy_state: nnx.State) -> None:
    """Copies a `Transformer`'s params (e.g. the SFT policy's) into `model.backbone`, in place.

    The policy's `lm_head`, if untied, is skipped: the heads read hidden states, not logits.

    Raises:
      ValueError: if a parameter's shape differs (a checkpoint of another model shape).
    """
    source = nnx.State({k: v for k, v in policy_state.items() if k != "lm_head"})
    want, got = _shapes(nnx.state(model.backbone)), _shapes(source)
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))
        raise ValueError(
            f"policy parameters do not fit the backbone; differing (path, shape): {diff}"
        )
    nnx.update(model.backbone, source)


def _shapes(state: nnx.State) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return {jax.tree_util.keystr(path): tuple(np.shape(x)) for path, x in flat}
