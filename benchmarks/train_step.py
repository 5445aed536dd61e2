"""Training, decoding and Nash-MD-PG step throughput on random weights (no download).

    python benchmarks/train_step.py --preset toy [--batch 4,16] [--seq 64,256] [--prompt 32]
        [--new 32,128] [--attention einsum|dot_product] [--remat none|full|dots]
        [--dtype bfloat16] [--param-dtype float32] [--parts train,decode,nash,memory]
        [--out runs/benchmarks/train_step.json]

Three tables, one device, the preset's shape with random weights:

1. train: the policy's forward + backward (``value_and_grad`` of the next-token loss) on
   ``batch x seq`` tokens; tokens/s and model FLOPs utilization (MFU).
2. decode: the cached policy sampler and the two-cache mixture sampler, ``new`` tokens after a
   ``prompt``-token prefill (only the decode loop is timed); tokens/s and memory-bandwidth
   utilization (MBU).
3. nash: the whole Nash-MD-PG step of the online trainer (``nlhf_jax.train.online``): sample
   y ~ pi and y' ~ the mixture, judge the pair with a preference model of the same family and
   shape, score y under the reference, take the policy-gradient step with the run's optimizer.

Model FLOPs (PaLM, Chowdhery et al. 2022, appendix B): a forward pass costs per token
``2 N + 4 L H Q T``, N the parameters that multiply activations (all of them with tied
embeddings, whose table is the output projection; without the input table otherwise), L layers,
H query heads of width Q, T the length attended over (the whole row, as both attention kernels
compute it); a backward pass costs twice a forward. Rematerialization adds hardware FLOPs but no
model FLOPs. MBU (Databricks' definition): the weights plus the live KV cache (the prompt and
the tokens so far; the kernels also read the masked empty slots) read per decode step, divided
by the step time and the device's peak bandwidth. Peaks are the vendors' published dense bf16
figures of one chip; MFU is printed only for bf16 compute on a known device, MBU on a known
device, "n/a" otherwise (e.g. on CPU, whose peak depends on the part and its vector units).
Compilation is excluded (one warm-up call); each figure is the median of --repeats timed calls.
The figures, settings and machine (``nlhf_jax.provenance``) go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax import provenance
from nlhf_jax.judges import ModelJudge
from nlhf_jax.models import PreferenceModel, Transformer, forward_full, get_preset
from nlhf_jax.models.config import TransformerConfig
from nlhf_jax.sampling import SamplingConfig, decode, prefill
from nlhf_jax.train import initial, online
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.online import compile_online
from nlhf_jax.train.online.trainer import policy_context

# (device_kind substring, dense bf16 FLOP/s, HBM bytes/s) of one chip, first match wins (so the
# more specific names come first). NVIDIA datasheets (H100/H200 SXM, H100 PCIe, A100) and Google
# Cloud TPU system-architecture pages (v4, v5e = "v5 lite", v5p = "v5", v6e = "v6 lite").
PEAKS = (
    ("H200", 989e12, 4.8e12),
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100", 989e12, 3.35e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100 80GB PCIe", 312e12, 1.935e12),
    ("A100", 312e12, 1.555e12),  # the 40 GB parts
    ("TPU v4", 275e12, 1.2e12),
    ("TPU v5 lite", 197e12, 0.819e12),
    ("TPU v5", 459e12, 2.765e12),
    ("TPU v6 lite", 918e12, 1.64e12),
)

FORMULAS = {
    "forward_flops": "tokens * (2 N + 4 L H Q T), N = parameters multiplying activations",
    "train_flops": "3 * forward_flops over batch x seq, T = seq",
    "nash_flops": "7 * forward_flops over b x (P+n), T = P+n, + judge forward over 2b x (P+2n+1)",
    "decode_bytes_per_step": "models * (weight bytes + batch * 2 L (P + (n+1)/2) K Q bytes)",
}


def device_peaks() -> tuple[str, float | None, float | None]:
    """The first device's kind, its peak bf16 FLOP/s and bytes/s (None where unknown)."""
    kind = jax.devices()[0].device_kind
    for name, flops, bandwidth in PEAKS:
        if name in kind:
            return kind, flops, bandwidth
    return kind, None, None


def matmul_params(config: TransformerConfig, state: nnx.State) -> int:
    """N of the FLOPs formula: every parameter but an untied input embedding table."""
    total = sum(x.size for x in jax.tree.leaves(state))
    return total if config.tie_embeddings else total - config.vocab_size * config.d_model


def forward_flops(config: TransformerConfig, n: int, tokens: int, attended: int) -> float:
    """Model FLOPs of a forward pass over `tokens` tokens that each attend over `attended`."""
    c = config
    return tokens * (2 * n + 4 * c.num_layers * c.num_heads * c.head_dim * attended)


def kv_bytes(config: TransformerConfig, length: float, dtype) -> float:
    """Bytes of one row's keys and values over `length` slots, all layers."""
    c = config
    return 2 * c.num_layers * length * c.num_kv_heads * c.head_dim * jnp.dtype(dtype).itemsize


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(median seconds of `repeats` calls, seconds of the first call, compilation included)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), first


def _decode_seconds(models, prompt_bt, mask_bt, settings: SamplingConfig) -> float:
    """Seconds of one decode loop after an untimed prefill (the decode donates its caches)."""
    graphdefs, configs, states, weights_m = models
    b, p = prompt_bt.shape
    max_len = p + settings.max_new_tokens
    caches, last = prefill(graphdefs, configs, states, prompt_bt, mask_bt, max_len=max_len)
    jax.block_until_ready(caches)
    start = time.perf_counter()
    prompt_len_b = jnp.full((b,), p, jnp.int32)
    key = jax.random.key(0)
    out, _ = decode(graphdefs, settings, states, weights_m, caches, last, prompt_len_b, key)
    jax.block_until_ready(out)
    return time.perf_counter() - start


def _ratio(value: float, peak: float | None) -> str:
    return "n/a" if peak is None else f"{100 * value / peak:.1f}%"


def bench_train(config, graphdef, state, args, peak_flops):
    n = matmul_params(config, state)
    print(
        f"\n[train] forward + backward, FLOPs = 3 * forward = tokens * (6 N + 12 L H Q T), N={n:,}"
    )
    print(f"{'batch':>6} {'seq':>6} {'step ms':>9} {'tok/s':>10} {'TFLOP/s':>9} {'MFU':>7}")

    def loss_fn(state, tokens_bt):
        mask_bt = jnp.ones_like(tokens_bt, bool)
        logp_btv = jax.nn.log_softmax(forward_full(graphdef, state, tokens_bt, mask_bt), -1)
        return -jnp.mean(jnp.take_along_axis(logp_btv[:, :-1], tokens_bt[:, 1:, None], -1))

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    rows = []
    for b in args.batch:
        for t in args.seq:
            tokens = jax.random.randint(jax.random.key(b * t), (b, t), 0, config.vocab_size)
            seconds, first = _median_time(lambda x=tokens: grad_fn(state, x), args.repeats)
            flops = 3 * forward_flops(config, n, b * t, t)
            rows.append(
                dict(
                    batch=b,
                    seq=t,
                    seconds=seconds,
                    first_call_s=first,
                    tokens_per_s=b * t / seconds,
                    model_flops=flops,
                    flops_per_s=flops / seconds,
                    mfu=peak_flops and flops / seconds / peak_flops,
                )
            )
            print(
                f"{b:>6} {t:>6} {1e3 * seconds:>9.1f} {b * t / seconds:>10.0f} "
                f"{flops / seconds / 1e12:>9.3f} {_ratio(flops / seconds, peak_flops):>7}",
                flush=True,
            )
    return rows


def bench_decode(config, graphdef, state, ref_state, args, peak_bw):
    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(
        f"\n[decode] prompt {args.prompt}, bytes per step = models * (weights {weight_bytes:,} B "
        "+ batch * live KV cache)"
    )
    print(
        f"{'batch':>6} {'new':>5} {'policy tok/s':>13} {'GB/s':>8} {'MBU':>6} "
        f"{'mixture tok/s':>14} {'GB/s':>8} {'MBU':>6}"
    )
    rows = []
    for b in args.batch:
        prompt = jax.random.randint(jax.random.key(b), (b, args.prompt), 3, config.vocab_size)
        mask = jnp.ones_like(prompt, bool)
        for new in args.new:
            settings = SamplingConfig(max_new_tokens=new)
            live = args.prompt + (new + 1) / 2  # mean slots read over the steps
            row, line = dict(batch=b, new_tokens=new), f"{b:>6} {new:>5}"
            for name, states in (("policy", (state,)), ("mixture", (state, ref_state))):
                m = len(states)
                weights = jnp.array([1.0] if m == 1 else [1.0 - args.beta, args.beta])
                models = ((graphdef,) * m, (config,) * m, states, weights)
                _decode_seconds(models, prompt, mask, settings)  # compile
                seconds = statistics.median(
                    _decode_seconds(models, prompt, mask, settings) for _ in range(args.repeats)
                )
                step_bytes = m * (weight_bytes + b * kv_bytes(config, live, config.dtype))
                bandwidth = step_bytes * new / seconds
                row[name] = dict(
                    seconds=seconds,
                    tokens_per_s=b * new / seconds,
                    bytes_per_step=step_bytes,
                    bytes_per_token=step_bytes / b,
                    bytes_per_s=bandwidth,
                    mbu=peak_bw and bandwidth / peak_bw,
                )
                line += f" {b * new / seconds:>{13 if m == 1 else 14}.0f} {bandwidth / 1e9:>8.2f}"
                line += f" {_ratio(bandwidth, peak_bw):>6}"
            rows.append(row)
            print(line, flush=True)
    return rows


def bench_nash(config, graphdef, state, args, peak_flops, judge=None):
    """The online trainer's own sharded step (``nlhf_jax.train.online.compile_online``) for
    Nash-MD-PG, on one device; ``judge`` (default: a random preference model of the policy's
    shape) is a jittable judge, e.g. a reward checkpoint's ``ModelJudge``."""
    run = base_config("nash_md")
    run.mesh.num_devices = 1
    if judge is None:
        judge_model = PreferenceModel(config, sep_id=1, rngs=nnx.Rngs(2))
        # Heads start at zero (an indifferent judge); a random head makes P(y > y') vary.
        judge_model.head.w.set_value(jax.random.normal(jax.random.key(3), (config.d_model,)))
        judge = ModelJudge(*nnx.split(judge_model))
    n = matmul_params(config, state)
    n_judge = matmul_params(config.replace(tie_embeddings=True), judge.state)
    print(
        f"\n[nash] Nash-MD-PG step (beta {run.beta}, tau {run.tau}); judge: a {judge.kind} "
        "of the same shape. FLOPs = 7 forwards over b x (P+n) (pi's sample, the mixture's 2, "
        "mu's scores, pi's forward + backward) + the judge's over 2b x (P+2n+1)"
    )
    print(
        f"{'batch':>6} {'prompt':>6} {'new':>5} {'step s':>8} {'pairs/s':>8} {'gen tok/s':>10} "
        f"{'TFLOP/s':>9} {'MFU':>7}"
    )
    rows = []
    for b in args.batch:
        for new in args.new:
            settings = SamplingConfig(max_new_tokens=new)
            method = online.get("nash_md")
            hp = method.hyperparameters(run)
            ctx = policy_context(run, config, graphdef, state, settings, hp, judge)
            compiled = compile_online(run, method, ctx)
            step = compiled.step
            prompt = jax.random.randint(jax.random.key(b), (b, args.prompt), 3, config.vocab_size)
            batch = {"prompt": prompt, "prompt_mask": jnp.ones_like(prompt, bool)}
            train_state = compiled.init_state()
            start = time.perf_counter()
            train_state, metrics = step(train_state, batch)  # compile; the state is donated
            jax.block_until_ready(metrics)
            first, times = time.perf_counter() - start, []
            for _ in range(args.repeats):
                start = time.perf_counter()
                train_state, metrics = step(train_state, batch)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            seq = args.prompt + new
            # 1 + 2 sampling passes (pi; pi and mu for the mixture), 1 for the reference's
            # scores of y, 3 for the policy's forward + backward; the judge packs both orders.
            flops = 7 * forward_flops(config, n, b * seq, seq)
            if getattr(judge, "kind", "") == "reward_model":  # [x, y] and [x, y'], no LM head
                untied = n_judge - config.vocab_size * config.d_model
                flops += forward_flops(config, untied, 2 * b * seq, seq)
            else:  # a preference model packs both orders of [x, y, SEP, y']
                flops += forward_flops(config, n_judge, 2 * b * (seq + new + 1), seq + new + 1)
            rows.append(
                dict(
                    batch=b,
                    prompt=args.prompt,
                    new_tokens=new,
                    seconds=seconds,
                    first_call_s=first,
                    pairs_per_s=b / seconds,
                    generated_tokens_per_s=2 * b * new / seconds,
                    model_flops=flops,
                    flops_per_s=flops / seconds,
                    mfu=peak_flops and flops / seconds / peak_flops,
                    loss=float(metrics["loss"]),
                )
            )
            print(
                f"{b:>6} {args.prompt:>6} {new:>5} {seconds:>8.3f} {b / seconds:>8.1f} "
                f"{2 * b * new / seconds:>10.0f} {flops / seconds / 1e12:>9.3f} "
                f"{_ratio(flops / seconds, peak_flops):>7}",
                flush=True,
            )
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def memory(config, args) -> dict:
    """What one Nash-MD-PG step holds on one device, counted from shapes (nothing is compiled or
    allocated): the policy, its Adam moments, the reference, a preference-model judge of the
    same shape, and the KV caches of the step's three sampling passes (pi's sample, the
    mixture's policy and reference caches) at the largest batch x (prompt + new). Activations
    of the backward pass and XLA's buffers come on top; only a compiled step on the device
    measures those."""
    run = base_config("nash_md")
    abstract = lambda make: nnx.state(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    policy = abstract(lambda r: Transformer(config, rngs=r))
    judge = abstract(lambda r: PreferenceModel(config, sep_id=1, rngs=r))
    parts = {
        "policy": policy,
        "adam": jax.eval_shape(initial.optimizer(run).init, policy),
        "reference": policy,
        "judge": judge,
    }
    size = lambda tree: sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    out = {name: size(tree) for name, tree in parts.items()}
    b, length = max(args.batch), args.prompt + max(args.new)
    per_cache = 2 * config.num_layers * b * length * config.num_kv_heads * config.head_dim
    out["kv_caches"] = 3 * per_cache * np.dtype(config.dtype).itemsize
    out["total"] = sum(out.values())
    print(
        f"\n[memory] one device, params {config.param_dtype}, compute {config.dtype}, batch {b} "
        f"x {length} tokens (before activations):"
    )
    print("  " + "  ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in out.items()))
    return {"batch": b, "tokens": length, "bytes": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--batch", type=_ints, default=[4, 16])
    parser.add_argument("--seq", type=_ints, default=[64, 256], help="training lengths")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=_ints, default=[32], help="decoded lengths")
    parser.add_argument("--beta", type=float, default=0.125, help="the mixture's weight on mu")
    parser.add_argument("--attention", default="einsum", help="einsum or dot_product")
    parser.add_argument("--remat", default="none", help="none, full or dots")
    parser.add_argument("--dtype", default="", help="compute dtype (default: the preset's)")
    parser.add_argument("--param-dtype", default="", help="parameter (master) dtype")
    parser.add_argument("--parts", default="train,decode,nash")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/benchmarks/train_step.json", help="JSON file")
    args = parser.parse_args()

    changes = dict(attention=args.attention, remat=args.remat)
    if args.dtype:
        changes["dtype"] = args.dtype
    if args.param_dtype:
        changes["param_dtype"] = args.param_dtype
    config = get_preset(args.preset, **changes)
    parts = args.parts.split(",")
    if parts == ["memory"]:  # shapes only: no model is built
        result = {"settings": {**vars(args), "config": dataclasses.asdict(config)}}
        result["memory"] = memory(config, args)
        return _write(result, args.out)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    _, ref_state = nnx.split(Transformer(config, rngs=nnx.Rngs(1)))
    kind, peak_flops, peak_bw = device_peaks()
    if config.dtype != "bfloat16":
        peak_flops = None  # The published peaks are bf16 ones.
    params = sum(x.size for x in jax.tree.leaves(state))
    print(
        f"device: {kind} (using 1 of {jax.device_count()})  preset: {args.preset} ({params:,} "
        f"params, compute {config.dtype})  attention: {config.attention}  remat: {config.remat}"
    )
    print(
        f"peak bf16: {'unknown' if peak_flops is None else f'{peak_flops / 1e12:.0f} TFLOP/s'}  "
        f"peak bandwidth: {'unknown' if peak_bw is None else f'{peak_bw / 1e12:.2f} TB/s'}"
    )
    result = {"settings": {**vars(args), "config": dataclasses.asdict(config)}}
    result["device"] = {
        "kind": kind,
        "peak_bf16_flops_per_s": peak_flops,
        "peak_bytes_per_s": peak_bw,
    }
    result["formulas"] = FORMULAS
    if "train" in parts:
        result["train"] = bench_train(config, graphdef, state, args, peak_flops)
    if "decode" in parts:
        result["decode"] = bench_decode(config, graphdef, state, ref_state, args, peak_bw)
    if "nash" in parts:
        result["nash"] = bench_nash(config, graphdef, state, args, peak_flops)
    if "memory" in parts:
        result["memory"] = memory(config, args)
    _write(result, args.out)


def _write(result: dict, out: str) -> None:
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        result["environment"] = provenance.environment()
        with open(out, "w") as f:
            json.dump(result, f, indent=1, default=lambda x: np.asarray(x).tolist())
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
