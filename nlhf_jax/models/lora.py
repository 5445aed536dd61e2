"""LoRA: low-rank adapters on the transformer's projections, the base weights frozen.

A projection ``y = x W`` with an adapter computes ``y = x W + (alpha / rank) (x A) B`` with
``A [in, rank]`` and ``B [rank, out]`` (the PEFT convention: ``A`` uniform in
``+-1/sqrt(fan_in)``, ``B`` zero, so a fresh adapter changes nothing, exactly). The factors are
``LoRAParam``s, a subclass of ``nnx.Param``: ``split`` separates them from the frozen base, so an
optimizer holds and a checkpoint stores the adapters only, and the base with zero adapters is
the reference policy of an online run (no second copy of the weights). ``merged`` folds them
into the base for export; ``peft_tensors`` writes them under PEFT's names.

Why not qwix: qwix's LoRA adds adapter variables to the modules whose matmuls it intercepts
while it traces the model. Our decoder keeps its layers' parameters stacked on a "layers" axis
and runs them with ``lax.scan`` over a split state (``Transformer.hidden``), merging one layer's
module from a slice of that state inside the loop, so adapters created there would be neither
stacked per layer nor part of the model's state. The adapters here are declared with the layers
and scanned with them.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax.models.config import TARGETS, LoRAConfig

Array = jax.Array


class LoRAParam(nnx.Param):
    """A factor of a low-rank adapter: the only parameters a LoRA run trains."""


class Adapter(nnx.Module):
    """``(alpha / r) (x A) B`` for a projection with input dims ``in_shape`` and output dims
    ``out_shape`` (logical axes ``in_axes`` / ``out_axes``; the rank axis is "lora")."""

    def __init__(self, in_shape, in_axes, out_shape, out_axes, lora: LoRAConfig, dtype, *, rngs):
        bound = 1.0 / math.sqrt(math.prod(in_shape))

        def uniform(key, shape, dtype):  # PEFT's kaiming_uniform(a=sqrt(5)): +-1/sqrt(fan_in)
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        # eager_sharding=False: the names are logical, not mesh axes; `parallel` maps them later.
        a_init = nnx.with_partitioning(uniform, (*in_axes, "lora"), eager_sharding=False)
        b_init = nnx.with_partitioning(
            nnx.initializers.zeros, ("lora", *out_axes), eager_sharding=False
        )
        self.a = LoRAParam(a_init(rngs.params(), (*in_shape, lora.rank), dtype))
        self.b = LoRAParam(b_init(rngs.params(), (lora.rank, *out_shape), dtype))
        self.scale = lora.scale
        self.n_in = len(in_shape)

    def __call__(self, x: Array) -> Array:
        dt = x.dtype
        xa = jnp.tensordot(x, self.a[...].astype(dt), axes=self.n_in)
        return self.scale * jnp.tensordot(xa, self.b[...].astype(dt), axes=1)


def adapter(config, name: str, in_shape, in_axes, out_shape, out_axes, rngs) -> Adapter | None:
    """The adapter of projection ``name`` if ``config.lora`` targets it, else None."""
    lora = config.lora
    if lora is None or name not in lora.targets:
        return None
    return Adapter(in_shape, in_axes, out_shape, out_axes, lora, config.jnp_param_dtype, rngs=rngs)


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, adapters, base)``: the trainable adapters and every other parameter.
    ``nnx.merge_state(base, adapters)`` is the whole state again (for ``nnx.merge(graphdef,
    ...)``)."""
    return nnx.split(model, LoRAParam, ...)


def zeros_like(adapters: nnx.State) -> nnx.State:
    """Adapters that change nothing: with them the model computes its base (the reference)."""
    return jax.tree.map(jnp.zeros_like, adapters)


# --- folding adapters into the base, and PEFT's layout ----------------------------------------


def _owners(state: dict):
    """Yields ``(module dict, projection name)`` of every adapter in a pure-dict state."""
    for block in ("attn", "mlp"):
        module = state.get("layers", {}).get(block, {})
        for name in TARGETS:
            if f"{name}_lora" in module:
                yield module, name


def merged_pure_dict(pure: dict, lora: LoRAConfig) -> dict:
    """A pure-dict state with every adapter folded into its weight, ``W + s A B`` (stacked over
    layers), and the adapters removed (float32 arithmetic, cast back to the weight's dtype)."""
    out = jax.tree.map(lambda x: x, pure)
    for module, name in list(_owners(out)):
        ad = module.pop(f"{name}_lora")
        w = np.asarray(module[name], np.float32)
        a, b = np.asarray(ad["a"], np.float32), np.asarray(ad["b"], np.float32)
        layers, rank = a.shape[0], a.shape[-1]
        delta = np.einsum(
            "lir,lro->lio", a.reshape(layers, -1, rank), b.reshape(layers, rank, -1)
        ).reshape(w.shape)
        module[name] = (w + lora.scale * delta).astype(np.asarray(module[name]).dtype)
    return out


def peft_tensors(pure: dict, num_layers: int) -> dict[str, np.ndarray]:
    """The adapters under PEFT's names (``base_model.model.model.layers.{i}.self_attn.q_proj.
    lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r]), for ``adapter_model.safetensors``."""
    tensors = {}
    for module, name in _owners(pure):
        ad = module[f"{name}_lora"]
        a, b = np.asarray(ad["a"], np.float32), np.asarray(ad["b"], np.float32)
        block = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        for i in range(num_layers):
            prefix = f"base_model.model.model.layers.{i}.{block}.{name}"
            a_i = a[i].reshape(-1, a.shape[-1])  # [in, r]
            b_i = b[i].reshape(b.shape[1], -1)  # [r, out]
            tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a_i.T)
            tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b_i.T)
    return tensors


def attach(model: nnx.Module, lora: LoRAConfig, seed: int) -> nnx.Module:
    """``model`` (a ``Transformer`` without adapters) with fresh adapters on ``lora.targets``:
    its weights unchanged and shared, every adapter's ``A`` drawn from ``seed`` and ``B`` zero,
    so the result computes exactly what ``model`` does. Only the adapters are allocated."""
    cfg = model.config.replace(lora=lora)
    abstract = nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(seed)))
    graphdef, adapters, _ = split(abstract)
    base = nnx.state(model)
    key = jax.random.key(seed)

    def fresh(path, leaf):
        if path[-1] == "b":
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = math.prod(leaf.shape[1:-1])  # [layers, *in, rank]
        bound = 1.0 / math.sqrt(fan_in)
        k = jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) % 2**31)
        return jax.random.uniform(k, leaf.shape, leaf.dtype, -bound, bound)

    values = jax.tree_util.tree_map_with_path(
        lambda p, x: fresh(tuple(str(getattr(e, "key", e)) for e in p), x),
        nnx.to_pure_dict(adapters),
    )
    nnx.replace_by_pure_dict(adapters, values)
    return nnx.merge(graphdef, adapters, base)
