"""Head-to-head evaluation of policy runs (nlhf_jax.evaluate) on tiny runs made here.

The policies: a 200-step SFT run (by then it conditions on the prompt), and two runs written
from its parameters with the final norm scaled, i.e. the same policy at temperature 1/2
("sharp", a different policy under the oracle) and at temperature 2 ("flat", about a quarter
of its mass on malformed responses, which exercises the renormalization). The judge: a 20-step
preference model (nearly indifferent, but not exactly: enough to check the plumbing).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from nlhf_jax import evaluate
from nlhf_jax.checkpoint import Checkpoints, load_params, read_identity, transformer_config
from nlhf_jax.evaluate import report
from nlhf_jax.evaluate.__main__ import main as cli_main
from nlhf_jax.evaluate.runs import parse_runs
from nlhf_jax.judges import load_run
from nlhf_jax.models import Transformer
from nlhf_jax.tasks.synthetic import SyntheticTask

SAMPLED = 64  # responses per prompt and policy: 576 per policy, a few seconds
NAMES = ["sft", "sharp", "flat"]


def _params(workdir: str):
    cfg = transformer_config(read_identity(workdir)["model"])
    graphdef, like = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    return graphdef, load_params(workdir, like)


def _tempered(sft: str, workdir: str, temperature: float) -> str:
    """A policy run holding the SFT policy at another temperature: the logits are linear in the
    final norm's scale, so dividing it by T divides them by T."""
    _, params = _params(sft)
    pure = params.to_pure_dict()
    pure["final_norm"]["scale"] = pure["final_norm"]["scale"] / temperature
    nnx.replace_by_pure_dict(params, pure)
    identity = {**read_identity(sft), "method": "tempered_sft"}
    checkpoints = Checkpoints(workdir, identity, async_save=False)
    checkpoints.save(1, {"params": params}, {})
    checkpoints.close()
    return workdir


@pytest.fixture(scope="module")
def runs(sft_run, judge_runs, tmp_path_factory):
    """The session's SFT policy at three temperatures, and its preference model."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "sft": sft_run,
        "sharp": _tempered(sft_run, str(root / "sharp"), 0.5),
        "flat": _tempered(sft_run, str(root / "flat"), 2.0),
        "pm": judge_runs["preference_model"],
    }


@pytest.fixture(scope="module")
def evaluated(runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    results = evaluate.evaluate_runs(
        runs["sft"],
        {"sharp": runs["sharp"], "flat": runs["flat"]},
        runs["pm"],
        out=out,
        sampled=SAMPLED,
        quiet=True,
    )
    return results, out


def _logp(workdir: str, task: SyntheticTask) -> np.ndarray:
    return evaluate.enumerated_logprobs(*_params(workdir), task)


def _win_rates_by_loop(logps: list[np.ndarray], P_xrr: np.ndarray) -> np.ndarray:
    """sum_x sum_{r,s} pi_i(r|x) P_x[r, s] pi_j(s|x) / X, one prompt and one pair at a time."""
    m, X = len(logps), P_xrr.shape[0]
    M = np.zeros((m, m))
    for x in range(X):
        pis = [np.exp(lp[x]) / np.exp(lp[x]).sum() for lp in logps]
        for i in range(m):
            for j in range(m):
                M[i, j] += float(pis[i] @ P_xrr[x] @ pis[j]) / X
    return M


def test_results_json_and_figures(evaluated):
    results, out = evaluated
    with open(os.path.join(out, "results.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(results))
    assert written["methods"] == NAMES
    for key in ("duality_gap", "kl_to_reference", "kl_nash_to_policy", "invalid_mass"):
        assert len(written[key]) == len(NAMES)
    assert np.shape(written["win_rate"]) == np.shape(written["win_rate_judge"]) == (3, 3)
    config = written["config"]
    assert config["tau"] == 0.1 and config["tau_source"] == "default"
    assert config["judge"] and list(config["runs"]) == NAMES and config["sampled"] == SAMPLED
    assert not [name for name in os.listdir(out) if ".tmp" in name]
    for png in ("win_rate.png", "training_curves.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_exact_win_rates_are_antisymmetric_and_match_a_loop(evaluated, runs):
    results, _ = evaluated
    M = np.array(results["win_rate"])
    np.testing.assert_allclose(M + M.T, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 0.5, atol=1e-12)
    task = SyntheticTask(**results["config"]["task"])
    logps = [_logp(runs[name], task) for name in NAMES]
    np.testing.assert_allclose(M, _win_rates_by_loop(logps, task.preference_matrices()), atol=1e-9)
    # The policies differ under the oracle, and "flat" leaves the game noticeably.
    assert np.all(np.abs(M - 0.5)[~np.eye(3, dtype=bool)] > 0.015)
    assert results["invalid_mass"][2] > 0.1 and results["invalid_mass"][0] < 0.05


def test_regularized_win_rates_are_bounded_by_the_duality_gap(evaluated):
    """In the symmetric game J = P_tau, gap(pi) = 2 (max_p J(p, pi) - 1/2) per prompt, so no
    policy beats pi in the regularized game by more than half its (prompt-averaged) gap."""
    results, _ = evaluated
    R = np.array(results["win_rate_regularized"])
    np.testing.assert_allclose(R + R.T, 1.0, atol=1e-12)
    gap = np.array(results["duality_gap"])
    assert np.all(R <= 0.5 + gap[None, :] / 2 + 1e-9)
    assert not np.allclose(R, np.array(results["win_rate"]))  # the KL terms matter here


def test_judge_nash_floor(evaluated, runs):
    """The exact NE of the true game has gap 0; the learned judge's NE has a positive one."""
    results, _ = evaluated
    task = SyntheticTask(**results["config"]["task"])
    exact = evaluate.ExactEvaluator(task, _logp(runs[NAMES[0]], task), 0.1)
    assert exact.gap_of(exact.nash_of(task.preference_matrices())) < 1e-9
    assert exact.gap_of(exact.mu) == pytest.approx(results["duality_gap"][0])
    assert results["judge_nash_duality_gap"] > 1e-4


def test_duality_gaps_and_kls_are_the_exact_evaluators(evaluated, runs):
    results, _ = evaluated
    task = SyntheticTask(**results["config"]["task"])
    logps = [_logp(runs[name], task) for name in NAMES]
    exact = evaluate.ExactEvaluator(task, logps[0], 0.1)
    for i, lp in enumerate(logps):
        metrics = exact(lp)
        assert results["duality_gap"][i] == pytest.approx(metrics["exact/duality_gap"], abs=1e-12)
        assert results["kl_to_reference"][i] == pytest.approx(metrics["exact/kl_to_reference"])
        assert results["kl_nash_to_policy"][i] == pytest.approx(metrics["exact/kl_nash_to_policy"])
        assert results["invalid_mass"][i] == pytest.approx(metrics["exact/invalid_mass"])
        assert results["win_rate"][i][0] == pytest.approx(
            metrics["exact/win_rate_vs_reference"], abs=1e-12
        )
    assert min(results["duality_gap"]) > 0
    assert results["duality_gap"][0] == pytest.approx(exact.reference_gap, abs=1e-12)
    assert results["kl_to_reference"][0] == pytest.approx(0.0, abs=1e-12)
    assert min(results["kl_to_reference"][1:]) > 0.01


def test_exploitability_is_the_unregularized_gap(evaluated, runs):
    """``exploitability``: the mean over prompts of ``2 max_y P(y > pi) - 1``, by a loop here;
    0 at each prompt's unregularized NE (the LP's), and positive at the regularized NE, which
    the unregularized game's best response beats."""
    from nlhf_jax.tabular.solvers import nash_lp

    results, _ = evaluated
    task = SyntheticTask(**results["config"]["task"])
    P = task.preference_matrices()
    exact = evaluate.ExactEvaluator(task, _logp(runs[NAMES[0]], task), 0.1)
    for i, name in enumerate(NAMES):
        pi, _ = evaluate.normalized(_logp(runs[name], task))
        by_loop = np.mean([2 * max(P[x] @ pi[x]) - 1 for x in range(len(pi))])
        assert results["exploitability"][i] == pytest.approx(by_loop, abs=1e-12)
    lp = np.stack([nash_lp(P_x)[0] for P_x in P])
    assert exact(np.log(np.maximum(lp, 1e-300)))["exact/exploitability"] < 1e-6
    assert exact(np.log(exact.nash))["exact/exploitability"] > 1e-3


def test_judge_matrix_matches_a_loop_over_prompts(evaluated, runs):
    results, _ = evaluated
    task = SyntheticTask(**results["config"]["task"])
    judge = load_run(runs["pm"], task)
    # batch_size 100 does not divide the 729 pairs: the padded last batch is exercised.
    P = evaluate.judge_matrices(judge, task, batch_size=100)
    resp, R = task.responses(), task.num_responses
    ii, jj = (a.ravel() for a in np.meshgrid(np.arange(R), np.arange(R), indexing="ij"))
    ones = np.ones((R * R, task.response_len), bool)
    direct = jax.jit(lambda x: judge(x, x > -1, resp[ii], ones, resp[jj], ones))
    for x, prompt in enumerate(task.prompts()):
        p = direct(np.broadcast_to(prompt, (R * R, len(prompt))))
        np.testing.assert_allclose(P[x], np.asarray(p).reshape(R, R), atol=1e-6)
    np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0, atol=1e-12)  # float64 sigmoid
    # A trained judge, not the indifferent initial one (exactly 1/2 everywhere): its matrix is
    # far enough from 1/2 that the comparison with the loop above (atol 1e-6) is not vacuous.
    assert np.abs(P - 0.5).max() > 1000 * 1e-6
    logps = [_logp(runs[name], task) for name in NAMES]
    M = np.array(results["win_rate_judge"])
    np.testing.assert_allclose(M, _win_rates_by_loop(logps, P), atol=1e-9)
    np.testing.assert_allclose(M + M.T, 1.0, atol=1e-12)
    # The oracle through the same batching equals its own enumerated matrices.
    P_oracle = evaluate.judge_matrices(task, task, batch_size=100)
    np.testing.assert_allclose(P_oracle, task.preference_matrices(), atol=1e-12)


@pytest.mark.parametrize("which", ["", "_judge"])
def test_sampled_estimate_agrees_with_exact_within_its_error(evaluated, which):
    """Every entry within 4 standard errors (a two-sided normal tail of 6e-5 per entry) of the
    exact matrix under the same preference; the seed is fixed, so this is not flaky."""
    results, _ = evaluated
    exact = np.array(results[f"win_rate{which}"])
    sampled = np.array(results[f"win_rate_sampled{which}"])
    stderr = np.array(results[f"win_rate_sampled{which}_stderr"])
    off = ~np.eye(len(exact), dtype=bool)
    assert np.all(stderr[off] > 0) and np.all(stderr[off] < 0.05)
    assert np.all(np.abs(sampled - exact)[off] <= 4 * stderr[off])
    np.testing.assert_allclose(sampled + sampled.T, 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(sampled), 0.5)
    assert results["sampled_invalid_fraction"][2] > 0.1  # "flat": malformed samples dropped


def test_reference_named_among_the_runs_is_not_repeated(runs):
    results = evaluate.evaluate_runs(
        runs["sft"], {"sharp": runs["sharp"], "mu": runs["sft"]}, tau=0.2, quiet=True
    )
    assert results["methods"] == ["mu", "sharp"]
    assert results["config"]["tau"] == 0.2 and "win_rate_judge" not in results


def test_errors_name_the_run(runs, tmp_path, capsys):
    ref = runs["sft"]
    with pytest.raises(FileNotFoundError, match=r"run 'empty'.*not a training run"):
        evaluate.evaluate_runs(ref, {"empty": str(tmp_path)}, quiet=True)
    with pytest.raises(ValueError, match=r"run 'pm'.*'preference_model' run, not a policy run"):
        evaluate.evaluate_runs(ref, {"pm": runs["pm"]}, quiet=True)
    with pytest.raises(ValueError, match="'tempered_sft' run, not a preference_model or"):
        evaluate.evaluate_runs(ref, {}, judge=runs["sharp"], quiet=True)
    with pytest.raises(ValueError, match="duplicate run name 'sft'"):
        evaluate.evaluate_runs(ref, {"sft": runs["sharp"]}, quiet=True)
    other = read_identity(runs["sharp"])
    other["task"]["style_strength"] = 3.0
    with open(tmp_path / "run.json", "w") as f:
        json.dump(other, f)
    with pytest.raises(ValueError, match=r"different tasks.*'other'"):
        evaluate.evaluate_runs(ref, {"other": str(tmp_path)}, quiet=True)
    with pytest.raises(ValueError, match="duplicate run name 'a'"):
        parse_runs(["a=x", "a=y"])
    with pytest.raises(ValueError, match="expected NAME=WORKDIR"):
        parse_runs(["x"])
    with pytest.raises(SystemExit) as exit_info:  # a user's mistake: one line, status 2
        cli_main(["--reference", ref, f"pm={runs['pm']}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run 'pm'") and "Traceback" not in err


def test_metrics_reader_keeps_the_last_row_of_a_step_and_names_bad_lines(tmp_path):
    rows = [
        {"step": 20, "kind": "eval", "exact/duality_gap": 0.3},
        {"step": 10, "kind": "eval", "exact/duality_gap": 0.5},
        {"step": 20, "kind": "eval", "exact/duality_gap": 0.2},  # logged again after a resume
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["exact/duality_gap"] for r in report.read_metrics(str(tmp_path))] == [0.5, 0.2]
    report.plot_training_curves(str(tmp_path / "curves.png"), {"a": str(tmp_path)}, 0.25)
    assert (tmp_path / "curves.png").stat().st_size > 0
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "kind"\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 4 is not JSON"):
        report.read_metrics(str(tmp_path))


def test_cli(evaluated, runs, tmp_path):
    """The command line gives the same matrix as the function (in a process with one device)."""
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "nlhf_jax.evaluate", "--reference", runs["sft"]]
    command += ["--out", str(out), f"sharp={runs['sharp']}", f"flat={runs['flat']}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "win rate, exact, true oracle" in done.stdout and "flat" in done.stdout
    with open(out / "results.json") as f:
        written = json.load(f)
    np.testing.assert_allclose(written["win_rate"], evaluated[0]["win_rate"], atol=1e-6)
    assert (out / "win_rate.png").exists() and (out / "training_curves.png").exists()


def test_judge_accuracy_on_policy_exact_against_sampling():
    from nlhf_jax.evaluate.exact import judge_accuracy_on_policy

    rng = np.random.default_rng(0)
    X, R = 3, 4
    logits = rng.normal(size=(X, R, R))
    P = 1 / (1 + np.exp(-(logits - logits.transpose(0, 2, 1))))  # antisymmetric oracle
    J = 1 / (1 + np.exp(-(rng.normal(size=(X, R, R)))))
    J = (J + 1 - J.transpose(0, 2, 1)) / 2  # an antisymmetric judge with its own errors
    pi = rng.dirichlet(np.ones(R), size=X)
    got = judge_accuracy_on_policy(J, P, pi)
    # The oracle itself is the best judge and its mirror the worst: they sum to one.
    best, worst = judge_accuracy_on_policy(P, P, pi), judge_accuracy_on_policy(1 - P, P, pi)
    assert best + worst == pytest.approx(1.0, abs=1e-12)
    assert worst <= got <= best
    # Monte Carlo: pairs y != y' from pi, an oracle label, the judge's pick.
    n, hits = 200_000, []
    for x in range(X):
        y, y2 = rng.choice(R, size=n, p=pi[x]), rng.choice(R, size=n, p=pi[x])
        keep = y != y2
        y, y2 = y[keep], y2[keep]
        label = rng.random(len(y)) < P[x, y, y2]
        hits.append(np.mean((J[x, y, y2] > 0.5) == label))
    assert got == pytest.approx(np.mean(hits), abs=0.01)
