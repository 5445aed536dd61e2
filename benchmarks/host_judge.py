"""What a host judge's round trip costs per Nash-MD-PG step, against the fused step (random
weights, no download).

    python benchmarks/host_judge.py [--preset toy] [--batch 8] [--prompt 16] [--new 16] \
        [--repeats 5] [--out runs/benchmarks/host_judge.json]

The online trainer's own step (``nlhf_jax.train.online.compile_online``), one device, the same
policy, reference and judge (a preference model of the policy's shape with a random head), three
ways:

1. fused: the judge inside the one jitted step;
2. split: the same judge answered on the host (``nlhf_jax.train.split``): the jitted rollout,
   the judge jitted on its own and called with NumPy arrays, the jitted update. Its excess over
   fused is the split itself: the pair to the host and the answers back, three dispatches
   instead of one, nothing overlapped;
3. split, Python judge: a host judge without a model (it prefers the longer response, from the
   masks), the split's floor.

Each figure is the median of ``--repeats`` steps after an untimed first (compiling) one; the
split's rows also give the median seconds spent in the judge (``time/judge_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from flax import nnx

from nlhf_jax import provenance
from nlhf_jax.judges import ModelJudge
from nlhf_jax.models import PreferenceModel, Transformer, get_preset
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.train import online
from nlhf_jax.train.defaults import base_config
from nlhf_jax.train.online import compile_online
from nlhf_jax.train.online.trainer import policy_context


class OnTheHost:
    """A jittable judge answered on the host: NumPy arrays in, a NumPy array out."""

    jittable = False

    def __init__(self, judge):
        self.judge, self._fn = judge, jax.jit(lambda judge, *arrays: judge(*arrays))

    def __call__(self, *arrays):
        return np.asarray(self._fn(self.judge, *arrays), np.float64)


class PreferLonger:
    """A host judge of plain Python: the longer response wins with probability 0.8."""

    jittable = False

    def __call__(self, prompt, prompt_mask, a, a_mask, b, b_mask):
        la, lb = np.asarray(a_mask).sum(-1), np.asarray(b_mask).sum(-1)
        return np.where(la > lb, 0.8, np.where(la < lb, 0.2, 0.5))


def time_steps(judge, config, graphdef, state, args) -> dict:
    run = base_config("nash_md")
    run.mesh.num_devices = 1
    method = online.get("nash_md")
    settings = SamplingConfig(max_new_tokens=args.new)
    ctx = policy_context(run, config, graphdef, state, settings, method.hyperparameters(run), judge)
    compiled = compile_online(run, method, ctx)
    prompt = jax.random.randint(jax.random.key(0), (args.batch, args.prompt), 3, config.vocab_size)
    batch = {"prompt": np.asarray(prompt), "prompt_mask": np.ones(prompt.shape, bool)}
    train_state = compiled.init_state()
    start = time.perf_counter()
    train_state, metrics = compiled.step(train_state, batch)  # compiles; the state is donated
    jax.block_until_ready(metrics)
    first, times, judge_s = time.perf_counter() - start, [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        train_state, metrics = compiled.step(train_state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
        judge_s.append(float(metrics.get("time/judge_s", 0.0)))
    return {
        "step_s": statistics.median(times),
        "first_step_s": first,
        "judge_s": statistics.median(judge_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/benchmarks/host_judge.json", help="JSON file")
    args = parser.parse_args()

    config = get_preset(args.preset)
    graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    judge_model = PreferenceModel(config, sep_id=1, rngs=nnx.Rngs(2))
    judge_model.head.w.set_value(jax.random.normal(jax.random.key(3), (config.d_model,)))
    judge = ModelJudge(*nnx.split(judge_model))
    print(
        f"device: {jax.devices()[0].device_kind}  preset: {args.preset}  batch {args.batch}, "
        f"prompt {args.prompt}, {args.new} new tokens; median of {args.repeats} steps"
    )
    rows = {}
    for name, j in (
        ("fused", judge),
        ("split", OnTheHost(judge)),
        ("split, Python judge", PreferLonger()),
    ):
        rows[name] = time_steps(j, config, graphdef, state, args)
        r = rows[name]
        print(
            f"{name:<22} step {1e3 * r['step_s']:8.1f} ms   in the judge {1e3 * r['judge_s']:7.1f}"
            f" ms   (first step {r['first_step_s']:.1f} s)",
            flush=True,
        )
    extra = rows["split"]["step_s"] - rows["fused"]["step_s"]
    print(f"the split's round trip, same judge: {1e3 * extra:+.1f} ms per step")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        result = {"settings": vars(args), "steps": rows, "environment": provenance.environment()}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=lambda x: np.asarray(x).tolist())
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
