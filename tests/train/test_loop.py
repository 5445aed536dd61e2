"""The host loop: exact resume, run identity, SIGTERM, metrics."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nlhf_jax.errors import Interrupted
from nlhf_jax.train import loop
from nlhf_jax.train.step import init_train_state, make_step


class _Linear(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 1)))


class _Data:
    """Deterministic batches indexed by position, with a noisy target drawn from the position."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        rng = np.random.default_rng(self.i)
        self.i += 1
        x = rng.normal(size=(8, 4)).astype(np.float32)
        return {"x": x, "y": x @ np.arange(4.0, dtype=np.float32)[:, None]}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def _trainer(identity=None, on_step=None):
    graphdef, params = nnx.split(_Linear(nnx.Rngs(0)))
    tx = optax.adam(0.05)

    def loss_fn(g, p, batch, rng):
        model = nnx.merge(g, p)
        noise = 0.01 * jax.random.normal(rng, batch["y"].shape)  # the RNG must resume too
        err = batch["x"] @ model.w[...] - batch["y"] - noise
        return jnp.mean(err**2), {"mse": jnp.mean(err**2)}

    step = jax.jit(make_step(graphdef, tx, loss_fn), donate_argnums=0)
    if on_step:
        inner = step

        def step(s, b):
            on_step()
            return inner(s, b)

    return loop.Trainer(
        init_state=lambda: init_train_state(params, tx, seed=1),
        step=step,
        data=_Data(),
        identity=identity or {"method": "linear", "width": 4},
    )


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_resume_is_bitwise_identical(tmp_path):
    straight = loop.run(_trainer(), str(tmp_path / "a"), num_steps=20, quiet=True)
    loop.run(_trainer(), str(tmp_path / "b"), num_steps=20, stop_after=7, quiet=True)
    resumed = loop.run(_trainer(), str(tmp_path / "b"), num_steps=20, quiet=True)
    for a, b in zip(_leaves(straight), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.step) == 20
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert rows[-1]["step"] == 20 and "mse" in rows[-1] and "grad_norm" in rows[-1]


def test_another_runs_workdir_is_refused_untouched(tmp_path):
    loop.run(_trainer(), str(tmp_path), num_steps=3, quiet=True)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(ValueError, match="width: 4 in the checkpoint, 8 now"):
        loop.run(_trainer({"method": "linear", "width": 8}), str(tmp_path), num_steps=5, quiet=True)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_sigterm_saves_and_stops(tmp_path):
    calls = {"n": 0}

    def on_step():
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as info:
        loop.run(_trainer(on_step=on_step), str(tmp_path), num_steps=50, quiet=True)
    assert (info.value.signum, info.value.step) == (signal.SIGTERM, 4)
    assert loop.Checkpoints(str(tmp_path), {"method": "linear", "width": 4}).latest_step() == 4


def _tensorboard_scalars(directory):
    """(tag, step, value) of every scalar in the TFRecord event files of ``directory``."""
    from tensorboardX.proto import event_pb2

    out = []
    for name in sorted(os.listdir(directory)):
        raw = open(os.path.join(directory, name), "rb").read()
        pos = 0
        while pos < len(raw):  # record: u64 length, u32 crc, payload, u32 crc
            length = int.from_bytes(raw[pos : pos + 8], "little")
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 16 + length
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
    loop.run(_trainer(), str(tmp_path), num_steps=20, log_every=10, quiet=True)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    board = _tensorboard_scalars(tmp_path / "tensorboard" / "train")
    for row in rows:
        assert ("mse", row["step"], pytest.approx(row["mse"])) in board
    assert {step for tag, step, _ in board if tag == "loss"} == {10, 20}


def test_the_step_asserts_its_batch_and_its_state():
    """chex at the step's boundary: the batch's fields, dtypes, ranks and one batch size; a new
    state of the old one's shapes and dtypes."""
    from nlhf_jax.train import step as train_step

    spec = train_step.DEMONSTRATIONS
    good = {
        "prompt": np.zeros((4, 3), np.int32),
        "prompt_mask": np.ones((4, 3), bool),
        "response": np.zeros((4, 5), np.int32),
        "response_mask": np.ones((4, 5), bool),
    }
    train_step.check_batch(good, spec)
    bad = {
        "a missing field": {k: v for k, v in good.items() if k != "response_mask"},
        "float token ids": {**good, "prompt": good["prompt"].astype(np.float32)},
        "a flat response": {**good, "response": np.zeros(4, np.int32)},
        "two batch sizes": {**good, "response": np.zeros((3, 5), np.int32)},
    }
    for what, batch in bad.items():
        with pytest.raises(AssertionError):
            train_step.check_batch(batch, spec)
        print("refused:", what)

    graphdef, params = nnx.split(_Linear(nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    loss_fn = lambda g, p, batch, rng: (jnp.mean(batch["x"] @ nnx.merge(g, p).w[...]), {})
    to_bf16 = lambda old, new: new.replace(
        params=jax.tree.map(lambda x: x.astype("bfloat16"), new.params)
    )
    state = init_train_state(params, tx, seed=0)
    batch = {"x": np.ones((2, 4), np.float32)}
    jax.jit(make_step(graphdef, tx, loss_fn))(state, batch)  # fine
    with pytest.raises(AssertionError):  # a step that changed the parameters' dtype
        jax.jit(make_step(graphdef, tx, loss_fn, after=to_bf16))(state, batch)


def test_a_trainer_lets_its_starting_weights_go_once_started():
    """``compile_step``'s state holds the starting weights; the host copy it was given is not
    kept for the run (a model's size of memory: 0.5 GiB at SmolLM2-135M), and a second start
    is refused rather than given released weights."""
    import gc
    import weakref

    from nlhf_jax.train.defaults import base_config
    from nlhf_jax.train.step import compile_step

    config = base_config("sft")
    config.mesh.num_devices = 1
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    refs = [weakref.ref(x) for x in jax.tree.leaves(params)]
    compiled = compile_step(config, None, params, optax.sgd(0.1), lambda *a: (0.0, {}))
    del params
    state = compiled.init_state()
    gc.collect()
    assert all(r() is None for r in refs)
    np.testing.assert_array_equal(state.params["w"], np.arange(6.0).reshape(2, 3))
    with pytest.raises(RuntimeError, match="starts once"):
        compiled.init_state()
