"""Evaluation of a set of trained policies against each other and against the exact NE.

``evaluate_runs`` loads the policies (workdirs of ``python -m nlhf_jax.train``), scores every
well-formed response of every prompt under each of them, and reports:

- exact: the head-to-head win-rate matrix under the true oracle; each policy's duality gap to the
  tau-regularized NE of each prompt's game against the reference mu, KL(pi || mu), KL(NE || pi)
  and its mass on malformed responses (``ExactEvaluator``);
- exact for the judge: the same matrix under a learned preference (or reward) model, which judges
  every ordered pair of responses;
- sampled (``sampled > 0``): the matrix estimated from N responses per prompt and policy, with
  standard errors, under the oracle and the judge: the measurement a non-enumerable task allows.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from nlhf_jax import judges as judges_lib
from nlhf_jax import provenance
from nlhf_jax.errors import UserError
from nlhf_jax.evaluate import report
from nlhf_jax.evaluate.exact import (
    ExactEvaluator,
    enumerated_logprobs,
    judge_matrices,
    normalized,
    win_rate_matrix,
)
from nlhf_jax.evaluate.runs import load_policies, policy_identity
from nlhf_jax.evaluate.sampled import sample_responses, sampled_win_rates

DEFAULT_TAU = 0.1


def _named_runs(reference: str, runs: dict[str, str], reference_name: str) -> dict[str, str]:
    """The runs with the reference first; the reference is not repeated if it is among them."""
    same = [n for n, wd in runs.items() if os.path.realpath(wd) == os.path.realpath(reference)]
    if same:
        return {same[0]: reference, **{n: wd for n, wd in runs.items() if n != same[0]}}
    if reference_name in runs:
        raise UserError(
            f"duplicate run name {reference_name!r}: it names the reference ({reference}) and "
            f"{runs[reference_name]}; rename the run"
        )
    return {reference_name: reference, **runs}


def _tau(policies) -> tuple[float, str]:
    """tau recorded by the runs (if any records it and all agree), else the default."""
    recorded = {p.identity["tau"] for p in policies if p.identity.get("tau") is not None}
    if len(recorded) > 1:
        raise UserError(f"the runs were trained with different tau {sorted(recorded)}; pass tau")
    return (recorded.pop(), "runs") if recorded else (DEFAULT_TAU, "default")


def _train_seed(policies) -> int | None:
    """The training seed the runs' run.json record, if they record one and all agree."""
    seeds = {p.identity.get("seed", p.identity.get("config", {}).get("seed")) for p in policies}
    return seeds.pop() if len(seeds) == 1 else None


def evaluate_runs(
    reference: str,
    runs: dict[str, str],
    judge: str | None = None,
    tau: float | None = None,
    out: str | None = None,
    *,
    sampled: int = 0,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Evaluates policy runs against each other; returns what ``OUT/results.json`` holds.

    Args:
      reference: the SFT run's workdir: the reference mu of the regularized game. It is also a
        method of the matrix, named by its method ("sft") unless ``runs`` names its workdir.
      runs: ``{name: workdir}`` of policy runs, in the order of the tables.
      judge: a ``preference_model`` (or ``reward_model``) run's workdir, or None.
      tau: the KL weight of the game; None: the runs' (if recorded), else 0.1.
      out: a directory for ``results.json``, ``win_rate.png`` and ``training_curves.png``, or None.
      sampled: responses per prompt and policy for the sampled estimate; 0 skips it.
      seed: of the sampled estimate.
      quiet: print nothing.

    Returns:
      ``methods``, ``win_rate`` ([i][j] = P(method i beats method j), exact, oracle),
      ``judge_nash_duality_gap`` (with a judge: the true-game gap of the exact NE of the judge's
      game, the floor its error sets), ``win_rate_regularized`` (the same in the
      tau-regularized game, ``M - tau KL_i + tau KL_j``),
      ``duality_gap``, ``kl_to_reference``, ``kl_nash_to_policy``, ``invalid_mass`` (lists in
      the order of ``methods``), ``win_rate_judge`` (with a judge), ``win_rate_sampled`` and
      ``win_rate_sampled_stderr`` (and ``*_judge_*`` with a judge; with ``sampled``),
      ``reference_name``, ``config`` (``train_seed``: the runs' recorded seed, if one) and,
      with ``out``, ``environment`` (``provenance.environment``: machine, versions, commit).
    """
    if sampled < 0 or sampled == 1:
        raise UserError(f"sampled={sampled}: 0 (off) or at least 2 responses per prompt")
    if tau is not None and tau <= 0:
        raise UserError(f"tau={tau} must be positive")
    named = _named_runs(reference, runs, policy_identity("reference", reference)["method"])
    policies, task = load_policies(named)
    judges = {"oracle": task}
    if judge is not None:
        judges["judge"] = judges_lib.load(judge, task=task)
    tau, tau_source = (tau, "given") if tau is not None else _tau(policies)
    methods = [p.name for p in policies]

    logp = np.stack([enumerated_logprobs(p.graphdef, p.params, task) for p in policies])
    exact = ExactEvaluator(task, logp[0], tau)
    metrics = [exact(lp) for lp in logp]
    pi, invalid = normalized(logp)
    results = {
        "methods": methods,
        "win_rate": win_rate_matrix(pi, exact.P).tolist(),
        "duality_gap": [m["exact/duality_gap"] for m in metrics],
        "exploitability": [m["exact/exploitability"] for m in metrics],
        "kl_to_reference": [m["exact/kl_to_reference"] for m in metrics],
        "kl_nash_to_policy": [m["exact/kl_nash_to_policy"] for m in metrics],
        "invalid_mass": invalid.mean(-1).tolist(),
        "reference_name": methods[0],
    }
    # The payoff of the tau-regularized game itself (docs/algorithms.md 0): a policy that strays
    # further from mu can win the raw preference and still lose this one.
    kl = np.asarray(results["kl_to_reference"])
    M = np.asarray(results["win_rate"])
    results["win_rate_regularized"] = (M - tau * kl[:, None] + tau * kl[None, :]).tolist()
    if judge is not None:
        P_judge = judge_matrices(judges["judge"], task)
        results["win_rate_judge"] = win_rate_matrix(pi, P_judge).tolist()
        # The best a policy trained on this judge can do: the exact regularized NE of the
        # judge's game, scored in the true game (the judge's error alone, no optimization).
        results["judge_nash_duality_gap"] = exact.gap_of(exact.nash_of(P_judge))
    if sampled:
        key = jax.random.key(seed)
        samples = [
            sample_responses(p, task, sampled, jax.random.fold_in(key, i))
            for i, p in enumerate(policies)
        ]
        for kind, j in judges.items():
            mean, stderr = sampled_win_rates(j, task.prompts(), samples, methods)
            suffix = "" if kind == "oracle" else "_judge"
            results[f"win_rate_sampled{suffix}"] = mean.tolist()
            results[f"win_rate_sampled{suffix}_stderr"] = stderr.tolist()
        results["sampled_invalid_fraction"] = [float(1 - s[2].mean()) for s in samples]
    results["config"] = {
        "tau": tau,
        "tau_source": tau_source,
        "reference": reference,
        "judge": judge,
        "runs": named,
        "sampled": sampled,
        "seed": seed,
        "train_seed": _train_seed(policies),
        "task": dataclasses.asdict(task),
    }
    if not quiet:
        _print(results)
    if out is not None:
        _write(out, results, named, metrics[0]["exact/duality_gap"])
    return results


def _print(results: dict) -> None:
    methods, tau = results["methods"], results["config"]["tau"]
    print(report.matrix_table(methods, results["win_rate"], "win rate, exact, true oracle:"))
    title = f"regularized game, exact: P(i > j) - tau KL(i||mu) + tau KL(j||mu), tau={tau}:"
    print("\n" + report.matrix_table(methods, results["win_rate_regularized"], title))
    if "win_rate_judge" in results:
        title = "win rate, exact, learned judge:"
        print("\n" + report.matrix_table(methods, results["win_rate_judge"], title))
    for suffix, who in (("", "true oracle"), ("_judge", "learned judge")):
        if f"win_rate_sampled{suffix}" in results:
            n = results["config"]["sampled"]
            print(
                "\n"
                + report.matrix_table(
                    methods,
                    results[f"win_rate_sampled{suffix}"],
                    f"win rate, sampled ({n} per prompt) ± standard error, {who}:",
                    results[f"win_rate_sampled{suffix}_stderr"],
                )
            )
    print(f"\nexact, tau={tau}, reference mu = {results['reference_name']}:")
    print(report.method_table(results))
    if "judge_nash_duality_gap" in results:
        print(
            "duality gap of the exact NE of the learned judge's game (its error's floor): "
            f"{results['judge_nash_duality_gap']:.4g}"
        )


def _write(out: str, results: dict, runs: dict[str, str], reference_gap: float) -> None:
    os.makedirs(out, exist_ok=True)
    results["environment"] = provenance.environment(seed=results["config"]["train_seed"])
    report.write_json(os.path.join(out, "results.json"), results)
    panels = {"true oracle, exact": np.array(results["win_rate"])}
    if "win_rate_judge" in results:
        panels["learned judge, exact"] = np.array(results["win_rate_judge"])
    if "win_rate_sampled" in results:
        n = results["config"]["sampled"]
        panels[f"true oracle, sampled (N={n})"] = np.array(results["win_rate_sampled"])
    report.plot_win_rates(os.path.join(out, "win_rate.png"), results["methods"], panels)
    report.plot_training_curves(os.path.join(out, "training_curves.png"), runs, reference_gap)
