"""The pipelines' configs: the demo's (``configs/demo.py``) and RLP's (``configs/rlp_*.py``,
``configs/nash_md_rlp.py``), the policies the demo compares, and the keys each pipeline adds to
the shared ones (``nlhf_jax.pipelines.stages.pipeline_config``)."""

from __future__ import annotations

import ml_collections

from nlhf_jax.pipelines.stages import pipeline_config
from nlhf_jax.train.defaults import refresh_config

# name -> (method, overrides): the policies compared (NLHF Table 1's MD, SP, BR and RLHF, and
# the rest of the family).
POLICIES = {
    "rlhf": ("rlhf", {}),
    "self_play": ("nash_md", {"beta": 0.0}),
    "nash_md": ("nash_md", {"beta": 0.125}),
    "best_response": ("nash_md", {"beta": 1.0}),
    "nash_ema": ("nash_ema", {}),
    "nash_mp": ("nash_mp", {}),
    "online_ipo": ("online_ipo", {}),
    "inpo": ("inpo", {}),
}
# name -> (method, overrides): the methods published since the seeds (docs/algorithms.md section
# 11), with rounds that fit the demo's 300 steps; named in config.demo.policies (configs/
# demo_since.py compares them with Nash-MD-PG and INPO), not in the demo's default list.
SINCE_POLICIES = {
    # At its default eta 10, SPPO (no KL to mu) left mu's support here: 62% invalid mass at
    # step 200, stopped by the divergence guard (docs/results.md).
    "sppo": ("sppo", {"round_steps": 30, "eta": 1.0}),
    "egpo": ("egpo", {}),
    "comal": ("comal", {"round_steps": 25, "reset_steps": 100}),
    "mpo": ("mpo", {"round_steps": 25, "magnet_steps": 100}),
    "mnpo": ("mnpo", {"round_steps": 30}),
    "onpo": ("onpo", {}),
}
# name -> (stage-1 policy, refresh): RLP (nlhf_jax/pipelines/rlp.py), after the policies above: the
# judge of the stage-1 policy is retrained on its samples, and the method trained again from SFT.
RLP_POLICIES = {
    "rlp_uml": ("rlhf", "uml"),
    "rlp_spg": ("rlhf", "spg"),
    "nash_md_rlp": ("nash_md", "spg+uml"),
}


def demo_config() -> ml_collections.ConfigDict:
    c = pipeline_config("demo")
    c.rlp = rlp_section()
    c.demo = ml_collections.ConfigDict(
        dict(
            sft_steps=300,
            preference_steps=600,
            policy_steps=300,
            policy_learning_rate=1e-3,
            # RLHF's KL weight on the reward model's scale: near P = 1/2 Bradley-Terry is
            # P(y > y') ~ 1/2 + (r - r') / 4, so a reward r weighs like a preference r / 4 and
            # 4 tau puts RLHF's KL on the same footing as the Nash methods' tau.
            rlhf_tau=0.4,
            # A comma-separated subset of POLICIES and RLP_POLICIES.
            policies=",".join([*POLICIES, *RLP_POLICIES]),
            # The Nash methods' judge: "preference_model" (learned) or "oracle" (the exact
            # preference). RLHF always plays its reward model.
            judge="preference_model",
            # The number of seeds. With more than one, each seed is a whole pipeline (its own
            # SFT, preference and reward models and policies, so the interval covers all of the
            # pipeline's randomness) in WORKDIR/seed_<k>, seeds config.seed .. config.seed +
            # seeds - 1; WORKDIR/results.json then holds means and 95% intervals over them.
            seeds=1,
        )
    )
    return c


def rlp_section() -> ml_collections.ConfigDict:
    """``config.rlp`` of the pipeline: the refresh of the judge (``refresh_config``) and the
    pipeline's own keys. It trains ``policy_method`` from SFT, draws ``num_samples`` per prompt
    for ``num_prompts`` prompts, groups them by ``equivalence`` ("task": the synthetic task's
    (quality, style); "exact": same tokens; or "module:function"), keeps prompts whose largest
    group has a share >= gamma, and trains again from SFT. ``sft``, ``judge`` and ``stage1``
    name existing runs to reuse (empty: trained in WORKDIR)."""
    c = refresh_config()
    c.update(
        dict(
            policy_method="rlhf",
            sft="",
            judge="",
            stage1="",
            num_prompts=2000,
            num_samples=10,
            equivalence="task",
        )
    )
    return c


def rlp_config(mode: str, policy_method: str) -> ml_collections.ConfigDict:
    """The pipeline's config: ``mode`` in ``nlhf_jax.train.refresh.MODES``, ``policy_method``
    "rlhf" or "nash_md"; the stages' steps and learning rate are the demo's (``config.demo``)."""
    c = demo_config()
    c.pipeline = "rlp"
    c.rlp.mode = mode
    c.rlp.policy_method = policy_method
    return c
