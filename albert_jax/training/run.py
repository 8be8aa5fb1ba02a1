"""The one run setup that pretraining and every fine-tuning task share.

    with run.session(config, workdir) as ctx:   # mesh, batch sizes, compilation cache, run lock, drift gate
        job = run.Job(...)                       # what the task brings: model, loss, data, evaluation
        result = run.train(ctx, workdir, job)    # optimizer, run files, sharded state, jitted step, `fit`

A task supplies only what differs (its `Job`); everything about how a run starts lives here, and the
loop itself in `trainer.fit`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh

from albert_jax import config_drift, errors, optim, run_lock
from albert_jax import sharding as sharding_lib
from albert_jax import workdir as workdir_lib
from albert_jax.config import AlbertConfig
from albert_jax.data.loader import make_global_batch
from albert_jax.modeling import init_params
from albert_jax.tokenizer import AlbertTokenizer
from albert_jax.training import trainer
from albert_jax.training.trainer import Batch, LossFn, TrainState

log = logging.getLogger(__name__)


# --- the session: everything decided before a job is built ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
    """The run's mesh and shardings, fixed for the session."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: tuple[tuple[str, Any], ...]
    data_sharding: jax.sharding.NamedSharding

    def make_batch(self, local: dict[str, np.ndarray]) -> Batch:
        """This process's rows of a batch -> global arrays split over the data-parallel devices."""
        return make_global_batch(local, self.data_sharding)

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """The mesh and the logical axis rules, for code that traces the model."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


@contextlib.contextmanager
def session(
    config: ml_collections.ConfigDict, workdir: str, defaults: ml_collections.ConfigDict | None = None
) -> Iterator[Context]:
    """Checks that cost nothing first (mesh, batch sizes), then the compilation cache, WORKDIR's run lock
    for the block and the drift gate (a resume may change only what `config_drift` allows). Nothing
    in WORKDIR is written before the block."""
    mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    check_batch_sizes(config, mesh)
    use_compilation_cache(config.get("compilation_cache_dir", ""), workdir)
    with claim(workdir):
        config_drift.check(config, workdir, defaults)
        rules = sharding_lib.rules_from_config(config.logical_axis_rules)
        yield Context(config, mesh, rules, sharding_lib.batch_sharding(mesh, rules))


@contextlib.contextmanager
def claim(workdir: workdir_lib.PathLike) -> Iterator[None]:
    """Holds WORKDIR's run lock for the block: a second run on it is refused with one line.

    Only process 0 takes the lock (WORKDIR is shared); every process learns the outcome. A refused
    run leaves WORKDIR as it was.
    """
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


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Each (micro-)batch must split evenly over the data-parallel devices and the processes."""
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if size < 1 or size % replicas or size % jax.process_count():
            raise errors.ConfigError(
                f"{name}={size} must be divisible by the {replicas} data-parallel devices (mesh.data x mesh.fsdp) "
                f"and the {jax.process_count()} processes"
            )
    if config.grad_accum_steps < 1 or config.batch_size % (config.grad_accum_steps * replicas):
        raise errors.ConfigError(
            f"batch_size={config.batch_size} must be divisible by grad_accum_steps={config.grad_accum_steps} "
            f"x {replicas} data-parallel devices"
        )


# --- the job: what a task brings ----------------------------------------------------------------


@dataclasses.dataclass
class Job:
    """One training run of a task, as the task describes it."""

    model: nn.Module  # the head, e.g. AlbertForPreTraining(config)
    model_config: AlbertConfig
    tokenizer: AlbertTokenizer
    seed: int  # initialisation, dropout and data order
    init_seq_len: int  # the sequence length the parameters are initialised with
    params: Any  # host parameters to start from (an HF checkpoint or a WORKDIR), or None for a fresh init
    loss_fn: LossFn
    norm_fn: Callable[[Batch], Any]
    summarise: Callable[[dict[str, jax.Array]], dict[str, jax.Array]]
    train_data: Iterable[dict[str, np.ndarray]]  # a checkpointable grain dataset of this process's rows
    evaluate: Callable[[TrainState, int], dict[str, float]] | None
    desc: str  # the progress bar's label
    run_files: dict[str, str] = dataclasses.field(default_factory=dict)  # more WORKDIR files (name -> text)
    # Inputs whose last axis is the batch's length bucket (fine-tuning), at most `max_length`: the step
    # is traced once for every length (`trainer.OverLengths`). Empty: one shape, plain jit.
    sequence_keys: tuple[str, ...] = ()
    max_length: int = 0


def train(ctx: Context, workdir: str, job: Job) -> trainer.FitResult:
    """Writes the run files, creates (or resumes) the sharded state and trains it with `trainer.fit`."""
    config = ctx.config
    tx, schedule = make_tx(config)
    if jax.process_index() == 0:
        head = type(job.model).__name__
        workdir_lib.write_run_files(workdir, config, job.model_config, head, job.tokenizer)
        for name, text in job.run_files.items():
            workdir_lib.write_file(workdir_lib.path(workdir, name), text)
    state, state_sharding = create_train_state(
        lambda rng: init_params(job.model, rng, job.init_seq_len),
        job.model.apply,
        tx,
        ctx.mesh,
        ctx.rules,
        job.seed,
        params=job.params,
    )
    log.info("model: %s parameters, head %s", f"{count_params(state.params):,}", type(job.model).__name__)
    step = trainer.make_train_step(
        job.loss_fn,
        job.norm_fn,
        job.summarise,
        seed=job.seed,
        schedule=schedule,
        grad_accum_steps=config.grad_accum_steps,
    )
    step_fn = trainer.jit_train_step(
        step, state_sharding, ctx.data_sharding, job.sequence_keys, job.max_length
    )
    with ctx.activate():
        return trainer.fit(
            config,
            workdir=workdir,
            state=state,
            step_fn=step_fn,
            train_iter=iter(job.train_data),
            make_batch=ctx.make_batch,
            evaluate=job.evaluate,
            desc=job.desc,
        )


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
        raise errors.InputError(
            f"loaded parameters do not match the model: missing {missing[:4]}, unexpected {extra[:4]}"
        )
    for k, a in want.items():
        if tuple(np.shape(got[k])) != tuple(a.shape):
            raise errors.InputError(
                f"loaded parameter {k} has shape {np.shape(got[k])}, the model needs {a.shape}"
            )


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
