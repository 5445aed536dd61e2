"""nlhf-jax: Nash learning from human feedback in JAX/Flax.

Sub-packages:
  tabular: exact preference games on probability vectors, their Nash equilibria and every
    algorithm of the NLHF family run exactly (``python -m nlhf_jax.tabular``).
  models: the Flax NNX Llama/Qwen2-family transformer with an explicit KV cache, Hugging Face
    checkpoint import/export (safetensors) and tokenizers.
"""

import os as _os

# transformers prints an advisory line on import when PyTorch is absent (this library needs it
# only for the optional parity tests); its own switch silences it.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

__version__ = "0.1.0"
