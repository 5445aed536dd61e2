"""The demo pipeline, the embedded default main job: every stage of NLHF on the synthetic task,
then evaluation.

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

from nlhf_jax import evaluate, provenance
from nlhf_jax.errors import UserError
from nlhf_jax.evaluate import report, seeds
from nlhf_jax.pipelines import rlp
from nlhf_jax.pipelines.configs import (  # noqa: F401
    POLICIES,
    RLP_POLICIES,
    SINCE_POLICIES,
    demo_config,
)
from nlhf_jax.pipelines.stages import run_stage, stage_config


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    quiet: bool = False,
    allow_changes: bool = False,
) -> dict:
    """Runs every stage into ``workdir`` and returns the evaluation (also in results.json).

    With ``config.demo.seeds`` > 1, one whole pipeline per seed into ``workdir/seed_<k>`` (a
    finished seed's stages are skipped), then ``results.json`` aggregates them over seeds
    (``nlhf_jax.evaluate.seeds``): means and 95% intervals.
    """
    num_seeds = config.demo.seeds
    if num_seeds < 1:
        raise UserError(f"config.demo.seeds={num_seeds}: at least 1")
    if num_seeds == 1:
        return run_pipeline(config, workdir, quiet, allow_changes)
    sources, seed_values = [], []
    for k in range(num_seeds):
        one = config.copy_and_resolve_references()
        one.seed = config.seed + k
        one.demo.seeds = 1
        # Each seed's data in its own seed_<k>/data unless config.data.data_dir names one:
        # the data depend on the seed (and are named by a hash of their content), so a shared
        # directory would hold one copy per seed anyway, and seed_<k> stays self-contained.
        seed_dir = os.path.join(workdir, f"seed_{k}")
        print(f"== seed {k + 1}/{num_seeds} (seed {one.seed}) -> {seed_dir}", flush=True)
        run_pipeline(one, seed_dir, quiet, allow_changes)
        sources.append(os.path.join(seed_dir, "results.json"))
        seed_values.append(one.seed)
    aggregated = seeds.aggregate(seeds.load(sources), sources, seeds=seed_values)
    aggregated["environment"] = provenance.environment()  # of the aggregation; seeds: above
    path = os.path.join(workdir, "results.json")
    report.write_json(path, aggregated)
    print(f"== {num_seeds} seeds aggregated -> {path}\n\n{seeds.table(aggregated)}", flush=True)
    return aggregated


def run_pipeline(
    config: ml_collections.ConfigDict,
    workdir: str,
    quiet: bool = False,
    allow_changes: bool = False,
) -> dict:
    """One seed (``config.seed``) of the whole pipeline into ``workdir``; its evaluation."""
    d = config.demo
    names = [n.strip() for n in d.policies.split(",") if n.strip()]
    known = {**POLICIES, **SINCE_POLICIES, **RLP_POLICIES}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UserError(f"config.demo.policies: unknown {unknown}; known: {', '.join(known)}")
    refreshed = [n for n in names if n in RLP_POLICIES]
    if refreshed and d.judge == "oracle":
        print(f"== {', '.join(refreshed)}: skipped (RLP refreshes a learned judge)", flush=True)
        names, refreshed = [n for n in names if n not in RLP_POLICIES], []
    # The stage-1 policies RLP needs are trained even where they are not compared.
    first = [n for n in names if n in POLICIES or n in SINCE_POLICIES]
    first += [RLP_POLICIES[n][0] for n in refreshed if RLP_POLICIES[n][0] not in first]
    if not config.data.data_dir:
        config.data.data_dir = os.path.join(workdir, "data")  # one copy for every stage
    t0 = time.time()
    path = lambda name: os.path.join(workdir, name)
    run_stage("sft", stage_config(config, "sft", d.sft_steps), path("sft"), quiet, allow_changes)
    for kind in ("preference_model", "reward_model"):
        run_stage(
            kind, stage_config(config, kind, d.preference_steps), path(kind), quiet, allow_changes
        )
    judge = path("preference_model") if d.judge == "preference_model" else "oracle"
    for name in dict.fromkeys(first):
        method, overrides = {**POLICIES, **SINCE_POLICIES}[name]
        if method == "rlhf":
            overrides = {**overrides, "tau": d.rlhf_tau, "judge": path("reward_model")}
        stage = stage_config(
            config,
            method,
            d.policy_steps,
            init_from=path("sft"),
            **{"judge": judge, **overrides},
            learning_rate=d.policy_learning_rate,
        )
        run_stage(name, stage, path(name), quiet, allow_changes)
    judges = {"preference_model": path("preference_model"), "reward_model": path("reward_model")}
    for name in refreshed:
        judges[f"{name} judge"] = _rlp_stages(config, name, workdir, quiet, allow_changes)
    print(f"== evaluation ({time.time() - t0:.0f} s so far)", flush=True)
    results = evaluate.evaluate_runs(
        reference=path("sft"),
        runs={"sft": path("sft"), **{name: path(name) for name in names}},
        judge=path("preference_model"),
        tau=config.tau,
        out=workdir,
        quiet=quiet,
    )
    if refreshed:  # RLP's premise, measured: is the refreshed judge right where policies sample?
        stage1 = list(dict.fromkeys(RLP_POLICIES[n][0] for n in refreshed))
        policies = {n: path(n) for n in [*stage1, *refreshed]}
        results["judge_accuracy_on_policy"] = rlp.judge_accuracies(judges, policies, quiet)
    # The seed every stage was trained with (run.json does not record it).
    results["config"]["train_seed"] = config.seed
    results.setdefault("environment", {})["seed"] = config.seed
    report.write_json(os.path.join(workdir, "results.json"), results)
    print(f"== wrote {workdir}: results.json, win_rate.png, training_curves.png", flush=True)
    return results


def _rlp_stages(config, name: str, workdir: str, quiet: bool, allow_changes: bool) -> str:
    """The RLP stages of ``name`` (samples of its stage-1 policy, the refreshed judge, the
    method from SFT again into ``workdir/name``), reusing the demo's runs; the judge's dir."""
    method, mode = RLP_POLICIES[name]
    kind = "reward_model" if method == "rlhf" else "preference_model"
    c = config.copy_and_resolve_references()
    c.rlp.mode, c.rlp.policy_method = mode, method
    path = lambda stage: os.path.join(workdir, stage)
    c.rlp.sft, c.rlp.judge, c.rlp.stage1 = path("sft"), path(kind), path(method)
    dirs = {
        "samples": path(f"samples_{method}"),  # shared by the refreshes of one policy
        "judge_rlp": path(f"{kind}_{mode.replace('+', '_')}"),
        "stage2": path(name),
    }
    return rlp.run(c, workdir, quiet, dirs=dirs, allow_changes=allow_changes)["judge_rlp"]
