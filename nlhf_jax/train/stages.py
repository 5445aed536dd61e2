"""Stages of a multi-stage job (the demo, RLP): a stage's config from the job's, and running one
stage as an ordinary run in its own directory (skipped when finished, resumed when not)."""

from __future__ import annotations

import time

import ml_collections

from nlhf_jax.checkpoint import latest_step
from nlhf_jax.train import loop
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.guard import DivergenceGuard

# Keys every stage takes from the job's config.
SHARED_KEYS = ("seed", "batch_size", "log_every", "tau", "task", "model", "mesh", "guard")


def stage_config(config, method: str, num_steps: int, **overrides) -> ml_collections.ConfigDict:
    """The config of one stage: ``method``'s defaults, the job's shared keys and data settings,
    ``num_steps`` with 6 evaluations (and train-metric lines) and one checkpoint at the end, and
    ``overrides``
    (``learning_rate`` goes to the optimizer)."""
    c = base_config(method)
    for key in SHARED_KEYS:
        c[key] = config[key]
    for key in ("data_dir", "train_pairs", "train_demos", "eval_pairs", "labels"):
        c.data[key] = config.data[key]
    c.num_steps = num_steps
    c.eval_every = max(num_steps // 6, 1)
    # Train metrics at most as often as evaluations: a stage's console fits on a screen.
    c.log_every = max(config.log_every, c.eval_every)
    c.checkpoint_every = num_steps
    for key, value in overrides.items():
        if key == "learning_rate":
            c.optimizer.learning_rate = value
        else:
            c[key] = value
    return c


def run_stage(label: str, config, stage_dir: str, quiet: bool) -> None:
    """Trains ``config`` into ``stage_dir`` unless a checkpoint of its last step is there."""
    if (latest_step(stage_dir) or 0) >= config.num_steps:
        print(f"== {label}: finished earlier in {stage_dir}", flush=True)
        return
    print(f"== {label} ({config.method}, {config.num_steps} steps) -> {stage_dir}", flush=True)
    from nlhf_jax.train import methods  # here: methods -> pairwise -> rlp -> stages

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
    print(f"== {label}: {time.time() - t0:.0f} s", flush=True)
