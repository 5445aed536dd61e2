"""A Python function on decoded texts as a judge: ``--config.judge=module:function``.

    def my_judge(prompts: list[str], responses_a: list[str], responses_b: list[str]):
        return np.array([...])   # P(a_i > b_i | prompts_i), shape [b], values in [0, 1]

The function receives the policies' prompts and responses decoded with their tokenizer (special
tokens dropped), and must return a NumPy array of shape ``[b]`` with every value in [0, 1]:
anything else stops the run with one line naming the function. A host judge: the train step
splits around it (``nlhf_jax.train.split``). It is antisymmetric only if the function is.
"""

from __future__ import annotations

import importlib
import re

import numpy as np

from nlhf_jax.errors import UserError
from nlhf_jax.judges.host import check_probabilities, decode_pairs

_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def is_function_spec(spec: str) -> bool:
    """Whether ``spec`` has the form ``module.path:function``."""
    return bool(_SPEC.fullmatch(spec))


class FunctionJudge:
    """``P(a > b | x)`` from a host function of the decoded texts (module docstring).

    Attributes:
      spec: ``module:function``, as named.
      fn: the function.
      tokenizer: the policies' tokenizer (decodes the token ids).
    """

    jittable = False

    def __init__(self, spec: str, fn, tokenizer):
        self.spec, self.fn, self.tokenizer = spec, fn, tokenizer

    def probability(self, prompts, responses_a, responses_b) -> np.ndarray:
        """The function's answer on texts, checked: float64 ``[b]`` in [0, 1]."""
        out = self.fn(list(prompts), list(responses_a), list(responses_b))
        return check_probabilities(f"judge {self.spec}: the function", out, len(prompts))

    def __call__(self, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b):
        """``P(a > b)`` [b] float64 of token arrays (the judge protocol)."""
        texts = decode_pairs(
            self.tokenizer, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b
        )
        return self.probability(*texts)


def load_function(spec: str, tokenizer) -> FunctionJudge:
    """The judge of ``module:function``; the module is imported (it must be importable, e.g.
    on ``PYTHONPATH`` or installed)."""
    if tokenizer is None:
        raise UserError(
            f"judge {spec}: a function judge reads decoded texts, which needs the policies' "
            "tokenizer (a text run), not the synthetic task"
        )
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"judge {spec}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        what = "has no attribute" if fn is None else "has a non-callable"
        raise UserError(f"judge {spec}: module {module_name!r} {what} {name!r}")
    return FunctionJudge(spec, fn, tokenizer)
