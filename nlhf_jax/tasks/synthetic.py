"""The built-in synthetic task: a non-transitive preference over an enumerable response space.

Token layout (the task's own small vocabulary):

    0 PAD, 1 BOS, 2 EOS, 3 SEP, then ``num_symbols`` prompt symbols, then ``num_symbols``
    response symbols.

A prompt is ``[BOS, t_1 .. t_L, SEP]``: a target pattern of L prompt symbols. A well-formed
response is ``[y_1 .. y_L, EOS]`` with response symbols, so there are ``num_symbols ** L``
responses per prompt, few enough to enumerate (64 by default). The exact oracle preference is

    P(y > y' | x) = sigmoid(quality_strength * (q(x, y) - q(x, y'))
                            + style_strength * cycle(s(y), s(y')))

with a transitive **quality** ``q(x, y)`` = the number of positions where y matches the target,
and a non-transitive **style** ``s(y) = y_1 mod 3`` (the first symbol), playing rock-paper-scissors:
``cycle(s, s') = +1`` if ``s - s' = 1 (mod 3)``, ``-1`` if ``s - s' = 2``, else 0. The logit is
antisymmetric, so ``P(y > y') + P(y' > y) = 1`` and ``P(y > y) = 1/2``. A malformed response
(wrong length, a non-response symbol, no EOS) has quality ``-invalid_penalty`` and no style.

Demonstrations come from a deliberately imperfect behaviour policy that likes quality but also
a single style (so the SFT policy is exploitable through the cycle); preference pairs are two
behaviour samples labelled by a draw from the oracle.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax.tabular import solvers

PAD, BOS, EOS, SEP = 0, 1, 2, 3
# Bumped whenever the oracle or the behaviour policy changes, so cached datasets are rebuilt.
TASK_VERSION = 2
_FIRST_SYMBOL = 4


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """Settings of the synthetic task (frozen and hashable: usable as a static jit argument).

    Attributes:
      num_symbols: symbols per position (prompt and response alphabets have this size).
      length: L, positions in a target pattern and in a well-formed response.
      quality_strength: weight of the transitive quality difference in the oracle's logit.
      style_strength: weight of the rock-paper-scissors style cycle in the oracle's logit.
      invalid_penalty: quality of a malformed response (below every valid one).
      behaviour_quality: the behaviour policy's inverse temperature on quality.
      behaviour_style_bias: the behaviour policy's extra logit for style 0 responses.
    """

    num_symbols: int = 3
    length: int = 2
    quality_strength: float = 1.0
    style_strength: float = 2.0
    invalid_penalty: float = 2.0
    behaviour_quality: float = 1.0
    behaviour_style_bias: float = 1.5

    jittable = True  # as a judge (the oracle, ``nlhf_jax.judges``): pure jnp on token ids

    @property
    def vocab_size(self) -> int:
        return _FIRST_SYMBOL + 2 * self.num_symbols

    @property
    def prompt_len(self) -> int:
        return self.length + 2

    @property
    def response_len(self) -> int:
        """Tokens of a well-formed response, EOS included."""
        return self.length + 1

    @property
    def num_responses(self) -> int:
        return self.num_symbols**self.length

    def prompt_symbol(self, i):
        return _FIRST_SYMBOL + i

    def response_symbol(self, i):
        return _FIRST_SYMBOL + self.num_symbols + i

    # --- enumeration -------------------------------------------------------------------------

    def patterns(self) -> np.ndarray:
        """Every pattern of L symbol indices, ``[num_symbols ** L, L]`` (lexicographic order)."""
        return np.array(list(itertools.product(range(self.num_symbols), repeat=self.length)))

    def prompts(self) -> np.ndarray:
        """Every prompt, ``[num_prompts, prompt_len]`` int32 (one per target pattern)."""
        pats = self.patterns()
        n = len(pats)
        cols = [np.full((n, 1), BOS), self.prompt_symbol(pats), np.full((n, 1), SEP)]
        return np.concatenate(cols, 1).astype(np.int32)

    def responses(self) -> np.ndarray:
        """Every well-formed response, ``[num_responses, response_len]`` int32, EOS last."""
        pats = self.patterns()
        eos = np.full((len(pats), 1), EOS)
        return np.concatenate([self.response_symbol(pats), eos], 1).astype(np.int32)

    # --- the oracle --------------------------------------------------------------------------

    def _parse(self, prompt_bt, prompt_mask_bt, resp_bn, resp_mask_bn):
        """Quality [b] and style [b] (style -1 for malformed responses) of responses."""
        L, S = self.length, self.num_symbols
        # The prompt is left-padded: its last L + 1 columns are t_1 .. t_L, SEP.
        target_bl = prompt_bt[:, -(L + 1) : -1] - _FIRST_SYMBOL
        n = resp_bn.shape[1]
        if n < L + 1:  # too short to hold a well-formed response at all
            resp_bn = jnp.pad(resp_bn, ((0, 0), (0, L + 1 - n)))
            resp_mask_bn = jnp.pad(resp_mask_bn, ((0, 0), (0, L + 1 - n)))
        sym_bl = resp_bn[:, :L] - _FIRST_SYMBOL - S
        valid = (
            jnp.all((sym_bl >= 0) & (sym_bl < S) & resp_mask_bn[:, :L], axis=1)
            & (resp_bn[:, L] == EOS)
            & resp_mask_bn[:, L]
            & ~jnp.any(resp_mask_bn[:, L + 1 :], axis=1)
        )
        prompt_ok = jnp.all(prompt_mask_bt[:, -(L + 1) :], axis=1)
        quality = jnp.sum(sym_bl == target_bl, axis=1).astype(jnp.float32)
        quality = jnp.where(valid, quality, -self.invalid_penalty)
        style = jnp.where(valid, style_of(jnp.where(valid[:, None], sym_bl, 0)), -1)
        return quality, style, prompt_ok

    def quality_and_style(self, prompt_bt, resp_bn, resp_mask_bn):
        """Quality [b] and style [b] of responses to unpadded prompts: the two properties the
        oracle reads (style -1 and quality ``-invalid_penalty`` for a malformed response)."""
        prompt_bt = jnp.asarray(prompt_bt)
        quality, style, _ = self._parse(
            prompt_bt, jnp.ones(prompt_bt.shape, bool), jnp.asarray(resp_bn), resp_mask_bn
        )
        return quality, style

    def logit(self, prompt_bt, prompt_mask_bt, a_bn, a_mask_bn, b_bn, b_mask_bn):
        """The oracle's antisymmetric logit ``d(x, a, b)`` [b]."""
        qa, sa, ok = self._parse(prompt_bt, prompt_mask_bt, a_bn, a_mask_bn)
        qb, sb, _ = self._parse(prompt_bt, prompt_mask_bt, b_bn, b_mask_bn)
        diff = (sa - sb) % 3
        cycle = jnp.where((sa < 0) | (sb < 0), 0.0, jnp.where(diff == 1, 1.0, 0.0))
        cycle = cycle - jnp.where((sa < 0) | (sb < 0), 0.0, jnp.where(diff == 2, 1.0, 0.0))
        d = self.quality_strength * (qa - qb) + self.style_strength * cycle
        # A prompt that is not the task's own has no defined preference: NaN makes it loud.
        return jnp.where(ok, d, jnp.nan)

    def __call__(self, prompt_bt, prompt_mask_bt, a_bn, a_mask_bn, b_bn, b_mask_bn):
        """The judge interface: ``P(a > b | prompt)`` [b] float32."""
        return jax.nn.sigmoid(
            self.logit(prompt_bt, prompt_mask_bt, a_bn, a_mask_bn, b_bn, b_mask_bn)
        )

    def preference_matrices(self) -> np.ndarray:
        """``P[prompt, i, j] = P(y_i > y_j | x)`` over the enumerated responses, float64."""
        prompts, resp = self.prompts(), self.responses()
        R = len(resp)
        ii, jj = np.meshgrid(np.arange(R), np.arange(R), indexing="ij")
        a, b = resp[ii.ravel()], resp[jj.ravel()]
        ones = np.ones_like(a, bool)
        out = []
        for x in prompts:
            xb = np.broadcast_to(x, (R * R, len(x)))
            d = np.asarray(self.logit(xb, np.ones_like(xb, bool), a, ones, b, ones), np.float64)
            out.append(1.0 / (1.0 + np.exp(-d.reshape(R, R))))
        return np.stack(out)

    # --- the behaviour policy and data -------------------------------------------------------

    def behaviour_logits(self) -> np.ndarray:
        """The behaviour policy's logits ``[num_prompts, num_responses]`` over responses."""
        pats = self.patterns()
        quality = (pats[:, None, :] == pats[None, :, :]).sum(-1)  # [prompt, response]
        style0 = (style_of(pats) == 0)[None, :]
        return self.behaviour_quality * quality + self.behaviour_style_bias * style0

    def behaviour_policy(self) -> np.ndarray:
        """``mu_b[prompt, response]``, the probabilities the demonstrations are drawn from."""
        logits = self.behaviour_logits()
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def demonstrations(self, num: int, seed: int) -> dict[str, np.ndarray]:
        """``num`` (prompt, response) pairs: uniform prompts, behaviour-policy responses."""
        rng = np.random.default_rng(seed)
        pi = self.behaviour_policy()
        x = rng.integers(0, len(pi), num)
        y = _sample_rows(rng, pi[x])
        return {"prompt": self.prompts()[x], "response": self.responses()[y]}

    def preference_pairs(self, num: int, seed: int) -> dict[str, np.ndarray]:
        """``num`` pairs of behaviour samples with a hard label drawn from the oracle, and the
        oracle probability itself (``probability``) for soft-label training and diagnostics."""
        rng = np.random.default_rng(seed)
        pi = self.behaviour_policy()
        x = rng.integers(0, len(pi), num)
        ya, yb = _sample_rows(rng, pi[x]), _sample_rows(rng, pi[x])
        prompts, resp = self.prompts()[x], self.responses()
        ones = np.ones((num, self.response_len), bool)
        p = np.asarray(
            self(prompts, np.ones_like(prompts, bool), resp[ya], ones, resp[yb], ones), np.float64
        )
        label = (rng.random(num) < p).astype(np.float32)
        return {
            "prompt": prompts,
            "response_a": resp[ya],
            "response_b": resp[yb],
            "label": label,
            "probability": p.astype(np.float32),
        }

    # --- exact equilibria --------------------------------------------------------------------

    def exact_nash(self, mu: np.ndarray, tau: float) -> np.ndarray:
        """The regularized NE of every prompt's game against reference ``mu [prompts, R]``."""
        return solvers.regularized_nash_batch(self.preference_matrices(), mu, tau)


def style_of(patterns):
    """The style of response patterns ``[..., L]`` of symbol indices: the first symbol mod 3.

    Chosen to be a direct read-out (one token) so that a small preference model can learn the
    cycle from a few thousand pairs; a sum-mod-3 style was not learned in 1500 steps.
    """
    return patterns[..., 0] % 3


def _sample_rows(rng: np.random.Generator, probs_nr: np.ndarray) -> np.ndarray:
    """One index per row of a probability matrix (inverse-CDF sampling)."""
    cdf = np.cumsum(probs_nr, axis=-1)
    u = rng.random((len(probs_nr), 1)) * cdf[:, -1:]
    return np.minimum((u > cdf).sum(-1), probs_nr.shape[-1] - 1)
