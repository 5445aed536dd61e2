"""Sampling throughput: cached policy sampler vs two-cache mixture vs uncached mixture.

    python benchmarks/sampling.py [--preset toy] [--batch 8] [--prompt 32] [--new 32,128,512]
                                  [--out runs/benchmarks/sampling.json]

Same model, batch and prompts for all three. The uncached mixture recomputes the whole prefix
of both models at every token, as TRL's Nash-MD mixture wrapper does (it runs generate with the
KV cache off). Under jit it needs static shapes, so it attends over a fixed buffer of
prompt + new tokens (masked) at every step; a growing-prefix implementation would do up to
(P + N) / (P + N/2) times less work, and the script prints that factor beside the ratio. It
also checks that the uncached sampler draws the same tokens as the cached one (same key), so
the comparison is of equal outputs. Compilation is excluded (one warm-up call); each figure is
the median of --repeats timed calls. The figures, the settings and the machine
(``nlhf_jax.provenance``) also go to ``--out`` as JSON, from which the README's table is rendered.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax import provenance
from nlhf_jax.models import Transformer, forward_full, get_preset
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig


@functools.partial(jax.jit, static_argnames=("graphdef", "new_tokens"))
def uncached_mixture(graphdef, state, ref_state, beta, prompt_bt, new_tokens, key):
    """Token-level mixture sampling with no cache: a full forward of both models per token."""
    b, p = prompt_bt.shape
    tokens = jnp.concatenate([prompt_bt, jnp.zeros((b, new_tokens), prompt_bt.dtype)], 1)
    mask = jnp.concatenate([jnp.ones((b, p), bool), jnp.zeros((b, new_tokens), bool)], 1)

    def step(i, carry):
        tokens, mask, key = carry
        key, sub = jax.random.split(key)
        last = p + i - 1
        l_pi = forward_full(graphdef, state, tokens, mask)[:, last]
        l_mu = forward_full(graphdef, ref_state, tokens, mask)[:, last]
        logp = jax.nn.log_softmax(((1 - beta) * l_pi + beta * l_mu).astype(jnp.float32), -1)
        tok = jax.random.categorical(sub, logp, axis=-1).astype(tokens.dtype)
        return tokens.at[:, p + i].set(tok), mask.at[:, p + i].set(True), key

    tokens, _, _ = jax.lax.fori_loop(0, new_tokens, step, (tokens, mask, key))
    return tokens[:, p:]


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", default="32,128,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beta", type=float, default=0.125)
    parser.add_argument("--skip-uncached-above", type=int, default=10**9)
    parser.add_argument("--out", default="runs/benchmarks/sampling.json", help="JSON file")
    args = parser.parse_args()

    config = get_preset(args.preset)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    _, ref_state = nnx.split(Transformer(config, rngs=nnx.Rngs(1)))
    prompt = jax.random.randint(jax.random.key(2), (args.batch, args.prompt), 3, config.vocab_size)
    mask = jnp.ones_like(prompt, bool)
    key = jax.random.key(3)
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  preset: {args.preset}  "
        f"batch: {args.batch}  prompt: {args.prompt}  beta: {args.beta}"
    )
    print(
        f"{'new':>5} {'policy tok/s':>13} {'mixture tok/s':>14} {'uncached tok/s':>15} "
        f"{'mix/policy':>11} {'mix/uncached':>13} {'growing-prefix factor':>22} {'same tokens':>12}"
    )
    rows = []
    for n in [int(x) for x in args.new.split(",")]:
        settings = SamplingConfig(max_new_tokens=n)
        policy = PolicySampler(graphdef, config, settings)
        mixture = MixtureSampler(graphdef, graphdef, config, settings)
        t_pol = _time(lambda f=policy: f(state, prompt, mask, key).tokens, args.repeats)
        t_mix = _time(
            lambda f=mixture: f(state, ref_state, args.beta, prompt, mask, key).tokens, args.repeats
        )
        tok = args.batch * n
        row = f"{n:>5} {tok / t_pol:>13.0f} {tok / t_mix:>14.0f}"
        rows.append({"new_tokens": n, "policy_tok_s": tok / t_pol, "mixture_tok_s": tok / t_mix})
        if n <= args.skip_uncached_above:
            unc = functools.partial(
                uncached_mixture, graphdef, state, ref_state, args.beta, prompt, n, key
            )
            t_unc = _time(unc, args.repeats)
            cached = np.asarray(mixture(state, ref_state, args.beta, prompt, mask, key).tokens)
            same = float(np.mean(cached == np.asarray(unc())))
            factor = (args.prompt + n) / (args.prompt + n / 2)
            row += (
                f" {tok / t_unc:>15.0f} {t_pol / t_mix:>11.2f} {t_unc / t_mix:>13.1f}"
                f" {factor:>22.2f} {same:>12.3f}"
            )
            rows[-1].update(
                uncached_tok_s=tok / t_unc, growing_prefix_factor=factor, same_tokens=same
            )
        else:
            row += f" {'skipped':>15} {t_pol / t_mix:>11.2f}"
        print(row, flush=True)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {"settings": vars(args), "rows": rows, "environment": provenance.environment()},
                f,
                indent=1,
            )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
