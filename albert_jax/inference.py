"""Inference from Python: fill-mask, sequence classification, extractive QA and tagging.

Each helper takes a linen module, its parameters and the tokenizer, and returns plain Python values.
Inputs are padded to a length bucket (`data.finetuning.default_buckets` of the maximum length) and
to a power-of-two number of rows, and one jitted forward (`_forward`, with the module static) serves
every call: a new text compiles only when it lands in a (module, bucket, rows) shape not seen before.
Features and post-processing are the fine-tuning tasks' own (`tasks.squad`, `tasks.ner`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from albert_jax import errors
from albert_jax.data.finetuning import bucket_for, default_buckets
from albert_jax.modeling import (
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
)
from albert_jax.tasks import ner, squad
from albert_jax.tasks.base import SEQUENCE_INPUTS
from albert_jax.tokenizer import AlbertTokenizer

MAX_ROWS = 32  # rows per forward call; fewer are padded to a power of two
_MASKED = -1e9  # logit of positions that cannot start or end an answer


@functools.partial(jax.jit, static_argnames="module")
def _forward(module: nn.Module, params: Any, input_ids, attention_mask, token_type_ids):
    return module.apply({"params": params}, input_ids, attention_mask, token_type_ids)


def _padded_rows(n: int) -> int:
    return min(MAX_ROWS, 1 << max(n - 1, 0).bit_length())


def _run(
    module: nn.Module, params: Any, inputs: dict[str, np.ndarray], max_length: int
) -> dict[str, np.ndarray]:
    """The module's outputs for every row of `inputs` ([N, max_length] arrays, right-padded), as numpy
    arrays [N, ...]. Sequence axes are cut to the bucket L that holds the longest row: [N, L, ...]."""
    n = len(inputs["input_ids"])
    length = bucket_for(int(inputs["attention_mask"].sum(axis=-1).max()), default_buckets(max_length))
    params = nn.unbox(params)
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for start in range(0, n, MAX_ROWS):
        rows = np.arange(start, min(start + MAX_ROWS, n))
        valid = len(rows)
        rows = np.concatenate([rows, np.full(_padded_rows(valid) - valid, rows[-1])])
        out = _forward(module, params, *(inputs[k][rows, :length] for k in SEQUENCE_INPUTS))
        out = jax.device_get(out)
        for field in dataclasses.fields(out):
            value = getattr(out, field.name)
            if value is not None:
                parts[field.name].append(np.asarray(value)[:valid])
    return {name: np.concatenate(values) for name, values in parts.items()}


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def _check_head(module: nn.Module, heads: tuple[type, ...], helper: str) -> None:
    if not isinstance(module, heads):
        names = " or ".join(h.__name__ for h in heads)
        raise TypeError(f"{helper} needs an {names}, got {type(module).__name__}")


def _label_names(num_labels: int, labels: Sequence[str] | None, default: Sequence[str] | None) -> list[str]:
    names = list(labels) if labels is not None else list(default or [])
    if not names:
        return [f"LABEL_{i}" for i in range(num_labels)]
    if len(names) != num_labels:
        raise errors.ConfigError(f"{len(names)} label names {names} for a head with num_labels={num_labels}")
    return names


# --- the helpers -----------------------------------------------------------------------------------


def fill_mask(
    module: AlbertForPreTraining | AlbertForMaskedLM,
    params: Any,
    tokenizer: AlbertTokenizer,
    text: str,
    top_k: int = 5,
) -> list[list[tuple[str, float]]]:
    """Top-k predictions for each [MASK] in `text`: one list of (piece, probability) per mask, in order
    ([] when the text has no [MASK]). Raises ValueError for a text longer than the model's positions."""
    _check_head(module, (AlbertForPreTraining, AlbertForMaskedLM), "fill_mask")
    max_length = module.config.max_position_embeddings
    enc = tokenizer(text, max_length=max_length, padding="max_length", return_tensors="np")
    if enc["input_ids"].shape[1] > max_length:
        raise errors.ConfigError(
            f"the text is {enc['input_ids'].shape[1]} tokens long; the model has {max_length} positions"
        )
    positions = np.flatnonzero(enc["input_ids"][0] == tokenizer.mask_token_id)
    if not len(positions):
        return []
    out = _run(module, params, enc, max_length)
    logits = out["prediction_logits" if "prediction_logits" in out else "logits"][0]
    result = []
    for probs in _softmax(logits[positions]):
        top = np.argsort(-probs, kind="stable")[:top_k]
        result.append([(tokenizer.convert_ids_to_tokens(int(i)), float(probs[i])) for i in top])
    return result


def classify(
    module: AlbertForSequenceClassification,
    params: Any,
    tokenizer: AlbertTokenizer,
    texts_or_pairs: str | Sequence[str | tuple[str, str]],
    labels: Sequence[str] | None = None,
    *,
    task: str | None = None,
    max_seq_length: int | None = None,
) -> list[tuple[str, dict[str, float]]] | list[float]:
    """Per input, (label, {label: probability}); a regression head (num_labels=1) gives its float score.

    Inputs: one text, or a list of texts and/or (text, text_pair) tuples, truncated longest-first to
    `max_seq_length` (default: the model's positions). Label names: `labels`, else those of the GLUE
    `task` (e.g. "mnli": contradiction, entailment, neutral), else the checkpoint's own
    (`config.label_names`, from its id2label), else LABEL_i.
    """
    _check_head(module, (AlbertForSequenceClassification,), "classify")
    items = [texts_or_pairs] if isinstance(texts_or_pairs, str) else list(texts_or_pairs)
    if not items:
        return []
    num_labels = module.config.num_labels
    if num_labels == 1 and labels is not None:
        raise errors.ConfigError("a regression head (num_labels=1) returns scores; it takes no label names")
    task_labels = module.config.label_names or None
    if task is not None:
        from albert_jax.tasks.glue import get_spec

        task_labels = get_spec(task).labels
    names = _label_names(num_labels, labels, task_labels) if num_labels > 1 else []
    max_length = max_seq_length or module.config.max_position_embeddings
    inputs = _encode_texts(tokenizer, items, max_length)
    logits = _run(module, params, inputs, max_length)["logits"]
    if num_labels == 1:
        return [float(row[0]) for row in logits]
    out = []
    for probs in _softmax(logits):
        out.append((names[int(np.argmax(probs))], {n: float(p) for n, p in zip(names, probs)}))
    return out


def _encode_texts(tokenizer: AlbertTokenizer, items: list, max_length: int) -> dict[str, np.ndarray]:
    """Single texts and pairs, encoded in two groups and put back in input order."""
    single = [i for i, item in enumerate(items) if isinstance(item, str)]
    pairs = [i for i, item in enumerate(items) if not isinstance(item, str)]
    for i in pairs:
        if len(items[i]) != 2 or not all(isinstance(t, str) for t in items[i]):
            raise TypeError(f"input {i} must be a text or a (text, text_pair) tuple, got {items[i]!r}")
    common = {"max_length": max_length, "truncation": True, "padding": "max_length", "return_tensors": "np"}
    encoded = {k: np.zeros((len(items), max_length), np.int32) for k in SEQUENCE_INPUTS}
    for rows, text, text_pair in (
        (single, [items[i] for i in single], None),
        (pairs, [items[i][0] for i in pairs], [items[i][1] for i in pairs]),
    ):
        if rows:
            enc = tokenizer(text, text_pair, **common)
            for k in SEQUENCE_INPUTS:
                encoded[k][rows] = enc[k]
    return encoded


def answer(
    module: AlbertForQuestionAnswering,
    params: Any,
    tokenizer: AlbertTokenizer,
    question: str,
    context: str,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_answer_length: int = 30,
    *,
    max_query_length: int = 64,
    n_best_size: int = 20,
) -> dict[str, Any]:
    """The best answer span in `context`: {"text", "start", "end", "score"}, with `context[start:end] ==
    text` and `score` its probability among the n-best spans (as in SQuAD's nbest_predictions.json).

    A long context is read in windows every `doc_stride` tokens, each token scored from the window
    where it has most context (SQuAD's features and post-processing). `max_seq_length` is capped at the
    model's positions. There is always a span (SQuAD v1.1 style) unless the context has no tokens.
    """
    _check_head(module, (AlbertForQuestionAnswering,), "answer")
    max_length = min(max_seq_length, module.config.max_position_embeddings)
    example = squad.SquadExample("0", question, context, [])
    features = squad.convert_examples_to_features(
        [example], tokenizer, max_length, doc_stride, max_query_length
    )
    out = _run(module, params, features.inputs, max_length)
    # Only context tokens can be answers: keep the others out of the n-best starts and ends.
    cannot = features.inputs["p_mask"][:, : out["start_logits"].shape[1]].astype(bool)
    start_logits = np.where(cannot, _MASKED, out["start_logits"])
    end_logits = np.where(cannot, _MASKED, out["end_logits"])
    result = squad.postprocess_default(
        [example],
        features.meta,
        start_logits,
        end_logits,
        version_2=False,
        n_best_size=n_best_size,
        max_answer_length=max_answer_length,
    )
    span = result.spans.get("0")
    if span is None:
        return {"text": "", "start": 0, "end": 0, "score": 0.0}
    return {
        "text": context[span[0] : span[1]],
        "start": span[0],
        "end": span[1],
        "score": float(result.nbest["0"][0]["probability"]),
    }


def tag(
    module: AlbertForTokenClassification,
    params: Any,
    tokenizer: AlbertTokenizer,
    tokens: str | Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    max_seq_length: int | None = None,
) -> list[str]:
    """One label per word of `tokens` (a list of words, or a text split on whitespace), predicted at the
    word's first sub-token; a sentence longer than `max_seq_length` (default: the model's positions)
    is read in overlapping windows (NER's features). Label names: `labels`, else the CoNLL-2003 tags
    when the head has 9 labels, else LABEL_i."""
    _check_head(module, (AlbertForTokenClassification,), "tag")
    words = tokens.split() if isinstance(tokens, str) else [str(w) for w in tokens]
    if not words:
        return []
    num_labels = module.config.num_labels
    names = _label_names(num_labels, labels, ner.LABELS if num_labels == len(ner.LABELS) else None)
    max_length = max_seq_length or module.config.max_position_embeddings
    sentence = ner.Sentence(0, tuple(words), ("O",) * len(words))  # the tags are not read
    features = ner.ner_features([sentence], tokenizer, max_length, training=False)
    logits = _run(module, params, features.inputs, max_length)["logits"]
    predicted = np.argmax(logits, axis=-1)
    predicted = np.pad(predicted, ((0, 0), (0, max_length - predicted.shape[1])))
    return [names[int(i)] for i in ner.assemble_words(features.meta, predicted, [len(words)])[0]]
