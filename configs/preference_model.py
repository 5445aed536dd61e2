"""A pairwise preference model P(y > y' | x) on the built-in synthetic task (2-core CPU: ~1 min).

    python -m nlhf_jax.train --config configs/preference_model.py --workdir runs/preference_model

On your own pairs (docs/text.md, "Train a preference model on your own data"):

    python -m nlhf_jax.train --config configs/preference_model.py --workdir runs/my_pm \
        --config.data.source=file --config.data.train_file=pairs.jsonl \
        --config.data.eval_file=eval.jsonl --config.data.tokenizer=path/to/tokenizer
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    return base_config("preference_model")
