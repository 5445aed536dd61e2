"""Online policy trainers of the Nash family and the RLHF baseline (ALGORITHMS.md 2, 4-6).

Every method starts from the SFT policy (``config.init_from``), which is also the reference mu,
and one generic jitted step (``trainer.py``) does the same things for all of them: sample a pair
of responses to a batch of prompts, ask the judge (the exact oracle, a preference model, or for
RLHF a reward model) about it, compute the extra log-probs the method needs, and take a gradient
step on the method's loss from ``nlhf_jax.losses``; then update what it keeps between steps.
Each method is one small module saying just that (``base.Method``):

================  =========================================  ===================================
method            samples                                    aux
================  =========================================  ===================================
``nash_md``       y ~ pi, y' ~ token-level mixture           --
                  softmax((1 - beta) l_pi + beta l_mu)
                  (beta = 0 self-play, 1 best response)
``nash_ema``      y ~ pi, y' ~ pi with EMA parameters        ``ema``
``nash_mp``       y ~ pi, y' ~ anchor pi_k (first M steps    ``anchor``, ``half``
                  of a 2M cycle) or the half-step policy
``online_ipo``    a, b ~ pi                                  --
``ipo_md``        a, b ~ the token-level mixture             --
``inpo``          a, b ~ pi_t, the policy at the round's     ``prev``
                  start (rounds of ``inpo_round_steps``)
``rlhf``          y ~ pi, scored by a reward model           --
================  =========================================  ===================================

Adding a method: a module with its ``Method`` and a line in ``METHODS`` below (and a config).
Prompts come from a ``nlhf_jax.prompts.PromptSource``: the synthetic task (with its exact
evaluation) or a prompts file / tfds set tokenized with the SFT run's tokenizer.
"""

from nlhf_jax.train.online import inpo, ipo, nash_ema, nash_md, nash_mp, rlhf
from nlhf_jax.train.online.base import Context, Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        nash_md.METHOD,
        nash_ema.METHOD,
        nash_mp.METHOD,
        ipo.ONLINE_IPO,
        ipo.IPO_MD,
        inpo.METHOD,
        rlhf.METHOD,
    )
}
ONLINE_METHODS = tuple(METHODS)

from nlhf_jax.train.online.trainer import build_online, check_judge_metrics  # noqa: E402

__all__ = ["METHODS", "ONLINE_METHODS", "Context", "Method", "build_online", "check_judge_metrics"]
