"""Export a trained policy as a Hugging Face directory that transformers' PyTorch classes load.

    python -m nlhf_jax.export --run DIR --out HF_DIR [--step N] [--dtype bfloat16] [--overwrite]
    python -m nlhf_jax.export --run LORA_RUN --out ADAPTER_DIR --peft

Writes config.json and model.safetensors (``nlhf_jax.models.hf.save_pretrained``) and, for text
runs, the run's tokenizer and a generation_config.json with its special token ids, so that
``AutoModelForCausalLM.from_pretrained(HF_DIR)`` and ``AutoTokenizer.from_pretrained(HF_DIR)``
both work. Runs of the synthetic task keep no tokenizer: their export holds the weights only.
A LoRA run's adapters are merged into its base (``W + (alpha / r) A B``). With ``--peft`` a LoRA
run is written as a PEFT adapter directory instead (``adapter_config.json`` and
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` loads onto its base: the
Hugging Face checkpoint the run started from, or, for a run on an earlier run's policy, that
policy exported beside it as ``ADAPTER_DIR/base``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import jax
import safetensors.numpy
import transformers
from flax import nnx

from nlhf_jax import checkpoint
from nlhf_jax.console import quiet_libraries
from nlhf_jax.errors import UserError, exit_on_user_error
from nlhf_jax.models import Transformer, hf
from nlhf_jax.models import lora as lora_lib

DTYPES = ("float32", "bfloat16")


def _check_out_dir(run_dir: str, out_dir: str, overwrite: bool) -> None:
    # Checked before loading anything, so a mistake costs no restore.
    if os.path.commonpath([run_dir, out_dir]) == out_dir:
        raise UserError(f"--out {out_dir} is (or contains) the run {run_dir}; choose another")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")


def export_run(
    run_dir: str,
    out_dir: str,
    *,
    step: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> str:
    """Writes a policy run's parameters (and tokenizer, if it kept one) as a HF directory.

    Args:
      run_dir: the workdir of an SFT or online-method run.
      out_dir: the directory to write; replaced whole, and only once complete.
      step: the checkpointed step to export (default: the latest).
      dtype: the dtype the weights are stored in, "float32" or "bfloat16".
      overwrite: replace an existing non-empty ``out_dir`` instead of refusing.

    Returns:
      One line saying what was written, the parameter count and the time taken.

    Raises:
      UserError: no such run or step, not a policy run, an unknown dtype, or ``out_dir`` exists.
    """
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    run_dir, out_dir = os.path.abspath(run_dir), os.path.abspath(out_dir)
    _check_out_dir(run_dir, out_dir, overwrite)
    run = checkpoint.load_policy(run_dir, os.path.basename(run_dir), step)
    step = checkpoint.latest_step(run_dir) if step is None else step
    # The HF config records param_dtype as the checkpoint's dtype, so the config must change
    # with the weights; hence a fresh module of the new config rather than the run's graphdef.
    config = run.config.replace(param_dtype=dtype)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    cast = lambda x: x.astype(config.jnp_param_dtype)
    nnx.replace_by_pure_dict(state, jax.tree.map(cast, nnx.to_pure_dict(run.params)))
    model = nnx.merge(graphdef, state)

    tokenizer = checkpoint.run_tokenizer(run_dir)
    ids = {
        f"{n}_token_id": getattr(tokenizer, f"{n}_token_id", None) for n in ("bos", "eos", "pad")
    }
    ids = {k: v for k, v in ids.items() if v is not None}  # None for a synthetic-task run

    def write(tmp: str) -> None:
        hf.save_pretrained(model, tmp, **ids)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            transformers.GenerationConfig(**ids).save_pretrained(tmp)

    _replace_dir(out_dir, write)

    num_params = sum(x.size for x in jax.tree.leaves(state))
    what = "weights, tokenizer and generation config"
    if tokenizer is None:
        what = "weights only (the run keeps no tokenizer: a synthetic-task run)"
    layout = config.model_family
    return (
        f"wrote {out_dir}: {layout} {what}, {num_params:,} parameters ({dtype}), step {step} "
        f"of {run_dir}, in {time.perf_counter() - start:.1f}s"
    )


def _replace_dir(out_dir: str, write) -> None:
    """``write(tmp)`` beside the target, then renamed into place: a crash never leaves half an
    export under ``out_dir``, and a replaced export stays intact until the new one is complete."""
    tmp, old = out_dir + ".tmp", out_dir + ".old"
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write(tmp)
    if os.path.isdir(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def export_peft(
    run_dir: str, out_dir: str, *, step: int | None = None, overwrite: bool = False
) -> str:
    """Writes a LoRA run's adapters as a PEFT adapter directory (module docstring).

    Raises:
      UserError: no such run or step, a run without adapters, or ``out_dir`` exists.
    """
    start = time.perf_counter()
    run_dir, out_dir = os.path.abspath(run_dir), os.path.abspath(out_dir)
    _check_out_dir(run_dir, out_dir, overwrite)
    name = os.path.basename(run_dir)
    identity = checkpoint.policy_identity(name, run_dir)
    config = checkpoint.transformer_config(identity["model"])
    if config.lora is None:
        raise UserError(
            f"{run_dir} trained no adapters (config.lora.rank=0): export it without --peft"
        )
    adapters = nnx.to_pure_dict(checkpoint.load_adapters(run_dir, config, step))
    base = identity.get("base", {})
    lora = config.lora
    tokenizer = checkpoint.run_tokenizer(run_dir)

    def write(tmp: str) -> None:
        if base.get("hf_checkpoint"):
            base_path = base["hf_checkpoint"]
        else:  # the policy the run adapted, as a Hugging Face directory of its own
            export_run(base["init_from"], os.path.join(tmp, "base"))
            base_path = os.path.join(out_dir, "base")
        os.makedirs(tmp, exist_ok=True)
        adapter_config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_path,
            "r": lora.rank,
            "lora_alpha": lora.alpha,
            "target_modules": list(lora.targets),
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "inference_mode": True,
        }
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f, indent=2)
        tensors = lora_lib.peft_tensors(adapters, config.num_layers)
        path = os.path.join(tmp, "adapter_model.safetensors")
        safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    _replace_dir(out_dir, write)
    num = sum(x.size for x in jax.tree.leaves(adapters))
    return (
        f"wrote {out_dir}: PEFT LoRA adapters (rank {lora.rank}, {', '.join(lora.targets)}; "
        f"{num:,} parameters) of {run_dir} for the base {base.get('hf_checkpoint') or 'base/'}, "
        f"in {time.perf_counter() - start:.1f}s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.export",
        description="Export a policy run as a Hugging Face (transformers) model directory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", required=True, help="the workdir of an SFT or online run")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="stored weight dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--peft",
        action="store_true",
        help="a LoRA run's adapters as a PEFT adapter directory instead of merged weights",
    )
    parser.add_argument("--verbose", action="store_true", help="show the libraries' logs")
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    if args.peft:
        print(export_peft(args.run, args.out, step=args.step, overwrite=args.overwrite))
        return
    print(
        export_run(args.run, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite)
    )


if __name__ == "__main__":
    exit_on_user_error(main)
