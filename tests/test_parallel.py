"""Tests of `nlhf_jax.parallel` on the 8 fake CPU devices of conftest.py.

Every sharded computation is blocked on before the next is dispatched: ENVIRONMENT.md, fake CPU
devices deadlock in an all-reduce rendezvous when sharded steps with collectives run back to back.
"""

from __future__ import annotations

import re

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
# magnitude (logits, adam moments). 1e-5 of that scale leaves 20x headroom and is far below what a
# wrong sharding (a missing all-reduce: a factor of 2 in a partial sum) would give.
REL_TOL = 1e-5
# Adam's first update is lr * g / (|g| + eps), i.e. about lr * sign(g): an element whose gradient
# is at rounding-noise level can move by any fraction of lr. Observed 2.6e-5 = 0.026 * LR; params
# are compared to 0.1 * LR while every element moves by about LR, so a skipped or doubled update
# still fails. The gradients themselves are checked tightly through adam's mu.
PARAM_ATOL = 0.1 * LR


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


# ---------------------------------------------------------------------------- sharded training


def _next_token_step(graphdef, tx):
    def step(state, batch, rng):
        del rng  # Part of the step signature; this loss is deterministic.
        params, opt_state = state

        def loss_fn(params):
            logits_btv = forward_full(graphdef, params, batch["tokens"], batch["mask"])
            ce_bt = optax.softmax_cross_entropy_with_integer_labels(
                logits_btv[:, :-1], batch["tokens"][:, 1:]
            )
            weights_bt = batch["mask"][:, 1:]
            return (ce_bt * weights_bt).sum() / weights_bt.sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return step


def _logits(graphdef, params, batch):
    return jax.jit(forward_full, static_argnums=0)(graphdef, params, batch["tokens"], batch["mask"])


@pytest.fixture(scope="module")
def toy_runs():
    """One forward and one adamw step of the toy model, on one device and on a (2, 2, 2) mesh."""
    make_model = lambda rngs: Transformer(TOY, rngs=rngs)
    tx = optax.adamw(LR)
    rng = np.random.default_rng(0)
    mask_bt = np.ones((8, 16), bool)
    mask_bt[1, :5] = False  # One left-padded row, so the mask takes part.
    batch = {"tokens": rng.integers(0, TOY.vocab_size, (8, 16)).astype(np.int32), "mask": mask_bt}
    key = jax.random.key(0)

    graphdef, single_params = nnx.split(jax.jit(lambda k: make_model(nnx.Rngs(k)))(key))
    step = _next_token_step(graphdef, tx)
    single = {"params": single_params}
    single["logits"] = _logits(graphdef, single_params, batch)
    (params, opt_state), metrics = jax.jit(step)(
        (single_params, tx.init(single_params)), batch, key
    )
    single.update(step_params=params, opt_state=opt_state, loss=metrics["loss"])

    mesh, rules = _mesh_222()
    _, params, params_sh = parallel.init_sharded_model(make_model, key, mesh, rules)
    opt_state, opt_sh = parallel.init_sharded_opt_state(tx, params, mesh, rules)
    batch_sh = parallel.batch_sharding(mesh, rules)
    device_batch = parallel.shard_batch(batch, batch_sh)
    sharded = {"params": params, "opt_state_init": opt_state, "batch": device_batch}
    sharded["params_init"] = jax.tree.map(np.asarray, params)  # The step donates `params`.
    logits = _logits(graphdef, params, device_batch)
    sharded["logits"] = jax.block_until_ready(logits)
    train_step = parallel.jit_sharded(step, (params_sh, opt_sh), batch_sh)
    (params, opt_state), metrics = jax.block_until_ready(
        train_step((params, opt_state), device_batch, key)
    )
    sharded.update(step_params=params, opt_state=opt_state, loss=metrics["loss"])
    return single, sharded


def test_sharded_init_is_the_same_model(toy_runs):
    single, sharded = toy_runs
    for a, b in zip(
        jax.tree.leaves(single["params"]), jax.tree.leaves(sharded["params_init"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # Same key, same threefry bits: exactly equal.


def test_params_and_optimizer_state_are_sharded_by_the_rules(toy_runs):
    _, sharded = toy_runs
    for params in (sharded["step_params"], sharded["opt_state"][0].mu, sharded["opt_state"][0].nu):
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
    assert sharded["opt_state"][0].count.sharding.spec == P()
    assert sharded["batch"]["tokens"].sharding.spec == P(("data", "fsdp"))


def test_sharded_forward_matches_single_device(toy_runs):
    single, sharded = toy_runs
    _assert_close_to_scale(sharded["logits"], single["logits"], what="logits")


def test_sharded_adamw_step_matches_single_device(toy_runs):
    single, sharded = toy_runs
    _assert_close_to_scale(sharded["loss"], single["loss"], what="loss")
    for name in ("mu", "nu"):  # mu = 0.1 * grad: checks the gradients tightly.
        leaves = zip(
            jax.tree_util.tree_leaves_with_path(getattr(single["opt_state"][0], name)),
            jax.tree.leaves(getattr(sharded["opt_state"][0], name)),
            strict=True,
        )
        for (path, expected), actual in leaves:
            _assert_close_to_scale(actual, expected, what=f"{name}{jax.tree_util.keystr(path)}")
    leaves = zip(
        jax.tree.leaves(single["params"]),
        jax.tree_util.tree_leaves_with_path(single["step_params"]),
        jax.tree.leaves(sharded["step_params"]),
        strict=True,
    )
    for before, (path, expected), actual in leaves:
        what = f"params{jax.tree_util.keystr(path)}"
        np.testing.assert_allclose(actual, expected, rtol=0, atol=PARAM_ATOL, err_msg=what)
        # Not vacuous: adam moves every element with a nonzero gradient by about LR.
        assert np.abs(np.asarray(expected) - before).mean() > 0.5 * LR, what


def test_1b_init_is_built_in_shards():
    """No buffer of the 1B model's sharded init program is larger than a quarter of a param."""
    config = get_preset("llama-3.2-1b")
    mesh, rules = _mesh_222()
    _, _, init = parallel.sharded_initializer(
        lambda rngs: Transformer(config, rngs=rngs), mesh, rules
    )
    compiled = init.lower(jax.random.key(0)).compile()  # Compiled only, never run.
    abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
    sizes = [x.size for x in jax.tree.leaves(nnx.state(abstract))]
    total_bytes = 2 * sum(sizes)  # bfloat16
    # Data replicates; fsdp x tensor = 4 ways split every big matrix.
    assert compiled.memory_analysis().output_size_in_bytes < 0.26 * total_bytes
    hlo_shapes = re.findall(r"\b(?:bf16|f32|u32|s32)\[([0-9,]+)\]", compiled.as_text())
    largest_buffer = max(np.prod([int(d) for d in s.split(",")]) for s in hlo_shapes)
    assert largest_buffer <= max(sizes) // 4


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
