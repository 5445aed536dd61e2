"""Exact evaluation of policies on the enumerable synthetic task.

A policy's distribution over every well-formed response of every prompt comes from teacher-forced
scoring (no sampling), so its KL to the reference, its duality gap in the tau-regularized game
(against the exact NE of each prompt) and its win rates are exact. Mass the policy puts on
malformed responses is reported as ``invalid_mass``; the game quantities use the distribution
renormalized over well-formed responses (stated, since a policy can leave the game).

Win rates are the bilinear form ``M[i, j] = mean_x pi_i(.|x)^T P_x pi_j(.|x)``, with ``P_x`` the
oracle's matrix (``SyntheticTask.preference_matrices``) or a judge's (``judge_matrices``, every
ordered pair of responses run through the judge): exact for that preference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.judges import Judge, ModelJudge
from nlhf_jax.logprobs import score_tokens
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
    exploitability in the unregularized game (``2 max_y P(y > pi) - 1``: the duality gap at
    tau = 0, what the methods that aim at the unregularized NE, COMAL, MPO and OMWU, bring
    to 0), the win rate against the reference and the mass on malformed responses.
    """

    def __init__(self, task: SyntheticTask, logp_ref: np.ndarray, tau: float):
        mu = np.exp(logp_ref)
        self.tau = tau
        self.mu = mu / mu.sum(-1, keepdims=True)
        self.P = task.preference_matrices()
        self.nash = self.nash_of(self.P)
        self.reference_gap = float(self._gap(self.mu).mean())

    def nash_of(self, P_xrr: np.ndarray) -> np.ndarray:
        """The exact tau-regularized NE against this reference of a game: the true one
        (``self.nash``) or another, e.g. a learned judge's."""
        return solvers.regularized_nash_batch(P_xrr, self.mu, self.tau)

    def gap_of(self, pi_xr: np.ndarray) -> float:
        """The prompt-averaged duality gap of ``pi [prompts, R]`` in the true game."""
        return float(self._gap(pi_xr).mean())

    def _gap(self, pi: np.ndarray, tau: float | None = None) -> np.ndarray:
        """Each prompt's duality gap of ``pi`` in the game regularized by ``tau`` (default the
        evaluator's; 0: the unregularized game's exploitability)."""
        tau = self.tau if tau is None else tau
        with jax.enable_x64(True):
            P64, mu64, pi64 = (jnp.asarray(a, jnp.float64) for a in (self.P, self.mu, pi))
            gap = jax.vmap(solvers.duality_gap, (0, 0, None, 0))(P64, mu64, tau, pi64)
            return np.asarray(gap)

    def __call__(self, logp_pi: np.ndarray) -> dict:
        pi, invalid = normalized(logp_pi)
        with jax.enable_x64(True):
            P64, pi64, mu64, ne64 = (
                jnp.asarray(a, jnp.float64) for a in (self.P, pi, self.mu, self.nash)
            )
            # To numpy inside the x64 context: a jax float64 array reduced outside it is float32.
            kl_ref = np.asarray(solvers.kl(pi64, mu64))
            kl_nash = np.asarray(solvers.kl(ne64, pi64))
            win = np.asarray(jnp.einsum("xi,xij,xj->x", pi64, P64, mu64))
        return {
            "exact/duality_gap": float(self._gap(pi).mean()),
            "exact/reference_duality_gap": self.reference_gap,
            "exact/exploitability": float(self._gap(pi, 0).mean()),
            "exact/kl_to_reference": float(kl_ref.mean()),
            "exact/kl_nash_to_policy": float(kl_nash.mean()),
            "exact/win_rate_vs_reference": float(win.mean()),
            "exact/invalid_mass": float(invalid.mean()),
        }


def normalized(logp_xr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pi [..., X, R]`` renormalized over the well-formed responses, and the mass it had on
    malformed ones ``[..., X]`` (1 - the sum over well-formed responses), from log-probs."""
    pi = np.exp(np.asarray(logp_xr, np.float64))
    total = pi.sum(-1, keepdims=True)
    return pi / total, 1.0 - total[..., 0]


def win_rate_matrix(pi_mxr: np.ndarray, P_xrr: np.ndarray) -> np.ndarray:
    """``M [m, m]``, ``M[i, j] = mean_x pi_i(.|x)^T P_x pi_j(.|x)``: how often policy i beats
    policy j, exactly, under the preference ``P_x`` (float64). ``M + M^T = 1`` when ``P`` is
    antisymmetric (``P + P^T = 1``) and each ``pi_i(.|x)`` sums to one."""
    pi, P = np.asarray(pi_mxr, np.float64), np.asarray(P_xrr, np.float64)
    return np.einsum("ixr,xrs,jxs->ij", pi, P, pi) / P.shape[0]


def judge_matrices(judge: Judge, task: SyntheticTask, batch_size: int = 4096) -> np.ndarray:
    """``P[x, i, j] = judge(y_i > y_j | x)`` [X, R, R] float64 over the enumerated responses.

    Every ordered pair is judged (no antisymmetry assumed), in jitted batches of ``batch_size``
    pairs (the last one padded, so there is one compilation), through ``judge_function``.
    """
    prompts, resp = task.prompts(), task.responses()
    X, R = len(prompts), len(resp)
    x, i, j = (
        a.ravel() for a in np.meshgrid(np.arange(X), np.arange(R), np.arange(R), indexing="ij")
    )
    call = judge_function(judge)
    batch_size = min(batch_size, len(x))
    out = []
    for start in range(0, len(x), batch_size):
        rows = np.arange(start, start + batch_size) % len(x)  # wraps around: padding
        xb, a, b = prompts[x[rows]], resp[i[rows]], resp[j[rows]]
        ones = np.ones_like(a, bool)
        p = call(xb, np.ones_like(xb, bool), a, ones, b, ones)
        out.append(p[: len(x) - start])
    return np.concatenate(out).reshape(X, R, R)


_apply = jax.jit(lambda judge, *args: judge.logit(*args))


def judge_function(judge: Judge):
    """The judge as a function of the six arrays returning ``P(a > b)`` in float64.

    Judges with an antisymmetric ``logit`` (``ModelJudge``, the synthetic oracle) are read
    through it and the sigmoid taken in float64, so that ``P(a > b) + P(b > a) = 1`` to float64
    rounding (a float32 sigmoid misses it by ~1e-7). A ``ModelJudge`` is jitted with itself as
    an argument (a pytree: its parameters are not baked in as constants); any other judge with
    a ``logit`` (the host-side text judge) is called as it is.
    """
    if isinstance(judge, ModelJudge):
        logit = lambda *args: _apply(judge, *args)
    elif hasattr(judge, "logit"):
        logit = judge.logit
    else:
        return lambda *args: np.asarray(judge(*args), np.float64)
    return lambda *args: 1.0 / (1.0 + np.exp(-np.asarray(logit(*args), np.float64)))


def judge_accuracy_on_policy(P_judge_xrr: np.ndarray, P_true_xrr: np.ndarray, pi_xr) -> float:
    """How often a judge picks the oracle's winner on pairs the policy ``pi`` samples, exactly.

    A pair is two independent draws ``y, y' ~ pi(.|x)`` (well-formed, renormalized) with
    ``y != y'``, labelled by a draw from the oracle; the judge is right when it gives the label's
    winner more than 1/2 (a judge at exactly 1/2 scores 1/2). Mean over prompts of the expected
    accuracy, the pair weights ``pi(y) pi(y')`` renormalized per prompt (a prompt on which pi is
    deterministic has no pair and is left out).
    """
    pi = np.asarray(pi_xr, np.float64)
    J, P = np.asarray(P_judge_xrr, np.float64), np.asarray(P_true_xrr, np.float64)
    R = pi.shape[-1]
    w = pi[:, :, None] * pi[:, None, :] * (1.0 - np.eye(R))
    right = P * (J > 0.5) + (1.0 - P) * (J < 0.5) + 0.5 * (J == 0.5)
    mass = w.sum((1, 2))
    has_pairs = mass > 1e-12
    per_prompt = (w * right).sum((1, 2))[has_pairs] / mass[has_pairs]
    return float(per_prompt.mean())
