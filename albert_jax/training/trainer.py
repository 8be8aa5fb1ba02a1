"""Pieces every training run shares: sharded state creation, the metrics sinks, preemption, FLOPs.

The task modules (`training/pretrain.py`, `training/finetune.py`) own their loss and `train_step`;
this module owns what is the same for all of them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from albert_jax import sharding as sharding_lib


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state; apply_fn and tx static)."""


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); the message says what was kept."""


def create_train_state(
    init_params_fn: Callable[[jax.Array], Any],
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding_lib.Rules,
    seed: int,
) -> tuple[TrainState, Any]:
    """`eval_shape → shardings → jit(init, out_shardings)`: the state is born sharded, never gathered.

    `init_params_fn(rng)` returns params boxed with logical axis names; the returned state holds plain
    arrays, and the second value is the state's sharding tree (for restore and for jit).
    """

    def boxed_state(rng):
        return TrainState.create(apply_fn=apply_fn, params=init_params_fn(rng), tx=tx)

    abstract = jax.eval_shape(boxed_state, jax.random.key(seed))
    state_sharding = sharding_lib.logical_shardings(abstract, mesh, rules)
    init = jax.jit(lambda rng: nn.unbox(boxed_state(rng)), out_shardings=state_sharding)
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        state = init(jax.random.key(seed))
    return state, state_sharding


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete state, the target for a checkpoint restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs XLA counted for one call of a compiled function (None where the backend does not say)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Some backends do not implement cost analysis.
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class MetricsSink:
    """`metrics.jsonl` (one JSON object per logged step) and TensorBoard event files, on process 0."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        _truncate_jsonl(self.path, resume_step)
        from tensorboardX import SummaryWriter  # Writes TensorBoard events without TensorFlow.

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}{k}": _to_py(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_py(v: Any) -> Any:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _truncate_jsonl(path: str, resume_step: int) -> None:
    """Drop records past the resumed step: a killed run logged steps that the resumed run redoes."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= resume_step]
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


class Preemption:
    """Turns SIGTERM (and SIGINT) into a flag the loop polls, so it can save and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Throughput:
    """Wall-clock rates over the interval between two log points."""

    def __init__(self):
        self._t = time.perf_counter()
        self._steps = 0

    def tick(self) -> None:
        self._steps += 1

    def rates(self, tokens_per_step: float, flops_per_step: float | None) -> dict[str, float]:
        now = time.perf_counter()
        elapsed, steps = max(now - self._t, 1e-9), max(self._steps, 1)
        self._t, self._steps = now, 0
        out = {"steps_per_sec": steps / elapsed, "tokens_per_sec": steps * tokens_per_step / elapsed}
        if flops_per_step:
            out["model_tflops_per_sec"] = steps * flops_per_step / elapsed / 1e12
        return out


def split_microbatches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """[B, ...] -> [num, B/num, ...], taking every num-th row so each micro-batch spans all devices."""

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num}")
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)
