"""Metrics of pairwise preference predictions: accuracy, log-loss, calibration error.

Pure, jittable functions of a predicted `prob_b = P(a > b)` and the `label_b` of the pair (hard
0/1 or soft in [0, 1]), so they score a learned model and an exact oracle alike (both speak the
`nlhf_jax.judges.Judge` interface). Every result is a float32 scalar.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

ECE_BINS = 10


def pairwise_accuracy(prob_b: Array, label_b: Array) -> Array:
    """Fraction of pairs whose preferred response the prediction picks.

    The target is the hard label `label > 1/2`. Rows with label exactly 1/2 prefer neither
    response and are excluded (NaN if no row is left). A prediction of exactly 1/2 is a tie and
    scores 1/2, the expected accuracy of breaking it by a coin flip; so a constant-1/2 judge
    scores 1/2 whatever the labels, and an antisymmetric judge scores the same on a pair and on
    its swap.
    """
    prob_b, label_b = prob_b.astype(jnp.float32), label_b.astype(jnp.float32)
    counted_b = label_b != 0.5
    hit_b = jnp.where(prob_b == 0.5, 0.5, ((prob_b > 0.5) == (label_b > 0.5)).astype(jnp.float32))
    n = jnp.sum(counted_b)
    total = jnp.sum(jnp.where(counted_b, hit_b, 0.0))
    return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.nan)


def log_loss(prob_b: Array, label_b: Array) -> Array:
    """Mean cross-entropy -(p log q + (1 - p) log(1 - q)) of predictions q against labels p.

    q is clipped to [eps, 1 - eps] with eps the float32 machine epsilon (as sklearn does), so a
    confident wrong prediction costs about 15.9 nats instead of inf. With soft labels the floor is
    the labels' mean entropy, not zero. Train on logits with `preference_cross_entropy` instead:
    it needs no clipping.
    """
    eps = jnp.finfo(jnp.float32).eps
    q_b = jnp.clip(prob_b.astype(jnp.float32), eps, 1.0 - eps)
    p_b = label_b.astype(jnp.float32)
    return -jnp.mean(p_b * jnp.log(q_b) + (1.0 - p_b) * jnp.log1p(-q_b))


def expected_calibration_error(
    prob_b: Array, label_b: Array, *, num_bins: int = ECE_BINS, both_orders: bool = True
) -> Array:
    """Binned expected calibration error: sum over bins of (n_bin / n) |mean q - mean p|.

    Bins split [0, 1] into `num_bins` equal widths (default 10); q = 1 falls in the last bin.
    Soft labels enter as their expected frequency. With `both_orders` (the default) each pair is
    counted twice, as (q, p) and as its swap (1 - q, 1 - p): the result then does not depend on
    which response a dataset calls "a", and is the ECE of an antisymmetric judge over ordered
    pairs. With `both_orders=False` only the given order is counted.
    """
    q_n, p_n = prob_b.astype(jnp.float32), label_b.astype(jnp.float32)
    if both_orders:
        q_n = jnp.concatenate([q_n, 1.0 - q_n])
        p_n = jnp.concatenate([p_n, 1.0 - p_n])
    bin_n = jnp.clip(jnp.floor(q_n * num_bins).astype(jnp.int32), 0, num_bins - 1)
    onehot_nk = jax.nn.one_hot(bin_n, num_bins, dtype=jnp.float32)
    count_k = onehot_nk.sum(axis=0)
    # |sum q - sum p| / n per bin equals (n_bin / n) |mean q - mean p|; empty bins add zero.
    gap_k = jnp.abs(onehot_nk.T @ q_n - onehot_nk.T @ p_n)
    return jnp.sum(gap_k) / jnp.maximum(jnp.sum(count_k), 1.0)


def preference_metrics(prob_b: Array, label_b: Array) -> dict[str, Array]:
    """`accuracy`, `log_loss` and `ece` (10 bins, both orders) of one batch, for logging."""
    return {
        "accuracy": pairwise_accuracy(prob_b, label_b),
        "log_loss": log_loss(prob_b, label_b),
        "ece": expected_calibration_error(prob_b, label_b),
    }
