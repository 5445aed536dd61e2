"""Exact evaluation of policies on the enumerable synthetic task.

A policy's distribution over every well-formed response of every prompt comes from teacher-forced
scoring (no sampling), so its KL to the reference, its duality gap in the tau-regularized game
(against the exact NE of each prompt) and its win rate are exact. Mass the policy puts on
malformed responses is reported as ``invalid_mass``; the game quantities use the distribution
renormalized over well-formed responses (stated, since a policy can leave the game).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.sampling import score_tokens
from nlhf_jax.tabular import solvers
from nlhf_jax.tasks.synthetic import SyntheticTask


def enumerated_logprobs(
    graphdef: nnx.GraphDef, params: nnx.State, task: SyntheticTask
) -> np.ndarray:
    """``log pi(y | x)`` [prompts, responses] of every well-formed response, EOS included."""
    prompts, resp = task.prompts(), task.responses()
    X, R = len(prompts), len(resp)
    x = np.repeat(prompts, R, axis=0)
    y = np.tile(resp, (X, 1))
    lp = score_tokens(graphdef, params, x, np.ones_like(x, bool), y, np.ones_like(y, bool))
    return np.asarray(jnp.sum(lp, -1), np.float64).reshape(X, R)


def exact_metrics(
    task: SyntheticTask, logp_pi: np.ndarray, logp_ref: np.ndarray, tau: float
) -> dict:
    """Duality gap, KL to the reference and to the NE, win rate against the reference (means over
    prompts), all exact; the NE is the tau-regularized one against the reference."""
    pi, mu = np.exp(logp_pi), np.exp(logp_ref)
    invalid = 1.0 - pi.sum(-1)
    pi, mu = pi / pi.sum(-1, keepdims=True), mu / mu.sum(-1, keepdims=True)
    P = task.preference_matrices()
    nash = task.exact_nash(mu, tau)
    with jax.enable_x64(True):
        P64, pi64, mu64, ne64 = (jnp.asarray(a, jnp.float64) for a in (P, pi, mu, nash))
        gap = jax.vmap(solvers.duality_gap, (0, 0, None, 0))(P64, mu64, tau, pi64)
        kl_ref = solvers.kl(pi64, mu64)
        kl_nash = solvers.kl(ne64, pi64)
        win = jnp.einsum("xi,xij,xj->x", pi64, P64, mu64)
        nash_gap = jax.vmap(solvers.duality_gap, (0, 0, None, 0))(P64, mu64, tau, mu64)
    return {
        "exact/duality_gap": float(gap.mean()),
        "exact/reference_duality_gap": float(nash_gap.mean()),
        "exact/kl_to_reference": float(kl_ref.mean()),
        "exact/kl_nash_to_policy": float(kl_nash.mean()),
        "exact/win_rate_vs_reference": float(win.mean()),
        "exact/invalid_mass": float(invalid.mean()),
    }
