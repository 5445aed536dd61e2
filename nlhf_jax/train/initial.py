"""Where a run starts: its optimizer and initial model, from the config.

A model starts from one of three places: a preset (``config.model.preset`` plus overrides), a
Hugging Face checkpoint directory (``config.model.hf_checkpoint``: config.json + safetensors;
the architecture and weights come from there), or an earlier run (``config.init_from``: the SFT
policy of the online methods, or the backbone of a preference/reward model). A text run's
tokenizer is ``config.data.tokenizer``, else the checkpoint's own, else the one the ``init_from``
run kept (``nlhf_jax.sources.tokenizer``).
"""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from nlhf_jax.checkpoint import load_policy
from nlhf_jax.errors import UserError
from nlhf_jax.models import Transformer, TransformerConfig, get_preset
from nlhf_jax.models.config import EXECUTION_FIELDS
from nlhf_jax.models.lora import LoRAConfig
from nlhf_jax.parallel import on_host


def optimizer(config: ml_collections.ConfigDict, rule=None) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, gradient clipping at ``max_grad_norm``.
    ``rule(schedule)``, when given, is the update rule in AdamW's place (a method's own:
    ``nlhf_jax.train.online.Method.optimizer``); it gets the same schedule and clipping, and
    no weight decay, so a nonzero ``optimizer.weight_decay`` is refused with it."""
    opt = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, opt.warmup_steps, max(config.num_steps, opt.warmup_steps + 1)
    )
    if rule is not None and opt.weight_decay:
        raise UserError(
            f"config.optimizer.weight_decay={opt.weight_decay}: method {config.method!r} "
            "updates with its own rule, which has no weight decay; set it to 0"
        )
    inner = optax.adamw(schedule, weight_decay=opt.weight_decay) if rule is None else rule(schedule)
    return optax.chain(optax.clip_by_global_norm(opt.max_grad_norm), inner)


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
    """The preset's architecture with ``config.model``'s overrides (not a checkpoint's)."""
    skip = ("preset", "hf_checkpoint")
    # An empty string keeps the preset's value (dtype, param_dtype, attention, remat).
    overrides = {k: v for k, v in config.model.items() if k not in skip and v != ""}
    return get_preset(config.model.preset, **{"vocab_size": vocab_size, **overrides})


def checkpoint_model(config: ml_collections.ConfigDict) -> Transformer | None:
    """The transformer of ``config.model.hf_checkpoint`` (weights included), or None.

    ``config.model.dtype`` / ``param_dtype``, when set, choose its compute and parameter dtypes
    (float32 otherwise); ``attention`` and ``remat`` apply as to a preset.
    """
    if not config.model.hf_checkpoint:
        return None
    from nlhf_jax.models import hf

    m = config.model
    dtypes = {k: m.get(k) or "float32" for k in ("dtype", "param_dtype")}
    with on_host():
        model = hf.load_pretrained(m.hf_checkpoint, **dtypes)
    return with_execution(model, config)


def execution(config: ml_collections.ConfigDict, compute_dtype: bool = False) -> dict:
    """The ``config.model`` fields set to change how an existing model computes (attention,
    remat, and with ``compute_dtype`` the compute dtype), for a model that comes from a
    checkpoint or an earlier run."""
    fields = (*EXECUTION_FIELDS, "dtype") if compute_dtype else EXECUTION_FIELDS
    return {k: config.model[k] for k in fields if config.model.get(k)}


def with_execution(model, config: ml_collections.ConfigDict):
    """``model`` computed as ``config.model`` asks (attention kernel, rematerialization):
    fields that change how, not what, so a checkpoint's weights stay valid."""
    changes = execution(config)
    if not changes or all(getattr(model.config, k) == v for k, v in changes.items()):
        return model
    return nnx.merge(graphdef_of(model.config.replace(**changes)), nnx.state(model))


def lora_config(config: ml_collections.ConfigDict) -> LoRAConfig | None:
    """``config.lora`` as a ``LoRAConfig`` (None when its rank is 0: full fine-tuning)."""
    c = config.get("lora")
    if c is None or not c.rank:
        return None
    targets = tuple(t.strip() for t in c.targets.split(",") if t.strip())
    try:
        return LoRAConfig(rank=c.rank, alpha=c.alpha, targets=targets)
    except ValueError as e:
        raise UserError(f"config.lora: {e}") from None


def graphdef_of(cfg: TransformerConfig) -> nnx.GraphDef:
    """The graph definition of a transformer of ``cfg`` (traced abstractly: no weights made)."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[0]


def fresh_policy(cfg: TransformerConfig, seed: int) -> Transformer:
    """A randomly initialized policy of ``cfg`` (built on the host, see ``on_host``)."""
    with on_host():
        return Transformer(cfg, rngs=nnx.Rngs(seed))


def backbone_state(config: ml_collections.ConfigDict) -> tuple[TransformerConfig, nnx.State]:
    """The pretrained backbone of a preference or reward model, if the config names one: the
    HF checkpoint's transformer or the ``init_from`` run's policy. ``(None, None)`` if not."""
    model = checkpoint_model(config)
    if model is not None:
        return model.config, nnx.state(model)
    if config.get("init_from"):
        run = load_policy(config.init_from, "init_from")
        return run.config.replace(**execution(config)), run.params
    return None, None
