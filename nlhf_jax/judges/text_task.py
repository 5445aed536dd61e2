"""The text task's exact judge (``nlhf_jax.tasks.text``) on token ids: a host judge.

It decodes the tokens to text with the policies' tokenizer and parses them in Python, so it is
not jittable: it evaluates policies, and trains them only through a step split into a jitted
rollout, this judge on the host, and a jitted update.
"""

from __future__ import annotations

import numpy as np

from nlhf_jax.tasks.text import TextTask


class TextTaskJudge:
    """``P(a > b | x)`` of a ``TextTask`` on token ids, with the judge signature."""

    jittable = False

    def __init__(self, task: TextTask, tokenizer):
        self.task, self.tokenizer = task, tokenizer

    @classmethod
    def from_file(cls, path: str, tokenizer) -> TextTaskJudge:
        return cls(TextTask.from_json(path), tokenizer)

    def _decode(self, ids, mask) -> list[str]:
        ids, mask = np.asarray(ids), np.asarray(mask, bool)
        rows = [row[m].tolist() for row, m in zip(ids, mask, strict=True)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
        """The judge's logit [b] float64 (prompts left-padded, responses right-padded)."""
        return self.task.logit(
            self._decode(prompt, prompt_mask),
            self._decode(response_a, response_a_mask),
            self._decode(response_b, response_b_mask),
        )

    def __call__(self, *pair_arrays):
        """``P(a > b | prompt)`` [b] float64; arguments as in ``logit``."""
        return 1.0 / (1.0 + np.exp(-self.logit(*pair_arrays)))
