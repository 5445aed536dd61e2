"""What host judges share: decoding the policies' tokens to text, checking what a judge
returned, and running a judge's own model on re-tokenized rows, batched and on the mesh.

A host judge (``jittable = False``) is called with the six arrays of the judge protocol as host
(NumPy) values and returns ``P(a > b)`` as a NumPy array; the train step runs it between a
jitted rollout and a jitted update (``nlhf_jax.train.split``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from nlhf_jax import parallel
from nlhf_jax.errors import UserError

# Rows per call of a judge's model: larger batches are split into calls of this many, so its
# activations stay bounded whatever the evaluation asks; lengths are rounded up to LENGTH_STEP.
MAX_ROWS = 64
LENGTH_STEP = 32


def decode_rows(tokenizer, ids, mask) -> list[str]:
    """The text of each row's masked tokens (special tokens dropped; ids beyond the tokenizer,
    which a policy with a padded embedding table can sample, too)."""
    ids, mask = np.asarray(ids), np.asarray(mask, bool)
    known = len(tokenizer)
    rows = [[t for t in row[m].tolist() if t < known] for row, m in zip(ids, mask, strict=True)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def decode_pairs(tokenizer, prompt, prompt_mask, a, a_mask, b, b_mask):
    """``(prompts, responses_a, responses_b)``, lists of strings, of a batch of pairs."""
    return (
        decode_rows(tokenizer, prompt, prompt_mask),
        decode_rows(tokenizer, a, a_mask),
        decode_rows(tokenizer, b, b_mask),
    )


def check_probabilities(who: str, out, rows: int) -> np.ndarray:
    """``out`` as float64 ``[rows]`` if it is a NumPy array of that shape with every value in
    [0, 1]; else a ``UserError`` naming ``who`` and what is wrong with it."""
    want = f"must return a NumPy array of shape [{rows}] of probabilities in [0, 1]"
    if not isinstance(out, np.ndarray):
        raise UserError(f"{who} {want}; it returned a {type(out).__name__}")
    if out.dtype.kind not in "fiu":
        raise UserError(f"{who} {want}; it returned an array of dtype {out.dtype}")
    if out.shape != (rows,):
        raise UserError(f"{who} {want}; it returned shape {list(out.shape)}")
    out = out.astype(np.float64)
    nan = int(np.isnan(out).sum())
    if nan:
        raise UserError(f"{who} {want}; it returned NaN for {nan} of {rows} pairs")
    if out.min() < 0.0 or out.max() > 1.0:
        raise UserError(f"{who} {want}; it returned values in [{out.min()}, {out.max()}]")
    return out


def check_pad(spec: str, tokenizer) -> int:
    """The pad id of a judge's own tokenizer (its batches are padded), or a ``UserError``."""
    if tokenizer.pad_token_id is None:
        raise UserError(
            f"judge {spec}: its tokenizer has no pad token; a judge's batches are padded (set "
            "tokenizer.pad_token, e.g. to its EOS token, and save_pretrained it into the "
            "checkpoint directory)"
        )
    return tokenizer.pad_token_id


def _bucket(n: int, step: int) -> int:
    return -(-n // step) * step


def _rows_bucket(n: int) -> int:
    """Rows per call: the next power of two from 8 up to ``MAX_ROWS`` (few compilations)."""
    return min(MAX_ROWS, max(8, 1 << (n - 1).bit_length()))


class HostModel:
    """A judge's own model, run on token rows that the host built (its own tokenizer's).

    ``fn(graphdef, state, tokens_bt, mask_bt) -> [b, ...]`` is jitted with the graphdef static.
    Rows are left-padded to a multiple of ``LENGTH_STEP`` and sent ``MAX_ROWS`` at a time (the
    last call padded), so one judge compiles once per length bucket. ``place`` puts the
    parameters into their shards on a run's mesh (by their logical axes, like the policy's) and
    the rows on its batch axes; unplaced, it runs on the default device.

    Attributes:
      graphdef, state: the model, ``nnx.split``.
      pad_id: fills the padding (masked out; it only needs to be a valid id).
    """

    def __init__(self, graphdef: nnx.GraphDef, state: nnx.State, fn: Callable, pad_id: int):
        self.graphdef, self.state, self.pad_id = graphdef, state, pad_id
        self._fn = jax.jit(fn, static_argnums=0)
        self._jitted = {fn: self._fn}  # other functions of the same placed model, by ``fn``
        self._rows_sharding = None
        self._ways = 1

    def place(self, where: parallel.Placement) -> None:
        """Puts the parameters on ``where``'s mesh (in place; once)."""
        self.state = parallel.put(self.state, where.shardings(self.state))
        self._rows_sharding = where.batch
        self._ways = parallel.batch_devices(where.batch)

    def __call__(self, rows: Sequence[Sequence[int]], fn: Callable | None = None) -> np.ndarray:
        """``fn`` of the token rows (lists of ids), as float64 NumPy, one row of output each;
        another ``fn`` of the same signature may be named (jitted once, same parameters)."""
        if fn is not None and fn not in self._jitted:
            self._jitted[fn] = jax.jit(fn, static_argnums=0)
        jitted = self._fn if fn is None else self._jitted[fn]
        width = _bucket(max(len(r) for r in rows), LENGTH_STEP)
        size = _bucket(_rows_bucket(len(rows)), self._ways)
        out = []
        for start in range(0, len(rows), size):
            chunk = list(rows[start : start + size])
            tokens = np.full((size, width), self.pad_id, np.int32)
            mask = np.zeros((size, width), bool)
            for i, row in enumerate(chunk):
                if len(row):
                    tokens[i, width - len(row) :], mask[i, width - len(row) :] = row, True
            if self._rows_sharding is not None:
                tokens, mask = parallel.put((tokens, mask), (self._rows_sharding,) * 2)
            values = jitted(self.graphdef, self.state, tokens, mask)
            out.append(np.asarray(parallel.to_host(values), np.float64)[: len(chunk)])
        return np.concatenate(out)
