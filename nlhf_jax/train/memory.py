"""Before anything is placed or compiled: does the run fit its devices?

``check_fits`` counts the bytes one device holds of each named part (the train state, the
frozen models: reference, judge) from their shard shapes, and stops a run that cannot fit with
one line naming GiB per part, what the device has and what to change. What it counts is a lower
bound: activations, gradients and the compiler's buffers come on top.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from nlhf_jax.errors import UserError

GiB = 2**30


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """The bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs) placed as
    ``shardings`` says: each leaf's shard shape times its item size, the largest per device."""
    totals: dict[Any, int] = {}
    leaves = jax.tree.leaves(tree)
    for leaf, sharding in zip(leaves, jax.tree.leaves(shardings), strict=True):
        shard = sharding.shard_shape(tuple(leaf.shape))
        size = math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
        for device in sharding.device_set:
            totals[device] = totals.get(device, 0) + size
    return max(totals.values(), default=0)


def device_memory(config: ml_collections.ConfigDict, mesh: Mesh) -> int | None:
    """Bytes of memory per device: ``config.mesh.device_memory_gb`` if set, else the smallest
    limit the backend reports for this process's devices (None on CPU, which reports none)."""
    gb = config.mesh.get("device_memory_gb", 0.0)
    if gb:
        return int(gb * GiB)
    limits = []
    for device in mesh.local_devices:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def check_fits(parts: dict[str, tuple[Any, Any]], limit: int | None, device: str) -> None:
    """Raises a ``UserError`` if the named parts (``name -> (tree, shardings)``) need more than
    ``limit`` bytes on one device (None: no limit known, nothing is checked)."""
    if limit is None:
        return
    needs = {name: bytes_per_device(tree, sh) for name, (tree, sh) in parts.items()}
    total = sum(needs.values())
    if total > limit:
        listed = ", ".join(f"{name} {n / GiB:.2f}" for name, n in needs.items())
        raise UserError(
            f"the run does not fit its devices: per device it needs {total / GiB:.2f} GiB "
            f"({listed} GiB) before activations, and {device} has {limit / GiB:.2f} GiB. "
            "Shard it more ways (config.mesh.shape: fsdp, tensor), use bfloat16 parameters "
            "(config.model.param_dtype) or a smaller model"
        )
