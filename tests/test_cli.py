"""What a user meets at the command line: recorded settings and refused changes on resume,
Ctrl-C and SIGTERM, a file smaller than a batch, mistyped keys and impossible values, help,
the guard's message, the figures, and the small things (help defaults, JSON errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nlhf_jax import checkpoint
from nlhf_jax.errors import UserError
from nlhf_jax.train.guard import Diverged, DivergenceGuard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SFT = [
    "--config", "configs/sft.py", "--config.batch_size=8", "--config.data.train_demos=64",
    "--config.log_every=1", "--config.eval_every=0", "--config.optimizer.warmup_steps=0",
]  # fmt: skip


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _train(*args, check=None):
    out = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", *args],
        capture_output=True, text=True, cwd=REPO, env=_env(),
    )  # fmt: skip
    if check is not None:
        assert out.returncode == check, out.stderr[-3000:]
    return out


def _one_error_line(out, *needles):
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny synthetic SFT run of 2 steps, trained through the command line."""
    workdir = str(tmp_path_factory.mktemp("cli") / "sft")
    _train(*TINY_SFT, f"--workdir={workdir}", "--config.num_steps=2", check=0)
    return workdir


def test_the_resolved_config_is_recorded_and_changes_are_refused_on_resume(finished):
    recorded = json.load(open(os.path.join(finished, "config.json")))
    assert recorded["num_steps"] == 2 and recorded["optimizer"]["learning_rate"] == 3e-3
    assert recorded["seed"] == 0 and recorded["batch_size"] == 8
    refused = _train(*TINY_SFT, f"--workdir={finished}", "--config.num_steps=2",
                     "--config.optimizer.learning_rate=0.5", "--config.seed=7")  # fmt: skip
    line = _one_error_line(refused, "optimizer.learning_rate: 0.003 -> 0.5", "seed: 0 -> 7")
    assert "--allow_changes" in line
    assert json.load(open(os.path.join(finished, "config.json"))) == recorded  # untouched
    # How long it trains may change, and the change is logged.
    more = _train(*TINY_SFT, f"--workdir={finished}", "--config.num_steps=3", check=0)
    assert "num_steps: 2 -> 3" in more.stdout
    assert checkpoint.latest_step(finished) == 3
    assert f"wrote {finished}: checkpoints/, config.json" in more.stdout


def _wait_for_rows(workdir: str, process, rows: int = 2, timeout: float = 240.0) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    start = time.time()
    while time.time() - start < timeout:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read())
        if os.path.exists(path) and sum(1 for _ in open(path)) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError("the run logged nothing")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_say_so_and_exit_nonzero(tmp_path, signum, status):
    workdir = str(tmp_path / "run")
    args = [*TINY_SFT, f"--workdir={workdir}", "--config.num_steps=100000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "nlhf_jax.train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(),
    )  # fmt: skip
    _wait_for_rows(workdir, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-3000:]
    assert "Traceback" not in err
    saved = checkpoint.latest_step(workdir)
    assert saved and f"interrupted at step {saved}: saved in {workdir}; run the same" in err
    if signum == signal.SIGINT:  # the same command resumes from the saved step
        _train(*TINY_SFT, f"--workdir={workdir}", f"--config.num_steps={saved + 2}", check=0)
        assert checkpoint.latest_step(workdir) == saved + 2


def test_a_file_smaller_than_a_batch_is_one_line(tmp_path):
    from nlhf_jax.tasks import text

    tok = text.build_tokenizer(str(tmp_path / "tok"))
    assert tok.pad_token_id is not None
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(12)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _train(
        "--config", "configs/preference_model.py", f"--workdir={tmp_path / 'pm'}",
        f"--config.data.train_file={pairs}", f"--config.data.tokenizer={tmp_path / 'tok'}",
        "--config.batch_size=32",
    )  # fmt: skip
    _one_error_line(out, str(pairs), "12 pairs", "config.batch_size=32")


@pytest.mark.parametrize(
    "override, needles",
    [
        ("--config.num_step=5", ["--config.num_step=5", "no key 'num_step'", "'num_steps'?"]),
        ("--config.optimizer.lr=1e-3", ["no key 'optimizer.lr'", "'optimizer.learning_rate'?"]),
        ("--config.num_steps=-3", ["config.num_steps=-3: must be at least 1"]),
        ("--config.batch_size=0", ["config.batch_size=0: must be at least 1"]),
        ("--config.optimizer.learning_rate=-1e-3", ["learning_rate=-0.001: must be positive"]),
    ],
)
def test_mistyped_keys_and_impossible_values_are_one_clean_line(tmp_path, override, needles):
    out = _train("--config", "configs/sft.py", f"--workdir={tmp_path}", override)
    line = _one_error_line(out, *needles)
    assert "\\" not in line  # no escaped quotes or newlines
    assert not os.listdir(tmp_path)  # nothing written


def test_the_demo_pipelines_config_passes_validation(tmp_path):
    """The demo (``make demo``, a bare ``python -m nlhf_jax.train``) leaves the learning rate to
    each stage (0.0: the default for where it starts): validation lets it through, and the
    first thing refused is the mistake made here, an unknown policy, before anything runs."""
    for config in ("configs/demo.py", "configs/demo_since.py"):
        out = _train("--config", config, f"--workdir={tmp_path}", "--config.demo.policies=nope")
        _one_error_line(out, "config.demo.policies: unknown ['nope']")
    assert not os.listdir(tmp_path)


def test_help_exits_0_and_print_config_shows_every_key():
    # Without --config: the embedded default, the demo's config, found through the package's
    # entry points (the trainers never import the pipelines).
    from nlhf_jax.pipelines.configs import demo_config

    out = _train("--print_config", check=0)
    assert f"demo.policies = {demo_config().demo.policies!r}" in out.stdout.splitlines()
    out = _train("--help", check=0)
    assert "--print_config" in out.stdout and "optimizer.learning_rate" in out.stdout
    out = _train("--config", "configs/nash_md.py", "--print_config", "--config.beta=0.5",
                 check=0)  # fmt: skip
    lines = out.stdout.splitlines()
    assert "beta = 0.5   (default: 0.125)" in lines
    assert "optimizer.learning_rate = 0.001" in lines and "judge = 'oracle'" in lines
    # A default that depends on the start says which one applied.
    out = _train("--config", "configs/sft.py", "--print_config",
                 "--config.model.hf_checkpoint=some/model.gguf", check=0)  # fmt: skip
    lines = out.stdout.splitlines()
    assert "model.remat = 'full'   (the default for a pretrained start)" in lines
    rate = next(line for line in lines if line.startswith("optimizer.learning_rate = "))
    assert rate.startswith("optimizer.learning_rate = 2e-05   (the default for a pretrained start")


def test_the_guard_names_the_key_and_tells_the_truth_about_checkpoints():
    guard = DivergenceGuard(max_kl=10.0)
    with pytest.raises(Diverged) as none_saved:
        guard.check(26, "train", {"objective/kl": 10.69}, saved=None)
    message = str(none_saved.value)
    assert "no checkpoint was saved" in message and "last good" not in message
    assert "config.optimizer.learning_rate" in message and "config.guard.max_kl" in message
    with pytest.raises(Diverged, match="the latest checkpoint, step 20, holds the last good"):
        guard.check(26, "train", {"objective/kl": 10.69}, saved=20)
    with pytest.raises(Diverged, match="loss = nan; no checkpoint was saved"):
        guard.check(3, "train", {"loss": float("nan")}, saved=None)


def _metrics_run(path, tau, gap, method="nash_md"):
    os.makedirs(path)
    rows = [{"step": s, "kind": "eval", "exact/duality_gap": gap / (1 + s),
             "exact/reference_duality_gap": gap} for s in (0, 10, 20)]  # fmt: skip
    rows += [{"step": s, "kind": "train", "loss": 5.0 / (1 + s)} for s in range(1, 21)]
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    json.dump({"method": method}, open(os.path.join(path, "run.json"), "w"))
    json.dump({"tau": tau}, open(os.path.join(path, "config.json"), "w"))
    return str(path)


def test_figures_draw_each_tau_keep_legends_off_the_curves_and_label_the_colour_bar(tmp_path):
    from nlhf_jax.evaluate import report

    runs = {
        "sft": _metrics_run(tmp_path / "sft", None, 0.2, method="sft"),
        "nash_md": _metrics_run(tmp_path / "nash_md", 0.1, 0.2),
        "rlhf": _metrics_run(tmp_path / "rlhf", 0.4, 0.05, method="rlhf"),
    }
    fig = report.plot_training_curves(str(tmp_path / "curves.png"), runs, 0.2)
    gap_ax = fig.axes[0]
    labels = gap_ax.get_legend_handles_labels()[1]
    assert "reference mu, tau 0.1" in labels and "reference mu, tau 0.4" in labels
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:  # placed right of its axes
            assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1
    sft_ax = next(ax for ax in fig.axes if "SFT" in ax.get_title())
    assert sft_ax.get_yscale() == "log"
    assert len(sft_ax.lines[0].get_xdata()) == 20  # every logged step, not 6 points
    M = np.full((2, 2), 0.5)
    fig = report.plot_win_rates(str(tmp_path / "w.png"), ["a", "b"], {"oracle": M})
    assert any(ax.get_ylabel() == "P(row beats column)" for ax in fig.axes)


def test_small_things(tmp_path, capsys):
    import importlib

    from nlhf_jax.console import fixed
    from nlhf_jax.data import readers
    from nlhf_jax.evaluate import seeds

    assert fixed(-0.00004) == "0.000" and fixed(0.1234) == "0.123"
    # The seeds table too: an SFT reference's KL to itself, a tiny negative estimate.
    kl = {"mean": [-2e-6, 0.25], "halfwidth": [1e-6, 0.01]}
    text = seeds.table({"methods": ["sft", "nash_md"], "kl_to_reference": kl, "num_seeds": 2})
    assert "-0.0" not in text and "| sft | 0.0000 ± 0.0000 |" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n\n\n\n{"prompt": oops}\n')
    with pytest.raises(UserError) as info:
        list(readers.read_prompts(str(bad)))
    message = str(info.value)
    assert message.startswith(f"{bad}:5:<json>: invalid JSON") and "line 1" not in message
    assert os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS") == "1"  # no "PyTorch was not
    # found" line where torch is absent
    for module in ("nlhf_jax.evaluate.__main__", "nlhf_jax.sample", "nlhf_jax.export",
                   "nlhf_jax.tasks.text"):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            importlib.import_module(module).main(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: python -m {module.removesuffix('.__main__')}"), text[:80]
        assert "(default:" in text, module
