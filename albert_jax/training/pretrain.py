"""ALBERT pretraining: the MLM + SOP (or NSP, or no sentence) loss, a pure `train_step`, evaluation and the whole run.

`run(config, workdir)` is what `pretrain.py` calls. Re-running it with the same arguments resumes
from the latest complete checkpoint in WORKDIR/checkpoints, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from albert_jax import errors, pretrained
from albert_jax import workdir as workdir_lib
from albert_jax.config import JAX_ONLY_FIELDS, AlbertConfig
from albert_jax.data import prepare
from albert_jax.data.loader import pretraining_dataset
from albert_jax.data.pretraining import PretrainDataConfig, TokenizedCorpus
from albert_jax.data.text import CorpusSpec
from albert_jax.modeling import AlbertForPreTraining
from albert_jax.tokenizer import AlbertTokenizer
from albert_jax.training import run as run_lib
from albert_jax.training import summary, trainer

log = logging.getLogger(__name__)
Batch = dict[str, jax.Array]
_SENTENCE_ACC = ("sop_accuracy", "nsp_accuracy")


# --- loss and steps ------------------------------------------------------------------------------


def pretraining_loss(
    params: Any,
    apply_fn,
    batch: Batch,
    rng: jax.Array,
    norm: dict[str, jax.Array],
    deterministic: bool = False,
    *,
    sentence_objective: str = "sop",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MLM cross-entropy over masked positions (logits computed only there) plus the sentence loss:
    SOP or NSP cross-entropy of the `sop_classifier` head (one classifier either way, label 1 = swapped
    or random next, the original's convention), or none (`sentence_objective="none"`).

    `norm` holds the denominators of the whole batch (`loss_norm`), so that a batch split into
    micro-batches sums to exactly the loss of the whole batch.
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
    replaced = weights * replaced_pieces(batch, jnp)
    correct = out.prediction_logits.argmax(-1) == batch["masked_lm_ids"]
    mlm_xent = optax.softmax_cross_entropy_with_integer_labels(out.prediction_logits, batch["masked_lm_ids"])
    labels = batch["sentence_order_label"]
    sentence_xent = optax.softmax_cross_entropy_with_integer_labels(out.sop_logits, labels)
    stats = {
        "mlm_loss_sum": jnp.sum(mlm_xent * weights),
        "mlm_weight": jnp.sum(weights),
        "mlm_correct": jnp.sum(correct * weights),
        "mlm_replaced_correct": jnp.sum(correct * replaced),
        "mlm_replaced_weight": jnp.sum(replaced),
        "sentence_loss_sum": jnp.sum(sentence_xent),
        "sentence_count": jnp.asarray(sentence_xent.shape[0], jnp.float32),
        "sentence_correct": jnp.sum(out.sop_logits.argmax(-1) == labels).astype(jnp.float32),
    }
    loss = stats["mlm_loss_sum"] / norm["mlm"]
    if sentence_objective != "none":
        loss += stats["sentence_loss_sum"] / norm["sentence"]
    return loss, stats


def replaced_pieces(batch: Batch, xp: Any = np) -> Any:
    """[B, P] bools: the masked positions whose input piece was replaced ([MASK] or a random piece, 90% of
    them). The other 10% keep their piece, so a model that only copies its input scores there without
    having used any context. `xp` is numpy (host batches) or jax.numpy (inside the step)."""
    shown = xp.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], axis=1)
    return shown != batch["masked_lm_ids"]


def loss_norm(batch: Batch) -> dict[str, jax.Array]:
    """The whole batch's MLM and sentence-objective denominators."""
    return {
        "mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"]), 1.0),
        "sentence": jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32),
    }


def summarise(stats: dict[str, jax.Array], *, sentence_objective: str = "sop") -> dict[str, jax.Array]:
    """The logged metrics; the sentence objective's are `sop_*` or `nsp_*` (none: not logged)."""
    mlm_loss = stats["mlm_loss_sum"] / jnp.maximum(stats["mlm_weight"], 1.0)
    out = {
        "loss": mlm_loss,
        "mlm_loss": mlm_loss,
        "mlm_accuracy": stats["mlm_correct"] / jnp.maximum(stats["mlm_weight"], 1.0),
        "mlm_replaced_accuracy": (
            stats["mlm_replaced_correct"] / jnp.maximum(stats["mlm_replaced_weight"], 1.0)
        ),
    }
    if sentence_objective != "none":
        count = jnp.maximum(stats["sentence_count"], 1.0)
        out["loss"] = mlm_loss + stats["sentence_loss_sum"] / count
        out[f"{sentence_objective}_loss"] = stats["sentence_loss_sum"] / count
        out[f"{sentence_objective}_accuracy"] = stats["sentence_correct"] / count
    return out


def train_step(
    state: trainer.TrainState,
    batch: Batch,
    *,
    seed: int,
    schedule: optax.Schedule,
    grad_accum_steps: int = 1,
    sentence_objective: str = "sop",
) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
    """One MLM + sentence-objective optimizer step on one global batch (the shared step with this
    module's loss)."""
    step = trainer.make_train_step(
        functools.partial(pretraining_loss, sentence_objective=sentence_objective),
        loss_norm,
        functools.partial(summarise, sentence_objective=sentence_objective),
        seed=seed,
        schedule=schedule,
        grad_accum_steps=grad_accum_steps,
    )
    return step(state, batch)


def eval_step(params: Any, batch: Batch, *, apply_fn) -> dict[str, jax.Array]:
    """Summable statistics of one held-out batch (deterministic: no dropout)."""
    _, stats = pretraining_loss(
        params, apply_fn, batch, jax.random.key(0), {"mlm": 1.0, "sentence": 1.0}, True
    )
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
    init_params: Any = None  # host params from `init_from` (continued pretraining), else None


def model_config_from(config: ml_collections.ConfigDict) -> AlbertConfig:
    return AlbertConfig(**config.model.to_dict())


def resolve(config: ml_collections.ConfigDict, workdir: str) -> PretrainSetup:
    """Validate the config, the corpus and the vocabulary; build (or reuse) the token cache.

    Raises a ValueError/OSError subclass with a one-line message on any user mistake, before anything
    in WORKDIR is touched (except a vocabulary trained into WORKDIR when none is given).
    """
    model_config = model_config_from(config)
    init = None
    if config.init_from:
        if config.data.tokenizer:
            raise errors.ConfigError(
                "init_from brings its own vocabulary; leave data.tokenizer empty when continuing pretraining"
            )
        run_side = {k: getattr(model_config, k) for k in JAX_ONLY_FIELDS}  # the rest comes from init_from
        model_config, init, loaded_tokenizer = pretrained.load(
            config.init_from, "AlbertForPreTraining", seed=config.seed, **run_side
        )
    d = config.data
    same_names = (
        "short_seq_prob",
        "masked_lm_prob",
        "max_ngram",
        "dynamic_masking",
        "eval_fraction",
        "sentence_objective",
        "single_sentence_chunks",
        "favor_shorter_ngram",
        "whole_word_masking",
    )
    data_config = PretrainDataConfig(
        seq_len=config.seq_len, max_predictions=d.max_predictions_per_seq, **{k: d[k] for k in same_names}
    )
    if config.seq_len > model_config.max_position_embeddings:
        raise errors.ConfigError(
            f"seq_len={config.seq_len} exceeds model.max_position_embeddings={model_config.max_position_embeddings}"
        )
    spec = prepare.corpus_spec(d)
    cache_dir = prepare.default_cache_dir(d)
    if d.prepared:
        if d.tokenizer:
            raise errors.ConfigError("data.prepared brings its own vocabulary; leave data.tokenizer empty")
        tokenizer, corpus = prepare.load(d.prepared, spec, model_config.vocab_size, cache_dir)
        _check_same_vocabulary(tokenizer, loaded_tokenizer if init is not None else None, workdir, d.prepared)
        return PretrainSetup(model_config, data_config, spec, tokenizer, corpus, init)
    if init is not None:
        tokenizer = loaded_tokenizer
    else:
        tokenizer = _tokenizer(d.tokenizer, spec, model_config, workdir, cache_dir)
    tokenizer.check_vocab_size(model_config.vocab_size, "data.tokenizer")
    corpus = TokenizedCorpus.build(spec, tokenizer, cache_dir)
    return PretrainSetup(model_config, data_config, spec, tokenizer, corpus, init)


def _check_same_vocabulary(
    tokenizer: AlbertTokenizer, from_init: AlbertTokenizer | None, workdir: str, prepared: str
) -> None:
    """A prepared corpus's vocabulary must be init_from's, and the one this WORKDIR's run already uses."""
    own = workdir_lib.path(workdir, workdir_lib.VOCAB)
    for name, other in (
        ("init_from", from_init),
        (own, AlbertTokenizer(own) if own.exists() else None),
    ):
        if other is not None and other.fingerprint != tokenizer.fingerprint:
            raise errors.ConfigError(
                f"data.prepared={prepared!r} was tokenized with another vocabulary than {name}"
            )


def _tokenizer(
    path: str, spec: CorpusSpec, model_config: AlbertConfig, workdir: str, cache_dir: str
) -> AlbertTokenizer:
    """The configured spiece.model; else the one this run trained earlier; else one trained on the same
    corpus before (kept in the data cache); else train one now."""
    own = workdir_lib.path(workdir, workdir_lib.VOCAB)
    if path or jax.process_count() == 1:
        return prepare.vocabulary(path, spec, model_config.vocab_size, own, cache_dir)
    # Only process 0 writes WORKDIR's vocabulary, and every process passes the same barrier: a host that
    # looked for the file after process 0 wrote it would otherwise skip the barrier and leave the others
    # waiting at it (WORKDIR is shared).
    if jax.process_index() == 0:
        prepare.vocabulary(path, spec, model_config.vocab_size, own, cache_dir)
    multihost_utils.sync_global_devices("albert_jax: vocabulary ready")
    return AlbertTokenizer(own)


def run(
    config: ml_collections.ConfigDict, workdir: str, *, defaults: ml_collections.ConfigDict | None = None
) -> dict[str, float]:
    """Pretrain (or resume) into `workdir`; returns the final held-out metrics. `defaults`: the config
    file's values without overrides, for resuming runs older than some keys (`config_drift`)."""
    with run_lib.session(config, workdir, defaults) as ctx:
        setup = resolve(config, workdir)
        model = AlbertForPreTraining(setup.model_config)
        objective = setup.data_config.sentence_objective
        eval_fn = jax.jit(functools.partial(eval_step, apply_fn=model.apply))

        def evaluate_state(state: trainer.TrainState, step: int) -> dict[str, float]:
            metrics = evaluate(eval_fn, state.params, setup, config, ctx.make_batch)
            if metrics:
                log.info(
                    "step %d held-out: MLM accuracy %.4f (baseline %.4f), at replaced pieces %.4f (baseline %.4f)%s",
                    step,
                    metrics["mlm_accuracy"],
                    metrics["mlm_majority_accuracy"],
                    metrics["mlm_replaced_accuracy"],
                    metrics["mlm_replaced_majority_accuracy"],
                    "".join(
                        f", {k[:3].upper()} accuracy {v:.4f}"
                        for k, v in metrics.items()
                        if k in _SENTENCE_ACC
                    ),
                )
            return metrics

        data = {"source": setup.corpus_spec.describe(), "cache": setup.corpus.path}
        job = run_lib.Job(
            model=model,
            model_config=setup.model_config,
            tokenizer=setup.tokenizer,
            seed=config.seed,
            init_seq_len=config.seq_len,
            params=setup.init_params,
            loss_fn=functools.partial(pretraining_loss, sentence_objective=objective),
            norm_fn=loss_norm,
            summarise=functools.partial(summarise, sentence_objective=objective),
            train_data=_dataset(setup, config, "train"),
            evaluate=evaluate_state,
            desc="pretrain",
            run_files={workdir_lib.DATA: json.dumps(data, indent=2)},
        )
        result = run_lib.train(ctx, workdir, job)
    final_eval = result.last_eval
    if final_eval and jax.process_index() == 0:
        summary.print_summary(final_eval, model, result.state.params, setup)
    return final_eval


def _dataset(setup: PretrainSetup, config: ml_collections.ConfigDict, split: str) -> Any:
    """The train (global batch_size, `data.worker_count` workers) or eval (eval_batch_size) pipeline."""
    train = split == "train"
    return pretraining_dataset(
        setup.corpus,
        setup.data_config,
        split=split,
        global_batch_size=config.batch_size if train else config.eval_batch_size,
        seed=config.seed,
        worker_count=config.data.worker_count if train else 0,
    )


def held_out_metrics(
    params: Any,
    setup: PretrainSetup,
    config: ml_collections.ConfigDict,
    *,
    sentence_objective: str | None = None,
) -> dict[str, float]:
    """`evaluate` outside a run, in one process: the held-out metrics of `params` on examples made for
    `sentence_objective` (default: the run's own), e.g. an NSP-trained model on SOP examples."""
    if sentence_objective is not None:
        data_config = dataclasses.replace(setup.data_config, sentence_objective=sentence_objective)
        setup = dataclasses.replace(setup, data_config=data_config)
    model = AlbertForPreTraining(setup.model_config)
    eval_fn = jax.jit(functools.partial(eval_step, apply_fn=model.apply))
    return evaluate(eval_fn, params, setup, config, lambda local: jax.tree.map(jnp.asarray, local))


def evaluate(eval_fn, params, setup: PretrainSetup, config, make_batch) -> dict[str, float]:
    """Held-out MLM/SOP loss and accuracy, plus the accuracy of always predicting the most frequent
    target token (the baseline the MLM accuracy must beat), over all masked positions and over those whose
    input piece was replaced (where only the context can tell the answer)."""
    ds = _dataset(setup, config, "eval")
    totals: dict[str, float] = {}
    vocab = setup.model_config.vocab_size
    counts = np.zeros((2, vocab), np.int64)  # this process's masked targets: all, and at replaced pieces
    for i, local in enumerate(ds):
        if i >= config.eval_steps:
            break
        stats = jax.device_get(eval_fn(params, make_batch(local)))
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        ids, used = local["masked_lm_ids"], local["masked_lm_weights"] > 0
        counts[0] += np.bincount(ids[used], minlength=vocab)
        counts[1] += np.bincount(ids[used & replaced_pieces(local)], minlength=vocab)
    if not totals:
        return {}
    if jax.process_count() > 1:  # each process saw only its rows of every batch: count over all of them
        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    summed = summarise(
        {k: jnp.asarray(v) for k, v in totals.items()},
        sentence_objective=setup.data_config.sentence_objective,
    )
    out = {k: float(v) for k, v in summed.items()}
    for key, found in zip(("mlm_majority_accuracy", "mlm_replaced_majority_accuracy"), counts):
        out[key] = float(found.max() / found.sum()) if found.sum() else 0.0
    return out
