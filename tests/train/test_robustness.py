"""A run that survives its operators: a corrupted latest checkpoint, a second writer, a diverging
policy, an interrupted dataset build, and files in a checkpoint that would run code if loaded."""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from nlhf_jax.checkpoint import Checkpoints, load_policy
from nlhf_jax.errors import UserError
from nlhf_jax.train import loop, methods
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.guard import Diverged, DivergenceGuard
from nlhf_jax.workdir_lock import WorkdirInUse, WorkdirLock


def _sft(workdir, steps, **kw):
    config = base_config("sft")
    config.batch_size = 16
    config.data.train_demos = 2000
    trainer = methods.build(config, workdir)
    return loop.run(
        trainer, workdir, num_steps=steps, checkpoint_every=10, quiet=True,
        async_checkpoints=False, **kw,
    )  # fmt: skip


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _leaves(_sft(str(tmp_path_factory.mktemp("whole")), 40))


def _truncate(step_dir):
    # The largest file of the state holds the arrays: cut it in half.
    files = [f for f in glob.glob(f"{step_dir}/state/**", recursive=True) if os.path.isfile(f)]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)


def _delete(step_dir):
    files = [f for f in glob.glob(f"{step_dir}/state/d/*") if os.path.isfile(f)]
    os.remove(max(files, key=os.path.getsize))


def _garbage_metadata(step_dir):
    with open(f"{step_dir}/state/_METADATA", "w") as f:
        f.write("{not json at all")


@pytest.mark.parametrize("corrupt", [_truncate, _delete, _garbage_metadata])
def test_corrupt_latest_checkpoint_falls_back_and_ends_identical(
    corrupt, uninterrupted, tmp_path, capsys
):
    workdir = str(tmp_path / "run")
    _sft(workdir, 30)  # checkpoints 10, 20, 30
    corrupt(f"{workdir}/checkpoints/30")
    state = _sft(workdir, 40)
    out = capsys.readouterr().out
    assert "checkpoint 30 in" in out and "does not restore" in out
    assert "resuming from checkpoint 20" in out
    for got, want in zip(_leaves(state), uninterrupted, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(f"{workdir}/unrestorable"))[0].startswith("30-")


def test_no_restorable_checkpoint_stops_naming_the_steps(tmp_path):
    workdir = str(tmp_path / "run")
    _sft(workdir, 20)
    for step in (10, 20):
        _garbage_metadata(f"{workdir}/checkpoints/{step}")
    with pytest.raises(UserError, match=r"no checkpoint in .* restores \(tried steps \[20, 10\]\)"):
        _sft(workdir, 30)
    assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["10", "20"]  # nothing moved


_HOLDER = """
import sys, time
from nlhf_jax.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, workdir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirInUse, match=rf"in use by another run: pid {holder.pid} on"):
            WorkdirLock(workdir)
        with pytest.raises(WorkdirInUse):  # the trainer takes it before writing anything
            _sft(workdir, 10)
        assert not os.path.exists(f"{workdir}/run.json")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    start = time.time()
    with WorkdirLock(workdir):  # at once: the kernel released the dead holder's lock
        pass
    assert time.time() - start < 1.0


def test_guard_names_the_step_and_the_metric():
    guard = DivergenceGuard()
    guard.check(3, "train", {"loss": 0.3, "objective/kl": 0.5, "grad_norm": 1.0})
    with pytest.raises(Diverged, match=r"step 7 \(train\): loss = nan"):
        guard.check(7, "train", {"loss": float("nan")})
    with pytest.raises(Diverged, match=r"step 9 \(train\): objective/kl = 14.5 > 10"):
        guard.check(9, "train", {"objective/kl": 14.5})
    with pytest.raises(Diverged, match=r"exact/invalid_mass = 0.991 > 0.5"):
        guard.check(
            20, "eval", {"exact/invalid_mass": 0.991}, baseline={"exact/invalid_mass": 0.02}
        )
    # Relative to the start: well-formed mass may fall to (1 - 0.5) of the start's. From 0.6
    # invalid (a short SFT run), 0.79 is allowed and 0.81 is not; without a start, no check.
    start = {"exact/invalid_mass": 0.6}
    guard.check(20, "eval", {"exact/invalid_mass": 0.79}, baseline=start)
    with pytest.raises(Diverged, match=r"exact/invalid_mass = 0.81 > 0.8 "):
        guard.check(20, "eval", {"exact/invalid_mass": 0.81}, baseline=start)
    guard.check(20, "eval", {"exact/invalid_mass": 0.8})
    DivergenceGuard(max_kl=0).check(1, "train", {"objective/kl": 1e6})  # 0: off


def test_collapse_trips_and_is_not_checkpointed(sft_run, tmp_path):
    """A collapse (Nash-MD-PG at learning rate 1e3): stopped at the first
    evaluation after it, and the latest checkpoint is the last good state."""
    config = base_config("nash_md")
    config.init_from, config.batch_size, config.mesh.num_devices = sft_run, 16, 1
    config.optimizer.learning_rate = 1e3
    workdir = str(tmp_path / "run")
    trainer = methods.build(config, workdir)
    with pytest.raises(Diverged, match=r"diverged at step \d+") as tripped:
        loop.run(trainer, workdir, num_steps=40, checkpoint_every=1, eval_every=10, quiet=True)
    step = int(str(tripped.value).split("diverged at step ")[1].split()[0])
    checkpoints = Checkpoints(workdir, trainer.identity)
    saved = checkpoints.manager.all_steps()
    checkpoints.close()
    assert 0 < step < 40 and all(s < step for s in saved)  # checkpointed every step before it


def test_interrupted_dataset_build_is_cleaned(tmp_path, caplog):
    from nlhf_jax import data

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    built = data.build_prompts(str(path), str(tmp_path / "ds"), name="x")
    parent = os.path.dirname(built.dataset_dir)
    shutil.rmtree(built.dataset_dir)  # as if killed before the rename
    os.makedirs(f"{parent}/incomplete.ABC123_1.0.0/junk")
    with caplog.at_level("WARNING"):
        rebuilt = data.build_prompts(str(path), str(tmp_path / "ds"), name="x")
    assert rebuilt.num_examples["train"] == 5
    assert not [e for e in os.listdir(parent) if "incomplete." in e]
    assert "removed 1 unfinished dataset build" in caplog.text


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_nothing_executes_from_disk(tmp_path):
    from flax import nnx

    from nlhf_jax.models import Transformer, hf, tokenizer
    from nlhf_jax.models.config import get_preset
    from nlhf_jax.tasks import text

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    # An HF directory whose safetensors are real, beside a pickled .bin and custom code.
    ckpt = tmp_path / "hf"
    model = Transformer(get_preset("toy", vocab_size=384), rngs=nnx.Rngs(0))
    hf.save_pretrained(model, str(ckpt))
    (ckpt / "pytorch_model.bin").write_bytes(payload)
    tok = text.build_tokenizer(str(ckpt))
    (ckpt / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config_path = ckpt / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config_path.write_text(json.dumps(tok_config))
    loaded = hf.load_pretrained(str(ckpt))
    assert loaded.config.vocab_size == 384
    try:
        tokenizer.load_tokenizer(str(ckpt))
    except Exception:  # refusing custom code is as good as ignoring it
        pass
    assert len(tok) > 0
    # A run's checkpoint directory with a pickle in it: orbax reads only its own files.
    workdir = str(tmp_path / "run")
    _sft(workdir, 10)
    with open(f"{workdir}/checkpoints/10/state/extra.pkl", "wb") as f:
        f.write(payload)
    load_policy(workdir)
    assert not marker.exists()


@pytest.mark.parametrize("method", ["nash_md", "preference_model"])
def test_preempted_run_resumes_identical(method, sft_run, tmp_path):
    """Stopped at step 3 of 6 (what SIGTERM does) and resumed: the same parameters, bit for
    bit, as a run that was never stopped (Nash-MP's own test is in test_online.py)."""
    config = base_config(method)
    config.batch_size, config.num_steps = 8, 6
    config.data.train_pairs, config.data.eval_pairs = 500, 50
    if method == "nash_md":
        config.init_from, config.mesh.num_devices = sft_run, 1

    def run(workdir, **kw):
        trainer = methods.build(config, str(workdir))
        return loop.run(trainer, str(workdir), num_steps=6, checkpoint_every=100,
                        async_checkpoints=False, quiet=True, **kw)  # fmt: skip

    straight = _leaves(run(tmp_path / "a"))
    run(tmp_path / "b", stop_after=3)
    for got, want in zip(_leaves(run(tmp_path / "b")), straight, strict=True):
        np.testing.assert_array_equal(got, want)
