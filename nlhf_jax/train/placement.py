"""Where a trainer's arrays live, and the one sharded step every trainer compiles.

``config.mesh`` names the device mesh (``nlhf_jax.parallel.MeshConfig``: data, fsdp and tensor
axes, their sizes, the logical-axis rules) over the first ``num_devices`` devices (0: all, in
every process). SFT, the preference and reward models and every online method build their step
through ``compile_trainer``:

- the parameters, their optimizer moments and the ``aux`` copies are placed by their logical
  axes, the step counter and rng replicated; the state is built by a jitted init straight into
  those shards;
- the frozen models a step reads (the online methods' reference policy, the preference-model
  judge, RLHF's reward model) are traced arguments with their own shardings, not constants;
- every batch is split over the batch axes (``parallel.shard_batch``);
- before anything is placed, the state and the frozen models must fit the devices
  (``check_fits``), or the run stops naming the memory they need.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from nlhf_jax import parallel
from nlhf_jax.errors import UserError
from nlhf_jax.train.state import After, LossFn, Prepare, init_train_state, make_step

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Placement:
    """A mesh and its logical-axis rules: how any pytree of model parameters is sharded."""

    mesh: Mesh
    rules: parallel.Rules

    @property
    def batch(self) -> NamedSharding:
        return parallel.batch_sharding(self.mesh, self.rules)

    def shardings(self, tree: Any) -> Any:
        """Shardings of a pytree (arrays or ShapeDtypeStructs) by its Variables' logical axes."""
        return parallel.logical_shardings(tree, self.mesh, self.rules)


def placement(config: ml_collections.ConfigDict) -> Placement:
    """The mesh of ``config.mesh`` over the first ``num_devices`` devices (0: all of them)."""
    settings = config.mesh.to_dict()
    num_devices = settings.pop("num_devices", 0)
    settings.pop("device_memory_gb", None)
    try:
        mesh_config = parallel.MeshConfig(**settings)
        devices = jax.devices()
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but there are {len(devices)} devices")
        mesh = parallel.make_mesh(mesh_config, devices[:num_devices] if num_devices else None)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.mesh: {e}") from None
    return Placement(mesh, mesh_config.rules)


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
    ``limit`` bytes on one device. What it counts is a lower bound: activations, gradients and
    the compiler's buffers come on top."""
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


@dataclasses.dataclass
class Compiled:
    """A trainer's state builder and step on its mesh.

    Attributes:
      init_state: ``() -> TrainState`` built into its shards.
      step: ``(state, host_batch) -> (state, metrics)``; the batch is split over the mesh.
      frozen: the placed frozen models (what the step reads and never changes).
    """

    init_state: Callable[[], Any]
    step: Callable[[Any, dict], tuple[Any, dict]]
    frozen: Any


def compile_trainer(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    prepare: Prepare | None = None,
    after: After | None = None,
    aux: tuple[str, ...] = (),
    frozen: Any = None,
) -> Compiled:
    """The sharded step and state of a trainer (see the module docstring).

    Args:
      config: the run's config (``mesh``, ``seed``).
      graphdef, params: the model to train, ``params`` its starting values on the host.
      tx, loss_fn, prepare, after: as in ``nlhf_jax.train.state.make_step``; ``prepare``
        receives the placed ``frozen`` models as its fourth argument.
      aux: names of parameter copies kept in ``state.aux``, each starting as ``params``.
      frozen: a pytree of models the step reads but never trains.
    """
    where = placement(config)
    params_sh = where.shardings(params)

    def init(params):
        copies = {k: jax.tree.map(jnp.copy, params) for k in aux} or None
        return init_train_state(params, tx, config.seed, aux=copies)

    abstract = jax.eval_shape(init, params)
    state_sh = where.shardings(abstract)
    frozen_sh = where.shardings(frozen)
    device = str(where.mesh.devices.flat[0].device_kind)
    parts = {"train state": (abstract, state_sh)}
    if frozen is not None:
        parts["frozen models"] = (frozen, frozen_sh)
    check_fits(parts, device_memory(config, where.mesh), device)

    init_jit = jax.jit(init, in_shardings=(params_sh,), out_shardings=state_sh)
    placed_frozen = parallel.put(frozen, frozen_sh)
    jitted = make_step(
        graphdef, tx, loss_fn, prepare, after, shardings=(state_sh, where.batch, frozen_sh)
    )

    def step(state, batch):
        return jitted(state, parallel.shard_batch(batch, where.batch), placed_frozen)

    return Compiled(
        init_state=lambda: init_jit(parallel.put(params, params_sh)),
        step=step,
        frozen=placed_frozen,
    )
