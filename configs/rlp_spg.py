"""RLP-SPG (docs/algorithms.md 8): RLHF, a reward model refreshed on the RLHF policy's samples
(D plus synthetic preference pairs from equivalence groups, gamma = 0.5), then
RLHF again from SFT. Stages and keys: nlhf_jax/pipelines/rlp.py.

    python -m nlhf_jax.train --config configs/rlp_spg.py --workdir runs/rlp_spg
"""

from nlhf_jax.pipelines.configs import rlp_config


def get_config():
    return rlp_config("spg", "rlhf")
