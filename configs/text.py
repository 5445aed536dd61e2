"""The text pipeline: a Hugging Face checkpoint, its tokenizer, your prompts and pairs.

One file, one stage per config string (``configs/text.py:STAGE``). The defaults point at the
built-in text example (``python -m nlhf_jax.tasks.text --out data/text``); for your own model and
data override the paths. Each stage is an ordinary resumable run:

    python -m nlhf_jax.tasks.text --out data/text
    python -m nlhf_jax.train --config configs/text.py:sft --workdir runs/text/sft
    python -m nlhf_jax.train --config configs/text.py:preference_model --workdir runs/text/pm
    python -m nlhf_jax.train --config configs/text.py:reward_model --workdir runs/text/rm
    python -m nlhf_jax.train --config configs/text.py:nash_md --workdir runs/text/nash_md
    python -m nlhf_jax.train --config configs/text.py:rlhf --workdir runs/text/rlhf

Your own: --config.model.hf_checkpoint=DIR (config.json + safetensors + tokenizer),
--config.data.train_file=demos.jsonl (sft) or pairs.jsonl (preference/reward model),
--config.data.prompts_file=prompts.jsonl (online methods), --config.data.chat_template=true.
STAGE is sft, preference_model, reward_model or any online method (nash_md, nash_ema,
nash_mp, online_ipo, ipo_md, inpo, rlhf); the online stages start from runs/text/sft and are
judged by runs/text/pm (rlhf: scored by runs/text/rm) unless overridden.
"""

from nlhf_jax.train.defaults import base_config

DATA = "data/text"
RUNS = "runs/text"


def get_config(stage: str = "sft"):
    c = base_config(stage)
    c.data.source = "file"
    c.data.max_prompt_len = 32
    c.data.max_response_len = 16
    c.batch_size = 32
    c.log_every = 25
    if stage == "sft":
        c.model.hf_checkpoint = f"{DATA}/checkpoint"
        c.data.train_file = f"{DATA}/demos.jsonl"
        c.num_steps = 300
        c.eval_every = 100
    elif stage in ("preference_model", "reward_model"):
        # The backbone from the same checkpoint (init_from=runs/text/sft is the other choice).
        c.model.hf_checkpoint = f"{DATA}/checkpoint"
        c.data.train_file = f"{DATA}/pairs.jsonl"
        c.data.eval_file = f"{DATA}/pairs_eval.jsonl,{DATA}/pairs_cyclic.jsonl"
        c.num_steps = 600
        c.eval_every = 200
    else:  # an online method, from the SFT run
        c.init_from = f"{RUNS}/sft"
        c.judge = f"{RUNS}/pm"
        c.reward_model = f"{RUNS}/rm"
        c.data.prompts_file = f"{DATA}/prompts.jsonl"
        c.data.eval_prompts_file = f"{DATA}/eval_prompts.jsonl"
        c.num_steps = 200
        c.eval_every = 50
        c.optimizer.learning_rate = 1e-3
        if stage == "rlhf":
            c.tau = 0.4  # on the reward's scale: see configs/demo.py
    return c
