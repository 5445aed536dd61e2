"""Training entry point.

    python -m nlhf_jax.train --config configs/<method>.py --workdir DIR [--config.key=value ...]
    python -m nlhf_jax.train        # the embedded default: the whole pipeline into runs/demo

Resumes from the latest checkpoint in DIR; SIGTERM saves and exits. A config key that does not
exist is an error (the config is locked). Without --config it runs ``nlhf_jax.train.demo`` (as
``--config configs/demo.py`` does, which also takes overrides). A user's mistake (a bad file, a
wrong key or value, a missing run) ends in one ``error:`` line and exit status 2. The libraries'
logs and warnings are silenced unless ``--verbose`` is given (``nlhf_jax.console``).

Several processes (GPU nodes, TPU hosts): start the same command in each; SLURM, Open MPI and
TPU pod environments are detected, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID (``nlhf_jax.parallel.maybe_initialize_distributed``). Every process reads the
same batches and places its own rows; process 0 writes metrics, samples and run.json, and orbax
writes each checkpoint from all of them.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from nlhf_jax import parallel
from nlhf_jax.console import quiet_libraries
from nlhf_jax.errors import UserError, exit_on_user_error
from nlhf_jax.train import demo, loop, methods, rlp
from nlhf_jax.train.guard import DivergenceGuard

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints and metrics (the demo's default: runs/demo)."
)
_VERBOSE = flags.DEFINE_boolean(
    "verbose", False, "Show the libraries' logs, warnings and progress bars (absl, tfds, orbax)."
)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a config key that does not exist named in one line, not a trace."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown key
        key = str(e).strip("\"'")
        given = [a for a in argv[1:] if a.startswith("--config.") and key in a.split("=")[0]]
        where = f" (from {given[0]})" if given else ""
        print(f"error: the config has no key {key!r}{where}", file=sys.stderr)
    sys.exit(2)


def _build(config, workdir: str) -> loop.Trainer:
    """The trainer. In a multi-process run every process builds it at once (orbax reads the
    runs it starts from collectively), and each one but process 0 writes its copy of the
    tfds datasets under ``DATA_DIR/process_<k>``: the same records, never two writers of one
    directory."""
    k = jax.process_index()
    if k > 0:
        data_dir = config.data.data_dir or os.path.join(workdir, "data")
        with config.unlocked():
            config.data.data_dir = os.path.join(data_dir, f"process_{k}")
    return methods.build(config, workdir)


def _train() -> None:
    parallel.maybe_initialize_distributed()  # several processes: jax.distributed, before all
    config = _CONFIG.value if _CONFIG.value is not None else demo.demo_config()
    if jax.process_count() > 1 and config.method in ("demo", "rlp"):
        raise UserError(
            f"the {config.method} pipeline runs in one process; under several processes run "
            "one method's config (python -m nlhf_jax.train --config configs/<method>.py)"
        )
    if config.method == "demo":
        demo.run(config, _WORKDIR.value or "runs/demo")
        return
    if config.method == "rlp":  # a whole RLP pipeline (configs/rlp_*.py, nash_md_rlp.py)
        if not _WORKDIR.value:
            raise app.UsageError("--workdir is required")
        rlp.run(config, _WORKDIR.value)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    trainer = _build(config, _WORKDIR.value)
    loop.run(
        trainer,
        _WORKDIR.value,
        num_steps=config.num_steps,
        checkpoint_every=config.checkpoint_every,
        eval_every=config.eval_every,
        log_every=config.log_every,
        max_to_keep=config.max_to_keep,
        guard=DivergenceGuard(**config.guard),
    )


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_libraries(_VERBOSE.value)
    exit_on_user_error(_train)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
