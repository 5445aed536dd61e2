"""Default settings shared by the config files in ``configs/`` (each file overrides a few)."""

from __future__ import annotations

import ml_collections


def base_config(method: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = method
    c.seed = 0
    c.num_steps = 600
    c.batch_size = 64
    c.log_every = 20
    c.eval_every = 100
    c.checkpoint_every = 100
    c.max_to_keep = 3
    # The transformer: a preset from nlhf_jax.models.PRESETS plus overrides; the vocabulary size
    # comes from the data (the task's or the tokenizer's) unless set here.
    # Policy methods: the SFT run whose policy is the reference and the start, the judge ("oracle"
    # for the synthetic task's exact preference, or a preference_model run's workdir), tau and
    # the mixture weight beta of Nash-MD-PG (NLHF: tau = 0.008, beta = 0.125 on TL;DR).
    c.init_from = ""
    c.judge = "oracle"
    c.tau = 0.1
    c.beta = 0.125
    # Method-specific (see nlhf_jax/train/online.py): the RLHF baseline's reward_model run;
    # Nash-EMA-PG's EMA decay; Nash-MP's eta and M policy-gradient steps per prox step (the anchor
    # is re-set every 2M steps); INPO's eta (public code: tau / eta = 1/3) and round length.
    c.reward_model = ""
    c.ema_decay = 0.99
    c.mp_eta = 0.2
    c.mp_steps = 10
    c.inpo_eta = 0.3
    c.inpo_round_steps = 100
    # The device mesh of every trainer's step (nlhf_jax/train/placement.py):
    # nlhf_jax.parallel.MeshConfig (axes data/fsdp/tensor, their shape, the logical-axis rules)
    # over the first num_devices devices (0: all of them, in every process). Default: all
    # devices data-parallel. device_memory_gb: the memory per device the pre-compile check
    # allows (0: what the backend reports; CPU reports none, so nothing is checked there).
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), num_devices=0, device_memory_gb=0.0))
    # Sampling of the online methods' responses (0 / 1.0: off). The losses treat samples as drawn
    # from pi itself, so a temperature or top-k/top-p other than the default makes them
    # approximate. max_new_tokens 0: the task's response length, or data.max_response_len.
    c.sampling = ml_collections.ConfigDict(
        dict(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=0)
    )
    # hf_checkpoint: a local Hugging Face directory (config.json + safetensors; Llama or Qwen2):
    # the SFT policy starts from it, preference/reward models take its backbone (fresh head).
    # Its architecture replaces the preset's; its tokenizer is used unless data.tokenizer is set.
    # The divergence guard (nlhf_jax/train/guard.py): stop on a non-finite metric, a sampled
    # KL(pi || mu) above max_kl, or an exact invalid mass above max_invalid_mass (0: off).
    c.guard = ml_collections.ConfigDict(dict(finite=True, max_kl=10.0, max_invalid_mass=0.5))
    # RLP (nlhf_jax/train/rlp.py, ALGORITHMS.md 8). A preference or reward model run with
    # `samples` (a policy-sample set) is a refreshed judge: "spg" adds the synthetic pairs to
    # its data, "uml" adds uml_weight * L_M on view pairs through Gaussian codes of code_dim
    # (MLPs of width hidden), "spg+uml" both. The pipeline (method "rlp") trains policy_method
    # from SFT, draws num_samples per prompt for num_prompts prompts, groups them by
    # `equivalence` ("task": the synthetic task's (quality, style); "exact": same tokens), keeps
    # prompts whose largest group has a share >= gamma, and trains again from SFT. sft, judge
    # and stage1 name existing runs to reuse (empty: trained in WORKDIR).
    c.rlp = ml_collections.ConfigDict(
        dict(
            mode="spg",
            policy_method="rlhf",
            samples="",
            sft="",
            judge="",
            stage1="",
            num_prompts=2000,
            num_samples=10,
            gamma=0.5,
            equivalence="task",
            uml_weight=0.5,
            code_dim=16,
            hidden=64,
        )
    )
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
            # per block: "none", "full" or "dots". Empty: the preset's (einsum, none). Online
            # runs inherit the SFT run's model and take these (and dtype) when they are set.
            attention="",
            remat="",
        )
    )
    c.optimizer = ml_collections.ConfigDict(
        dict(learning_rate=3e-3, warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0)
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
            train_file="",  # pairs (preference/reward model) or demonstrations (sft)
            eval_file="",  # held-out pairs or demonstrations; pairs: several, comma-separated
            prompts_file="",  # the online methods' prompts: JSONL/Parquet with a `prompt` field
            prompts_tfds="",  # ... or a tfds prompt set: a prepared directory or name[:split]
            eval_prompts_file="",  # evaluation prompts (default: the first num_eval_prompts)
            num_eval_prompts=16,
            chat_template=False,  # wrap prompts in the tokenizer's chat template
            layout="",  # chosen_rejected | pairwise | tldr; empty: detected from the fields
            on_error="raise",  # or "skip": skip malformed rows and count them
            tokenizer="",  # a local tokenizer directory (default: the checkpoint's / init_from's)
            max_prompt_len=256,
            max_response_len=128,
        )
    )
    return c
