"""Aggregation over seeds (nlhf_jax.evaluate.seeds): the interval, the leaves, the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nlhf_jax.errors import UserError
from nlhf_jax.evaluate import seeds

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_interval_covers_the_mean_95_percent_of_the_time():
    """2000 experiments of n = 5 draws from N(mu, 1), as one leaf of 2000 entries per seed:
    the t-interval covers mu in a fraction within 4 binomial standard deviations of 0.95."""
    experiments, n, mu = 2000, 5, 0.3
    draws = np.random.default_rng(0).normal(mu, 1.0, (n, experiments))
    agg = seeds.aggregate([{"x": d.tolist()} for d in draws])["x"]
    mean, halfwidth = np.asarray(agg["mean"]), np.asarray(agg["halfwidth"])
    covered = np.mean(np.abs(mean - mu) <= halfwidth)
    assert abs(covered - 0.95) <= 4 * math.sqrt(0.95 * 0.05 / experiments)
    # the halfwidth is t_{0.975, 4} sd / sqrt(5), with t_{0.975, 4} = 2.7764
    np.testing.assert_allclose(halfwidth, 2.7764 * draws.std(0, ddof=1) / math.sqrt(n), rtol=1e-4)
    assert agg["values"] == [d.tolist() for d in draws]


def test_equal_values_have_zero_halfwidth_and_differ_from_half_unless_half():
    M = [[0.5, 0.7, 0.5], [0.3, 0.5, 0.5], [0.5, 0.5, 0.5]]
    one = {"methods": ["a", "b", "c"], "win_rate": M, "gap": 0.25}
    agg = seeds.aggregate([one, one, one], seeds=[0, 1, 2])
    assert agg["gap"] == {"mean": 0.25, "halfwidth": 0.0, "values": [0.25] * 3}
    assert agg["win_rate"]["halfwidth"] == [[0.0] * 3] * 3
    assert agg["win_rate"]["differs_from_half"] == [[v != 0.5 for v in row] for row in M]
    assert agg["methods"] == ["a", "b", "c"] and agg["seeds"] == [0, 1, 2]
    assert agg["not_aggregated"] == [] and agg["num_seeds"] == 3


def test_mismatching_and_differing_leaves_are_not_aggregated():
    a = {"methods": ["x"], "m": [1.0, 2.0], "c": {"run": "a", "tau": 0.1}, "only_a": 1.0}
    b = {"methods": ["x"], "m": [1.0, 2.0, 3.0], "c": {"run": "b", "tau": 0.1}}
    agg = seeds.aggregate([a, b], ["a.json", "b.json"])
    assert sorted(agg["not_aggregated"]) == ["c.run", "m", "only_a"]
    assert "m" not in agg and "only_a" not in agg and "run" not in agg["c"]
    assert agg["c"]["tau"] == {"mean": 0.1, "halfwidth": 0.0, "values": [0.1, 0.1]}
    assert agg["sources"] == ["a.json", "b.json"]


def test_settings_are_kept_not_averaged():
    r = {"methods": ["x"], "config": {"tau": 0.1, "seed": 0}}
    assert seeds.aggregate([r, r])["config"] == {"tau": 0.1, "seed": 0}


def test_differing_methods_are_an_error_naming_both():
    with pytest.raises(UserError, match=r"a\.json.*b\.json"):
        seeds.aggregate([{"methods": ["x", "y"]}, {"methods": ["y", "x"]}], ["a.json", "b.json"])


def test_json_has_no_nan_tokens_one_seed_and_nan_values():
    r = {"methods": ["sft", "nash_md"], "win_rate": [[0.5, 0.4], [0.6, 0.5]], "g": [0.1, 0.2]}
    one = seeds.aggregate([r])
    assert one["win_rate"]["halfwidth"] is None and one["win_rate"]["differs_from_half"] is None
    two = seeds.aggregate([r, {**r, "g": [float("nan"), 0.3]}])
    assert two["g"]["mean"][0] is None and two["g"]["values"][1][0] is None
    for agg in (one, two):
        text = json.dumps(agg, allow_nan=False)  # raises on NaN or infinity
        assert json.loads(text) == agg
        assert "nash_md" in seeds.table(agg)


def test_table_marks_intervals_that_exclude_half():
    r0 = {"methods": ["sft", "nash_md", "rlhf"], "duality_gap": [0.2, 0.05, 0.1]}
    rs = []
    for noise in (0.0, 0.01, -0.01):
        M = np.array([[0.5, 0.4, 0.45], [0.6, 0.5, 0.5 + noise], [0.55, 0.5 - noise, 0.5]])
        rs.append({**r0, "win_rate": M.tolist(), "win_rate_regularized": M.tolist()})
    text = seeds.table(seeds.aggregate(rs))
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line[:2] == "| "}
    assert "0.600 ± 0.000 *" in rows["nash_md"]  # beats sft
    assert "0.500 ± 0.025 |" in rows["rlhf"]  # vs nash_md: a tie within the interval
    assert "`*`: the interval excludes 1/2" in text


def test_cli_aggregates_files(tmp_path):
    r = {"methods": ["sft", "nash_md"], "win_rate": [[0.5, 0.4], [0.6, 0.5]]}
    paths = []
    for k, gap in enumerate((0.1, 0.12)):
        path = tmp_path / f"r{k}.json"
        path.write_text(json.dumps({**r, "duality_gap": [gap, 0.05]}))
        paths.append(str(path))
    from nlhf_jax.evaluate.__main__ import main

    main(["--aggregate", *paths, "--out", str(tmp_path / "out")])
    agg = json.loads((tmp_path / "out" / "results.json").read_text())
    assert agg["duality_gap"]["values"] == [[0.1, 0.05], [0.12, 0.05]]
    assert agg["sources"] == paths


def test_cli_missing_file_is_one_error_line(tmp_path):
    missing = str(tmp_path / "nope.json")
    out = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.evaluate", "--aggregate", missing, missing],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {missing} not found"]
