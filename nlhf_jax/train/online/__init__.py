"""Online policy trainers of the Nash family and the RLHF baseline (docs/algorithms.md 2, 4-6).

Every method starts from the SFT policy (``config.init_from``), which is also the reference mu,
and one generic jitted step (``nlhf_jax.train.step.online_parts``) does the same things for all
of them: sample a pair of responses to a batch of prompts, ask the judge about it, compute the
extra log-probs the method needs, and take a gradient step on the method's loss from
``nlhf_jax.losses``; then update what it keeps between steps. Each method is one small module
saying just that (``base.Method``), with its hyperparameters as a frozen dataclass:

================  =========================================  ==========  ==================
method            samples                                    aux         hyperparameters
================  =========================================  ==========  ==================
``nash_md``       y ~ pi, y' ~ token-level mixture           --          tau, beta
                  softmax((1 - beta) l_pi + beta l_mu)
                  (beta = 0 self-play, 1 best response)
``nash_ema``      y ~ pi, y' ~ pi with EMA parameters        ``ema``     tau, ema_decay
``nash_mp``       y ~ pi, y' ~ anchor pi_k (first M steps    ``anchor``  tau, eta,
                  of a 2M cycle) or the half-step policy     ``half``    prox_steps
``online_ipo``    a, b ~ pi                                  --          tau
``ipo_md``        a, b ~ the token-level mixture             --          tau, beta
``inpo``          a, b ~ pi_t, the policy at the round's     ``prev``    tau, eta,
                  start (rounds of ``round_steps``)                      round_steps
``rlhf``          y ~ pi, scored by the judge's reward       --          tau
``sppo``          a, b ~ pi_t (or the best and worst of      ``prev``    eta,
                  ``samples`` = K); each log-ratio to pi_t               round_steps,
                  regressed on eta (P(y > pi_t) - 1/2)                   samples
``egpo``          a, b ~ pi at the half step, then at the     ``anchor``  tau
                  half-step policy; the full step's update
                  lands on the anchor (extragradient)
``comal``         a, b ~ pi_t (INPO's), against a reference  ``prev``    tau, eta,
                  reset to the policy every ``reset_steps``  ``anchor``  round_steps,
                                                                         reset_steps
``mpo``           a, b ~ pi_t, magnetic steps as INPO        ``prev``    tau, eta,
                  rounds toward a magnet moved every         ``magnet``  round_steps,
                  ``magnet_steps``                                       magnet_steps
``mnpo``          a, b ~ pi_t, against a population of the   ``pop_j``   tau, eta,
                  last ``len(weights)`` round starts         (one per    round_steps,
                                                             weight)     weights
``onpo``          a, b ~ pi, online IPO's loss, updated by   --          tau, optimism
                  optimistic Adam (its own optimizer)
================  =========================================  ==========  ==================

Adding a method: a module with its hyperparameters and ``register(Method(...))``, imported
below, and a config file (``configs/<method>.py``). Prompts come from ``nlhf_jax.sources``.
"""

from nlhf_jax.train.online import (  # noqa: F401
    comal,
    egpo,
    inpo,
    ipo,
    mnpo,
    mpo,
    nash_ema,
    nash_md,
    nash_mp,
    onpo,
    rlhf,
    sppo,
)
from nlhf_jax.train.online.base import METHODS, Context, Method, get, register
from nlhf_jax.train.online.trainer import build_online, check_judge_metrics, compile_online

__all__ = [
    "METHODS",
    "Context",
    "Method",
    "build_online",
    "check_judge_metrics",
    "compile_online",
    "get",
    "register",
]
