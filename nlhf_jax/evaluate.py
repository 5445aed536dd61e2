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


class ExactEvaluator:
    """Exact game metrics of policies against a fixed reference (means over prompts).

    The preference matrices, each prompt's tau-regularized NE against the reference and the
    reference's own duality gap are fixed for a run, so they are computed once here; each call
    only scores the policy. Returns the duality gap, KL to the reference and from the NE, the
    win rate against the reference and the mass on malformed responses.
    """

    def __init__(self, task: SyntheticTask, logp_ref: np.ndarray, tau: float):
        mu = np.exp(logp_ref)
        self.tau = tau
        self.mu = mu / mu.sum(-1, keepdims=True)
        self.P = task.preference_matrices()
        self.nash = task.exact_nash(self.mu, tau)
        self.reference_gap = float(self._gap(self.mu).mean())

    def _gap(self, pi: np.ndarray) -> np.ndarray:
        with jax.enable_x64(True):
            P64, mu64, pi64 = (jnp.asarray(a, jnp.float64) for a in (self.P, self.mu, pi))
            gap = jax.vmap(solvers.duality_gap, (0, 0, None, 0))(P64, mu64, self.tau, pi64)
            return np.asarray(gap)

    def __call__(self, logp_pi: np.ndarray) -> dict:
        pi = np.exp(logp_pi)
        invalid = 1.0 - pi.sum(-1)
        pi = pi / pi.sum(-1, keepdims=True)
        with jax.enable_x64(True):
            P64, pi64, mu64, ne64 = (
                jnp.asarray(a, jnp.float64) for a in (self.P, pi, self.mu, self.nash)
            )
            kl_ref = solvers.kl(pi64, mu64)
            kl_nash = solvers.kl(ne64, pi64)
            win = jnp.einsum("xi,xij,xj->x", pi64, P64, mu64)
        return {
            "exact/duality_gap": float(self._gap(pi).mean()),
            "exact/reference_duality_gap": self.reference_gap,
            "exact/kl_to_reference": float(kl_ref.mean()),
            "exact/kl_nash_to_policy": float(kl_nash.mean()),
            "exact/win_rate_vs_reference": float(win.mean()),
            "exact/invalid_mass": float(invalid.mean()),
        }
