"""A Hugging Face reward model as the judge: a one-label ``*ForSequenceClassification``
checkpoint directory (Llama, Qwen2, Qwen3), ``--config.judge=DIR``.

    P(y > y' | x) = sigmoid(r(x, y) - r(x, y')),     r = the score at the last non-pad token

(Bradley-Terry, antisymmetric by construction), and ``r`` itself for RLHF. The backbone and
``score.weight`` load into our ``RewardModel`` (``nlhf_jax.models.hf.load_reward_model``), in
the judge's own dtype. Two paths, chosen by the tokenizers:

- the checkpoint's tokenizer is the policies' (same vocabulary, same special ids, an embedding
  table that holds every policy id): a ``ModelJudge``, jittable, inside the fused train step; it
  reads the policies' tokens as they are (the prompt as the run encoded it, with the chat
  template when ``data.chat_template`` is set, then the response);
- otherwise ``RetokenizedRewardJudge``, a host judge: each prompt and response is decoded with
  the policies' tokenizer, written as one conversation with the judge tokenizer's chat template
  (when it has one; else the prompt followed by the response) and encoded with the judge's
  tokenizer; its model still runs jitted, batched, on the run's mesh.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from nlhf_jax import parallel
from nlhf_jax.judges.host import HostModel, check_pad, decode_pairs, decode_rows
from nlhf_jax.judges.model import ModelJudge


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers give every text the same ids: one vocabulary, one set of special
    ids (pad, EOS, BOS)."""
    specials = ("pad_token_id", "eos_token_id", "bos_token_id")
    return a.get_vocab() == b.get_vocab() and all(getattr(a, n) == getattr(b, n) for n in specials)


def _rewards(graphdef, state, tokens_bt, mask_bt):
    """r of whole rows (the conversation in one right- or left-padded row, no separate prompt)."""
    model = nnx.merge(graphdef, state)
    return model.reward(tokens_bt[:, :0], mask_bt[:, :0], tokens_bt, mask_bt)


class RetokenizedRewardJudge:
    """A reward checkpoint on texts re-encoded with its own tokenizer: a host judge (module
    docstring), with a scalar reward for RLHF.

    Attributes:
      spec: the checkpoint directory, as named.
      host_model: the reward model on its own rows (``HostModel``; ``place`` shards it).
      tokenizer: the policies' tokenizer (decodes their tokens).
      judge_tokenizer: the checkpoint's (encodes the texts).
    """

    jittable = False
    has_reward = True

    def __init__(self, spec: str, judge: ModelJudge, tokenizer, judge_tokenizer):
        self.spec, self.tokenizer, self.judge_tokenizer = spec, tokenizer, judge_tokenizer
        pad = check_pad(spec, judge_tokenizer)
        self.host_model = HostModel(judge.graphdef, judge.state, _rewards, pad)

    def place(self, where: parallel.Placement) -> None:
        self.host_model.place(where)

    def encode(self, prompt: str, response: str) -> list[int]:
        """The judge's ids of one (prompt, response): its chat template's conversation when it
        has one (which holds its own special tokens), else the plain concatenation."""
        tok = self.judge_tokenizer
        if getattr(tok, "chat_template", None):
            turns = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            ]
            text = tok.apply_chat_template(turns, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(prompt + response)["input_ids"]

    def rewards(self, prompts, responses) -> np.ndarray:
        """r(x, y) float64 ``[n]`` of texts. Each distinct (prompt, response) is scored once, in
        sorted order, so the batch the model sees does not depend on the order asked."""
        keys = list(zip(prompts, responses, strict=True))
        unique = sorted(set(keys))
        scores = self.host_model([self.encode(x, y) for x, y in unique])
        index = {k: i for i, k in enumerate(unique)}
        return scores[[index[k] for k in keys]]

    def reward(self, prompt, prompt_mask, response, response_mask) -> np.ndarray:
        """r(x, y) [b] float64 of the policies' token arrays."""
        prompts = decode_rows(self.tokenizer, prompt, prompt_mask)
        return self.rewards(prompts, decode_rows(self.tokenizer, response, response_mask))

    def probability(self, prompts, responses_a, responses_b) -> np.ndarray:
        """sigmoid(r(x, a) - r(x, b)) float64 of texts; swapping a and b gives exactly 1 - P up
        to float64 rounding (both orders score the same rows)."""
        n = len(prompts)
        r = self.rewards(list(prompts) * 2, list(responses_a) + list(responses_b))
        return 1.0 / (1.0 + np.exp(-(r[:n] - r[n:])))

    def __call__(self, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b):
        """``P(a > b)`` [b] float64 of token arrays (the judge protocol)."""
        texts = decode_pairs(
            self.tokenizer, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b
        )
        return self.probability(*texts)


def load_reward(spec: str, tokenizer, judge_tokenizer, vocab_size: int | None, dtype: str):
    """The judge of a reward checkpoint: a ``ModelJudge`` when its tokenizer is the policies'
    (``same_tokenizer``) and its embedding table holds all ``vocab_size`` policy ids, else a
    ``RetokenizedRewardJudge``."""
    from nlhf_jax.models import hf

    pad = check_pad(spec, judge_tokenizer)
    config_pad = hf.read_config(spec).get("pad_token_id")
    # What transformers reads: its config's pad id when set (the tokenizer's otherwise).
    pad = pad if config_pad is None else config_pad
    with parallel.on_host():
        model = hf.load_reward_model(spec, pad_id=pad, dtype=dtype, param_dtype=dtype)
    judge = ModelJudge(*nnx.split(model), kind="reward_model")
    table = model.backbone.config.vocab_size
    if same_tokenizer(tokenizer, judge_tokenizer) and table >= (vocab_size or 0):
        return judge
    return RetokenizedRewardJudge(spec, judge, tokenizer, judge_tokenizer)
