"""nlhf-jax: Nash learning from human feedback in JAX/Flax.

Sub-packages:
  tabular: exact preference games on probability vectors, their Nash equilibria and every
    algorithm of the NLHF family run exactly (``python -m nlhf_jax.tabular``).
  models: the Flax NNX Llama/Qwen2-family transformer with an explicit KV cache, Hugging Face
    checkpoint import/export (safetensors) and tokenizers.
"""

__version__ = "0.1.0"
