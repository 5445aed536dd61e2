"""The embedded default main job: every stage of NLHF on the synthetic task, then evaluation.

    python -m nlhf_jax.train                       # = make demo, writes runs/demo
    python -m nlhf_jax.train --config configs/demo.py --workdir DIR --config.demo.policy_steps=50

SFT from demonstrations -> a preference model and a reward model from oracle-labelled pairs ->
each policy method from the same SFT policy, judged by the learned preference model (RLHF by the
reward model) -> ``nlhf_jax.evaluate``: the head-to-head win rates under the true oracle and
under the learned preference model, duality gaps to the exact regularized NE, KL to the SFT
policy; ``DIR/results.json`` and PNGs. Each stage is an ordinary run in ``DIR/<stage>``: a
finished stage is skipped, an interrupted one resumes.
"""

from __future__ import annotations

import os
import time

import ml_collections

from nlhf_jax.checkpoint import latest_step
from nlhf_jax.errors import UserError
from nlhf_jax.train import loop, methods
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.guard import DivergenceGuard

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


def demo_config() -> ml_collections.ConfigDict:
    c = base_config("demo")
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
            policies=",".join(POLICIES),  # a comma-separated subset of POLICIES
            judge="preference_model",  # or "oracle": policies see the exact preference
        )
    )
    return c


def _stage_config(config, method: str, num_steps: int, **overrides):
    c = base_config(method)
    for key in ("seed", "batch_size", "log_every", "tau", "task", "model", "mesh", "guard"):
        c[key] = config[key]
    c.data.data_dir = config.data.data_dir
    c.num_steps = num_steps
    c.eval_every = max(num_steps // 6, 1)
    c.checkpoint_every = num_steps
    for key, value in overrides.items():
        if key == "learning_rate":
            c.optimizer.learning_rate = value
        else:
            c[key] = value
    return c


def _run_stage(name: str, config, workdir: str, quiet: bool) -> None:
    stage_dir = os.path.join(workdir, name)
    if (latest_step(stage_dir) or 0) >= config.num_steps:
        print(f"== {name}: finished earlier in {stage_dir}", flush=True)
        return
    print(f"== {name} ({config.method}, {config.num_steps} steps) -> {stage_dir}", flush=True)
    t0 = time.time()
    loop.run(
        methods.build(config, stage_dir),
        stage_dir,
        num_steps=config.num_steps,
        checkpoint_every=config.checkpoint_every,
        eval_every=config.eval_every,
        log_every=config.log_every,
        quiet=quiet,
        guard=DivergenceGuard(**config.guard),
    )
    print(f"== {name}: {time.time() - t0:.0f} s", flush=True)


def run(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False) -> dict:
    """Runs every stage into ``workdir`` and returns the evaluation (also in results.json)."""
    return run_pipeline(config, workdir, quiet)


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, quiet: bool = False) -> dict:
    """One seed (``config.seed``) of the whole pipeline into ``workdir``; its evaluation."""
    from nlhf_jax import evaluate

    d = config.demo
    names = [n.strip() for n in d.policies.split(",") if n.strip()]
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        raise UserError(f"config.demo.policies: unknown {unknown}; known: {', '.join(POLICIES)}")
    if not config.data.data_dir:
        config.data.data_dir = os.path.join(workdir, "data")  # one copy for every stage
    t0 = time.time()
    path = lambda name: os.path.join(workdir, name)
    _run_stage("sft", _stage_config(config, "sft", d.sft_steps), workdir, quiet)
    for kind in ("preference_model", "reward_model"):
        _run_stage(kind, _stage_config(config, kind, d.preference_steps), workdir, quiet)
    judge = path("preference_model") if d.judge == "preference_model" else "oracle"
    for name in names:
        method, overrides = POLICIES[name]
        if method == "rlhf":
            overrides = {**overrides, "tau": d.rlhf_tau}
        stage = _stage_config(
            config,
            method,
            d.policy_steps,
            init_from=path("sft"),
            judge=judge,
            reward_model=path("reward_model"),
            learning_rate=d.policy_learning_rate,
            **overrides,
        )
        _run_stage(name, stage, workdir, quiet)
    print(f"== evaluation ({time.time() - t0:.0f} s so far)", flush=True)
    return evaluate.evaluate_runs(
        reference=path("sft"),
        runs={"sft": path("sft"), **{name: path(name) for name in names}},
        judge=path("preference_model"),
        tau=config.tau,
        out=workdir,
    )
