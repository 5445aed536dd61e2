"""Stages of a multi-stage job (the demo, RLP): a pipeline's config, a stage's config from it,
and running one stage as an ordinary run in its own directory (skipped when finished, resumed
when not)."""

from __future__ import annotations

import time

import ml_collections

from nlhf_jax.checkpoint import latest_step
from nlhf_jax.train import loop, methods, settings
from nlhf_jax.train.defaults import base_config, common_config, resolve
from nlhf_jax.train.guard import DivergenceGuard

# Keys every stage takes from the pipeline's config (where the stage has them).
SHARED_KEYS = ("seed", "batch_size", "log_every", "tau", "task", "model", "mesh", "guard")
SHARED_DATA_KEYS = ("data_dir", "train_pairs", "train_demos", "eval_pairs", "labels")


def pipeline_config(name: str) -> ml_collections.ConfigDict:
    """The keys of a pipeline ``name`` (``nlhf_jax.pipelines.PIPELINES``): every run's, the game's
    tau and Nash-MD's beta (shared by its policy stages), and the pipeline's own sections."""
    c = common_config()
    c.pipeline = name
    c.tau = 0.1
    c.beta = 0.125
    return c


def stage_config(config, method: str, num_steps: int, **overrides) -> ml_collections.ConfigDict:
    """The config of one stage: ``method``'s defaults, the pipeline's shared keys and data
    settings, ``num_steps`` with 6 evaluations and one checkpoint at the end, and ``overrides``
    (``learning_rate`` goes to the optimizer)."""
    c = base_config(method)
    for key in SHARED_KEYS:
        if key in c:
            c[key] = config[key]
    for key in SHARED_DATA_KEYS:
        c.data[key] = config.data[key]
    c.num_steps = num_steps
    c.eval_every = max(num_steps // 6, 1)
    c.checkpoint_every = num_steps
    for key, value in overrides.items():
        if key == "learning_rate":
            c.optimizer.learning_rate = value
        else:
            c[key] = value
    return c


def run_stage(label: str, config, stage_dir: str, quiet: bool, allow_changes: bool = False) -> None:
    """Trains ``config`` into ``stage_dir`` unless a checkpoint of its last step is there. A
    stage that trains has its settings recorded and compared as a single run's are
    (``settings.record``); a finished one is left as it is."""
    if (latest_step(stage_dir) or 0) >= config.num_steps:
        print(f"== {label}: finished earlier in {stage_dir}", flush=True)
        return
    resolve(config)
    settings.record(stage_dir, config, allow_changes)
    print(f"== {label} ({config.method}, {config.num_steps} steps) -> {stage_dir}", flush=True)
    t0 = time.time()
    loop.run(
        methods.build(config, stage_dir),
        stage_dir,
        num_steps=config.num_steps,
        checkpoint_every=config.checkpoint_every,
        eval_every=config.eval_every,
        log_every=config.log_every,
        # Train metrics on the console at most as often as evaluations: a stage's console
        # fits on a screen; metrics.jsonl has every log_every step.
        console_every=max(config.log_every, config.eval_every),
        quiet=quiet,
        guard=DivergenceGuard(**config.guard),
    )
    print(f"== {label}: {time.time() - t0:.0f} s", flush=True)
