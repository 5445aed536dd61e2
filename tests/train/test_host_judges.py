"""The online step split around a host judge (``nlhf_jax.train.split``) is the fused step: the
same pair sampled with the same keys, the same update from the host's answers."""

import jax
import numpy as np
import pytest

from nlhf_jax.train import methods
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.online import trainer as online_trainer

from .optimizer_state import adam_moments


class _OnTheHost:
    """A jittable judge made a host one: called with NumPy arrays, answering NumPy arrays."""

    jittable = False

    def __init__(self, judge):
        self.judge = judge
        self._p = jax.jit(lambda judge, *arrays: judge(*arrays))
        self._r = jax.jit(lambda judge, *arrays: judge.reward(*arrays))

    def __call__(self, *arrays):
        self.pair = arrays  # prompt, its mask, y, its mask, y', its mask: what the host saw
        return np.asarray(self._p(self.judge, *arrays), np.float64)

    def reward(self, *arrays):
        return np.asarray(self._r(self.judge, *arrays))


def _config(sft_run, judge):
    # test_online.py's RLHF config, so a session compiles its fused step once.
    config = base_config("rlhf")
    config.init_from, config.judge = sft_run, judge
    config.batch_size, config.num_steps = 8, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
    config.mesh.num_devices, config.micro_batch_size = 1, 0
    return config


def _fused_then_host(config, tmp_path, monkeypatch):
    """One step of ``config``'s trainer fused, then with its judge answered on the host:
    (Adam's first moment, metrics) of each, and the host judges made."""
    load = online_trainer.load_judge
    out, hosts = {}, []
    for where in ("fused", "host"):
        if where == "host":
            host_judge = lambda *a: hosts.append(_OnTheHost(load(*a))) or hosts[-1]
            monkeypatch.setattr(online_trainer, "load_judge", host_judge)
        trainer = methods.build(config, str(tmp_path / where))
        state, metrics = trainer.step(trainer.init_state(), next(trainer.data))
        out[where] = jax.device_get((adam_moments(state).mu, metrics))
    return out["fused"], out["host"], hosts


def test_split_step_is_the_fused_step(sft_run, judge_runs, tmp_path, monkeypatch):
    """RLHF against a reward-model run, once fused and once with the judge (preference and
    reward) answered on the host: the rollout draws the fused step's pair (same key) and the
    update gives the same gradient, to float32 rounding of the judge's separate program."""
    config = _config(sft_run, judge_runs["reward_model"])
    (fused, m_fused), (host, m_host), hosts = _fused_then_host(config, tmp_path, monkeypatch)
    assert "time/judge_s" in m_host and "time/judge_s" not in m_fused
    # The logged response length is the mean token count of y ~ pi, the pair's first response.
    y_mask = hosts[-1].pair[3]
    assert m_host["objective/response_len"] == pytest.approx(y_mask.sum(-1).mean(), rel=1e-6)
    for key in m_fused:  # a different pair would move these by O(0.1)
        assert m_host[key] == pytest.approx(m_fused[key], rel=1e-5, abs=1e-6), key
    # The gradient through Adam's first moment, (1 - b1) g after one step. Not the parameters:
    # Adam's first step moves each one by lr g / (|g| + eps), so where |g| is near eps a float32
    # rounding of g is 1e-4 of the step (seen: 2e-6 of lr = 1e-2 on one weight of 8,192).
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(fused), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_sppos_k_samples_split_is_fused(sft_run, judge_runs, tmp_path, monkeypatch):
    """SPPO with K = 4 samples a prompt against a preference-model run: the host judge is asked
    every pair of the four (6 questions a prompt, ``judge_questions``), and the update from its
    answers is the fused step's, which asks the same judge the same questions on the device."""
    config = base_config("sppo")
    config.init_from, config.judge = sft_run, judge_runs["preference_model"]
    config.batch_size, config.num_steps, config.samples = 8, 10, 4
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
    config.mesh.num_devices = 1
    (fused, m_fused), (host, m_host), hosts = _fused_then_host(config, tmp_path, monkeypatch)
    assert len(hosts[-1].pair[0]) == 8 * 6  # every pair of 4, for each of the 8 prompts
    for key in m_fused:
        assert m_host[key] == pytest.approx(m_fused[key], rel=1e-5, abs=1e-6), key
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(fused), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
