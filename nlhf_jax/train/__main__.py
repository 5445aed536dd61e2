"""Training entry point.

    python -m nlhf_jax.train --config configs/<method>.py --workdir DIR [--config.key=value ...]
    python -m nlhf_jax.train --config configs/<method>.py --print_config   # every key
    python -m nlhf_jax.train        # the embedded default: the demo pipeline into runs/demo

A config with a ``pipeline`` key runs that pipeline (``nlhf_jax.pipelines``: ``demo``, ``rlp``),
any other trains ``config.method``. Without --config it runs the demo pipeline (as
``--config configs/demo.py`` does, which also takes overrides). Pipelines sit above the trainers:
this module finds them, and the embedded default config, through the package's entry points
(groups ``nlhf_jax.pipelines`` and ``nlhf_jax.default_config`` in setup.py), never by importing
``nlhf_jax.pipelines``.

Resumes from the latest checkpoint in DIR. The resolved config is written to
``DIR/config.json``; resuming with other values of keys that change what is trained is refused
(``nlhf_jax.train.settings``) unless ``--allow_changes``. Ctrl-C and SIGTERM save the state and
end the process with status 130 / 143 and one line saying so. A config key that does not exist
and an impossible value are errors; a user's mistake (a bad file, a wrong key or value, a
missing run) ends in one ``error:`` line and exit status 2. The libraries' logs and warnings
are silenced unless ``--verbose`` is given (``nlhf_jax.console``).

Several processes (GPU nodes, TPU hosts): start the same command in each; SLURM, Open MPI and
TPU pod environments are detected, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (``nlhf_jax.parallel.maybe_initialize_distributed``). Every process reads the
same batches and places its own rows; process 0 writes metrics, samples and run.json, and orbax
writes each checkpoint from all of them.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from importlib import metadata

import jax
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import parallel, sources
from nlhf_jax.console import quiet_libraries
from nlhf_jax.errors import UserError, exit_on_user_error
from nlhf_jax.train import defaults, loop, methods, settings
from nlhf_jax.train.guard import DivergenceGuard

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics (the demo's default: runs/demo)."
)
_VERBOSE = flags.DEFINE_boolean(
    "verbose", False, "Show the libraries' logs, warnings and progress bars (absl, tfds, orbax)."
)
_PRINT_CONFIG = flags.DEFINE_boolean(
    "print_config", False, "Print every config key with its value (and default) and exit."
)
_ALLOW_CHANGES = flags.DEFINE_boolean(
    "allow_changes", False, "Resume even if keys that change what is trained differ."
)

HELP = """usage: python -m nlhf_jax.train [--config FILE[:ARG]] [--workdir DIR]
                                [--config.KEY=VALUE ...] [--print_config] [--allow_changes]
                                [--verbose]

Trains one method (configs/<method>.py) or runs a pipeline (configs/demo.py, configs/rlp_*.py)
into --workdir, resuming from its latest checkpoint. Without --config: the demo into runs/demo.

The keys set first (--config.KEY=VALUE):
  num_steps, batch_size, micro_batch_size, optimizer.learning_rate, seed,
  eval_every, checkpoint_every, log_every,
  tau, beta (the online methods'), init_from (the SFT run), judge (a judge run or 'oracle'),
  model.hf_checkpoint, data.train_file, data.prompts_file, lora.rank

  --print_config     print every key of the config with its value and default, then exit
  --allow_changes    resume although keys that change what is trained differ from the run's
  --verbose          show the libraries' logs and warnings

Docs: README.md and docs/ (docs/text.md for your own model and data)."""


def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The installed package's entry points of ``group`` (setup.py), by name."""
    found = {e.name: e for e in metadata.entry_points(group=group)}
    if not found:
        raise UserError(
            f"no entry points in group {group!r}: nlhf-jax is not installed as a package, or "
            "its metadata predates them; (re)install it (pip install -e . in the repository)"
        )
    return found


def _default_config():
    """The embedded default: the demo pipeline's config (``nlhf_jax.pipelines.configs``)."""
    return _entry_points("nlhf_jax.default_config")["demo"].load()()


def _config_keys(argv: list[str]) -> list[str] | None:
    """The dotted keys of the config ``--config`` names (None if it cannot be loaded)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    try:
        if spec is None:
            return list(settings.flatten(_default_config()))
        path, _, arg = spec.partition(":")
        module_spec = importlib.util.spec_from_file_location("_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
        return list(settings.flatten(config))
    except Exception:  # the config file itself is broken: absl reports that
        return None


def _unknown_key(error: Exception, argv: list[str]) -> str:
    """One line for an override of a key the config lacks, with the closest key if any. The
    override is found by checking each ``--config.KEY`` against the config's keys (absl's and
    ml_collections' messages quote it in escaped, nested quotes)."""
    keys = _config_keys(argv) or []
    prefixes = {k.rsplit(".", i)[0] for k in keys for i in range(k.count(".") + 1)}
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    given = next(
        (a for a in overrides if a.split("=")[0][len("--config.") :] not in prefixes), None
    )
    if given is None:  # the config could not be loaded: fall back on the message's first word
        found = re.search(r"[A-Za-z_][\w.]*", str(error))
        return f"error: the config has no key '{found.group(0) if found else error}'"
    dotted = given.split("=")[0][len("--config.") :]
    close = difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
    line = f"error: {given}: the config has no key '{dotted}'"
    return line + (f"; did you mean '{close[0]}'?" if close else "")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with ``--help`` answered (exit 0) and a mistake in one line, no trace."""
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in argv[1:]):
        print(HELP)
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        text = str(e)
        if isinstance(e.__cause__, (AttributeError, KeyError)) or "Did you mean" in text:
            print(_unknown_key(e.__cause__ or e, argv), file=sys.stderr)
        else:
            print(f"error: {text}", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown key
        print(_unknown_key(e, argv), file=sys.stderr)
    sys.exit(2)


def _print_config(config, resolved: dict[str, str]) -> None:
    """Every key with its value, and the file's default where an override changed it; a key
    whose default depends on where the run starts (``defaults.resolve``) says which applied."""
    original = settings.flatten(_defaults())
    for key, value in settings.flatten(config).items():
        default = original.get(key, value)
        note = "" if default == value else f"   (default: {default!r})"
        if key in resolved:
            note = f"   ({resolved[key]})"
        print(f"{key} = {value!r}{note}")


def _defaults():
    """The config of ``--config`` without overrides."""
    spec = config_flags.get_config_filename(flags.FLAGS["config"]) if _CONFIG.value else None
    if spec is None:
        return _default_config()
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_defaults", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _build(config, workdir: str) -> loop.Trainer:
    """The trainer. In a multi-process run every process builds it at once (orbax reads the
    runs it starts from collectively), and each one but process 0 writes its copy of the
    tfds datasets under ``DATA_DIR/process_<k>``: the same records, never two writers of one
    directory."""
    k = jax.process_index()
    if k > 0:
        data_dir = sources.data_dir(config, workdir)
        with config.unlocked():
            config.data.data_dir = os.path.join(data_dir, f"process_{k}")
    return methods.build(config, workdir)


def _train() -> None:
    parallel.maybe_initialize_distributed()  # several processes: jax.distributed, before all
    config = _CONFIG.value if _CONFIG.value is not None else _default_config()
    resolved = defaults.resolve(config)
    if _PRINT_CONFIG.value:
        _print_config(config, resolved)
        return
    if defaults.pretrained_start(config):  # defaults unlike a fresh model's: say which
        flat = settings.flatten(config)
        for key, why in resolved.items():
            _say(f"{key} = {flat[key]!r}: {why}")
    settings.validate(config)
    pipeline = config.get("pipeline")
    if pipeline:
        pipelines = _entry_points("nlhf_jax.pipelines")
        if pipeline not in pipelines:
            raise UserError(f"config.pipeline={pipeline!r}: choose one of {sorted(pipelines)}")
        if jax.process_count() > 1:
            raise UserError(
                f"the {pipeline} pipeline runs in one process; under several processes run "
                "one method's config (python -m nlhf_jax.train --config configs/<method>.py)"
            )
        if not _WORKDIR.value and pipeline != "demo":
            raise UserError("--workdir is required")
        workdir = _WORKDIR.value or "runs/demo"
        pipelines[pipeline].load()(config, workdir, allow_changes=_ALLOW_CHANGES.value)
        return
    if not _WORKDIR.value:
        raise UserError("--workdir is required")
    workdir = _WORKDIR.value
    settings.record(workdir, config, _ALLOW_CHANGES.value, say=_say)
    trainer = _build(config, workdir)
    loop.run(
        trainer,
        workdir,
        num_steps=config.num_steps,
        checkpoint_every=config.checkpoint_every,
        eval_every=config.eval_every,
        log_every=config.log_every,
        max_to_keep=config.max_to_keep,
        guard=DivergenceGuard(**config.guard),
    )
    loop.say_written(workdir)


def _say(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries(_VERBOSE.value)
    exit_on_user_error(_train)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
