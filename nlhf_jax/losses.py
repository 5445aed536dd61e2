"""Pure losses of every method, on per-token log-probabilities of sampled responses.

Inputs are arrays, never models: ``logp_bn`` (the policy's per-token log-probs of a response,
differentiable), ``ref_logp_bn`` (the reference's, constant), ``mask_bn`` (True on response
tokens), and a per-sequence preference or reward. A sequence's log-probability is the masked
sum over tokens. Each loss cites its equation in docs/algorithms.md.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
_sg = jax.lax.stop_gradient


def sequence_logprob(logp_bn: Array, mask_bn: Array) -> Array:
    """log pi(y | x) [b]: the masked sum of per-token log-probs."""
    return jnp.sum(jnp.where(mask_bn, logp_bn, 0.0), axis=-1)


def reward_to_go(x_bn: Array, mask_bn: Array) -> Array:
    """``out[:, n] = sum_{m >= n} x[:, m]`` over masked tokens (a reversed cumulative sum)."""
    x = jnp.where(mask_bn, x_bn, 0.0)
    return jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1)


def sft_loss(logp_bn: Array, mask_bn: Array) -> Array:
    """Negative log-likelihood per response token (mean over all masked tokens)."""
    return -jnp.sum(jnp.where(mask_bn, logp_bn, 0.0)) / jnp.maximum(jnp.sum(mask_bn), 1)


def regularized_pg_loss(logp_bn: Array, penalty_bn: Array, mask_bn: Array, score_b: Array) -> Array:
    """Score-function surrogate of ``E[score] - E[sum of per-token penalties]`` (docs/algorithms.md
    section 2).

    Its gradient is ``mean_b sum_n grad log pi(y_n | y_<n) * A_bn`` with
    ``A_bn = score_b - sum_{m >= n} penalty_bm`` (reward-to-go: a token cannot affect the
    penalties before it). For the KL, ``penalty = tau (log pi - log mu)`` per token: the score-
    function form of ``grad tau KL(pi || mu)``. Never ``tau (sum log pi - sum log mu)`` as a plain
    loss term: its gradient is ``tau E[grad log pi]``, which is zero in expectation (no KL at all).

    Args:
      logp_bn: policy log-probs of the sampled tokens (the only differentiable input).
      penalty_bn: per-token penalty (stop-gradient is applied here).
      mask_bn: True on response tokens.
      score_b: per-sequence score, e.g. ``P(y > y') - 1/2`` (stop-gradient applied).
    """
    advantage_bn = _sg(score_b)[:, None] - reward_to_go(_sg(penalty_bn), mask_bn)
    return -jnp.mean(jnp.sum(jnp.where(mask_bn, logp_bn * advantage_bn, 0.0), axis=-1))


def kl_penalty(logp_bn: Array, ref_logp_bn: Array, tau) -> Array:
    """``tau (log pi - log mu)`` per token: the KL(pi || mu) penalty of Nash-MD-PG and RLHF."""
    return tau * (logp_bn - ref_logp_bn)


def nash_md_pg_loss(
    logp_bn: Array, ref_logp_bn: Array, mask_bn: Array, preference_b: Array, tau
) -> Array:
    """Nash-MD-PG (docs/algorithms.md 2): y ~ pi, y' ~ the opponent (a token-level mixture for
    Nash-MD, EMA parameters for Nash-EMA), ``preference_b = P(y > y' | x)``, the 1/2 baseline,
    and the per-token KL to the reference with reward-to-go."""
    return regularized_pg_loss(
        logp_bn, kl_penalty(logp_bn, ref_logp_bn, tau), mask_bn, preference_b - 0.5
    )


def leave_one_out_advantage(reward_b: Array) -> Array:
    """``r_b`` minus the mean reward of the batch's other rows: a baseline that does not depend
    on the row it is subtracted from, so the policy gradient stays unbiased."""
    b = reward_b.shape[0]
    return reward_b - (jnp.sum(reward_b) - reward_b) / jnp.maximum(b - 1, 1)


def rlhf_pg_loss(
    logp_bn: Array, ref_logp_bn: Array, mask_bn: Array, advantage_b: Array, tau
) -> Array:
    """The RLHF baseline: regularized policy gradient on a reward's advantage (the reward minus
    a baseline, e.g. ``leave_one_out_advantage``, computed over the whole batch)."""
    return regularized_pg_loss(logp_bn, kl_penalty(logp_bn, ref_logp_bn, tau), mask_bn, advantage_b)


def nash_mp_penalty(logp_bn, ref_logp_bn, anchor_logp_bn, beta, eta) -> Array:
    """Per-token penalty of a Nash-MP prox step (docs/algorithms.md 4, practical version):
    ``beta KL(pi || mu) + (beta / eta) KL(pi || pi_k)`` in score-function form."""
    return beta * (logp_bn - ref_logp_bn) + (beta / eta) * (logp_bn - anchor_logp_bn)


def nash_mp_loss(logp_bn, ref_logp_bn, anchor_logp_bn, mask_bn, preference_b, beta, eta):
    """M policy-gradient steps on this loss approximate one prox step: maximize
    ``E[P(y > y')] - beta KL(pi||mu) - (beta/eta) KL(pi||pi_k)`` with y' from the step's opponent
    (the anchor pi_k for the half step, the half-step policy for the full step)."""
    penalty = nash_mp_penalty(logp_bn, ref_logp_bn, anchor_logp_bn, beta, eta)
    return regularized_pg_loss(logp_bn, penalty, mask_bn, preference_b - 0.5)


def ipo_loss(
    logp_a_bn, ref_logp_a_bn, mask_a_bn, logp_b_bn, ref_logp_b_bn, mask_b_bn, label_b, tau
) -> Array:
    """Online IPO / IPO-MD with soft labels (docs/algorithms.md 5): ``h`` = the log-ratio contrast
    ``log pi(a)/mu(a) - log pi(b)/mu(b)``; the ordering a > b has weight ``label = P(a > b)``:
    ``mean[p (h - 1/(2 tau))^2 + (1 - p)(h + 1/(2 tau))^2]``. Online IPO draws a and b from the
    policy, IPO-MD from the token-level mixture (both stop-gradient)."""
    h_b = (sequence_logprob(logp_a_bn, mask_a_bn) - sequence_logprob(ref_logp_a_bn, mask_a_bn)) - (
        sequence_logprob(logp_b_bn, mask_b_bn) - sequence_logprob(ref_logp_b_bn, mask_b_bn)
    )
    target = 1.0 / (2.0 * tau)
    p = _sg(label_b)
    return jnp.mean(p * (h_b - target) ** 2 + (1.0 - p) * (h_b + target) ** 2)


def inpo_loss(
    logp_a_bn,
    ref_logp_a_bn,
    prev_logp_a_bn,
    mask_a_bn,
    logp_b_bn,
    ref_logp_b_bn,
    prev_logp_b_bn,
    mask_b_bn,
    label_b,
    tau,
    eta,
) -> Array:
    """INPO (docs/algorithms.md 6) on pairs sampled from ``pi_t`` (``prev``), soft-ordered by the
    preference like IPO: ``h_t = log pi(a)/pi(b) - (tau/eta) log mu(a)/mu(b)
    - (1 - tau/eta) log pi_t(a)/pi_t(b)``, target ``1/(2 eta)``. With ``pi_t = mu`` it is IPO with
    tau replaced by eta."""
    seq = sequence_logprob
    r = tau / eta
    h_b = (
        (seq(logp_a_bn, mask_a_bn) - seq(logp_b_bn, mask_b_bn))
        - r * (seq(ref_logp_a_bn, mask_a_bn) - seq(ref_logp_b_bn, mask_b_bn))
        - (1.0 - r) * (seq(prev_logp_a_bn, mask_a_bn) - seq(prev_logp_b_bn, mask_b_bn))
    )
    target = 1.0 / (2.0 * eta)
    p = _sg(label_b)
    return jnp.mean(p * (h_b - target) ** 2 + (1.0 - p) * (h_b + target) ** 2)


def sppo_loss(
    logp_a_bn, prev_logp_a_bn, mask_a_bn, logp_b_bn, prev_logp_b_bn, mask_b_bn, label_b, eta,
    win_b=None,
) -> Array:  # fmt: skip
    """SPPO (docs/algorithms.md 7 and 11) on a pair a, b ~ pi_t (``prev``): each response's
    log-ratio ``log pi(y)/pi_t(y)`` regressed on ``eta (P(y > pi_t) - 1/2)``. ``label_b``
    estimates ``P(a > pi_t)`` and ``win_b`` ``P(b > pi_t)``; without ``win_b`` the pair is
    the only sample, ``label_b`` is the judged ``P(a > b)`` and ``P(b > pi_t)`` is estimated by
    ``1 - P(a > b)`` (the other sample of pi_t; unbiased)."""
    seq = sequence_logprob
    p = _sg(label_b)
    q = 1.0 - p if win_b is None else _sg(win_b)
    d_a = seq(logp_a_bn - prev_logp_a_bn, mask_a_bn)
    d_b = seq(logp_b_bn - prev_logp_b_bn, mask_b_bn)
    return jnp.mean((d_a - eta * (p - 0.5)) ** 2 + (d_b - eta * (q - 0.5)) ** 2)


def ema_update(ema, params, decay):
    """Nash-EMA-PG's opponent: ``ema <- decay * ema + (1 - decay) * params`` leaf by leaf
    (NLHF's coefficients 0.999, 0.9995; the exact recursion the paper used is open)."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def sequence_kl_estimate(logp_bn: Array, ref_logp_bn: Array, mask_bn: Array) -> Array:
    """Monte-Carlo estimate of KL(pi || mu) from samples of pi: mean of log pi(y) - log mu(y)."""
    return jnp.mean(sequence_logprob(logp_bn - ref_logp_bn, mask_bn))


# RLP-UML (docs/algorithms.md section 8): the multi-view information bottleneck a refreshed
# judge adds to its loss, ``L_M = -I(z1; z2) + SKL`` over two policy samples of one prompt.


def gaussian_kl(mu1: Array, logvar1: Array, mu2: Array, logvar2: Array) -> Array:
    """KL(N(mu1, diag e^logvar1) || N(mu2, diag e^logvar2)) per row [b] (summed over dims)."""
    var1, var2 = jnp.exp(logvar1), jnp.exp(logvar2)
    per_dim = 0.5 * (logvar2 - logvar1 + (var1 + (mu1 - mu2) ** 2) / var2 - 1.0)
    return jnp.sum(per_dim, axis=-1)


def symmetric_gaussian_kl(mu1: Array, logvar1: Array, mu2: Array, logvar2: Array) -> Array:
    """The mean of both KL directions per row [b]: zero iff the two codes' laws are equal."""
    return 0.5 * (gaussian_kl(mu1, logvar1, mu2, logvar2) + gaussian_kl(mu2, logvar2, mu1, logvar1))


def jsd_mutual_information(joint_b: Array, marginal_b: Array) -> Array:
    """The Jensen-Shannon estimate of I(z1; z2) from critic scores (Hjelm et al., Deep InfoMax).

    ``joint_b = T(z1_i, z2_i)`` on matched pairs (one prompt's two views) and
    ``marginal_b = T(z1_i, z2_j)`` on mismatched ones (a draw from p(z1) p(z2)). The value is
    ``E_joint[-softplus(-T)] - E_marginal[softplus(T)] + 2 log 2``: for the best critic it is
    ``2 JSD(p(z1, z2) || p(z1) p(z2))``, which is 0 for independent codes and grows with their
    dependence (at most 2 log 2). The constant does not change the gradient.
    """
    return (
        jnp.mean(-jax.nn.softplus(-joint_b))
        - jnp.mean(jax.nn.softplus(marginal_b))
        + 2.0 * jnp.log(2.0)
    )


def multiview_bottleneck_loss(
    critic: Callable[[Array, Array], Array],
    z1: Array,
    z2: Array,
    mu1: Array,
    logvar1: Array,
    mu2: Array,
    logvar2: Array,
) -> tuple[Array, dict]:
    """``L_M = -I(z1; z2) + mean_b SKL(p(z|v1) || p(z|v2))`` and its two terms.

    Rows of ``z1``/``z2`` [b, k] are the two views of one prompt; the marginal pairs pair each
    ``z1`` with the next row's ``z2`` (another prompt, the batch being shuffled).
    """
    mi = jsd_mutual_information(critic(z1, z2), critic(z1, jnp.roll(z2, 1, axis=0)))
    skl = jnp.mean(symmetric_gaussian_kl(mu1, logvar1, mu2, logvar2))
    return -mi + skl, {"uml/mutual_information": mi, "uml/symmetric_kl": skl}
