"""Meshes from config, logical-axis rules, and sharded state and batches.

Parameters carry logical axis names ("embed", "heads", ...) in their `out_sharding` metadata;
`MeshConfig.rules` maps each name to mesh axes. Everything here uses classic jit-with-shardings
(Auto mesh axes): a step is compiled once with explicit in/out shardings and XLA propagates the
activations' shardings (``nlhf_jax.train.step.compile_step`` does it for every trainer).

    config = MeshConfig(shape=(-1, 2, 2)); mesh = make_mesh(config)
    shardings = logical_shardings(params, mesh, config.rules)
    batch = shard_batch(host_batch, batch_sharding(mesh, config.rules))
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from nlhf_jax.errors import UserError

# A logical name -> None (replicated), one mesh axis, or several (sharded over their product).
MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("lora", None),  # the rank of a low-rank adapter
)


def _as_axes(axes: Any) -> MeshAxes:
    # ml_collections and JSON hand over lists; the config must stay hashable.
    if axes is None or isinstance(axes, str):
        return axes
    return tuple(axes)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """A device mesh and the logical-axis rules of its parameters, as hashable data.

    Build it from an ml_collections config with `MeshConfig(**config.mesh)`; lists become tuples.

    Attributes:
      axes: mesh axis names, e.g. ("data", "fsdp", "tensor").
      shape: size of each axis; at most one -1, which takes the remaining devices.
      rules: (logical name, mesh axes) pairs; every logical name a parameter uses must appear.
    """

    axes: tuple[str, ...] = ("data", "fsdp", "tensor")
    shape: tuple[int, ...] = (-1, 1, 1)
    rules: Rules = DEFAULT_RULES

    def __post_init__(self):
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        rules = tuple((str(name), _as_axes(axes)) for name, axes in dict(self.rules).items())
        object.__setattr__(self, "rules", rules)
        if len(self.axes) != len(self.shape) or len(set(self.axes)) != len(self.axes):
            raise ValueError(
                f"mesh axes {self.axes} and shape {self.shape} must have the same length and "
                "distinct names"
            )
        if any(s == 0 or s < -1 for s in self.shape) or self.shape.count(-1) > 1:
            raise ValueError(
                f"mesh shape {self.shape}: sizes must be positive, with at most one -1"
            )
        for name, axes in self.rules:
            unknown = set((axes,) if isinstance(axes, str) else axes or ()) - set(self.axes)
            if unknown:
                raise ValueError(f"rule {name!r} -> {axes} names unknown mesh axes {unknown}")

    def resolved_shape(self, num_devices: int) -> tuple[int, ...]:
        """The shape with -1 filled in; raises ValueError naming the shape and device count."""
        known = math.prod(s for s in self.shape if s != -1)
        shape = tuple(num_devices // known if s == -1 else s for s in self.shape)
        if math.prod(shape) != num_devices or num_devices % known:
            raise ValueError(
                f"mesh shape {self.shape} over axes {self.axes} does not fit {num_devices} "
                f"devices (fixed sizes multiply to {known})"
            )
        return shape


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Returns a mesh with Auto axis types over `devices` (default: all, across processes)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = config.resolved_shape(len(devices))
    auto = (AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, config.axes, axis_types=auto, devices=devices)


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules
) -> PartitionSpec:
    """Maps one array's logical axis names to a PartitionSpec on `mesh`.

    A dimension falls back to replication when its size is not divisible by the product of its
    mesh axes' sizes (kv_heads=2 on tensor=2 shards; a vocab of 17 on tensor=2 is replicated), or
    when an earlier dimension of the same array already uses one of those mesh axes.

    Raises:
      KeyError: if a logical name has no rule (a new name must be given a rule on purpose).
    """
    rule_of = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical_axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in rule_of:
            raise KeyError(f"logical axis {name!r} has no rule; rules cover {sorted(rule_of)}")
        axes = rule_of[name]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        fits = size % math.prod(mesh.shape[a] for a in axes) == 0
        if not axes or not fits or used & set(axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs, e.g. `nnx.eval_shape`).

    Leaves inside an `nnx.Variable` with logical `out_sharding` metadata are sharded by `rules`.
    This covers optax state too: adam's `mu`/`nu` are built with `tree_map` over the params and
    keep each Param's metadata. Leaves without metadata, or whose rank differs from their metadata
    (e.g. factored second moments), are replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(x):
        if not isinstance(x, nnx.Variable):
            return replicated
        axes, shape = x.get_metadata().get("out_sharding"), tuple(x.get_value().shape)
        if axes is None or len(axes) != len(shape):
            return x.replace(replicated)
        return x.replace(NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules)))

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


@dataclasses.dataclass(frozen=True)
class Placement:
    """A mesh and its logical-axis rules: how any pytree of model parameters is sharded."""

    mesh: Mesh
    rules: Rules

    @property
    def batch(self) -> NamedSharding:
        return batch_sharding(self.mesh, self.rules)

    def shardings(self, tree: Any) -> Any:
        """Shardings of a pytree (arrays or ShapeDtypeStructs) by its Variables' logical axes."""
        return logical_shardings(tree, self.mesh, self.rules)


def placement(config) -> Placement:
    """The mesh of a run's ``config.mesh`` (an ml_collections config: ``MeshConfig``'s fields,
    ``num_devices`` and ``device_memory_gb``) over the first ``num_devices`` devices (0: all)."""
    settings = config.mesh.to_dict()
    num_devices = settings.pop("num_devices", 0)
    settings.pop("device_memory_gb", None)
    try:
        mesh_config = MeshConfig(**settings)
        devices = jax.devices()
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices}, but there are {len(devices)} devices")
        mesh = make_mesh(mesh_config, devices[:num_devices] if num_devices else None)
    except (TypeError, ValueError) as e:
        raise UserError(f"config.mesh: {e}") from None
    return Placement(mesh, mesh_config.rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of [batch, ...] arrays: the leading axis over the "batch" rule's mesh axes."""
    axes = _as_axes(dict(rules).get("batch"))
    return NamedSharding(mesh, PartitionSpec(axes))


def _rows(sharding: NamedSharding) -> tuple[tuple[str, ...], int]:
    spec = sharding.spec[0] if sharding.spec else None
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return axes, math.prod(sharding.mesh.shape[a] for a in axes)


def batch_devices(sharding: NamedSharding) -> int:
    """How many ways a batch sharding splits the rows (a batch must be a multiple of it)."""
    return _rows(sharding)[1]


def shard_batch(batch: Mapping[str, Any], sharding: NamedSharding) -> dict[str, Any]:
    """Puts this process's rows of a batch (a dict, possibly nested, of [rows, ...] arrays) on
    the mesh, split along the first axis.

    With several processes each one passes its own rows (``nlhf_jax.data`` hands process k rows
    ``[k b, (k + 1) b)`` of every global batch) and `jax.make_array_from_process_local_data`
    assembles the global array; the mesh must give process k's devices exactly those rows.
    Arrays that already have this sharding (global arrays a jitted function returned) are kept
    as they are.

    Raises:
      ValueError: if the global batch is not divisible by the batch axes' device count, or if
        the mesh does not give each process a contiguous block of rows in process order.
    """
    axes, ways = _rows(sharding)

    def one(path, rows):
        if isinstance(rows, jax.Array) and rows.sharding == sharding:
            return rows  # already the global array on the mesh (e.g. a jitted rollout's)
        rows = np.asarray(rows)
        global_rows = rows.shape[0] * jax.process_count()
        if global_rows % ways:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)} has {global_rows} rows in all, not "
                f"divisible by the {ways} devices of mesh axes {axes}"
            )
        if jax.process_count() == 1:
            return jax.device_put(rows, sharding)
        _check_process_rows(sharding, global_rows, rows.shape[0])
        shape = (global_rows, *rows.shape[1:])
        return jax.make_array_from_process_local_data(sharding, rows, shape)

    return jax.tree_util.tree_map_with_path(one, dict(batch))


def _check_process_rows(sharding: NamedSharding, global_rows: int, local_rows: int) -> None:
    held = set()
    for index in sharding.addressable_devices_indices_map((global_rows,)).values():
        held.update(range(*index[0].indices(global_rows)))
    start = jax.process_index() * local_rows
    if held != set(range(start, start + local_rows)):
        raise ValueError(
            f"process {jax.process_index()}'s devices hold batch rows {sorted(held)[:4]}..., not "
            f"[{start}, {start + local_rows}): build the mesh over jax.devices() in process order"
        )


def put(tree: Any, shardings: Any) -> Any:
    """Places host arrays (or single-device ones) into `shardings`, one process or several.

    With one process this is `jax.device_put`. With several, every process holds the same host
    value and copies only its own devices' shards into the global array. Arrays that already
    have their sharding are kept as they are.
    """

    def one(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def on_host() -> contextlib.AbstractContextManager:
    """Builds models eagerly on the host CPU: the same initial values on every backend, and a
    model is placed into its shards afterwards (``put``) instead of landing whole on one
    accelerator first."""
    try:
        return jax.default_device(jax.local_devices(backend="cpu")[0])
    except RuntimeError:  # a process started without the CPU backend
        return contextlib.nullcontext()


def to_host(tree: Any) -> Any:
    """The values of (possibly sharded, possibly multi-process) arrays as host numpy arrays.

    Every process gets the whole value: `process_allgather` across processes, a plain
    `device_get` with one.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def _int_env(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


# Cluster environments `jax.distributed.initialize()` detects by itself, and the variable that
# holds their process count (a job of one process needs no coordinator).
_AUTO_DETECTED = (
    ("SLURM_JOB_ID", "SLURM_NTASKS"),
    ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"),
    ("TPU_WORKER_HOSTNAMES", None),
)


def distributed_init_args(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Keyword arguments for `jax.distributed.initialize`, or None on a single-process job.

    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` name a job explicitly
    (all three or none). Otherwise a SLURM, Open MPI or multi-worker TPU environment returns {}
    so that jax detects the job itself.

    Raises:
      ValueError: on a partial or malformed explicit set of variables.
    """
    env = os.environ if env is None else env
    explicit = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    present = [k for k in explicit if env.get(k)]
    if present:
        missing = [k for k in explicit if k not in present]
        if missing:
            raise ValueError(f"{present} are set but {missing} are not; set all three or none")
        num_processes = _int_env(env, "JAX_NUM_PROCESSES")
        process_id = _int_env(env, "JAX_PROCESS_ID")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"JAX_PROCESS_ID={process_id} not in [0, {num_processes})")
        if num_processes == 1:
            return None
        return dict(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=num_processes,
            process_id=process_id,
        )
    for marker, count_var in _AUTO_DETECTED:
        if marker not in env:
            continue
        if count_var is None:  # TPU: one hostname per worker.
            multi = len(env[marker].split(",")) > 1
        else:
            multi = count_var in env and _int_env(env, count_var) > 1
        if multi:
            return {}
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Starts `jax.distributed` on a multi-process job; a no-op on one host. Call it first.

    Returns:
      True if this call initialized the distributed runtime.
    """
    args = distributed_init_args(env)
    if args is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**args)
    return True


def release_free_memory() -> None:
    """Gives the host heap's freed pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). On the CPU backend a step's temporaries, and a checkpoint's dequantized weights
    once placed, are freed into glibc's heap, which keeps them: SmolLM2-135M's SFT process held
    1.2 GiB of freed memory after a step, on which the next large allocation (a checkpoint
    save's buffers) stacked. Called where such an allocation follows."""
    if os.name != "posix":
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
