"""Nash-MD with RLP's refresh applied to the preference model it plays against (beyond the
paper): Nash-MD-PG from SFT, a preference model retrained on the Nash policy's samples (D plus
SPG's synthetic pairs, plus 0.5 * L_M on pairs of samples), then Nash-MD-PG again from SFT.
Stages and keys: nlhf_jax/pipelines/rlp.py.

    python -m nlhf_jax.train --config configs/nash_md_rlp.py --workdir runs/nash_md_rlp
"""

from nlhf_jax.pipelines.configs import rlp_config


def get_config():
    return rlp_config("spg+uml", "nash_md")
