"""Tests of `nlhf_jax.parallel` on the 8 fake CPU devices of conftest.py.

Every sharded computation is blocked on before the next is dispatched: ENVIRONMENT.md, fake CPU
devices deadlock in an all-reduce rendezvous when sharded steps with collectives run back to back.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from nlhf_jax import parallel
from nlhf_jax.models import Transformer, forward_full, get_preset

TOY = get_preset("toy")
LR = 1e-3
# Sharded and single-device runs do the same float32 arithmetic with reductions split across
# devices and summed in a different order: observed differences are ~5e-7 of each array's largest
# magnitude (logits). 1e-5 of that scale leaves 20x headroom and is far below what a
# wrong sharding (a missing all-reduce: a factor of 2 in a partial sum) would give.
REL_TOL = 1e-5


def _assert_close_to_scale(actual, expected, rel=REL_TOL, what=""):
    expected = np.asarray(expected)
    scale = max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=rel * scale, err_msg=what)


def _mesh_222():
    config = parallel.MeshConfig(shape=(2, 2, 2))
    return parallel.make_mesh(config), config.rules


# ---------------------------------------------------------------------------- mesh config


def test_mesh_config_fills_in_remaining_devices():
    assert parallel.make_mesh(parallel.MeshConfig()).devices.shape == (8, 1, 1)
    mesh = parallel.make_mesh(parallel.MeshConfig(shape=(-1, 2, 2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(3, 1, 1)), r"mesh shape \(3, 1, 1\) .* does not fit 8 devices"),
        (dict(shape=(-1, 3, 1)), r"mesh shape \(-1, 3, 1\) .* does not fit 8 devices"),
        (dict(shape=(4, 4, 1)), r"does not fit 8 devices"),
    ],
)
def test_mesh_shape_not_matching_devices_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parallel.make_mesh(parallel.MeshConfig(**kwargs))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(shape=(-1, -1, 1)), "at most one -1"),
        (dict(shape=(0, 1, 1)), "must be positive"),
        (dict(shape=(-1, 1)), "same length"),
        (dict(axes=("data", "data", "tensor")), "distinct names"),
        (dict(rules=(("embed", "model"),)), r"rule 'embed' -> model names unknown mesh axes"),
    ],
)
def test_malformed_mesh_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parallel.MeshConfig(**kwargs)


def test_mesh_config_from_ml_collections_is_hashable_and_equal():
    rules = [
        [name, list(axes) if isinstance(axes, tuple) else axes]
        for name, axes in parallel.DEFAULT_RULES
    ]
    cfg = ml_collections.ConfigDict(dict(axes=["data", "fsdp", "tensor"], shape=[-1, 1, 1]))
    cfg.rules = rules
    config = parallel.MeshConfig(**cfg)
    assert config == parallel.MeshConfig()
    hash(config)


# ---------------------------------------------------------------------------- rules


def test_logical_to_spec_falls_back_to_replication_when_not_divisible():
    mesh, rules = _mesh_222()
    to_spec = parallel.logical_to_spec
    assert to_spec(("embed", "kv_heads", "head_dim"), (128, 2, 32), mesh, rules) == P(
        "fsdp", "tensor", None
    )
    assert to_spec(("vocab", "embed"), (17, 128), mesh, rules) == P(None, "fsdp")
    assert to_spec(("batch", "embed"), (8, 128), mesh, rules) == P(("data", "fsdp"), None)
    assert to_spec(("batch", "embed"), (6, 128), mesh, rules) == P(None, "fsdp")
    # A mesh axis shards at most one dimension of an array: the second use is replicated.
    assert to_spec(("heads", "mlp"), (4, 8), mesh, rules) == P("tensor", None)
    with pytest.raises(KeyError, match="'experts' has no rule"):
        to_spec(("experts",), (4,), mesh, rules)


def test_shard_batch_splits_rows_and_rejects_indivisible_batches():
    mesh, rules = _mesh_222()
    sharding = parallel.batch_sharding(mesh, rules)
    batch = parallel.shard_batch({"tokens": np.arange(16).reshape(8, 2)}, sharding)
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"))
    assert batch["tokens"].addressable_shards[0].data.shape == (2, 2)
    with pytest.raises(ValueError, match=r"batch\['tokens'\] has 6 rows .* 4 devices"):
        parallel.shard_batch({"tokens": np.zeros((6, 2))}, sharding)


# ---------------------------------------------------------------------------- placement


def _logits(graphdef, params, batch):
    return jax.jit(forward_full, static_argnums=0)(graphdef, params, batch["tokens"], batch["mask"])


@pytest.fixture(scope="module")
def toy_placed():
    """The toy model and its Adam state placed on a (2, 2, 2) mesh by the rules, and one forward
    of each copy. (Sharded training steps against one device: tests/train/test_sharded.py.)"""
    graphdef, params = nnx.split(Transformer(TOY, rngs=nnx.Rngs(0)))
    tx = optax.adamw(LR)
    rng = np.random.default_rng(0)
    mask_bt = np.ones((8, 16), bool)
    mask_bt[1, :5] = False  # One left-padded row, so the mask takes part.
    batch = {"tokens": rng.integers(0, TOY.vocab_size, (8, 16)).astype(np.int32), "mask": mask_bt}
    mesh, rules = _mesh_222()
    params_sh = parallel.logical_shardings(params, mesh, rules)
    placed = parallel.put(params, params_sh)
    opt_sh = parallel.logical_shardings(jax.eval_shape(tx.init, params), mesh, rules)
    opt_state = jax.block_until_ready(jax.jit(tx.init, out_shardings=opt_sh)(placed))
    device_batch = parallel.shard_batch(batch, parallel.batch_sharding(mesh, rules))
    return {
        "params": placed,
        "opt_state": opt_state,
        "batch": device_batch,
        "logits": jax.block_until_ready(_logits(graphdef, placed, device_batch)),
        "single_logits": _logits(graphdef, params, batch),
    }


def test_params_and_optimizer_state_are_sharded_by_the_rules(toy_placed):
    placed = toy_placed
    adam = placed["opt_state"][0]
    for params in (placed["params"], adam.mu, adam.nu):
        attn, mlp = params["layers"]["attn"], params["layers"]["mlp"]
        # q_proj [layers, embed, heads, head_dim]; kv_heads=2 divides tensor=2 so it shards too.
        assert attn["q_proj"].sharding.spec == P(None, "fsdp", "tensor", None)
        assert attn["k_proj"].sharding.spec == P(None, "fsdp", "tensor", None)
        assert attn["o_proj"].sharding.spec == P(None, "tensor", None, "fsdp")
        assert mlp["down_proj"].sharding.spec == P(None, "tensor", "fsdp")
        assert params["embed"].sharding.spec == P("tensor", "fsdp")
        assert params["final_norm"]["scale"].sharding.spec == P("fsdp")
        # [2, 128, 4, 32] over fsdp=2, tensor=2: each device holds a quarter.
        assert attn["q_proj"].addressable_shards[0].data.shape == (2, 64, 2, 32)
    assert adam.count.sharding.spec == P()
    assert placed["batch"]["tokens"].sharding.spec == P(("data", "fsdp"))


def test_sharded_forward_matches_single_device(toy_placed):
    _assert_close_to_scale(toy_placed["logits"], toy_placed["single_logits"], what="logits")


# ---------------------------------------------------------------------------- distributed


def test_no_distributed_init_on_one_host(monkeypatch):
    def fail(**kwargs):
        raise AssertionError(f"initialize called with {kwargs}")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    assert parallel.maybe_initialize_distributed({}) is False
    assert (
        parallel.maybe_initialize_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is False
    )
    one = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    assert parallel.maybe_initialize_distributed(one) is False


def test_distributed_env_parsing(monkeypatch):
    env = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    expected = dict(coordinator_address="host0:1234", num_processes=4, process_id=2)
    assert parallel.distributed_init_args(env) == expected
    assert parallel.distributed_init_args({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == {}
    assert parallel.distributed_init_args({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert parallel.distributed_init_args({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    with pytest.raises(ValueError, match=r"\['JAX_PROCESS_ID'\] are not"):
        parallel.distributed_init_args({k: v for k, v in env.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='four' is not an integer"):
        parallel.distributed_init_args({**env, "JAX_NUM_PROCESSES": "four"})
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=4 not in \[0, 4\)"):
        parallel.distributed_init_args({**env, "JAX_PROCESS_ID": "4"})

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert parallel.maybe_initialize_distributed(env) is True
    assert calls == [expected]


def test_a_gemma_model_sharded_matches_single_device():
    """Gemma's extra parameters (post norms, q/k norms) take the rules like the others, and its
    local/global layers, soft-caps and scaled embeddings give the single device's logits."""
    gemma = TOY.replace(
        activation="gelu_tanh", norm_offset=1.0, embed_scale=True, post_norms=True, qk_norm=True,
        query_pre_attn_scalar=24, attn_softcap=3.0, final_softcap=5.0, sliding_window=4,
        layer_types=("sliding_attention", "full_attention"), rope_local_theta=100.0,
    )  # fmt: skip
    graphdef, params = nnx.split(Transformer(gemma, rngs=nnx.Rngs(0)))
    mask_bt = np.ones((8, 12), bool)
    mask_bt[1, :5] = False
    tokens = np.random.default_rng(1).integers(0, TOY.vocab_size, (8, 12))
    batch = {"tokens": tokens, "mask": mask_bt}
    mesh, rules = _mesh_222()
    placed = parallel.put(params, parallel.logical_shardings(params, mesh, rules))
    assert placed["layers"]["post_mlp_norm"]["scale"].sharding.spec == P(None, "fsdp")
    device_batch = parallel.shard_batch(batch, parallel.batch_sharding(mesh, rules))
    _assert_close_to_scale(
        _logits(graphdef, placed, device_batch), _logits(graphdef, params, batch), what="gemma"
    )
