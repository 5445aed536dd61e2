"""RLP-UML (docs/algorithms.md 8): RLHF, a reward model refreshed on the RLHF policy's samples
(D plus 0.5 * L_M, the multi-view information bottleneck, on pairs of samples), then
RLHF again from SFT. Stages and keys: nlhf_jax/pipelines/rlp.py.

    python -m nlhf_jax.train --config configs/rlp_uml.py --workdir runs/rlp_uml
"""

from nlhf_jax.pipelines.configs import rlp_config


def get_config():
    return rlp_config("uml", "rlhf")
