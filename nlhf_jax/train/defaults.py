"""Default settings of every run; the files in ``configs/`` start from these and set a few.

``base_config(method)`` is one run of one trainer: the keys every run has (``common_config``)
plus the method's own. An online method's hyperparameters come from its frozen dataclass
(``Method.params``: ``tau``, ``beta``, ...), so its defaults live in one place and its runs
have exactly its keys.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from nlhf_jax.errors import UserError
from nlhf_jax.train import online

# The trainers besides the online methods.
SUPERVISED = ("sft", "preference_model", "reward_model")


def common_config() -> ml_collections.ConfigDict:
    """The keys every run (and every pipeline) has."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_steps = 600
    c.batch_size = 64
    # Micro-batches: the gradient of each batch taken micro_batch_size rows at a time and
    # accumulated inside the step (one update per batch, the activations of a micro-batch);
    # 0: the whole batch at once. Online methods sample the whole batch first.
    c.micro_batch_size = 0
    c.log_every = 20
    c.eval_every = 100
    c.checkpoint_every = 100
    c.max_to_keep = 3
    # The device mesh of every trainer's step (nlhf_jax/train/step.py):
    # nlhf_jax.parallel.MeshConfig (axes data/fsdp/tensor, their shape, the logical-axis rules)
    # over the first num_devices devices (0: all of them, in every process). Default: all
    # devices data-parallel. device_memory_gb: the memory per device the pre-compile check
    # allows (0: what the backend reports; CPU reports none, so nothing is checked there).
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), num_devices=0, device_memory_gb=0.0))
    # Sampling (online methods' responses, evaluation texts); 0 / 1.0: off. The losses treat
    # samples as drawn from pi itself, so a temperature or top-k/top-p other than the default
    # makes them approximate. max_new_tokens 0: the task's response length, or
    # data.max_response_len.
    c.sampling = ml_collections.ConfigDict(
        dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=0)
    )
    # The divergence guard (nlhf_jax/train/guard.py): stop on a non-finite metric, a sampled
    # KL(pi || mu) above max_kl, or an exact invalid mass above max_invalid_mass (0: off).
    c.guard = ml_collections.ConfigDict(dict(finite=True, max_kl=10.0, max_invalid_mass=0.5))
    # The transformer: a preset from nlhf_jax.models.PRESETS plus overrides; the vocabulary size
    # comes from the data (the task's or the tokenizer's) unless set here. hf_checkpoint: a
    # local Hugging Face directory (config.json + safetensors; Llama or Qwen2): the SFT policy
    # starts from it, preference/reward models take its backbone (fresh head). Its architecture
    # replaces the preset's; its tokenizer is used unless data.tokenizer is set.
    c.model = ml_collections.ConfigDict(
        dict(
            hf_checkpoint="",
            preset="toy",
            d_model=64,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            mlp_dim=192,
            # Numerics: compute and parameter dtypes (empty: the preset's; a checkpoint's are
            # float32). dtype="bfloat16" with param_dtype="float32" computes in bf16 and keeps
            # float32 master parameters (and float32 Adam moments).
            dtype="",
            param_dtype="",
            # How, not what (any value gives the same model; TransformerConfig's docstring):
            # "einsum" (the reference) or "dot_product" (jax.nn.dot_product_attention); remat
            # per block: "none", "full" or "dots". Empty: the preset's (einsum, none), or
            # remat "full" for a pretrained start (``resolve``). Online runs inherit the SFT
            # run's model and take these (and dtype) when they are set.
            attention="",
            remat="",
        )
    )
    # LoRA (nlhf_jax/models/lora.py): rank > 0 trains low-rank adapters on the named
    # projections of a pretrained policy (model.hf_checkpoint for SFT, the init_from run for the
    # online methods) and keeps its weights frozen; the frozen base is also the reference.
    # The update is (alpha / rank) x A B. 0: full fine-tuning.
    c.lora = ml_collections.ConfigDict(
        dict(rank=0, alpha=16.0, targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    )
    # learning_rate 0.0: the default for where the run starts (``resolve``): a fresh model's
    # FRESH_LEARNING_RATE, a pretrained one's PRETRAINED_LEARNING_RATES.
    c.optimizer = ml_collections.ConfigDict(
        dict(learning_rate=0.0, warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0)
    )
    c.task = ml_collections.ConfigDict(
        dict(
            num_symbols=3,
            length=2,
            quality_strength=1.0,
            style_strength=2.0,
            invalid_penalty=2.0,
            behaviour_quality=1.0,
            behaviour_style_bias=1.5,
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            # "synthetic", "file", or empty: "file" when a file, tfds set or checkpoint is named.
            source="",
            data_dir="",  # where the tfds datasets are written; default WORKDIR/data
            train_pairs=20_000,
            train_demos=20_000,
            labels="sampled",  # synthetic: a Bernoulli draw from the oracle, or "probability"
            eval_pairs=2_000,
            eval_batch_size=500,
            # Data paths: JSONL, Parquet, or a `datasets` save_to_disk directory (docs/
            # judges_and_data.md). Pairs (preference/reward model) or demonstrations (sft).
            train_file="",
            eval_file="",  # held-out pairs or demonstrations; pairs: several, comma-separated
            prompts_file="",  # the online methods' prompts (or a file of pairs: their prompts)
            prompts_tfds="",  # ... or a tfds prompt set: a prepared directory or name[:split]
            eval_prompts_file="",  # evaluation prompts (default: the first num_eval_prompts)
            num_eval_prompts=16,
            # Render string rows through the tokenizer's chat template (conversational rows,
            # lists of messages, always are); the template's variables: the date a Llama 3
            # template prints (fixed, so tokens do not change by the day) and Qwen3's thinking.
            chat_template=False,
            date_string="26 Jul 2024",
            enable_thinking=False,
            # pairs: chosen_rejected | implicit_prompt | hh | pairwise | tldr; demonstrations:
            # prompt_response | prompt_completion | messages; prompts: prompt or any of those.
            # Empty: detected from the fields of the first row.
            layout="",
            sft_turns="last",  # messages: train the "last" assistant turn or "all" of them
            on_error="raise",  # or "skip": skip malformed rows and count them
            tokenizer="",  # a local tokenizer directory (default: the checkpoint's / init_from's)
            max_prompt_len=256,
            max_response_len=128,
        )
    )
    return c


def refresh_config() -> ml_collections.ConfigDict:
    """RLP's refresh of a judge (nlhf_jax/train/refresh.py, docs/algorithms.md section 8). A
    preference or reward model run with ``samples`` (a policy-sample set) is a refreshed judge:
    "spg" adds the synthetic pairs to its data, "uml" adds uml_weight * L_M on view pairs
    through Gaussian codes of code_dim (MLPs of width hidden), "spg+uml" both; gamma: SPG's
    confidence threshold."""
    return ml_collections.ConfigDict(
        dict(samples="", mode="spg", gamma=0.5, uml_weight=0.5, code_dim=16, hidden=64)
    )


def base_config(method: str) -> ml_collections.ConfigDict:
    """The config of one ``method`` run: ``sft``, ``preference_model``, ``reward_model`` or a
    registered online method (``nlhf_jax.train.online.METHODS``)."""
    if method not in SUPERVISED and method not in online.METHODS:
        known = ", ".join([*SUPERVISED, *sorted(online.METHODS)])
        raise UserError(f"unknown method {method!r}; known methods: {known}")
    c = common_config()
    c.method = method
    if method in ("preference_model", "reward_model"):
        # The backbone's run: empty for the checkpoint's (model.hf_checkpoint) or a fresh one.
        c.init_from = ""
        c.rlp = refresh_config()
    elif method in online.METHODS:
        # The SFT run whose policy is the reference and the start; the judge ("oracle": the
        # synthetic task's exact preference; a preference_model / reward_model run's workdir;
        # a Hugging Face checkpoint directory, a *ForSequenceClassification reward model or a
        # *ForCausalLM asked "A or B?"; module:function, a host function of the decoded
        # texts; a text task's task.json; RLHF's must give a reward: docs/judges_and_data.md);
        # a checkpoint judge's dtype (empty: float32) and a causal LM judge's prompt template
        # file (empty: the default, nlhf_jax.judges.causal_lm.DEFAULT_TEMPLATE); the method's
        # hyperparameters.
        c.init_from = ""
        c.judge = "" if online.METHODS[method].needs_reward else "oracle"
        c.judge_dtype = ""
        c.judge_template = ""
        for field in dataclasses.fields(online.METHODS[method].params):
            if field.name in c:
                raise ValueError(f"{method}: hyperparameter {field.name!r} shadows a config key")
            c[field.name] = field.default
    return c


# A fresh (randomly initialized) model's learning rate: the synthetic task's and the text
# example's small models train at it.
FRESH_LEARNING_RATE = 3e-3
# A pretrained start's, full fine-tuning: TRL 1.13's documented config defaults (SFTConfig 2e-5,
# RewardConfig 1e-4; OnlineDPOConfig 5e-7, which its NashMDConfig and XPOConfig inherit).
PRETRAINED_LEARNING_RATES = {"sft": 2e-5, "preference_model": 1e-4, "reward_model": 1e-4}
PRETRAINED_ONLINE_LEARNING_RATE = 5e-7
# LoRA's learning rate is this many times full fine-tuning's ("LoRA Without Regret", Schulman
# and Thinking Machines Lab, 2025: the optimal LoRA rate was about 10x the full one across
# models and datasets).
LORA_LEARNING_RATE_SCALE = 10.0
# A pretrained start's rematerialization: every block recomputed in the backward pass (a
# SmolLM2-135M preference model at batch 8 peaks at 15.6 GiB without it, 4.6 GiB with it;
# docs/pretrained.md).
PRETRAINED_REMAT = "full"


def _recorded_config(run: str) -> dict | None:
    import json
    import os

    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def pretrained_start(config: ml_collections.ConfigDict) -> str:
    """What pretrained model the run starts from (a path), or "" for a fresh model: its
    ``model.hf_checkpoint``, or an ``init_from`` checkpoint, or the pretrained start of the
    ``init_from`` run (its recorded config.json, followed back)."""
    from nlhf_jax.checkpoint import is_checkpoint

    if config.model.get("hf_checkpoint"):
        return config.model.hf_checkpoint
    run, seen = config.get("init_from") or "", set()
    while run and run not in seen:
        if is_checkpoint(run):
            return run
        seen.add(run)
        recorded = _recorded_config(run)
        if recorded is None:
            return ""
        if (recorded.get("model") or {}).get("hf_checkpoint"):
            return recorded["model"]["hf_checkpoint"]
        run = recorded.get("init_from") or ""
    return ""


def resolve(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Fills the keys whose default depends on where the run starts, in place, and returns
    ``{key: why}`` for the keys filled: ``optimizer.learning_rate`` when 0.0 and
    ``model.remat`` when empty. A fresh model: ``FRESH_LEARNING_RATE``, the preset's remat. A
    pretrained one (``pretrained_start``): ``PRETRAINED_LEARNING_RATES`` (times
    ``LORA_LEARNING_RATE_SCALE`` with LoRA) and ``PRETRAINED_REMAT``. Keys the user set are
    left as they are."""
    if "method" not in config or "optimizer" not in config:
        return {}
    start = pretrained_start(config)
    notes = {}
    with config.unlocked():
        if not config.optimizer.learning_rate:
            if not start:
                lr, why = FRESH_LEARNING_RATE, "a fresh model"
            else:
                lr = PRETRAINED_LEARNING_RATES.get(config.method, PRETRAINED_ONLINE_LEARNING_RATE)
                why = f"a pretrained start ({start}), TRL's default for {config.method}"
                if config.get("lora") is not None and config.lora.rank:
                    lr *= LORA_LEARNING_RATE_SCALE
                    why += f", x{LORA_LEARNING_RATE_SCALE:g} for LoRA"
            config.optimizer.learning_rate = lr
            notes["optimizer.learning_rate"] = f"the default for {why}"
        if start and not config.model.get("remat"):
            config.model.remat = PRETRAINED_REMAT
            notes["model.remat"] = "the default for a pretrained start"
    return notes
