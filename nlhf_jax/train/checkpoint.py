"""Checkpoints of a training run: orbax CheckpointManager plus a run identity check.

A workdir holds one run: ``run.json`` records what the state's shapes depend on (the method and
the model config). Opening a workdir whose ``run.json`` differs raises before anything is written,
so a checkpoint of another model is never overwritten nor half-restored. orbax writes each step
to a temporary directory and renames it when complete, so a kill mid-save leaves nothing that a
restart would load (the temporary directory is cleaned up on the next start).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

RUN_FILE = "run.json"


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


class Checkpoints:
    """Saves and restores ``{state, data}`` at integer steps under ``workdir/checkpoints``.

    Args:
      workdir: the run's directory (created if missing).
      identity: JSON-serialisable description of what the state's structure depends on.
      max_to_keep: how many recent checkpoints to keep.
      async_save: write in a background thread (the training step continues meanwhile).
    """

    def __init__(self, workdir: str, identity: dict, *, max_to_keep: int = 3, async_save=True):
        workdir = os.path.abspath(workdir)  # orbax requires absolute paths
        os.makedirs(workdir, exist_ok=True)
        run_file = os.path.join(workdir, RUN_FILE)
        identity = json.loads(json.dumps(identity))  # normalise tuples to lists
        if os.path.exists(run_file):
            with open(run_file) as f:
                previous = json.load(f)
            differences = _diff(previous, identity)
            if differences:
                raise ValueError(
                    f"{workdir} holds a checkpoint of another run; refusing to touch it. "
                    "Use another --workdir. Differences: " + "; ".join(differences)
                )
        else:
            tmp = run_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(identity, f, indent=2, sort_keys=True)
            os.replace(tmp, run_file)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, step: int, like_state: Any) -> tuple[Any, dict]:
        """Restores the state into the structure, shapes and shardings of ``like_state``."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        return restored["state"], restored["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _unwrap(tree):
    """orbax restores an ``nnx.State`` without a target as nested dicts with ``{"value": x}``
    leaves; this returns the pure nested dict ``nnx.replace_by_pure_dict`` takes."""
    if isinstance(tree, dict):
        if set(tree) == {"value"}:
            return tree["value"]
        return {k: _unwrap(v) for k, v in tree.items()}
    return tree


def _read_only(directory: str) -> ocp.CheckpointManager:
    # orbax warns three times that a read-only manager is read-only; that is the point here.
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        return ocp.CheckpointManager(
            directory, options=ocp.CheckpointManagerOptions(read_only=True)
        )
    finally:
        logging.set_verbosity(previous)


def latest_step(workdir: str) -> int | None:
    """The latest checkpointed step of a run's workdir (None: no checkpoint yet)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    return _read_only(directory).latest_step() if os.path.isdir(directory) else None


def read_identity(workdir: str) -> dict:
    """The ``run.json`` of another run (what its model was)."""
    path = os.path.join(os.path.abspath(workdir), RUN_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training run's workdir")
    with open(path) as f:
        return json.load(f)


def load_params(workdir: str, like_params: Any, step: int | None = None) -> Any:
    """The parameters of another run's checkpoint (e.g. the SFT policy), into ``like_params``'s
    structure. Raises naming the parameter and both shapes if the run's model differs."""
    read_identity(workdir)  # fails clearly if this is not a run's workdir at all
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = _read_only(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    pure = _unwrap(raw["state"]["params"])
    want = {
        jax.tree_util.keystr(k): v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(like_params.to_pure_dict())
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(pure)}
    wrong = [
        f"{k}: {got.get(k)} in {workdir}, {want.get(k)} expected"
        for k in sorted(set(want) | set(got))
        if want.get(k) != got.get(k)
    ]
    if wrong:
        raise ValueError(f"{workdir} step {step} holds another model: " + "; ".join(wrong[:5]))
    like = jax.tree.map(lambda x: x, like_params)  # a copy: the caller's state stays as it was
    nnx.replace_by_pure_dict(like, pure)
    return like
