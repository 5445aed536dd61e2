"""RLP's pipeline on the synthetic task, tiny: stages, the refreshed judge, exact resume."""

import json
import os

import jax
import numpy as np
import pytest

from nlhf_jax import sources
from nlhf_jax.judges import load_run
from nlhf_jax.pipelines import rlp
from nlhf_jax.tasks.synthetic import SyntheticTask
from nlhf_jax.train import loop, methods, refresh
from nlhf_jax.train.defaults import base_config


def _tiny(config):
    config.batch_size = 16
    config.log_every = 2
    config.mesh.num_devices = 1
    config.data.train_pairs, config.data.eval_pairs = 500, 100
    config.demo.preference_steps = 4
    config.demo.policy_steps = 2
    config.rlp.num_prompts = 60
    return config


@pytest.fixture(scope="module")
def nash_md_rlp(sft_run, tmp_path_factory):
    """The Nash-MD pipeline with the preference model refreshed by SPG pairs and UML. The SFT
    policy stands in for the stage-1 policy (one stage less to train)."""
    config = _tiny(rlp.rlp_config("spg+uml", "nash_md"))
    config.rlp.sft = config.rlp.stage1 = sft_run
    workdir = str(tmp_path_factory.mktemp("nash_md_rlp"))
    return config, rlp.run(config, workdir, quiet=True)


def test_pipeline_stages_and_the_refreshed_judge(nash_md_rlp):
    config, dirs = nash_md_rlp
    identity = json.load(open(os.path.join(dirs["judge_rlp"], "run.json")))
    assert identity["method"] == "preference_model"
    assert identity["bottleneck"] == [config.rlp.code_dim, config.rlp.hidden]
    stats = identity["data"]["rlp"]
    assert stats["mode"] == "spg+uml" and stats["prompts"] == config.rlp.num_prompts
    assert 0 <= stats["kept"] <= stats["prompts"]
    assert identity["data"]["extra_pairs"] == stats["kept"]
    # The refreshed judge loads with its bottleneck and stays antisymmetric.
    task = SyntheticTask()
    judge = load_run(dirs["judge_rlp"], task)
    x, r = task.prompts()[:4], task.responses()
    ones = np.ones_like(r[:4], bool)
    pm = np.ones_like(x, bool)
    p_ab = np.asarray(judge(x, pm, r[:4], ones, r[4:8], ones))
    p_ba = np.asarray(judge(x, pm, r[4:8], ones, r[:4], ones))
    np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-6)
    stage2 = json.load(open(os.path.join(dirs["stage2"], "run.json")))
    assert stage2["method"] == "nash_md"


def test_sample_set_groups_and_spg_pairs(nash_md_rlp):
    config, dirs = nash_md_rlp
    samples = refresh.read_samples(dirs["samples"])
    X, N, _ = samples["response"].shape
    assert (X, N) == (config.rlp.num_prompts, config.rlp.num_samples)
    task = SyntheticTask()
    quality, style = task.quality_and_style(
        np.repeat(samples["prompt"], N, 0),
        samples["response"].reshape(X * N, -1),
        samples["response_mask"].reshape(X * N, -1),
    )
    key = np.stack([np.asarray(quality), np.asarray(style)], -1).reshape(X, N, 2)
    for x in range(X):  # same group id <=> same (quality, style)
        same_key = (key[x][:, None] == key[x][None]).all(-1)
        np.testing.assert_array_equal(same_key, samples["group"][x][:, None] == samples["group"][x])
    pairs, stats = refresh.spg_training_pairs(samples, config.rlp.gamma, seed=0)
    chosen_first = pairs["label"] == 1.0
    assert stats["kept"] == len(pairs["label"]) > 0
    assert set(np.unique(pairs["label"])) <= {0.0, 1.0}
    assert 0 < chosen_first.mean() < 1  # the order is shuffled


def test_refreshed_reward_model_resumes_identical(nash_md_rlp, tmp_path):
    """A UML-refreshed reward model stopped at step 3 of 6 and resumed: the same parameters,
    bit for bit, as a run never stopped (its data state holds the pairs' and views' iterators)."""
    _, dirs = nash_md_rlp
    config = base_config("reward_model")
    config.batch_size, config.num_steps = 8, 6
    config.data.train_pairs, config.data.eval_pairs = 500, 50
    config.rlp.samples, config.rlp.mode = dirs["samples"], "uml"

    def run(workdir, **kw):
        trainer = methods.build(config, str(workdir))
        return loop.run(trainer, str(workdir), num_steps=6, checkpoint_every=100,
                        async_checkpoints=False, quiet=True, **kw)  # fmt: skip

    straight = [np.asarray(a) for a in jax.tree.leaves(run(tmp_path / "a").params)]
    run(tmp_path / "b", stop_after=3)
    resumed = [np.asarray(a) for a in jax.tree.leaves(run(tmp_path / "b").params)]
    for got, want in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(got, want)
    metrics = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    train = [m for m in metrics if "uml/symmetric_kl" in m]
    assert train and all(np.isfinite(m["uml/mutual_information"]) for m in train)


def test_spg_pairs_join_the_synthetic_pairs_only(tmp_path):
    config = base_config("reward_model")
    config.data.source = "file"
    config.data.train_file = str(tmp_path / "pairs.jsonl")
    extra = {"label": np.ones(1)}
    with pytest.raises(Exception, match="synthetic data only"):
        sources.pairs(config, str(tmp_path), extra_pairs=extra)
