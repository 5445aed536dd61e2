"""What the console shows: one line for a user's mistake, no library chatter unless --verbose,
one progress line per training stage, and one colour per run in the training-curve figure."""

import json
import logging
import os
import subprocess
import sys
import types
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from nlhf_jax import console
from nlhf_jax.data.builders import QuietBuild
from nlhf_jax.evaluate import report
from nlhf_jax.models.tokenizer import build_bpe_tokenizer
from nlhf_jax.train import loop

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_malformed_pairs_row_is_one_error_line_and_status_2(tmp_path):
    """The dataset build before the bad row (tfds's progress bars and "Downloading and
    preparing" lines, absl warnings) prints nothing: stderr is the error line alone."""
    build_bpe_tokenizer(str(tmp_path / "tok"), ["a good answer", "a bad answer"] * 20)
    row = {"prompt": "p", "response_a": "a good answer", "response_b": "a bad answer", "label": 1}
    good = json.dumps(row) + "\n"
    (tmp_path / "pairs.jsonl").write_text(good * 3 + '{"prompt": "p", "label": \n' + good)
    command = [sys.executable, "-m", "nlhf_jax.train", "--config", "configs/preference_model.py"]
    command += [f"--workdir={tmp_path / 'run'}", "--config.data.source=file"]
    command += [f"--config.data.train_file={tmp_path / 'pairs.jsonl'}"]
    command += [f"--config.data.tokenizer={tmp_path / 'tok'}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'pairs.jsonl'}:4:"), lines[0]


@pytest.fixture
def restore_logging():
    """Puts back what quiet_libraries changes process-wide (other tests share the process)."""
    names = ("absl", "tensorflow_datasets", "orbax", "jax", "grain", "etils", "transformers")
    levels = {n: logging.getLogger(n).level for n in names}
    root, verbosity = logging.root.level, absl_logging.get_verbosity()
    env = dict(os.environ)
    yield
    console.quiet_libraries(True)  # undoes filters, warnings filters, env and tfds patches
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.root.setLevel(root)
    absl_logging.set_verbosity(verbosity)
    os.environ.clear()
    os.environ.update(env)


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _library_output(capsys) -> tuple[list[str], str, list[str]]:
    """What absl (tfds's and orbax's logger), tfds's dataset-build line and library warnings
    show: (absl log messages, stdout, warning messages)."""
    recorder = _Recorder()
    absl_logger = absl_logging.get_absl_logger()
    absl_logger.addHandler(recorder)
    previous = absl_logger.level
    absl_logger.setLevel(logging.DEBUG)  # what a set_verbosity elsewhere might do
    try:
        absl_logging.warning("Using custom data configuration")
        fake = types.SimpleNamespace(name="pairs", data_dir="/tmp/pairs")
        QuietBuild._log_download_done(fake)  # tfds's own prints to stdout; ours logs at INFO
        with warnings.catch_warnings(record=True) as caught:
            for module in ("orbax.checkpoint", "nlhf_jax.data"):
                warnings.warn_explicit(f"from {module}", UserWarning, "x.py", 1, module=module)
            warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="nlhf_jax.data")
    finally:
        absl_logger.removeHandler(recorder)
        absl_logger.setLevel(previous)
    return recorder.messages, capsys.readouterr().out, [str(w.message) for w in caught]


def test_quiet_libraries_silences_and_verbose_restores(restore_logging, capsys):
    console.quiet_libraries(False)
    logs, out, caught = _library_output(capsys)
    assert logs == [] and out == ""
    assert not logging.getLogger("nlhf_jax.data.builders").isEnabledFor(logging.INFO)
    assert caught == ["from nlhf_jax.data"]  # our own warnings still show
    assert logging.getLogger("tensorflow_datasets").getEffectiveLevel() >= logging.ERROR
    assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() >= logging.ERROR
    assert not tfds.core.utils.tqdm_utils._active  # tfds's progress bars
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    console.quiet_libraries(False)  # twice: still one filter, undone by one verbose call

    console.quiet_libraries(True)
    logs, out, caught = _library_output(capsys)
    assert logs == ["Using custom data configuration"]
    assert out == ""  # never stdout: the build lines are log records
    assert logging.getLogger("nlhf_jax.data.builders").isEnabledFor(logging.INFO)
    assert set(caught) == {"from orbax.checkpoint", "from nlhf_jax.data", "old"}
    assert logging.getLogger("tensorflow_datasets").getEffectiveLevel() <= logging.INFO
    assert tfds.core.utils.tqdm_utils._active


class _Counter:
    """A data iterator whose position is one integer."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"x": jnp.float32(self.i)}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def _trainer() -> loop.Trainer:
    return loop.Trainer(
        init_state=lambda: {"w": jnp.zeros(2)},
        step=lambda state, batch: ({"w": state["w"] + batch["x"]}, {"loss": batch["x"]}),
        data=_Counter(),
        identity={"method": "counter"},
        evaluate=lambda state: {"w0": state["w"][0]},
    )


def test_progress_is_one_line_on_stderr_and_metrics_lines_stay_whole(tmp_path, capsys):
    kw = dict(num_steps=4, log_every=2, eval_every=2, async_checkpoints=False, guard=None)
    loop.run(_trainer(), str(tmp_path / "quiet"), quiet=True, **kw)
    out, err = capsys.readouterr()
    assert out == "" and err == ""

    loop.run(_trainer(), str(tmp_path / "stage"), **kw)
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "4/4" in err.rsplit("\r", 1)[-1], repr(err)
    assert err.lstrip("\r").startswith("stage:")  # the stage's name
    lines = out.splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "[eval step 0",
        "[train step 2",
        "[eval step 2",
        "[train step 4",
        "[eval step 4",
    ]
    assert lines[-1] == "[eval step 4] w0=10"


def _run(tmp_path, name: str, method: str | None, gap: float, loss: float) -> str:
    workdir = tmp_path / name
    workdir.mkdir()
    if method is not None:
        (workdir / "run.json").write_text(json.dumps({"method": method}))
    rows = [{"step": s, "kind": "eval", "exact/duality_gap": gap / (1 + s)} for s in (0, 10)]
    rows += [{"step": s, "kind": "train", "loss": loss + s} for s in (10, 20)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(workdir)


def test_training_curves_one_colour_per_run_and_a_loss_panel_per_family(tmp_path):
    runs = {
        "nash_md": _run(tmp_path, "nash_md", "nash_md", 0.3, 0.0),
        "online_ipo": _run(tmp_path, "online_ipo", "online_ipo", 0.2, 25.0),
        "self_play": _run(tmp_path, "self_play", "nash_md", 0.25, 0.1),  # a nash_md run
        "rlp": _run(tmp_path, "rlp", "rlp_rlhf", 0.1, 3.0),  # a method the figure does not know
        "old": _run(tmp_path, "old", None, 0.4, 1.0),  # no run.json: its own panel
    }
    fig = report.plot_training_curves(str(tmp_path / "curves.png"), runs, 0.5)
    assert (tmp_path / "curves.png").stat().st_size > 0
    colors = report.method_colors(list(runs))
    assert len(set(colors.values())) == len(runs)
    panels = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_label() in runs:
                panels.setdefault(ax.get_title(), []).append(line.get_label())
                np.testing.assert_allclose(
                    np.array(line.get_color()[:3], float), colors[line.get_label()][:3]
                )
    assert panels == {
        "exact duality gap, each run's own tau": list(runs),
        "training loss: policy gradient": ["nash_md", "self_play"],
        "training loss: IPO": ["online_ipo"],
        "training loss: rlp_rlhf": ["rlp"],
        "training loss: old": ["old"],
    }
    assert report.loss_family("ipo_md") == report.loss_family("online_ipo")
