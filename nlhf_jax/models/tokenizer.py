"""Tokenizers: load a local HF tokenizer, or train a small byte-level BPE one offline."""

from __future__ import annotations

import os
from collections.abc import Iterable

import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

from nlhf_jax.errors import MissingInput, UserError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}

# Training text for the built-in tokenizer: enough variety for a few hundred merges, and the
# vocabulary of preference data (prompts, answers, comparisons) the default task speaks.
BUILTIN_TEXT = """\
Nash learning from human feedback trains a policy by self-play against a preference model.
Instead of a scalar reward, a preference model says how likely one response is to be preferred
over another response to the same prompt. Preferences need not be transitive: rock beats
scissors, scissors beat paper, and paper beats rock. A policy is a Nash equilibrium when no other
policy is preferred to it more than half of the time. Regularization towards a reference policy
keeps the answers fluent, and mirror descent with a geometric mixture of the current policy and
the reference converges to the regularized equilibrium.
Question: Which answer is better? Answer A: The quick brown fox jumps over the lazy dog.
Answer B: A lazy dog sleeps under the old oak tree while the children play in the garden.
The user asked for a short summary. The assistant wrote three sentences, then stopped.
Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 and punctuation: commas, periods; colons! (yes?)
Prompt: write a poem about the sea. Response: The waves return, the tide is slow, the gulls cry
out where the cold winds blow. Prompt: explain gradient descent. Response: Take a small step
downhill along the negative gradient, then repeat until the loss stops improving.
"""


def build_bpe_tokenizer(
    out_dir: str,
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    min_frequency: int = 2,
) -> transformers.PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer and saves it where `AutoTokenizer` can load it.

    Byte-level means every string is encodable (no unknown token), whatever it was trained on.

    Args:
      out_dir: directory to write (tokenizer.json and tokenizer_config.json).
      texts: training strings; defaults to `BUILTIN_TEXT`, so nothing is downloaded.
      vocab_size: upper bound on the vocabulary, special tokens and the 256 bytes included; a
        small corpus may yield fewer merges.
      min_frequency: a pair must occur this often to be merged.

    Returns:
      The tokenizer, with `<pad>`, `<bos>` and `<eos>` as ids 0, 1, 2.
    """
    texts = [BUILTIN_TEXT] if texts is None else list(texts)
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, **SPECIAL_TOKENS)
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_tokenizer(path: str, vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """Loads a tokenizer from a local directory and checks it fits the model.

    Args:
      path: directory holding a tokenizer saved by transformers (no hub download is attempted),
        or a GGUF file (its metadata's tokenizer and chat template).
      vocab_size: the model's embedding rows; if given, every token id must be below it.

    Raises:
      FileNotFoundError: if `path` is not a directory.
      ValueError: if the tokenizer has more tokens than the model's `vocab_size` (both named).
    """
    from nlhf_jax.models import gguf_file

    if gguf_file.is_gguf(path):
        tokenizer = gguf_file.load_tokenizer(path)
    elif not os.path.isdir(path):
        raise MissingInput(f"tokenizer directory not found: {path}")
    else:
        tokenizer = _from_directory(path)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise UserError(
            f"tokenizer at {path} has {len(tokenizer)} tokens (ids up to {len(tokenizer) - 1}), "
            f"more than the model's vocab_size={vocab_size}"
        )
    return tokenizer


def _from_directory(path: str) -> PreTrainedTokenizerBase:
    # Never code from disk: a tokenizer_config.json that names custom classes (auto_map) is
    # not imported; the fast tokenizer's JSON is data.
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=False
    )
    return tokenizer
