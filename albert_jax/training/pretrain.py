"""ALBERT pretraining: the MLM + SOP loss, a pure `train_step`, evaluation and the whole run.

`run(config, workdir)` is what `pretrain.py` calls. Re-running it with the same arguments resumes
from the latest complete checkpoint in WORKDIR/checkpoints, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax
import tqdm

from albert_jax import optim
from albert_jax import sharding as sharding_lib
from albert_jax.checkpoint import Checkpointer
from albert_jax.config import AlbertConfig
from albert_jax.data.loader import make_global_batch, pretraining_dataset
from albert_jax.data.pretraining import PretrainDataConfig, TokenizedCorpus
from albert_jax.data.text import CorpusSpec, iter_documents
from albert_jax.modeling import AlbertForPreTraining, init_params
from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer
from albert_jax.training import trainer

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


# --- loss and steps ------------------------------------------------------------------------------


def pretraining_loss(
    params: Any, apply_fn, batch: Batch, rng: jax.Array, mlm_denominator, sop_denominator, deterministic: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MLM cross-entropy over masked positions (logits computed only there) plus SOP cross-entropy.

    The denominators are passed in so that a batch split into micro-batches sums to exactly the loss
    of the whole batch.
    """
    out = apply_fn(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        deterministic=deterministic,
        masked_lm_positions=batch["masked_lm_positions"],
        rngs={"dropout": rng},
    )
    weights = batch["masked_lm_weights"]
    mlm_xent = optax.softmax_cross_entropy_with_integer_labels(out.prediction_logits, batch["masked_lm_ids"])
    sop_xent = optax.softmax_cross_entropy_with_integer_labels(out.sop_logits, batch["sentence_order_label"])
    stats = {
        "mlm_loss_sum": jnp.sum(mlm_xent * weights),
        "mlm_weight": jnp.sum(weights),
        "mlm_correct": jnp.sum((out.prediction_logits.argmax(-1) == batch["masked_lm_ids"]) * weights),
        "sop_loss_sum": jnp.sum(sop_xent),
        "sop_count": jnp.asarray(sop_xent.shape[0], jnp.float32),
        "sop_correct": jnp.sum(out.sop_logits.argmax(-1) == batch["sentence_order_label"]).astype(
            jnp.float32
        ),
    }
    loss = stats["mlm_loss_sum"] / mlm_denominator + stats["sop_loss_sum"] / sop_denominator
    return loss, stats


def _summarise(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    mlm_loss = stats["mlm_loss_sum"] / jnp.maximum(stats["mlm_weight"], 1.0)
    sop_loss = stats["sop_loss_sum"] / jnp.maximum(stats["sop_count"], 1.0)
    return {
        "loss": mlm_loss + sop_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": stats["mlm_correct"] / jnp.maximum(stats["mlm_weight"], 1.0),
        "sop_loss": sop_loss,
        "sop_accuracy": stats["sop_correct"] / jnp.maximum(stats["sop_count"], 1.0),
    }


def train_step(
    state: trainer.TrainState, batch: Batch, *, seed: int, schedule: optax.Schedule, grad_accum_steps: int = 1
) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
    """One optimizer step on one global batch, optionally accumulated over micro-batches.

    Dropout's key is derived from (seed, step): no RNG lives in the state, so resume is exact.
    """
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    mlm_den = jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0)
    sop_den = jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32)
    grad_fn = jax.value_and_grad(pretraining_loss, has_aux=True)

    def micro_step(grads, xs):
        micro, i = xs
        (_, stats), g = grad_fn(
            state.params, state.apply_fn, micro, jax.random.fold_in(rng, i), mlm_den, sop_den, False
        )
        return jax.tree.map(jnp.add, grads, g), stats

    if grad_accum_steps == 1:
        (_, stats), grads = grad_fn(state.params, state.apply_fn, batch, rng, mlm_den, sop_den, False)
    else:
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        micro = trainer.split_microbatches(batch, grad_accum_steps)
        grads, stats = jax.lax.scan(micro_step, zeros, (micro, jnp.arange(grad_accum_steps)))
        stats = jax.tree.map(jnp.sum, stats)
    new_state = state.apply_gradients(grads=grads)
    metrics = _summarise(stats)
    finite = new_state.opt_state  # optax.apply_if_finite's state
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        learning_rate=optim.current_learning_rate(schedule, state.opt_state),  # the rate this update used
        nonfinite_streak=finite.notfinite_count,
        nonfinite_total=finite.total_notfinite,
    )
    return new_state, metrics


def eval_step(params: Any, batch: Batch, *, apply_fn) -> dict[str, jax.Array]:
    """Summable statistics of one held-out batch (deterministic: no dropout)."""
    _, stats = pretraining_loss(params, apply_fn, batch, jax.random.key(0), 1.0, 1.0, True)
    return stats


# --- the run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class PretrainSetup:
    """Everything resolved from the config before any state is created (validated inputs)."""

    model_config: AlbertConfig
    data_config: PretrainDataConfig
    corpus_spec: CorpusSpec
    tokenizer: AlbertTokenizer
    corpus: TokenizedCorpus


def model_config_from(config: ml_collections.ConfigDict) -> AlbertConfig:
    return AlbertConfig(**config.model.to_dict())


def resolve(config: ml_collections.ConfigDict, workdir: str) -> PretrainSetup:
    """Validate the config, the corpus and the vocabulary; build (or reuse) the token cache.

    Raises a ValueError/OSError subclass with a one-line message on any user mistake, before anything
    in WORKDIR is touched (except a vocabulary trained into WORKDIR when none is given).
    """
    if "://" in workdir:
        raise ValueError(
            f"WORKDIR must be a filesystem path, got {workdir!r}; mount the bucket (e.g. with gcsfuse) and pass the "
            "mount point"
        )
    model_config = model_config_from(config)
    d = config.data
    data_config = PretrainDataConfig(
        seq_len=config.seq_len,
        short_seq_prob=d.short_seq_prob,
        masked_lm_prob=d.masked_lm_prob,
        max_predictions=d.max_predictions_per_seq,
        max_ngram=d.max_ngram,
        dynamic_masking=d.dynamic_masking,
        eval_fraction=d.eval_fraction,
    )
    if config.seq_len > model_config.max_position_embeddings:
        raise ValueError(
            f"seq_len={config.seq_len} exceeds model.max_position_embeddings={model_config.max_position_embeddings}"
        )
    spec = CorpusSpec(**{f.name: d[f.name] for f in dataclasses.fields(CorpusSpec)})  # same names in `data`
    tokenizer = _tokenizer(d.tokenizer, spec, model_config, workdir)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise ValueError(
            f"the vocabulary {tokenizer.model_file} has {tokenizer.vocab_size} pieces but model.vocab_size is "
            f"{model_config.vocab_size}; set --config.model.vocab_size={tokenizer.vocab_size} or use a matching "
            "spiece.model"
        )
    cache_dir = d.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "albert_jax")
    corpus = TokenizedCorpus.build(spec, tokenizer, cache_dir)
    return PretrainSetup(model_config, data_config, spec, tokenizer, corpus)


def _tokenizer(path: str, spec: CorpusSpec, model_config: AlbertConfig, workdir: str) -> AlbertTokenizer:
    """The configured spiece.model; else the one this run trained earlier; else train one now."""
    if path:
        return AlbertTokenizer.from_pretrained(path)
    own = os.path.join(workdir, "spiece.model")
    if os.path.exists(own):
        return AlbertTokenizer(own)
    if jax.process_index() == 0:
        sentences = (s for doc in iter_documents(spec) for s in doc)
        first = next(
            sentences, None
        )  # Raises CorpusError for a missing/empty corpus before WORKDIR is written.
        if first is None:
            raise ValueError(f"the corpus {spec.describe()} has no sentences")
        os.makedirs(workdir, exist_ok=True)
        log.info("training a %d-piece vocabulary on %s", model_config.vocab_size, spec.describe())
        train_tokenizer(
            itertools.chain([first], sentences),
            os.path.join(workdir, "spiece"),
            vocab_size=model_config.vocab_size,
        )
    if jax.process_count() > 1:  # the other hosts read what process 0 wrote (WORKDIR is shared)
        multihost_utils.sync_global_devices("albert_jax: vocabulary trained")
    return AlbertTokenizer(own)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Pretrain (or resume) into `workdir`; returns the final held-out metrics."""
    setup = resolve(config, workdir)
    mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    _check_batch_sizes(config, mesh)
    rules = sharding_lib.rules_from_config(config.logical_axis_rules)
    model = AlbertForPreTraining(setup.model_config)
    tx, schedule = optim.make_optimizer(
        config.optimizer,
        config.learning_rate,
        total_steps=config.total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm or None,
    )
    # Skip (and count) steps whose gradients are not finite; the loop decides when to give up.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
    # Everything is validated: only now is WORKDIR written.
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        _write_run_files(config, setup, workdir)
    state, state_sharding = trainer.create_train_state(
        lambda rng: init_params(model, rng, config.seq_len), model.apply, tx, mesh, rules, config.seed
    )
    log.info("model: %s parameters", f"{trainer.count_params(state.params):,}")

    data_sharding = sharding_lib.batch_sharding(mesh, rules)
    train_it = iter(
        pretraining_dataset(
            setup.corpus,
            setup.data_config,
            split="train",
            global_batch_size=config.batch_size,
            seed=config.seed,
            worker_count=config.data.worker_count,
        )
    )
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), config.checkpoint_every, config.keep_checkpoints
    )
    if ckpt.latest_step() is not None:
        state = ckpt.restore(trainer.abstract_like(state), train_it)
        log.info("resumed from step %d", int(state.step))
    start = int(state.step)

    step_fn = jax.jit(
        functools.partial(
            train_step, seed=config.seed, schedule=schedule, grad_accum_steps=config.grad_accum_steps
        ),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, None),
        donate_argnums=0,
    )
    eval_fn = jax.jit(functools.partial(eval_step, apply_fn=model.apply))

    def next_batch():
        return make_global_batch(next(train_it), data_sharding)

    sink = trainer.MetricsSink(workdir, resume_step=start)
    preempt = trainer.Preemption()
    tokens_per_step = config.batch_size * config.seq_len
    final_eval: dict[str, float] = {}
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            batch = next_batch() if start < config.total_steps else None
            flops = (
                trainer.compiled_flops(step_fn.lower(state, batch).compile()) if batch is not None else None
            )
            throughput = trainer.Throughput()
            bar = tqdm.tqdm(
                total=config.total_steps,
                initial=start,
                desc="pretrain",
                disable=jax.process_index() != 0 or not config.progress_bar,
                dynamic_ncols=True,
            )
            pending = None
            step = last_saved = start
            streak = 0  # non-finite steps in a row, as of the last metrics read
            while step < config.total_steps:
                state, metrics = step_fn(state, batch)
                step += 1
                throughput.tick()
                # The host reads step t-1's metrics only once step t is dispatched: the device never waits.
                if pending is not None:
                    streak = _report(pending, sink, bar, config)
                pending = (step, metrics, throughput, tokens_per_step, flops)
                # During a non-finite streak, keep the older checkpoints rather than rotating them out. Save
                # before fetching the next batch: the iterator state must be the one after `step` batches.
                if streak == 0 and ckpt.save(step, state, train_it):
                    last_saved = step
                batch = next_batch() if step < config.total_steps else None
                if config.eval_every and step % config.eval_every == 0:
                    sink.write(
                        step, evaluate(eval_fn, state.params, setup, config, data_sharding), prefix="eval_"
                    )
                if preempt.requested:
                    log.warning("preemption signal: saving step %d and exiting", step)
                    if last_saved != step:
                        ckpt.save(step, state, train_it, force=True)
                    break
                bar.update(1)
            if pending is not None:
                _report(pending, sink, bar, config)
            bar.close()
            if not preempt.requested:
                if last_saved != step:
                    ckpt.save(step, state, train_it, force=True)
                final_eval = evaluate(eval_fn, state.params, setup, config, data_sharding)
                sink.write(step, final_eval, prefix="eval_")
    finally:
        ckpt.close()
        sink.close()
        preempt.restore()
    if final_eval and jax.process_index() == 0:
        _print_summary(final_eval, model, state.params, setup)
    return final_eval


def _check_batch_sizes(config: ml_collections.ConfigDict, mesh) -> None:
    """Each (micro-)batch must split evenly over the data-parallel devices and the processes."""
    replicas = mesh.shape["data"] * mesh.shape["fsdp"]
    for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
        if size % replicas or size % jax.process_count():
            raise ValueError(
                f"{name}={size} must be divisible by the {replicas} data-parallel devices (mesh.data x mesh.fsdp) "
                f"and the {jax.process_count()} processes"
            )
    if config.grad_accum_steps < 1 or config.batch_size % (config.grad_accum_steps * replicas):
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by grad_accum_steps={config.grad_accum_steps} "
            f"x {replicas} data-parallel devices"
        )


def _report(pending, sink: trainer.MetricsSink, bar, config) -> int:
    """Logs one step's metrics (every `log_every`); returns its non-finite streak, raising past the limit."""
    step, metrics, throughput, tokens_per_step, flops = pending
    metrics = jax.device_get(metrics)
    streak = int(metrics["nonfinite_streak"])
    if step % config.log_every == 0 or step == config.total_steps or streak:
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics.update(throughput.rates(tokens_per_step, flops))
        sink.write(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_sec']:.0f}")
    if streak:
        log.warning("step %d: non-finite gradients, update skipped (%d in a row)", step, streak)
    if streak >= config.max_consecutive_nonfinite:
        raise trainer.TrainingError(
            f"{streak} consecutive steps had non-finite gradients (last at step {step}); stopping. "
            f"The checkpoints in the workdir hold the last good state; lower learning_rate or check the data."
        )
    return streak


def evaluate(eval_fn, params, setup: PretrainSetup, config, data_sharding) -> dict[str, float]:
    """Held-out MLM/SOP loss and accuracy, plus the accuracy of always predicting the most frequent
    target token (the baseline the MLM accuracy must beat)."""
    ds = pretraining_dataset(
        setup.corpus,
        setup.data_config,
        split="eval",
        global_batch_size=config.eval_batch_size,
        seed=config.seed,
    )
    totals: dict[str, float] = {}
    targets = []
    for i, local in enumerate(ds):
        if i >= config.eval_steps:
            break
        stats = jax.device_get(eval_fn(params, make_global_batch(local, data_sharding)))
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        targets.append(local["masked_lm_ids"][local["masked_lm_weights"] > 0])
    if not totals:
        return {}
    out = {k: float(v) for k, v in _summarise({k: jnp.asarray(v) for k, v in totals.items()}).items()}
    counts = np.bincount(np.concatenate(targets))
    out["mlm_majority_accuracy"] = float(counts.max() / counts.sum())
    return out


def fill_mask(model: AlbertForPreTraining, params, tokenizer: AlbertTokenizer, text: str, top_k: int = 5):
    """Top-k predictions for each [MASK] in `text`: a list (one per mask) of (piece, probability)."""
    enc = tokenizer(text, return_tensors="np")
    out = model.apply({"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    probs = jax.nn.softmax(out.prediction_logits[0], axis=-1)
    positions = np.flatnonzero(enc["input_ids"][0] == tokenizer.mask_token_id)
    result = []
    for p in positions:
        top = np.argsort(-np.asarray(probs[p]))[:top_k]
        result.append([(tokenizer.convert_ids_to_tokens([int(i)])[0], float(probs[p, i])) for i in top])
    return result


def _fill_mask_example(setup: PretrainSetup) -> str:
    """A held-out sentence with one whole word masked."""
    for d in setup.corpus.document_split(setup.data_config.eval_fraction)[1][:50]:
        for i in setup.corpus.document_sentence_range(int(d)):
            pieces = setup.tokenizer.convert_ids_to_tokens(setup.corpus.sentence(i).tolist())
            words = [p for p in pieces if p.startswith("▁") and len(p) > 3 and p[1:].isalpha()]
            if 6 <= len(pieces) <= 30 and words:
                target = words[len(words) // 2]
                pieces = ["▁[MASK]" if p == target else p for p in pieces]
                return "".join(pieces).replace("▁", " ").strip()
    return "the [MASK] of the world."


def _print_summary(final_eval, model, params, setup: PretrainSetup) -> None:
    print(
        f"held-out MLM accuracy {final_eval['mlm_accuracy']:.4f} "
        f"(most-frequent-token baseline {final_eval['mlm_majority_accuracy']:.4f}), "
        f"SOP accuracy {final_eval['sop_accuracy']:.4f}"
    )
    text = _fill_mask_example(setup)
    try:
        preds = fill_mask(model, params, setup.tokenizer, text)
    except ValueError as e:  # e.g. the example is longer than the model's positions
        print(f"fill-mask skipped: {e}")
        return
    print(f"fill-mask: {text}")
    for i, cands in enumerate(preds):
        print(f"  [MASK] {i}: " + ", ".join(f"{p} ({q:.2f})" for p, q in cands))


def _write_run_files(config: ml_collections.ConfigDict, setup: PretrainSetup, workdir: str) -> None:
    """The resolved config, the model's HF config.json and the vocabulary, next to the checkpoints."""
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    setup.model_config.save_json(os.path.join(workdir, "model_config.json"))
    own = os.path.join(workdir, "spiece.model")
    if os.path.abspath(setup.tokenizer.model_file) != os.path.abspath(own):
        setup.tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
    with open(os.path.join(workdir, "data.json"), "w") as f:
        json.dump(
            {
                "source": setup.corpus_spec.describe(),
                "cache": setup.corpus.path,
                "tokenizer": os.path.abspath(setup.tokenizer.model_file),
            },
            f,
            indent=2,
        )
