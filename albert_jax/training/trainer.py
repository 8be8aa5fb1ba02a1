"""The one training loop that pretraining and every fine-tuning task share.

- `create_train_state`: `eval_shape → shardings → jit(init, out_shardings)`, or loaded parameters
  placed straight into those shardings.
- `make_train_step(loss_fn, …)`: a pure `train_step(state, batch) -> (state, metrics)` with gradient
  accumulation (one `lax.scan` over micro-batches) and the non-finite skip (`optim.skip_nonfinite`).
- `claim_workdir` / `prepare_workdir`: one live run per WORKDIR (run_lock.py), and a resume whose
  config changed in ways the checkpoint cannot follow is refused (config_drift.py); both runs call
  them before WORKDIR is written. Claiming also turns on the persistent compilation cache.
- `fit`: resume from the newest checkpoint that restores (damaged ones are set aside), step, read
  metrics one step late, stop on a non-finite streak, save before fetching the next batch, evaluate
  every `eval_every`, stop where every host agrees (preemption.py).
- `predict`: one output row per example, the last partial batch padded and masked.

A task brings a loss, a head and an evaluator; it never copies the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from etils import epath
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh

from albert_jax import config_drift, optim, run_lock
from albert_jax import sharding as sharding_lib
from albert_jax import workdir as workdir_lib
from albert_jax.checkpoint import Checkpointer
from albert_jax.data import finetuning as finetuning_data
from albert_jax.training import preemption

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state; apply_fn and tx static)."""


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite steps); the message says what was kept."""


# --- the run directory ------------------------------------------------------------------------------


@contextlib.contextmanager
def claim_workdir(config: ml_collections.ConfigDict, workdir: workdir_lib.PathLike) -> Iterator[None]:
    """Holds WORKDIR's run lock for the block: a second run on it is refused with one line.

    Only process 0 takes the lock (WORKDIR is shared); every process learns the outcome. A refused
    run leaves WORKDIR as it was. Every run starts here, before anything compiles, so this is also
    where the persistent compilation cache is turned on (`use_compilation_cache`).
    """
    use_compilation_cache(config.get("compilation_cache_dir", ""), workdir)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = run_lock.RunLock(workdir)
            lock.acquire()
        except OSError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = run_lock.WorkdirInUse(f"WORKDIR {workdir} could not be claimed (process 0 says why)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


_CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
# Every compiled program is stored, however small or quick to compile, so that a restarted run
# compiles nothing at all (JAX's default skips programs compiled in under a second).
_CACHE_THRESHOLDS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,  # -1: no size limit
}


def use_compilation_cache(setting: str, workdir: workdir_lib.PathLike) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None: off).

    `setting` is the config's `compilation_cache_dir`: "" keeps the cache in WORKDIR, "none" turns
    it off, anything else is the directory. A `JAX_COMPILATION_CACHE_DIR` in the environment wins
    (JAX reads it itself), as do the environment's settings of the thresholds. Only process 0
    writes entries (JAX's rule); every process reads them.
    """
    if os.environ.get(_CACHE_DIR_ENV):
        return os.environ[_CACHE_DIR_ENV]
    path = (
        None
        if setting == "none"
        else setting or os.fspath(workdir_lib.path(workdir, workdir_lib.COMPILATION_CACHE))
    )
    if jax.config.jax_compilation_cache_dir != path:
        compilation_cache.set_cache_dir(path)
        compilation_cache.reset_cache()  # JAX opens the cache once per process; reopen it at `path`
    for name, value in _CACHE_THRESHOLDS.items():
        if name.upper() not in os.environ:
            jax.config.update(name, value)
    return path


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before WORKDIR is written: a resume may change only what `config_drift.RULES` allows."""
    config_drift.check(config, workdir)


# --- state -----------------------------------------------------------------------------------------


def create_train_state(
    init_params_fn: Callable[[jax.Array], Any],
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding_lib.Rules,
    seed: int,
    params: Any | None = None,
) -> tuple[TrainState, Any]:
    """`eval_shape → shardings → jit(init, out_shardings)`: the state is born sharded, never gathered.

    `init_params_fn(rng)` returns params boxed with logical axis names; it fixes the shardings. With
    `params` (host arrays of the same tree, e.g. loaded from an HF checkpoint), those are placed
    straight into the shardings instead of a fresh initialisation. Returns the state (plain arrays)
    and its sharding tree (for restore and for jit).
    """

    def boxed_state(rng):
        return TrainState.create(apply_fn=apply_fn, params=init_params_fn(rng), tx=tx)

    abstract = jax.eval_shape(boxed_state, jax.random.key(seed))
    state_sharding = sharding_lib.logical_shardings(abstract, mesh, rules)
    if params is not None:  # outside the mesh context: unboxing there would add sharding constraints
        _check_same_tree(nn.unbox(abstract.params), params)
        params = jax.device_put(params, state_sharding.params)
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        if params is None:
            init = jax.jit(lambda rng: nn.unbox(boxed_state(rng)), out_shardings=state_sharding)
            state = init(jax.random.key(seed))
        else:
            create = jax.jit(
                lambda p: TrainState.create(apply_fn=apply_fn, params=p, tx=tx), out_shardings=state_sharding
            )
            state = create(params)
    return state, state_sharding


def _check_same_tree(abstract: Any, params: Any) -> None:
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want.keys() != got.keys():
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        raise ValueError(
            f"loaded parameters do not match the model: missing {missing[:4]}, unexpected {extra[:4]}"
        )
    for k, a in want.items():
        if tuple(np.shape(got[k])) != tuple(a.shape):
            raise ValueError(f"loaded parameter {k} has shape {np.shape(got[k])}, the model needs {a.shape}")


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete state, the target for a checkpoint restore."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def make_tx(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The run's optimizer from the keys every config shares, wrapped so that non-finite steps are
    skipped and counted (the loop decides when to give up)."""
    tx, schedule = optim.make_optimizer(
        config.optimizer,
        config.learning_rate,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm or None,
    )
    return optim.skip_nonfinite(tx), schedule


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Each (micro-)batch must split evenly over the data-parallel devices and the processes."""
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if size < 1 or size % replicas or size % jax.process_count():
            raise ValueError(
                f"{name}={size} must be divisible by the {replicas} data-parallel devices (mesh.data x mesh.fsdp) "
                f"and the {jax.process_count()} processes"
            )
    if config.grad_accum_steps < 1 or config.batch_size % (config.grad_accum_steps * replicas):
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by grad_accum_steps={config.grad_accum_steps} "
            f"x {replicas} data-parallel devices"
        )


# --- the step --------------------------------------------------------------------------------------

# loss_fn(params, apply_fn, batch, rng, norm) -> (loss, stats): `norm` comes from norm_fn(whole batch),
# so micro-batch losses add up to exactly the whole batch's loss; `stats` are sums over rows.
LossFn = Callable[[Any, Callable, Batch, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]


def split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B/num, ...], taking every num-th row so each micro-batch spans all devices."""

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={num}")
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
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
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
    loss_fn: LossFn,
    norm_fn: Callable[[Batch], Any],
    summarise: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
    *,
    seed: int,
    schedule: optax.Schedule,
    grad_accum_steps: int,
    state_sharding: Any,
    data_sharding: Any,
):
    """`make_train_step`, jitted with the state's and batch's shardings and the state donated."""
    return jax.jit(
        make_train_step(
            loss_fn, norm_fn, summarise, seed=seed, schedule=schedule, grad_accum_steps=grad_accum_steps
        ),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )


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
            raise OSError(e.errno, f"writing {self.path} failed: {e.strerror or e}") from e
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
    step_fn: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]],
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
                sink.write(step, last_eval)
            if decision.stop:
                log.warning("stop requested (%s): saved step %d on every process, exiting", agreement.reason, step)
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
                sink.write(step, last_eval)
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
    metrics = jax.device_get(metrics)
    streak = int(metrics["nonfinite_streak"])
    if step % config.log_every == 0 or step == config.total_steps or streak:
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(throughput.rates(flops))
        sink.write(step, metrics)
        progress.logged(step, metrics)
    if streak:
        log.warning("step %d: non-finite gradients, update skipped (%d in a row)", step, streak)
    if streak >= config.max_consecutive_nonfinite:
        raise TrainingError(
            f"{streak} consecutive steps had non-finite gradients (last at step {step}); stopping. "
            f"The checkpoints in the workdir hold the last good state; lower learning_rate or check the data."
        )
    return streak


# --- prediction ------------------------------------------------------------------------------------


def predict(
    predict_fn: Callable[[Any, Batch], dict[str, jax.Array]],
    params: Any,
    inputs: dict[str, np.ndarray],
    *,
    global_batch_size: int,
    buckets: tuple[int, ...],
    make_batch: Callable[[dict[str, np.ndarray]], Batch],
    sequence_inputs: tuple[str, ...] = (),
    token_outputs: tuple[str, ...] = (),
    token_output_fill: float = 0.0,
) -> dict[str, np.ndarray]:
    """`predict_fn(params, batch)` over every row of `inputs`: exactly one output row per input row.

    The last batch is padded and its padding dropped; outputs named in `token_outputs` are padded
    back along axis 1 to the inputs' full length (batches are cut to length buckets). `predict_fn`
    must return replicated arrays, so every process gets every row.
    """
    full_length = inputs["input_ids"].shape[-1]
    parts: dict[str, list[np.ndarray]] = {}
    for local, valid in finetuning_data.eval_batches(
        inputs, global_batch_size=global_batch_size, buckets=buckets, sequence_inputs=sequence_inputs
    ):
        out = jax.device_get(predict_fn(params, make_batch(local)))
        for name, value in out.items():
            value = np.asarray(value)[valid]
            if name in token_outputs and value.shape[1] < full_length:
                pad = [(0, 0)] * value.ndim
                pad[1] = (0, full_length - value.shape[1])
                value = np.pad(value, pad, constant_values=token_output_fill)
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}
