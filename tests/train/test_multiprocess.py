"""`python -m nlhf_jax.train` under 2 processes (jax.distributed, a localhost coordinator, 2 fake
CPU devices each) equals the 1-process run on 4 devices, and its checkpoint resumes in 1
process. (That each process reads exactly its rows of the one-process batches is
tests/data/test_pipeline.py's.)

The 1-process runs happen here, in pytest's process, on 4 of its 8 fake devices: the same
(data 2, fsdp 2) mesh over 4 devices, the same batches (every process reads the same global
batch and places its rows), the same step. Only the partial sums' order differs (gloo's
all-reduce across processes against XLA's within one), so the tolerances are those of
test_sharded.py, whose comment derives them.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from nlhf_jax.checkpoint import Checkpoints, read_identity
from nlhf_jax.train import loop, methods
from nlhf_jax.train.defaults import base_config

from .optimizer_state import adam_moments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LR = 1e-2
SETTINGS = {
    "batch_size": 8,
    "optimizer.learning_rate": LR,
    "optimizer.warmup_steps": 0,
    "eval_every": 0,
    "checkpoint_every": 1,
    "mesh.shape": (2, 2, 1),
    "data.train_pairs": 256,
    "data.eval_pairs": 64,
    "data.num_eval_prompts": 8,
}


def _config(method, **kw):
    config = base_config(method)
    for key, value in {**SETTINGS, **kw}.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    config.mesh.num_devices = 4
    return config


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(config_file, workdir, **kw):
    """`python -m nlhf_jax.train` in 2 processes of 2 fake CPU devices each."""
    flags = [f"--config.{k}={v}" for k, v in {**SETTINGS, **kw}.items() if k != "mesh.shape"]
    flags.append("--config.mesh.shape=(2,2,1)")
    port, procs = _free_port(), []
    # The suite's XLA flags (tests/conftest.py), with 2 devices and a longer collective timeout.
    flags_2 = [f for f in os.environ["XLA_FLAGS"].split() if "collective_call" not in f]
    flags_2 += ["--xla_force_host_platform_device_count=2"]
    flags_2 = " ".join([*flags_2, "--xla_cpu_collective_call_terminate_timeout_seconds=30"])
    for k in range(2):
        env = {
            **os.environ,
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(k),
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": flags_2,
        }
        command = [sys.executable, "-m", "nlhf_jax.train", "--config", config_file]
        command += ["--workdir", workdir, *flags]
        procs.append(
            subprocess.Popen(
                command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    for k, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {k}:\n{out[-3000:]}"
    return outs


def _state(workdir, step, like):
    ckpt = Checkpoints(workdir, read_identity(workdir), async_save=False)
    try:
        return jax.device_get(ckpt.restore(step, like)[0])
    finally:
        ckpt.close()


def _assert_close(a, b):
    """Parameters to 0.1 lr, Adam's mu and sqrt(nu) to 1e-3 of each leaf's scale."""
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=0.1 * LR)
    for name, f in (("mu", np.asarray), ("nu", np.sqrt)):
        leaves = zip(
            jax.tree.leaves(getattr(adam_moments(a), name)),
            jax.tree.leaves(getattr(adam_moments(b), name)),
            strict=True,
        )
        for x, y in leaves:
            x, y = f(x), f(y)
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-3 * np.abs(y).max(), err_msg=name)
    assert int(a.step) == int(b.step)


def _one_process(config, workdir, steps):
    trainer = methods.build(config, workdir)
    state = loop.run(
        trainer, workdir, num_steps=steps, checkpoint_every=1, quiet=True, async_checkpoints=False
    )
    return trainer, jax.device_get(state)


def test_nash_md_two_processes_then_one_resumes(sft_run, tmp_path):
    """1 Nash-MD-PG step in 2 processes equals it in 1; the 2-process checkpoint then resumes in
    1 process and its step 2 equals the 1-process run's."""
    kw = {"init_from": sft_run, "judge": "oracle", "num_steps": 2}
    _one_process(_config("nash_md", **kw), str(tmp_path / "one"), 2)
    # A template of the state to restore into: a trainer starts once, so a second one.
    like = methods.build(_config("nash_md", **kw), str(tmp_path / "like")).init_state()
    one = {step: _state(str(tmp_path / "one"), step, like) for step in (1, 2)}
    out = _two_processes("configs/nash_md.py", str(tmp_path / "two"), **{**kw, "num_steps": 1})
    _assert_close(_state(str(tmp_path / "two"), 1, like), one[1])
    # One writer: process 0's console has the metrics, process 1's has none.
    assert "[train step 1]" in out[0] and "[train step 1]" not in out[1]
    rows = open(tmp_path / "two" / "metrics.jsonl").read().splitlines()
    assert len(rows) == 2  # step 1: its train row and the final evaluation, written once
    _, resumed = _one_process(_config("nash_md", **kw), str(tmp_path / "two"), 2)
    _assert_close(resumed, one[2])
