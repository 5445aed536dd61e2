"""Evaluation of policies on the enumerable synthetic task: exact where it can be, sampled where
a task's responses could not be enumerated.

    python -m nlhf_jax.evaluate --reference runs/sft [--judge runs/pm] [--out runs/eval] \
        [--tau 0.1] [--sampled 64] NAME=WORKDIR ...

Exact (teacher-forced scores of every well-formed response, float64 game quantities): the
win-rate matrix of the policies under the true oracle and under a learned judge, each policy's
duality gap to the tau-regularized NE, KL(pi || mu), KL(NE || pi) and its mass on malformed
responses (``exact``). Sampled: the win-rate matrix from N responses per prompt with standard
errors (``sampled``). ``evaluate_runs`` does both for a set of training runs (``head_to_head``).
"""

from nlhf_jax.evaluate.exact import (
    ExactEvaluator,
    enumerated_logprobs,
    judge_matrices,
    normalized,
    win_rate_matrix,
)
from nlhf_jax.evaluate.head_to_head import evaluate_runs
from nlhf_jax.evaluate.sampled import sample_responses, sampled_win_rates

__all__ = [
    "ExactEvaluator",
    "enumerated_logprobs",
    "evaluate_runs",
    "judge_matrices",
    "normalized",
    "sample_responses",
    "sampled_win_rates",
    "win_rate_matrix",
]
