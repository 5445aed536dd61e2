"""The host loop: the only place with I/O. Data, checkpoints, metrics, progress, signals.

``run(trainer, workdir, ...)`` drives any method through the same loop: it locks the workdir
(one writer), resumes from the newest checkpoint in ``workdir`` that restores (state, data
iterator and RNG, so the resumed run equals an uninterrupted one), saves every
``checkpoint_every`` steps, on SIGTERM or SIGINT (Ctrl-C; then raises ``Interrupted``) and at
the end, writes metrics to stdout and
``metrics.jsonl``, evaluates every ``eval_every`` steps, checks every step and evaluation with
the divergence guard before anything is saved, and shows progress.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np
from tqdm import tqdm

from nlhf_jax.checkpoint import Checkpoints, save_tokenizer
from nlhf_jax.errors import Interrupted
from nlhf_jax.evaluate.report import read_metrics
from nlhf_jax.tensorboard import EventWriter
from nlhf_jax.train.guard import DEFAULT_GUARD, DivergenceGuard
from nlhf_jax.workdir_lock import WorkdirLock


class DataIterator(Protocol):
    """A batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> dict: ...

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class Trainer:
    """What a method hands to the host loop.

    Attributes:
      init_state: builds the initial train state (a pytree).
      step: the jitted pure step ``(state, batch) -> (state, metrics)``.
      data: the training batches.
      identity: what the state's structure depends on (checked against the workdir).
      evaluate: optional ``state -> metrics`` run at step 0, every ``eval_every`` steps and at
        the end.
      check: optional host-side check of each step's metrics (e.g. the judge's range); it raises
        before the state is checkpointed, so a bad step never reaches disk.
      tokenizer: a text run's Hugging Face tokenizer, kept in ``WORKDIR/tokenizer`` so that
        sampling, evaluation and export need only the workdir.

    ``evaluate`` may return ``texts``, a list of ``{prompt, response}`` dicts: they go to
    ``WORKDIR/samples.jsonl``, the console and TensorBoard's text tab.
    """

    init_state: Callable[[], Any]
    step: Callable[[Any, dict], tuple[Any, dict]]
    data: DataIterator
    identity: dict
    evaluate: Callable[[Any], dict] | None = None
    check: Callable[[dict], None] | None = None
    tokenizer: Any = None


class MetricsWriter:
    """Appends one JSON object per line to ``workdir/metrics.jsonl``, writes the scalars as
    TensorBoard events under ``workdir/tensorboard/{train,eval}`` and prints a summary.

        tensorboard --logdir WORKDIR/tensorboard
    """

    def __init__(self, workdir: str, quiet: bool = False):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard = os.path.join(workdir, "tensorboard")
        self.quiet = quiet
        self._boards = {}
        # A multi-process run writes its metrics, samples and console lines from process 0.
        self.enabled = jax.process_index() == 0

    def write(self, step: int, kind: str, metrics: dict, show: bool = True) -> None:
        """One row to metrics.jsonl and TensorBoard; to the console too if ``show``."""
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, **{k: _to_float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if kind not in self._boards:
            self._boards[kind] = EventWriter(os.path.join(self.tensorboard, kind))
        for key, value in row.items():
            if key not in ("step", "kind") and isinstance(value, float):
                self._boards[kind].add_scalar(key, value, step)
        self._boards[kind].flush()
        if show and not self.quiet:
            body = "  ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k not in ("step", "kind"))
            _say(f"[{kind} step {step}] {body}")

    def write_texts(self, step: int, texts: list[dict], show: int = 2) -> None:
        """Sampled prompt/response texts: every one to ``samples.jsonl`` and TensorBoard, the
        first ``show`` to the console."""
        if not self.enabled:
            return
        with open(os.path.join(os.path.dirname(self.path), "samples.jsonl"), "a") as f:
            for row in texts:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if "eval" not in self._boards:
            self._boards["eval"] = EventWriter(os.path.join(self.tensorboard, "eval"))
        table = "\n\n".join(
            f"**prompt:** {t['prompt']}  \n**response:** {t['response']}" for t in texts
        )
        self._boards["eval"].add_text("samples", table, step)
        if not self.quiet:
            for row in texts[:show]:
                _say(f"  [sample step {step}] {row['prompt']!r} -> {row['response']!r}")

    def write_eval(self, step: int, metrics: dict) -> None:
        """Evaluation metrics, and the ``texts`` among them (``write_texts``)."""
        metrics = dict(metrics)
        texts = metrics.pop("texts", None)
        if metrics:
            self.write(step, "eval", metrics)
        if texts:
            self.write_texts(step, texts)

    def close(self) -> None:
        for board in self._boards.values():
            board.close()


def _to_float(v):
    a = np.asarray(v)
    return float(a) if a.size == 1 else a.tolist()


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _progress(workdir: str, start: int, total: int) -> tqdm:
    """One progress line on stderr: steps done / total, rate and time left.

    On a terminal it redraws in place; elsewhere (CI, a log file) every redraw is a new line in
    the log, so it redraws at most once a minute.
    """
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=start,
        desc=os.path.basename(os.path.normpath(workdir)),
        unit="step",
        file=sys.stderr,
        dynamic_ncols=tty,
        ncols=None if tty else 100,
        mininterval=0.2 if tty else 60.0,
        smoothing=0.1,
    )


def say_written(workdir: str) -> None:
    """The console's last line: where the run's files are (process 0)."""
    if jax.process_index() != 0 or not os.path.isdir(workdir):
        return
    names = [n for n in sorted(os.listdir(workdir)) if not n.startswith((".", "unrestorable"))]
    shown = ", ".join(n + ("/" if os.path.isdir(os.path.join(workdir, n)) else "") for n in names)
    print(f"wrote {workdir}: {shown}", flush=True)


def _say(line: str) -> None:
    """A console line that leaves the progress line, if one is shown, whole and below it."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def run(
    trainer: Trainer,
    workdir: str,
    *,
    num_steps: int,
    checkpoint_every: int = 100,
    eval_every: int = 0,
    log_every: int = 10,
    max_to_keep: int = 3,
    async_checkpoints: bool = True,
    stop_after: int | None = None,
    quiet: bool = False,
    guard: DivergenceGuard | None = DEFAULT_GUARD,
    console_every: int | None = None,
) -> Any:
    """Trains to ``num_steps`` (resuming from ``workdir``); returns the final state.

    The workdir is locked for this process (``WorkdirLock``) before anything is written. The
    newest checkpoint that restores is resumed (``Checkpoints.restore_latest``). ``guard`` checks
    every step's metrics and every evaluation before the state can be checkpointed, so a
    diverged state never becomes the latest checkpoint. Train metrics are written every
    ``log_every`` steps and shown on the console every ``console_every`` (default: the same).
    ``stop_after`` stops (and checkpoints)
    once that many steps ran in this call: what a preemption does, used by the resume tests.
    """
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    try:
        return _run_locked(
            trainer, workdir, num_steps, checkpoint_every, eval_every, log_every, max_to_keep,
            async_checkpoints, stop_after, quiet, guard, console_every or log_every,
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    trainer, workdir, num_steps, checkpoint_every, eval_every, log_every, max_to_keep,
    async_checkpoints, stop_after, quiet, guard, console_every,
):  # fmt: skip
    ckpt = Checkpoints(
        workdir, trainer.identity, max_to_keep=max_to_keep, async_save=async_checkpoints
    )
    primary = jax.process_index() == 0  # the one writer of files and console lines
    quiet = quiet or not primary
    # After the identity check: never into another run's dir.
    if trainer.tokenizer is not None and primary:
        save_tokenizer(trainer.tokenizer, workdir)
    writer = MetricsWriter(workdir, quiet=quiet)
    state = trainer.init_state()
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    try:
        restored = ckpt.restore_latest(state, log=lambda line: primary and print(line, flush=True))
    except BaseException:
        ckpt.close()
        writer.close()
        raise
    start = 0
    if restored is not None:
        start, state, data_state = restored
        trainer.data.set_state(data_state)
        say(f"resumed from {workdir} at step {start}")
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # The starting policy's evaluation, the guard's baseline: logged at step 0 (a resumed run
    # reads it back from metrics.jsonl).
    start_metrics = next(
        (r for r in read_metrics(workdir) if r.get("kind") == "eval" and r.get("step") == 0), {}
    )

    def evaluate(step: int) -> None:
        metrics = trainer.evaluate(state)
        writer.write_eval(step, metrics)
        if step == 0:
            start_metrics.update(metrics)
        elif guard is not None:
            guard.check(step, "eval", metrics, baseline=start_metrics, saved=ckpt.latest_step())

    progress = None if quiet else _progress(workdir, start, num_steps)
    step, ran = start, 0
    try:
        if trainer.evaluate and eval_every and start == 0:
            evaluate(0)  # where the training curves start
        if trainer.evaluate and start >= num_steps:
            evaluate(start)  # a finished run: its evaluation again
        while step < num_steps:
            state, metrics = trainer.step(state, next(trainer.data))
            # Blocking each step keeps CPU collectives from deadlocking (ENVIRONMENT.md) and
            # makes the progress rate honest; it costs nothing the next step would not wait for.
            metrics = jax.device_get(jax.block_until_ready(metrics))
            if trainer.check:
                trainer.check(metrics)
            step, ran = step + 1, ran + 1
            if step % log_every == 0 or step == num_steps:
                show = step % console_every == 0 or step == num_steps
                writer.write(step, "train", metrics, show=show)
            if guard is not None:
                floats = {k: _to_float(v) for k, v in metrics.items()}
                guard.check(step, "train", floats, saved=ckpt.latest_step())
            # Evaluated before the save: a state the guard rejects is never checkpointed.
            if trainer.evaluate and ((eval_every and step % eval_every == 0) or step == num_steps):
                evaluate(step)
            interrupted = stop["signal"] is not None or (
                stop_after is not None and ran >= stop_after
            )
            if step % checkpoint_every == 0 or step == num_steps or interrupted:
                ckpt.save(step, state, trainer.data.get_state())
            if progress is not None:
                progress.update(step - progress.n)
            if interrupted:
                break
    finally:
        if progress is not None:
            progress.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        ckpt.close()
        writer.close()
    if stop["signal"] is not None and step < num_steps:  # saved above: it resumes from here
        raise Interrupted(stop["signal"], step, workdir)
    return state
