"""The one training loop that pretraining and every fine-tuning task share (set up by `run.py`).

- `make_train_step(loss_fn, …)`: a pure `train_step(state, batch) -> (state, metrics)` with gradient
  accumulation (one `lax.scan` over micro-batches) and the non-finite skip (`optim.skip_nonfinite`);
  `jit_train_step` jits one with the state's and batch's shardings and donation.
- `fit`: resume from the newest checkpoint that restores (damaged ones are set aside), step, read
  metrics one step late, stop on a non-finite streak, save, evaluate every `eval_every`, stop where
  every host agrees (preemption.py). Metrics are `train/<name>` and the evaluator's `eval/…`.

A task brings a loss, a head and an evaluator (`run.Job`); it never copies the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from etils import epath
from flax.training import train_state

from albert_jax import errors, optim
from albert_jax import workdir as workdir_lib
from albert_jax.checkpoint import Checkpointer
from albert_jax.training import preemption

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state; apply_fn and tx static)."""


# --- state -----------------------------------------------------------------------------------------


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete state, the target for a checkpoint restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


# --- the step --------------------------------------------------------------------------------------

# loss_fn(params, apply_fn, batch, rng, norm) -> (loss, stats): `norm` comes from norm_fn(whole batch),
# so micro-batch losses add up to exactly the whole batch's loss; `stats` are sums over rows.
LossFn = Callable[[Any, Callable, Batch, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]
StepFn = Callable[["TrainState", Batch], tuple["TrainState", dict[str, jax.Array]]]


def split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B/num, ...], taking every num-th row so each micro-batch spans all devices."""

    def split(x):
        if x.shape[0] % num:
            raise errors.ConfigError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num}")
        return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: LossFn,
    norm_fn: Callable[[Batch], Any],
    summarise: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
    *,
    seed: int,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
) -> StepFn:
    """A pure `train_step(state, batch) -> (state, metrics)`, to be jitted with donation.

    Dropout's key is derived from (seed, step): no RNG lives in the state, so resume is exact. The
    state's optimizer must be wrapped in `optim.skip_nonfinite` (see `make_tx`).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        norm = norm_fn(batch)
        if grad_accum_steps == 1:
            (_, stats), grads = grad_fn(state.params, state.apply_fn, batch, rng, norm)
        else:

            def micro_step(grads, xs):
                micro, i = xs
                (_, stats), g = grad_fn(state.params, state.apply_fn, micro, jax.random.fold_in(rng, i), norm)
                return jax.tree.map(jnp.add, grads, g), stats

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            micro = split_microbatches(batch, grad_accum_steps)
            grads, stats = jax.lax.scan(micro_step, zeros, (micro, jnp.arange(grad_accum_steps)))
            stats = jax.tree.map(jnp.sum, stats)
        new_state = state.apply_gradients(grads=grads)
        metrics = summarise(stats)
        finite = new_state.opt_state  # optim.skip_nonfinite's state
        metrics.update(
            grad_norm=optax.tree.norm(grads),
            learning_rate=optim.current_learning_rate(schedule, state.opt_state),  # the rate this update used
            nonfinite_streak=finite.notfinite_count,
            nonfinite_total=finite.total_notfinite,
        )
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: StepFn,
    state_sharding: Any,
    data_sharding: Any,
    sequence_keys: tuple[str, ...] = (),
    max_length: int = 0,
) -> StepFn:
    """A `make_train_step` step, jitted with the state's and batch's shardings and the state donated;
    with `sequence_keys`, traced once for every length of those inputs (`OverLengths`)."""
    return jit_over_lengths(
        train_step,
        sequence_keys,
        max_length,
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )


def jit_over_lengths(
    fn: Callable[..., Any], sequence_keys: tuple[str, ...] = (), max_length: int = 0, **jit_kwargs: Any
) -> Callable[..., Any]:
    """`jax.jit(fn, **jit_kwargs)`; with `sequence_keys`, traced once for every length (`OverLengths`)."""
    if sequence_keys:
        return OverLengths(fn, sequence_keys, max_length, **jit_kwargs)
    return jax.jit(fn, **jit_kwargs)


class OverLengths:
    """`jax.jit(fn, ...)` traced once for every length of the batch's last axis (fine-tuning's length
    buckets), where jit traces and lowers it again for each new length (about 0.3 s a length, inside the
    loop, even when the persistent cache holds the executable). The batch is `fn`'s last argument.

    The first call exports `fn` with a symbolic length (`jax.export`, `1 <= length <= max_length`) on the
    batch keys in `sequence_keys`; each new length then only specialises that module and compiles (or
    loads) it. A function that cannot be traced symbolically (e.g. a kernel that needs static shapes) is
    traced per length, as jit does; the numbers are the same either way.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        sequence_keys: tuple[str, ...],
        max_length: int,
        **jit_kwargs: Any,  # in_shardings, out_shardings, donate_argnums: as jax.jit takes them
    ):
        self._jit_kwargs = jit_kwargs
        self._jitted = jax.jit(fn, **jit_kwargs)
        self._keys, self._max_length = frozenset(sequence_keys), max_length
        self._fn: Callable[..., Any] | None = None

    def _export(self, *args: Any) -> Callable[..., Any]:
        (length,) = jax.export.symbolic_shape("length", constraints=(f"length <= {self._max_length}",))

        def spec(x, symbolic: bool = False):
            shape = (*x.shape[:-1], length) if symbolic else x.shape
            return jax.ShapeDtypeStruct(shape, x.dtype, sharding=x.sharding)

        *rest, batch = args
        abstract_batch = {k: spec(v, k in self._keys and v.ndim > 1) for k, v in batch.items()}
        try:
            exported = jax.export.export(self._jitted)(*jax.tree.map(spec, rest), abstract_batch)
        except Exception as e:  # noqa: BLE001 - any symbolic-shape limit; jit's own trace reports real errors
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.info("traced for each sequence length (%s)", reason)
            return self._jitted
        return jax.jit(exported.call, **self._jit_kwargs)

    def _get(self, *args: Any) -> Callable[..., Any]:
        if self._fn is None:
            self._fn = self._export(*args)
        return self._fn

    def __call__(self, *args: Any) -> Any:
        return self._get(*args)(*args)

    def lower(self, *args: Any) -> Any:
        return self._get(*args).lower(*args)


# --- metrics, preemption, throughput --------------------------------------------------------------


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
    """`metrics.jsonl` (one JSON object per logged step) and TensorBoard event files, on process 0.

    A gs:// object cannot be appended to: there the whole file is rewritten at each record (the
    records are kept in memory). tensorboardX writes gs:// event files itself (google-cloud-storage).
    """

    def __init__(self, workdir: workdir_lib.PathLike, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = workdir_lib.path(workdir, workdir_lib.METRICS)
        self._tb = None
        self._lines: list[str] | None = None  # gs://: every record so far
        if not self.enabled:
            return
        kept = _truncate_jsonl(self.path, resume_step)
        if workdir_lib.is_url(workdir):
            self._lines = kept
        from tensorboardX import SummaryWriter  # Writes TensorBoard events without TensorFlow.

        self._tb = SummaryWriter(os.fspath(workdir_lib.path(workdir, "tensorboard")))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}{k}": _to_py(v) for k, v in metrics.items()}}
        line = json.dumps(record) + "\n"
        try:
            if self._lines is None:
                with open(self.path, "a") as f:
                    f.write(line)
            else:
                self._lines.append(line)
                workdir_lib.write_file(self.path, "".join(self._lines))
        except OSError as e:
            raise errors.StorageError(e.errno, f"writing {self.path} failed: {e.strerror or e}") from e
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_py(v: Any) -> Any:
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()


def _truncate_jsonl(path: epath.Path, resume_step: int) -> list[str]:
    """Keep the records up to the resumed step (a killed run logged steps that the resumed run redoes),
    dropping lines a crash cut short; the file is replaced whole if anything goes. Returns the lines kept."""
    records = workdir_lib.read_jsonl(path)
    if not records and not path.exists():
        return []
    keep = [json.dumps(r) + "\n" for r in records if r.get("step", 0) <= resume_step]
    if "".join(keep) != workdir_lib.read_text(path):
        workdir_lib.write_file(path, "".join(keep))
    return keep


def format_progress(step: int, total: int, loss: float, tokens_per_sec: float, eta_seconds: float) -> str:
    """One log-file line: `step 120/600 loss 5.432 tokens/s 12345 eta 3m20s`."""
    return f"step {step}/{total} loss {loss:.3f} tokens/s {tokens_per_sec:.0f} eta {_duration(eta_seconds)}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds)) if math.isfinite(seconds) else 0
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """The loop's console view on process 0: tqdm's bar in a terminal; when the stream is not a terminal
    (a log file, a pipe) one `format_progress` line per logged step instead, since a redrawn bar turns
    into one long line of carriage returns there. `enabled=False` shows nothing."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, stream: Any = None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.initial, self.started = total, initial, time.perf_counter()
        self.plain = enabled and not getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm.tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not enabled or self.plain,
            dynamic_ncols=True,
            file=self.stream,
        )

    def update(self) -> None:
        self.bar.update(1)

    def logged(self, step: int, metrics: dict[str, float]) -> None:
        """Shows one logged step's loss and throughput; plain lines add the time left at the average
        pace of this session (evaluations and checkpoints included)."""
        if self.plain:
            done = max(step - self.initial, 1)
            eta = (time.perf_counter() - self.started) / done * (self.total - step)
            line = format_progress(step, self.total, metrics["loss"], metrics["tokens_per_sec"], eta)
            print(line, file=self.stream, flush=True)
        else:
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_sec']:.0f}")

    def close(self) -> None:
        self.bar.close()


class Throughput:
    """Wall-clock rates over the interval between two log points."""

    def __init__(self):
        self._t = time.perf_counter()
        self._steps = 0
        self._tokens = 0

    def tick(self, tokens: int) -> None:
        self._steps += 1
        self._tokens += tokens

    def rates(self, flops_per_step: float | None) -> dict[str, float]:
        now = time.perf_counter()
        elapsed, steps = max(now - self._t, 1e-9), max(self._steps, 1)
        out = {"steps_per_sec": steps / elapsed, "tokens_per_sec": self._tokens / elapsed}
        if flops_per_step:
            out["model_tflops_per_sec"] = steps * flops_per_step / elapsed / 1e12
        self._t, self._steps, self._tokens = now, 0, 0
        return out


# --- the loop --------------------------------------------------------------------------------------


@dataclasses.dataclass
class FitResult:
    state: TrainState
    step: int
    preempted: bool
    last_eval: dict[str, float]  # the metrics of the final evaluation ({} when preempted)


def fit(
    config: ml_collections.ConfigDict,
    *,
    workdir: str,
    state: TrainState,
    step_fn: StepFn,
    train_iter: Iterator[dict[str, np.ndarray]],
    make_batch: Callable[[dict[str, np.ndarray]], Batch],
    evaluate: Callable[[TrainState, int], dict[str, float]] | None = None,
    desc: str = "train",
) -> FitResult:
    """Train `state` to `config.total_steps`, resuming from WORKDIR/checkpoints.

    Uses the config keys every run has: total_steps, log_every, eval_every, checkpoint_every,
    checkpoint_every_minutes, keep_checkpoints, async_checkpointing, max_consecutive_nonfinite,
    progress_bar. `train_iter` is a checkpointable grain iterator of process-local batches;
    `make_batch` turns one into global device arrays. `evaluate` (state, step) -> metrics runs every
    `eval_every` steps and once at the end, unless the last step was just evaluated; its metrics go to
    metrics.jsonl as they are named. A stop signal on any host ends the loop at a step every host
    agrees on (`preemption.StepAgreement`), saved there. With `progress_bar`, process 0 shows tqdm's
    bar when stderr is a terminal, else a `format_progress` line every `log_every` steps.
    """
    ckpt = Checkpointer(
        workdir_lib.path(workdir, workdir_lib.CHECKPOINTS),
        config.checkpoint_every,
        config.keep_checkpoints,
        async_save=config.async_checkpointing,
        cleanup_tmp=True,
    )
    sink: MetricsSink | None = None
    agreement = preemption.StepAgreement(config.get("checkpoint_every_minutes", 0.0))
    last_eval: dict[str, float] = {}
    stopped = ok = False
    try:
        restored = ckpt.restore_latest(abstract_like(state), train_iter)
        if restored is not None:
            state = restored[0]
            log.info("resumed from step %d", int(state.step))
        start = int(state.step)
        sink = MetricsSink(workdir, resume_step=start)
        evaluated_at = None
        step = start
        batch = make_batch(next(train_iter)) if start < config.total_steps else None
        flops = compiled_flops(step_fn.lower(state, batch).compile()) if batch is not None else None
        throughput = Throughput()
        progress = Progress(
            config.total_steps, start, desc, enabled=jax.process_index() == 0 and config.progress_bar
        )
        pending = None
        last_saved = start
        streak = 0  # non-finite steps in a row, as of the last metrics read
        while step < config.total_steps:
            state, metrics = step_fn(state, batch)
            step += 1
            throughput.tick(int(np.prod(batch["input_ids"].shape)))
            # The host reads step t-1's metrics only once step t is dispatched: the device never waits.
            # This read also bounds how far hosts drift apart, which the agreement relies on.
            if pending is not None:
                streak = _report(pending, sink, progress, config)
            pending = (step, metrics, throughput, flops)
            decision = agreement.poll(step)
            # The iterator has yielded exactly `step` batches here: every save records that position.
            # During a non-finite streak, keep the older checkpoints rather than rotating them out.
            force = decision.save or (decision.stop and last_saved != step)
            if (streak == 0 or decision.stop) and ckpt.save(step, state, train_iter, force=force):
                last_saved = step
                agreement.saved()
            if evaluate is not None and config.eval_every and step % config.eval_every == 0:
                last_eval, evaluated_at = evaluate(state, step), step
                sink.write(step, last_eval, prefix=workdir_lib.EVAL_PREFIX)
            if decision.stop:
                log.warning(
                    "stop requested (%s): saved step %d on every process, exiting", agreement.reason, step
                )
                stopped = True
                break
            batch = make_batch(next(train_iter)) if step < config.total_steps else None
            progress.update()
        if pending is not None:
            _report(pending, sink, progress, config)
        progress.close()
        if not stopped:
            if last_saved != step:
                ckpt.save(step, state, train_iter, force=True)
            if evaluate is not None and evaluated_at != step:
                last_eval = evaluate(state, step)
                sink.write(step, last_eval, prefix=workdir_lib.EVAL_PREFIX)
        ok = True
    finally:
        if sink is not None:
            sink.close()
        ckpt.close(raise_errors=ok)  # a failing run reports its own error; a failed save is only logged
        agreement.close()
    return FitResult(state, step, stopped, {} if stopped else last_eval)


def _report(pending, sink: MetricsSink, progress: Progress, config) -> int:
    """Logs one step's metrics (every `log_every`); returns its non-finite streak, raising past the limit."""
    step, metrics, throughput, flops = pending
    # Only the streak is read every step; the other metrics cross to the host when they are logged.
    streak = int(jax.device_get(metrics["nonfinite_streak"]))
    if step % config.log_every == 0 or step == config.total_steps or streak:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics.update(throughput.rates(flops))
        sink.write(step, metrics, prefix=workdir_lib.TRAIN_PREFIX)
        progress.logged(step, metrics)
    if streak:
        log.warning("step %d: non-finite gradients, update skipped (%d in a row)", step, streak)
    if streak >= config.max_consecutive_nonfinite:
        raise errors.TrainingError(
            f"{streak} consecutive steps had non-finite gradients (last at step {step}); stopping. "
            f"The checkpoints in the workdir hold the last good state; lower learning_rate or check the data."
        )
    return streak
