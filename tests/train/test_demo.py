"""The embedded default main job end to end with tiny settings: its stages, then results.json.

The run is colabs/03_nash_md_end_to_end.ipynb's (tests/conftest.py `executed_notebook`: the
notebook is the demo's end-to-end run), with these tiny settings: one policy of each kind of stage
(RLHF on the reward model, Nash-MD-PG on the preference model, an RLP refresh of the reward
model). The other policies are the same stages with other methods, each trained in
tests/train/test_online.py and on text in tests/test_text_pipeline.py."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nlhf_jax.pipelines import demo


def _tiny(config):
    """The notebook's NLHF_COLAB_SMALL settings (a copied stage resumes only under its own)."""
    config.batch_size = 16
    config.log_every = 2
    config.mesh.num_devices = 1
    config.data.train_pairs = 1000
    config.data.train_demos = 1000
    config.data.eval_pairs = 200
    config.demo.sft_steps = 20
    config.demo.preference_steps = 10
    config.demo.policy_steps = 4
    config.rlp.num_prompts = 50
    config.demo.policies = ",".join(POLICIES)
    return config


POLICIES = ("rlhf", "nash_md", "rlp_spg")


@pytest.fixture(scope="module")
def demo_run(executed_notebook):
    # On the tests' backend: test_seeds_are_whole_pipelines_aggregated's seed 1 then compiles
    # nothing the notebook's seed 0 did not.
    run = executed_notebook("03_nash_md_end_to_end.ipynb", tests_backend=True)
    return os.path.join(run, "runs/colab03_small")


def test_results_json_structure_and_antisymmetry(demo_run):
    workdir = demo_run
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["methods"] == ["sft", *POLICIES]
    # RLP's judges, first and refreshed, scored on pairs from the stage-1 and stage-2 policies.
    acc = results["judge_accuracy_on_policy"]
    assert acc["judges"] == ["preference_model", "reward_model", "rlp_spg judge"]
    assert acc["policies"] == ["rlhf", "rlp_spg"]
    assert np.shape(acc["accuracy"]) == (3, 2)
    assert all(0 <= a <= 1 for row in acc["accuracy"] for a in row)
    n = len(results["methods"])
    for key in ("win_rate", "win_rate_judge"):
        M = np.asarray(results[key])
        assert M.shape == (n, n)
        np.testing.assert_allclose(M + M.T, 1.0, atol=1e-9)
    for key in ("duality_gap", "kl_to_reference"):
        assert len(results[key]) == n and all(np.isfinite(results[key]))
    assert min(results["duality_gap"]) >= 0
    assert results["kl_to_reference"][0] == pytest.approx(0.0, abs=1e-9)  # sft is mu
    assert results["config"]["tau"] == demo.demo_config().tau
    for png in ("win_rate.png", "training_curves.png"):
        assert os.path.getsize(os.path.join(workdir, png)) > 0


def test_seeds_are_whole_pipelines_aggregated(demo_run, tmp_path):
    """Two seeds through demo.run. Seed 0 is the notebook's run (seed 0, the same settings): its
    finished stages, copied to seed_0, are skipped by the pipeline (their metrics untouched);
    seed 1 trains from scratch. (Two pipelines from scratch would double this test's minute or
    so of compiling.)"""
    source = demo_run
    stages = ("sft", "preference_model", "reward_model", "nash_md")
    for stage in stages:
        shutil.copytree(os.path.join(source, stage), tmp_path / "seed_0" / stage)
    size = lambda stage: os.path.getsize(tmp_path / "seed_0" / stage / "metrics.jsonl")
    copied = {stage: size(stage) for stage in stages}
    config = _tiny(demo.demo_config())
    config.demo.policies, config.demo.seeds = "nash_md", 2
    returned = demo.run(config, str(tmp_path), quiet=True)
    assert {stage: size(stage) for stage in stages} == copied
    results = json.load(open(tmp_path / "results.json"))
    assert results["win_rate"] == returned["win_rate"] and results["seeds"] == [0, 1]
    assert config.seed == 0 and config.demo.seeds == 2  # the caller's config is unchanged
    assert results["methods"] == ["sft", "nash_md"]
    per_seed = [json.load(open(tmp_path / f"seed_{k}" / "results.json")) for k in range(2)]
    for key in ("win_rate", "duality_gap", "kl_to_reference", "judge_nash_duality_gap"):
        assert results[key]["values"] == [r[key] for r in per_seed]
    assert np.shape(results["win_rate"]["differs_from_half"]) == (2, 2)
    assert per_seed[0]["duality_gap"] != per_seed[1]["duality_gap"]  # the seed reached them


def test_unknown_policy_is_a_clear_error(tmp_path):
    config = demo.demo_config()
    config.demo.policies = "nash_md,nash_mdd"
    with pytest.raises(ValueError, match=r"unknown \['nash_mdd'\]"):
        demo.run(config, str(tmp_path))


def test_cli_unknown_config_key_is_an_error(tmp_path):
    """The locked config: a mistyped override fails before anything runs."""
    out = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", "--config", "configs/demo.py",
         f"--workdir={tmp_path}", "--config.demo.policy_step=3"],
        capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )  # fmt: skip
    assert out.returncode != 0
    assert "policy_step" in out.stderr
    assert not os.listdir(tmp_path)
