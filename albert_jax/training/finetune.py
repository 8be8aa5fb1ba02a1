"""Fine-tuning: a task (head, loss, evaluator) wired into the one training loop of `trainer.py`.

`run(config, workdir)` is what `train.py` calls; the run's setup is `run.py`'s. It reads and featurises every split (bad data fails
here, before WORKDIR is written), starts from `config.init_from` (an HF directory or a WORKDIR; the
task head starts fresh), trains with `trainer.fit`, evaluates every `eval_every` steps, keeps the best
checkpoint by the task's metric in WORKDIR/best, and writes eval_results.json (best), summary.json
(best and last), predictions/ (best) and, for GLUE test splits, the GLUE-server files. With
`num_seeds > 1` each seed runs in WORKDIR/seed_<k> and the summary holds mean ± std. Re-running the
same command resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from albert_jax import errors, pretrained
from albert_jax import sharding as sharding_lib
from albert_jax import workdir as workdir_lib
from albert_jax.checkpoint import Checkpointer
from albert_jax.config import JAX_ONLY_FIELDS, AlbertConfig
from albert_jax.data import finetuning as finetuning_data
from albert_jax.modeling import HEADS
from albert_jax.tasks import DataError, Features, Task, make_task
from albert_jax.tokenizer import AlbertTokenizer
from albert_jax.training import run as run_lib
from albert_jax.training import trainer

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


@dataclasses.dataclass
class Split:
    name: str
    role: str  # "train" | "eval" | "predict"
    task: Task  # usually the run's task; GLUE's AX is predicted by the MNLI model through its own task
    examples: Any
    features: Features


@dataclasses.dataclass
class FinetuneSetup:
    """Everything resolved and validated before WORKDIR is written."""

    task: Task
    model_config: AlbertConfig
    tokenizer: AlbertTokenizer
    splits: list[Split]
    buckets: tuple[int, ...]
    init_params: Any  # host params loaded for config.seed (None: fresh init)

    @property
    def train(self) -> Split:
        return next(s for s in self.splits if s.role == "train")

    def of_role(self, role: str) -> list[Split]:
        return [s for s in self.splits if s.role == role]


# --- loss and prediction ----------------------------------------------------------------------------


def _apply(task: Task, apply_fn, params, batch: Batch, deterministic: bool, rng=None):
    return apply_fn(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=deterministic,
        rngs=None if rng is None else {"dropout": rng},
        **task.model_inputs(batch, not deterministic),
    )


def make_loss(task: Task):
    """The task's loss in the shared step's form: sum of row losses over the whole batch's weight."""

    def loss_fn(params, apply_fn, batch: Batch, rng: jax.Array, norm: jax.Array):
        loss_sum, weight = task.loss(_apply(task, apply_fn, params, batch, False, rng), batch)
        stats = {"loss_sum": jnp.sum(loss_sum), "weight": jnp.sum(weight)}
        return stats["loss_sum"] / norm, stats

    def norm_fn(batch: Batch) -> jax.Array:
        return jnp.maximum(jnp.sum(task.loss_weight(batch)), 1.0)

    return loss_fn, norm_fn


def summarise(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {"loss": stats["loss_sum"] / jnp.maximum(stats["weight"], 1.0)}


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


# --- resolving the config --------------------------------------------------------------------------


def _model_overrides(config: ml_collections.ConfigDict, task: Task) -> dict[str, Any]:
    """The recipe's dropout and the task's labels on top of the checkpoint's shape."""
    return dict(
        num_labels=task.num_labels,
        label_names=task.label_names,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        classifier_dropout_prob=config.classifier_dropout,
        **{k: config.model[k] for k in JAX_ONLY_FIELDS},
    )


def load_model(
    config: ml_collections.ConfigDict, task: Task, seed: int
) -> tuple[AlbertConfig, Any, AlbertTokenizer]:
    """(model config, host params or None for a fresh init, tokenizer) from `config.init_from`."""
    overrides = _model_overrides(config, task)
    if config.init_from == "none":
        if not config.tokenizer:
            raise errors.ConfigError(
                "init_from=none trains from scratch and needs --config.tokenizer=spiece.model"
            )
        fields = {k: v for k, v in config.model.to_dict().items()}
        model_config = AlbertConfig(**{**fields, **overrides})
        tokenizer = AlbertTokenizer.from_pretrained(config.tokenizer)
        tokenizer.check_vocab_size(model_config.vocab_size, f"tokenizer={config.tokenizer!r}")
        log.warning("init_from=none: every parameter starts fresh (no pretrained encoder)")
        return model_config, None, tokenizer
    if not config.init_from:
        raise errors.ConfigError(
            "set --config.init_from to an HF directory or a pretraining WORKDIR (or init_from=none to train "
            "from scratch on purpose)"
        )
    return pretrained.load(config.init_from, task.head, seed=seed, **overrides)


def resolve(config: ml_collections.ConfigDict, workdir: str) -> FinetuneSetup:
    """Validate the config and read + featurise every split; raises one-line errors, writes nothing."""
    task = make_task(config)
    model_config, params, tokenizer = load_model(config, task, config.seed)
    if config.max_seq_length > model_config.max_position_embeddings:
        raise errors.ConfigError(
            f"max_seq_length={config.max_seq_length} exceeds the model's max_position_embeddings="
            f"{model_config.max_position_embeddings}"
        )
    buckets = tuple(sorted({int(b) for b in config.length_buckets} | {config.max_seq_length}))
    if not config.length_buckets:
        buckets = finetuning_data.default_buckets(config.max_seq_length)
    if buckets[0] < 1 or buckets[-1] != config.max_seq_length:
        raise errors.ConfigError(
            f"length_buckets must lie in [1, max_seq_length={config.max_seq_length}], got {buckets}"
        )
    splits = [_read_split(task, name, role, tokenizer, config) for name, role in task.splits().items()]
    if task.name == "mnli" and config.data_dir:
        splits += _ax_split(config, tokenizer)
    roles = [s.role for s in splits]
    if "train" not in roles or "eval" not in roles:
        raise DataError(f"{task.name} needs a train and an eval split; found {[s.name for s in splits]}")
    return FinetuneSetup(task, model_config, tokenizer, splits, buckets, params)


def _read_split(task: Task, name: str, role: str, tokenizer, config) -> Split:
    examples = task.read(name)
    if len(examples) == 0:
        raise DataError(f"the {task.name} {name} split has no examples")
    features = task.features(examples, tokenizer, config.max_seq_length, training=role == "train")
    log.info("%s %s: %d examples, %d model inputs", task.name, name, len(examples), len(features))
    return Split(name, role, task, examples, features)


def _ax_split(config, tokenizer) -> list[Split]:
    """GLUE's diagnostic set (AX), predicted with the MNLI model, when data_dir has it."""
    from albert_jax.tasks.glue import GlueTask

    ax = GlueTask("ax", config.data_dir)
    try:
        return [_read_split(ax, "test", "predict", tokenizer, config)]
    except DataError as e:
        log.info("no AX predictions: %s", e)
        return []


# --- evaluation and best-checkpoint selection ------------------------------------------------------


class Evaluator:
    """Scores every eval split on the host; keeps the best parameters (WORKDIR/best) and their
    predictions (WORKDIR/predictions). Its record survives restarts (best.json)."""

    def __init__(self, setup: FinetuneSetup, predict, workdir: str):
        self.setup, self.predict, self.workdir = setup, predict, workdir
        self.best_path = workdir_lib.path(workdir, "best.json")
        self.best = workdir_lib.read_json(self.best_path)
        self.last: dict[str, Any] | None = None
        self.warnings: dict[str, str] = {}

    def __call__(self, state: trainer.TrainState, step: int) -> dict[str, float]:
        task = self.setup.task
        results, outputs = {}, {}
        for split in self.setup.of_role("eval"):
            outputs[split.name] = self.predict(state.params, split)
            results[split.name] = task.evaluate(
                split.name, split.examples, split.features, outputs[split.name], None
            )
            warning = task.degenerate(outputs[split.name], split.name, features=split.features)
            if warning:
                log.warning("step %d: %s", step, warning)
                self.warnings[split.name] = f"step {step}: {warning}"
        first = self.setup.of_role("eval")[0].name
        value = float(results[first][task.selection_metric])
        self.last = {"step": step, "metrics": results}
        if math.isfinite(value) and (self.best is None or value > self.best["value"]):
            self._keep_best(state, step, value, results, outputs)
        return {f"{split}/{k}": v for split, m in results.items() for k, v in m.items()}

    def _keep_best(self, state, step: int, value: float, results, outputs) -> None:
        best = Checkpointer(
            workdir_lib.path(self.workdir, workdir_lib.BEST), every=1, keep=1, async_save=False
        )
        try:
            best.save(step, {"params": state.params}, force=True)
        finally:
            best.close()
        self.best = {"step": step, "value": value, "metrics": results}
        if jax.process_index() == 0:
            out_dir = workdir_lib.path(self.workdir, workdir_lib.PREDICTIONS)
            out_dir.mkdir(parents=True, exist_ok=True)
            for split in self.setup.of_role("eval"):
                self.setup.task.evaluate(
                    split.name, split.examples, split.features, outputs[split.name], out_dir
                )
            workdir_lib.write_file(self.best_path, json.dumps(self.best, indent=2))


# --- the run ---------------------------------------------------------------------------------------


def run(
    config: ml_collections.ConfigDict, workdir: str, *, defaults: ml_collections.ConfigDict | None = None
) -> dict[str, Any]:
    """Fine-tune (or resume) into `workdir`; returns the summary (best and last metrics). `defaults`:
    the config file's values without overrides, for resuming runs older than some keys
    (`config_drift`)."""
    if config.num_seeds < 1:
        raise errors.ConfigError(f"num_seeds must be >= 1, got {config.num_seeds}")
    with run_lib.session(config, workdir, defaults) as ctx:
        setup = resolve(config, workdir)
        if config.num_seeds == 1:
            summary = run_seed(ctx, workdir, setup, config.seed)
        else:
            summary = _run_seeds(ctx, workdir, setup)
    if jax.process_index() == 0 and summary:
        _print_summary(setup.task, summary)
    return summary


def _run_seeds(ctx: run_lib.Context, workdir: str, setup: FinetuneSetup) -> dict[str, Any]:
    """`num_seeds` runs in WORKDIR/seed_<k>; mean ± std of their best (and last) metrics."""
    config = ctx.config
    runs, failed = {}, {}
    for k in range(config.num_seeds):
        seed = config.seed + k
        try:
            summary = run_seed(ctx, workdir_lib.seed_dir(workdir, k), setup, seed)
        except errors.TrainingError as e:  # one diverged seed is a result, not the end of the sweep
            log.error("seed %d failed: %s", seed, e)
            failed[seed] = str(e)
            continue
        if not summary:  # preempted: the rerun continues this seed
            return {}
        runs[seed] = summary
    if not runs:
        raise errors.TrainingError(f"every seed failed: {failed}")
    out = {
        "task": setup.task.name,
        "selection_metric": setup.task.selection_metric,
        "seeds": sorted(runs),
        "failed_seeds": failed,
        "best": _mean_std([r["best"]["metrics"] for r in runs.values()]),
        "last": _mean_std([r["last"]["metrics"] for r in runs.values()]),
        "degenerate": {s: r["degenerate"] for s, r in runs.items() if r["degenerate"]},
    }
    if jax.process_index() == 0:
        _write_json(workdir, workdir_lib.SUMMARY, out)
        means = {split: {k: v["mean"] for k, v in m.items()} for split, m in out["best"].items()}
        _write_json(workdir, workdir_lib.EVAL_RESULTS, means)
    return out


def _mean_std(results: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in results[0]:
        out[split] = {}
        for metric in results[0][split]:
            values = [float(r[split][metric]) for r in results]
            out[split][metric] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "values": values,
            }
    return out


def _over_lengths(setup: FinetuneSetup, task: Task) -> tuple[tuple[str, ...], int]:
    """The inputs cut to a length bucket and the longest bucket, for `trainer.jit_over_lengths` (none
    with a single bucket: every batch has one shape)."""
    keys = finetuning_data.sequence_keys(task.sequence_inputs) if len(setup.buckets) > 1 else ()
    return keys, setup.buckets[-1]


def run_seed(ctx: run_lib.Context, workdir: str, setup: FinetuneSetup, seed: int) -> dict[str, Any]:
    """One fine-tuning run with `seed` (head init, data order, dropout); {} when preempted."""
    config, task = ctx.config, setup.task
    if seed == config.seed:
        model_config, params = setup.model_config, setup.init_params
    else:  # the head starts fresh from this seed
        model_config, params, _ = load_model(config, task, seed)
    head_cls = HEADS[task.head] if isinstance(task.head, str) else task.head
    model = head_cls(model_config)

    @functools.cache  # one jitted predictor per task (a split may bring its own, e.g. GLUE's AX)
    def predictor(task: Task) -> Callable[[Any, Batch], dict[str, jax.Array]]:
        return trainer.jit_over_lengths(
            lambda params, batch: task.outputs(_apply(task, model.apply, params, batch, True), batch),
            *_over_lengths(setup, task),
            out_shardings=sharding_lib.replicated(ctx.mesh),
        )

    def predict_split(params, split: Split) -> dict[str, np.ndarray]:
        return predict(
            predictor(split.task),
            params,
            split.features.inputs,
            global_batch_size=config.eval_batch_size,
            buckets=setup.buckets,
            make_batch=ctx.make_batch,
            sequence_inputs=split.task.sequence_inputs,
            token_outputs=split.task.token_outputs,
            token_output_fill=split.task.token_output_fill,
        )

    loss_fn, norm_fn = make_loss(task)
    evaluator = Evaluator(setup, predict_split, workdir)
    sequence_keys, max_length = _over_lengths(setup, task)
    job = run_lib.Job(
        model=model,
        model_config=model_config,
        tokenizer=setup.tokenizer,
        seed=seed,
        init_seq_len=setup.buckets[0],
        params=params,
        loss_fn=loss_fn,
        norm_fn=norm_fn,
        summarise=summarise,
        train_data=finetuning_data.train_dataset(
            setup.train.features.inputs,
            global_batch_size=config.batch_size,
            seed=seed,
            buckets=setup.buckets,
            sequence_inputs=task.sequence_inputs,
        ),
        evaluate=evaluator,
        desc=task.name,
        sequence_keys=sequence_keys,
        max_length=max_length,
    )
    del params
    result = run_lib.train(ctx, workdir, job)
    if result.preempted:
        return {}
    with ctx.activate():
        _predict_unlabelled(setup, predict_split, workdir, result.state.params)
    summary = {
        "task": task.name,
        "seed": seed,
        "selection_metric": task.selection_metric,
        "best": {"step": evaluator.best["step"], "metrics": evaluator.best["metrics"]}
        if evaluator.best
        else None,
        "last": evaluator.last,
        "degenerate": evaluator.warnings,
    }
    if summary["best"] is None:  # every evaluation was NaN (e.g. constant STS-B predictions)
        summary["best"] = summary["last"]
    if jax.process_index() == 0:
        _write_json(workdir, workdir_lib.EVAL_RESULTS, summary["best"]["metrics"])
        _write_json(workdir, workdir_lib.SUMMARY, summary)
    return summary


def _predict_unlabelled(setup: FinetuneSetup, predict, workdir: str, like: Any) -> None:
    """Predictions of the best checkpoint for unlabelled splits (GLUE test → GLUE-server files)."""
    splits = setup.of_role("predict")
    best_dir = workdir_lib.path(workdir, workdir_lib.BEST)
    if not splits or not best_dir.is_dir():
        return
    shardings = jax.tree.map(lambda x: x.sharding, like)  # the trained parameters' placement
    params = jax.device_put(Checkpointer(best_dir).restore_params(), shardings)
    out_dir = workdir_lib.path(workdir, workdir_lib.PREDICTIONS)
    for split in splits:
        outputs = predict(params, split)
        if jax.process_index() == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            split.task.evaluate(split.name, split.examples, split.features, outputs, out_dir)


def _write_json(workdir: str, name: str, value: Any) -> None:
    workdir_lib.write_file(workdir_lib.path(workdir, name), json.dumps(value, indent=2, sort_keys=True))


def _print_summary(task: Task, summary: dict[str, Any]) -> None:
    metric = task.selection_metric
    for kind in ("best", "last"):
        entry = summary.get(kind) or {}
        if "step" in entry:  # one seed
            line = ", ".join(
                f"{split} {metric} {m.get(metric, float('nan')):.4f}" for split, m in entry["metrics"].items()
            )
            print(f"{task.name} {kind} (step {entry['step']}): {line}")
        else:
            line = ", ".join(
                f"{split} {metric} {m[metric]['mean']:.4f} ± {m[metric]['std']:.4f}"
                for split, m in entry.items()
            )
            print(f"{task.name} {kind} over seeds {summary['seeds']}: {line}")
    for warning in (summary.get("degenerate") or {}).values():
        print(f"warning: {warning}")
