"""Run directories: orbax checkpoints, the run identity, and loading a run's policy.

A workdir holds one run: ``run.json`` records what the state's shapes depend on (the method and
the model config). Opening a workdir whose ``run.json`` differs raises before anything is written,
so a checkpoint of another model is never overwritten nor half-restored; a workdir without any
checkpoint holds nothing to protect, so its ``run.json`` is replaced (a run that failed on a bad
input does not block the corrected one). orbax writes each step to a temporary directory and
renames it when complete, so a kill mid-save leaves nothing that a restart would load.

Policy runs on text also keep their tokenizer in ``WORKDIR/tokenizer`` (``save_tokenizer``), so
sampling, evaluation and export need nothing but the run directory. This module sits below both
``nlhf_jax.train`` and ``nlhf_jax.evaluate``, which read runs through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from nlhf_jax import parallel
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.models import RopeScaling, Transformer, TransformerConfig, lora
from nlhf_jax.models.config import EXECUTION_FIELDS
from nlhf_jax.models.lora import LoRAConfig

RUN_FILE = "run.json"
TOKENIZER_DIR = "tokenizer"


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def _comparable(identity: dict) -> dict:
    """The identity without the model's execution fields (``EXECUTION_FIELDS``: attention kernel,
    rematerialization): they change no parameter, so a run may resume with other ones, and a
    run.json written before they existed still matches."""
    model = identity.get("model")
    if not isinstance(model, dict):
        return identity
    # A field added to the model since the run was written compares as its default.
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(TransformerConfig)
        if f.default is not dataclasses.MISSING
    }
    model = json.loads(json.dumps({**defaults, **model}))  # a default tuple compares as a list
    # A run recorded before the family field was its features' family (model_family).
    if not model.get("family"):
        model["family"] = transformer_config(model).model_family
    return {**identity, "model": {k: v for k, v in model.items() if k not in EXECUTION_FIELDS}}


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
        checkpoints = os.path.join(workdir, "checkpoints")
        has_checkpoint = os.path.isdir(checkpoints) and any(
            name.isdigit() for name in os.listdir(checkpoints)
        )
        if os.path.exists(run_file) and has_checkpoint:
            with open(run_file) as f:
                previous = json.load(f)
            differences = _diff(_comparable(previous), _comparable(identity))
            if differences:
                raise UserError(
                    f"{workdir} holds a checkpoint of another run; refusing to touch it. "
                    "Use another --workdir. Differences: " + "; ".join(differences)
                )
        elif jax.process_index() == 0:  # one writer of a multi-process run's files
            tmp = run_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(identity, f, indent=2, sort_keys=True)
            os.replace(tmp, run_file)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self.directory = os.path.join(workdir, "checkpoints")
        self._aside = os.path.join(workdir, "unrestorable")
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, like_state: Any, log=print) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores completely: ``(step, state, data)``, or None if
        there is no checkpoint at all.

        A checkpoint that fails to restore (a truncated or missing file, garbage metadata) is
        named with the reason in one line each; once an older one restores, the newer broken
        ones are moved to ``WORKDIR/unrestorable/`` (kept for inspection, out of orbax's way, so
        the resumed run can save those steps again). If none restores, nothing is moved and
        the run stops naming the steps tried: it never silently starts over.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed = []
        for step in steps:
            try:
                state, data = self.restore(step, like_state)
            except Exception as e:  # orbax and tensorstore raise many types
                reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else repr(e)
                log(f"checkpoint {step} in {self.directory} does not restore: {reason}")
                failed.append(step)
                continue
            for bad in failed if jax.process_index() == 0 else ():
                self._set_aside(bad)
            if failed:
                self.manager.reload()
                log(f"resuming from checkpoint {step}; set aside {failed} in {self._aside}")
            return step, state, data
        if failed:
            raise UserError(
                f"no checkpoint in {self.directory} restores (tried steps {failed}); not starting "
                "over: move the checkpoints directory away to start a fresh run"
            )
        return None

    def _set_aside(self, step: int) -> None:
        os.makedirs(self._aside, exist_ok=True)
        target = os.path.join(self._aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(os.path.join(self.directory, str(step)), target)

    def save(self, step: int, state: Any, data_state: dict) -> None:
        # The step's freed temporaries go back to the system before the writer's buffers come.
        parallel.release_free_memory()
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
            directory,
            options=ocp.CheckpointManagerOptions(read_only=True),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
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
        raise MissingInput(f"{path} not found: {workdir} is not a training run's workdir")
    with open(path) as f:
        return json.load(f)


def load_params(workdir: str, like_params: Any, step: int | None = None) -> Any:
    """The parameters of another run's checkpoint (e.g. the SFT policy), into ``like_params``'s
    structure. Raises naming the parameter and both shapes if the run's model differs."""
    read_identity(workdir)  # fails clearly if this is not a run's workdir at all
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    manager = _read_only(directory)
    saved = list(manager.all_steps())
    step = manager.latest_step() if step is None else step
    if step is None:
        raise MissingInput(f"no checkpoint in {directory}: the run {workdir} has not saved yet")
    if step not in saved:
        raise MissingInput(
            f"{workdir} has no checkpoint of step {step}; it has steps {sorted(saved)}"
        )
    # Whole onto this process's first device, whatever mesh saved it: with several processes
    # each one reads its own copy (a run that starts from this one places them in its shards).
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
        manager.item_metadata(step)["state"],
    )
    raw = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    pure = _unwrap(raw["state"]["params"])
    want = {
        jax.tree_util.keystr(k): v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(like_params))
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(pure)}
    wrong = [
        f"{k}: {got.get(k)} in {workdir}, {want.get(k)} expected"
        for k in sorted(set(want) | set(got))
        if want.get(k) != got.get(k)
    ]
    if wrong:
        raise UserError(f"{workdir} step {step} holds another model: " + "; ".join(wrong[:5]))
    like = jax.tree.map(lambda x: x, like_params)  # a copy: the caller's state stays as it was
    nnx.replace_by_pure_dict(like, pure)
    return like


# --- policy runs -----------------------------------------------------------------------------

# Methods whose runs hold a judge rather than a policy.
JUDGE_METHODS = ("preference_model", "reward_model")


def transformer_config(fields: dict) -> TransformerConfig:
    """The ``TransformerConfig`` of a run.json ``model`` dict (its ``rope_scaling`` is a dict)."""
    fields = dict(fields)
    if fields.get("rope_scaling") is not None:
        fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    if fields.get("lora") is not None:
        fields["lora"] = LoRAConfig(**fields["lora"])
    return TransformerConfig(**fields)


@dataclasses.dataclass
class PolicyRun:
    """A trained policy (or a pretrained checkpoint, ``is_checkpoint``): its run's identity,
    model config, split model and latest parameters."""

    name: str
    workdir: str
    identity: dict
    config: TransformerConfig
    graphdef: nnx.GraphDef
    params: nnx.State

    @property
    def model(self) -> Transformer:
        return nnx.merge(self.graphdef, self.params)


# The ``method`` of a pretrained checkpoint's identity (``policy_identity``).
CHECKPOINT_METHOD = "checkpoint"


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a pretrained checkpoint rather than a run: a GGUF file, or a Hugging
    Face directory (a config.json with a ``model_type``, and no run.json; a run's workdir
    holds a config.json of its settings, and a run.json once it has started)."""
    from nlhf_jax.models import gguf_file

    if gguf_file.is_gguf(path):
        return True
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config) or os.path.exists(os.path.join(path, RUN_FILE)):
        return False
    try:
        with open(config) as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return True  # unreadable: loading it as a checkpoint names the file and the problem


def policy_identity(name: str, workdir: str) -> dict:
    """The run.json of a policy run (SFT or an online method); raises naming the run if the
    directory is not a run, or holds a judge.

    A pretrained checkpoint (``is_checkpoint``: a GGUF file or a Hugging Face directory) is a
    policy too: its identity is ``{"method": "checkpoint", "checkpoint": PATH, "model": ...,
    "chat_template": whether its tokenizer has one}``.
    """
    if is_checkpoint(workdir):
        from nlhf_jax.models import hf
        from nlhf_jax.models.tokenizer import load_tokenizer

        return {
            "method": CHECKPOINT_METHOD,
            "checkpoint": os.path.abspath(workdir),
            "model": dataclasses.asdict(hf.model_config(workdir)),
            # An instruct model's prompts go through its chat template, as a run records.
            "chat_template": bool(getattr(load_tokenizer(workdir), "chat_template", None)),
        }
    try:
        identity = read_identity(workdir)
    except MissingInput as e:
        raise MissingInput(f"run {name!r}: {e}") from None
    method = identity.get("method")
    if method in JUDGE_METHODS or "model" not in identity:
        raise UserError(
            f"run {name!r} ({workdir}) is a {method!r} run, not a policy run (judges are named "
            "as judges)"
        )
    return identity


def load_policy(workdir: str, name: str = "policy", step: int | None = None) -> PolicyRun:
    """The latest (or ``step``'s) parameters of a policy run, in the model its run.json names.

    A LoRA run's checkpoint holds only its adapters; its policy is returned merged, ``W + s A
    B`` on its base (``base`` in its run.json: a Hugging Face checkpoint or an earlier run),
    as a plain model: what sampling, evaluation, export and a later run use.
    """
    identity = policy_identity(name, workdir)
    if identity["method"] == CHECKPOINT_METHOD:
        from nlhf_jax.models import hf
        from nlhf_jax.parallel import on_host

        with on_host():
            model = hf.load_pretrained(workdir)
        graphdef, params = nnx.split(model)
        return PolicyRun(name, workdir, identity, model.config, graphdef, params)
    config = transformer_config(identity["model"])
    if config.lora is not None:
        return _load_lora_policy(workdir, name, identity, config, step)
    graphdef, like = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    params = load_params(workdir, like, step)
    return PolicyRun(name, workdir, identity, config, graphdef, params)


def load_adapters(workdir: str, config: TransformerConfig, step: int | None = None) -> nnx.State:
    """A LoRA run's adapters (its whole checkpointed parameters)."""
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    _, like, _ = lora.split(abstract)
    return load_params(workdir, like, step)


def base_model(identity: dict, name: str) -> Transformer:
    """The frozen base of a LoRA run (its run.json's ``base``), as a plain model."""
    base = identity.get("base") or {}
    if base.get("hf_checkpoint"):
        from nlhf_jax.models import hf

        dtypes = {k: identity["model"][k] for k in ("dtype", "param_dtype")}
        return hf.load_pretrained(base["hf_checkpoint"], **dtypes)
    if base.get("init_from"):
        return load_policy(base["init_from"], f"{name}'s base").model
    raise UserError(f"run {name!r} has adapters but its run.json names no base")


def _load_lora_policy(workdir, name, identity, config, step) -> PolicyRun:
    adapters = load_adapters(workdir, config, step)
    whole = nnx.merge_state(nnx.state(base_model(identity, name)), adapters)
    plain = config.replace(lora=None)
    graphdef, like = nnx.split(nnx.eval_shape(lambda: Transformer(plain, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(like, lora.merged_pure_dict(nnx.to_pure_dict(whole), config.lora))
    return PolicyRun(name, workdir, identity, plain, graphdef, like)


def save_tokenizer(tokenizer, workdir: str) -> None:
    """Keeps the run's tokenizer in ``WORKDIR/tokenizer``, replaced whole (never half-written)."""
    target = os.path.join(workdir, TOKENIZER_DIR)
    os.makedirs(workdir, exist_ok=True)
    tmp, old = target + ".tmp", target + ".old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    if os.path.isdir(target):
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def run_tokenizer(workdir: str):
    """The tokenizer a text run kept (``save_tokenizer``), or a checkpoint's own
    (``is_checkpoint``), or None for a synthetic-task run."""
    from nlhf_jax.models.tokenizer import load_tokenizer

    if is_checkpoint(workdir):
        return load_tokenizer(workdir)
    path = os.path.join(workdir, TOKENIZER_DIR)
    if not os.path.isdir(path):
        return None

    return load_tokenizer(path)
