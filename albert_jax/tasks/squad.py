"""SQuAD v1.1 / v2.0: reading, doc-stride features with offsets, post-processing and the official metrics.

- Reading: official JSON files (`read_squad`) or the Hugging Face hub (`load_hf`) → `SquadExample`s.
- Features (`convert_examples_to_features`): `[CLS] question [SEP] context-window [SEP]`, windows over
  the context tokens every `doc_stride` tokens (ALBERT's sliding window), each context token's
  character span in the original context, and the original's max-context rule per window token.
- Post-processing: `postprocess_default` for HF's `AlbertForQuestionAnswering` (start/end logits; v2 null
  score = min over windows of the [CLS] start+end logits) and `postprocess_albert_v2` for the original
  ALBERT v2 head (`squad_head.AlbertForQuestionAnsweringV2`: 5×5 beam, null score = min cls_logits).
- Metrics: `squad_v1_metrics` / `squad_v2_metrics`, re-implementations of the official evaluate-v1.1.py
  and evaluate-v2.0.py (normalisation, max over ground truths, no-answer threshold, best-threshold search).
- `SquadTask`: the `Task` that wires these into the fine-tuning loop.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from albert_jax import errors
from albert_jax.tasks.base import Arrays, DataError, Features, OutDir, Task, cross_entropy
from albert_jax.tasks.squad_head import AlbertForQuestionAnsweringV2

log = logging.getLogger(__name__)

VERSIONS = ("1.1", "2.0")
QA_HEADS = ("default", "albert_v2")
HF_DATASETS = {"1.1": "rajpurkar/squad", "2.0": "rajpurkar/squad_v2"}
# Score of the best non-null answer when an example has no valid span (the original's nonce log-probs).
_NO_SPAN_SCORE = -1e6


# --- examples --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadExample:
    """One question on one context. `answers`: (text, start_char) pairs; empty for unanswerable ones."""

    qas_id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    is_impossible: bool = False


class _Mismatches:
    """Counts training answers whose `answer_start` does not point at their text; warns once."""

    def __init__(self, source: str):
        self.source, self.count, self.first_id = source, 0, None

    def keep(self, context: str, answers: list[tuple[str, int]], qas_id: str) -> list[tuple[str, int]]:
        kept = [(t, s) for t, s in answers if context[s : s + len(t)] == t]
        if len(kept) < len(answers):
            self.count += len(answers) - len(kept)
            self.first_id = self.first_id if self.first_id is not None else qas_id
        return kept

    def warn(self) -> None:
        if self.count:
            log.warning(
                "%s: skipped %d training answer(s) whose text is not at answer_start in the context "
                "(first: question id %s)",
                self.source,
                self.count,
                self.first_id,
            )


def _example(
    qas_id: str,
    question: str,
    context: str,
    answers: list[tuple[str, int]],
    is_impossible: bool,
    training: bool,
    mismatches: _Mismatches,
) -> SquadExample | None:
    if training:
        if is_impossible:
            answers = []  # v2 training: the target is [CLS]
        else:
            answers = mismatches.keep(context, answers, qas_id)
            if not answers:
                return None
    return SquadExample(qas_id, question, context, answers, is_impossible)


def _expect(value: Any, kind: type | tuple[type, ...], path: str, source: str, what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DataError(f"{source}: {path} must be {what}, got {type(value).__name__}")
    return value


def _field(obj: Mapping, key: str, kind, path: str, source: str, what: str) -> Any:
    if key not in obj:
        raise DataError(f"{source}: {path} has no {key!r} field")
    return _expect(obj[key], kind, f"{path}.{key}", source, what)


def parse_squad(data: Any, training: bool, source: str = "<json>") -> list[SquadExample]:
    """Examples from a loaded official SQuAD JSON object (`{"version", "data": [...]}`).

    Training drops answers whose text is not at `answer_start` (one warning with the count and the
    first id) and questions left without an answer; unanswerable questions (`is_impossible`, or no
    answers) keep `answers=[]`.
    """
    if not isinstance(data, dict) or "data" not in data:
        raise DataError(
            f"{source}: no top-level 'data' field; a SQuAD file is "
            '{"version": ..., "data": [{"title", "paragraphs": [...]}]}'
        )
    articles = _expect(data["data"], list, "data", source, "a list of articles")
    examples: list[SquadExample] = []
    mismatches = _Mismatches(source)
    for a, article in enumerate(articles):
        path = f"data[{a}]"
        _expect(article, dict, path, source, "an object")
        for p, paragraph in enumerate(_field(article, "paragraphs", list, path, source, "a list")):
            ppath = f"{path}.paragraphs[{p}]"
            _expect(paragraph, dict, ppath, source, "an object")
            context = _field(paragraph, "context", str, ppath, source, "a string")
            for q, qa in enumerate(_field(paragraph, "qas", list, ppath, source, "a list")):
                qpath = f"{ppath}.qas[{q}]"
                _expect(qa, dict, qpath, source, "an object")
                qas_id = str(_field(qa, "id", (str, int), qpath, source, "a string"))
                question = _field(qa, "question", str, qpath, source, "a string")
                raw_answers = qa.get("answers", [])
                _expect(raw_answers, list, f"{qpath}.answers", source, "a list")
                answers = []
                for n, ans in enumerate(raw_answers):
                    apath = f"{qpath}.answers[{n}]"
                    _expect(ans, dict, apath, source, "an object")
                    text = _field(ans, "text", str, apath, source, "a string")
                    start = _field(ans, "answer_start", int, apath, source, "an integer")
                    answers.append((text, start))
                impossible = _expect(
                    qa.get("is_impossible", not answers), bool, f"{qpath}.is_impossible", source, "a boolean"
                )
                ex = _example(qas_id, question, context, answers, impossible, training, mismatches)
                if ex is not None:
                    examples.append(ex)
    mismatches.warn()
    return examples


def read_squad(path: str | os.PathLike, training: bool) -> list[SquadExample]:
    """Examples of an official SQuAD v1.1/v2.0 JSON file; DataError (one line) on bad files."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise DataError(f"{source}: no such SQuAD file")
    try:
        with open(source, encoding="utf-8-sig") as f:  # a byte-order mark is fine
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return parse_squad(data, training, source)


def examples_from_hf(
    rows: Iterable[Mapping[str, Any]], training: bool, source: str = "hf"
) -> list[SquadExample]:
    """Examples from rows of the HF `rajpurkar/squad(_v2)` datasets: id, question, context,
    answers {"text": [...], "answer_start": [...]}; no answers means unanswerable."""
    examples = []
    mismatches = _Mismatches(source)
    for row in rows:
        answers = list(zip(row["answers"]["text"], (int(s) for s in row["answers"]["answer_start"])))
        ex = _example(
            str(row["id"]), row["question"], row["context"], answers, not answers, training, mismatches
        )
        if ex is not None:
            examples.append(ex)
    mismatches.warn()
    return examples


def load_hf(version: str, split: str) -> list[SquadExample]:
    """`datasets.load_dataset("rajpurkar/squad" | "rajpurkar/squad_v2", split=split)` as examples."""
    if version not in HF_DATASETS:
        raise errors.ConfigError(f"SQuAD version must be one of {VERSIONS}, got {version!r}")
    import datasets  # only needed without local files

    name = HF_DATASETS[version]
    try:
        rows = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 (offline, unknown split, …: one line for the user)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"could not load {name} split {split!r} from the Hugging Face hub ({type(e).__name__}: {first}); "
            "pass a local SQuAD JSON file instead"
        ) from None
    return examples_from_hf(rows, training=split == "train", source=f"{name}[{split}]")


# --- features --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadMeta:
    """Host-side data of each feature row, for post-processing.

    `example_index` [N]: the row's example. `offsets` [N, T, 2]: (start, end) character span of each
    context token in its example's context, -1 at every other position ([CLS], question, [SEP],
    padding). `token_is_max_context` [N, T]: whether this window is the token's max-context window.
    `window_start` [N]: index of the window's first token among its example's context tokens.
    """

    example_index: np.ndarray
    offsets: np.ndarray
    token_is_max_context: np.ndarray
    window_start: np.ndarray


def doc_windows(num_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over `num_tokens` context tokens, as the original's sliding window."""
    windows, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens)
        windows.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return windows or [(0, 0)]  # an empty context still gets one (empty) window


def max_context_mask(windows: Sequence[tuple[int, int]]) -> list[list[bool]]:
    """Per window, per token: is this the token's max-context window? Score = min(left, right context)
    + 0.01·window length; the first best window wins ties (the original's `_check_is_max_context`)."""
    best: dict[int, tuple[float, int]] = {}
    for w, (start, length) in enumerate(windows):
        for pos in range(start, start + length):
            score = min(pos - start, start + length - 1 - pos) + 0.01 * length
            if pos not in best or score > best[pos][0]:
                best[pos] = (score, w)
    return [[best[p][1] == w for p in range(s, s + n)] for w, (s, n) in enumerate(windows)]


def answer_token_span(
    offsets: Sequence[tuple[int, int]], start_char: int, text: str
) -> tuple[int, int] | None:
    """(first, last) context tokens covering the characters [start_char, start_char + len(text)), or
    None when no token does (e.g. an all-whitespace answer). Zero-width tokens are never chosen."""
    end_char = start_char + len(text)
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        if first is None and e > start_char:
            first = i
        if s < end_char:
            last = i
    if first is None or last is None or last < first:
        return None
    return first, last


def convert_examples_to_features(
    examples: Sequence[SquadExample],
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    training: bool = False,
) -> Features:
    """Every window of every example → one row `[CLS] question [SEP] window [SEP]` padded to max_seq_length.

    Inputs: input_ids / attention_mask / token_type_ids / p_mask [N, T] int32 (p_mask 1 where a token
    can't be in an answer: question, [SEP], padding; 0 for context tokens and [CLS], which is the
    no-answer target of the original v2 head), start_positions / end_positions [N] int32 (the first
    answer's tokens when it lies wholly inside the window, else 0/0 = [CLS]), is_impossible [N] float32
    (1 for those 0/0 rows). Training and eval rows are built the same way (every window is kept,
    as the original does); `training` is accepted for the Task API. Meta: `SquadMeta`.
    """
    del training
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    rows: dict[str, list] = collections.defaultdict(list)
    context_cache: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    t = max_seq_length
    for ex_index, ex in enumerate(examples):
        q_ids = tokenizer.encode_with_offsets(ex.question)[0][:max_query_length]
        if ex.context not in context_cache:
            context_cache[ex.context] = tokenizer.encode_with_offsets(ex.context)
        c_ids, c_offsets = context_cache[ex.context]
        max_tokens = max_seq_length - len(q_ids) - 3
        if max_tokens < 1:
            raise errors.ConfigError(
                f"max_seq_length={max_seq_length} leaves no room for context after a {len(q_ids)}-token "
                f"question; lower max_query_length ({max_query_length})"
            )
        span = None
        if ex.answers and not ex.is_impossible:
            text, start_char = ex.answers[0]
            span = answer_token_span(c_offsets, start_char, text)
        windows = doc_windows(len(c_ids), max_tokens, doc_stride)
        for (w_start, w_len), is_max in zip(windows, max_context_mask(windows)):
            doc_offset = len(q_ids) + 2
            n = doc_offset + w_len + 1
            ids = np.full(t, pad_id, np.int32)
            ids[:n] = [cls_id, *q_ids, sep_id, *c_ids[w_start : w_start + w_len], sep_id]
            types = np.zeros(t, np.int32)
            types[doc_offset:n] = 1
            mask = np.zeros(t, np.int32)
            mask[:n] = 1
            p_mask = np.ones(t, np.int32)
            p_mask[0] = 0
            p_mask[doc_offset : doc_offset + w_len] = 0
            offsets = np.full((t, 2), -1, np.int32)
            if w_len:
                offsets[doc_offset : doc_offset + w_len] = c_offsets[w_start : w_start + w_len]
            max_ctx = np.zeros(t, bool)
            max_ctx[doc_offset : doc_offset + w_len] = is_max
            start = end = 0
            if span is not None and w_start <= span[0] and span[1] < w_start + w_len:
                start, end = span[0] - w_start + doc_offset, span[1] - w_start + doc_offset
            rows["input_ids"].append(ids)
            rows["attention_mask"].append(mask)
            rows["token_type_ids"].append(types)
            rows["p_mask"].append(p_mask)
            rows["start_positions"].append(start)
            rows["end_positions"].append(end)
            rows["is_impossible"].append(float(start == 0))
            rows["example_index"].append(ex_index)
            rows["window_start"].append(w_start)
            rows["offsets"].append(offsets)
            rows["token_is_max_context"].append(max_ctx)

    def stack(name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.asarray(rows[name], dtype).reshape((-1, *shape))

    inputs = {name: stack(name, np.int32, (t,)) for name in ("input_ids", "attention_mask", "token_type_ids")}
    inputs["p_mask"] = stack("p_mask", np.int32, (t,))
    inputs["start_positions"] = stack("start_positions", np.int32, ())
    inputs["end_positions"] = stack("end_positions", np.int32, ())
    inputs["is_impossible"] = stack("is_impossible", np.float32, ())
    meta = SquadMeta(
        example_index=stack("example_index", np.int32, ()),
        offsets=stack("offsets", np.int32, (t, 2)),
        token_is_max_context=stack("token_is_max_context", bool, (t,)),
        window_start=stack("window_start", np.int32, ()),
    )
    return Features(inputs=inputs, meta=meta)


# --- post-processing -------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadPredictions:
    """`predictions` {id: text} (at the threshold), `nbest` {id: [{text, probability, start_logit,
    end_logit}]}, `null_odds` {id: float} (v2 only, else None) and `best_non_null` {id: the best
    non-empty answer, "" if there is none}: what the threshold search needs. `spans` {id: (start, end)}:
    the character span of `best_non_null` in the context (absent when there is none)."""

    predictions: dict[str, str]
    nbest: dict[str, list[dict[str, Any]]]
    null_odds: dict[str, float] | None
    best_non_null: dict[str, str]
    spans: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike) -> None:
        """predictions.json, nbest_predictions.json and (v2) null_odds.json in `out_dir`."""
        out = epath.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"predictions.json": self.predictions, "nbest_predictions.json": self.nbest}
        if self.null_odds is not None:
            files["null_odds.json"] = self.null_odds
        for name, obj in files.items():
            with (out / name).open("w") as f:
                json.dump(obj, f, indent=2, ensure_ascii=False)
                f.write("\n")


def _features_by_example(meta: SquadMeta, num_examples: int) -> list[list[int]]:
    by_example: list[list[int]] = [[] for _ in range(num_examples)]
    for row, ex in enumerate(meta.example_index.tolist()):
        by_example[ex].append(row)
    return by_example


def _valid_spans(
    meta: SquadMeta, row: int, starts: np.ndarray, ends: np.ndarray, max_answer_length: int
) -> np.ndarray:
    """Which (start, end) token pairs of window `row` can be answers: both context tokens, end ≥ start,
    length ≤ max_answer_length, start is max-context. `starts`/`ends` broadcast ('K1,K1K2->K1K2')."""
    t = meta.offsets.shape[1]
    starts, ends = np.broadcast_arrays(starts, ends)
    in_range = (starts >= 0) & (starts < t) & (ends >= 0) & (ends < t)
    s, e = np.where(in_range, starts, 0), np.where(in_range, ends, 0)
    context = meta.offsets[row, :, 0] >= 0
    return (
        in_range
        & context[s]
        & context[e]
        & (e >= s)
        & (e - s + 1 <= max_answer_length)
        & meta.token_is_max_context[row, s]
    )


def _softmax(scores: Sequence[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


_Candidate = tuple[float, float, int, int, int]  # (start score, end score, row, start token, end token)


def _nbest(
    context: str,
    meta: SquadMeta,
    candidates: list[_Candidate],
    n_best_size: int,
) -> list[dict[str, Any]]:
    """Candidates (start score, end score, row, start, end) → the n best distinct non-empty texts, with
    their character span (`start_char`, `end_char`; `_finish` leaves those out of the n-best files)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for s_score, e_score, row, start, end in sorted(candidates, key=lambda c: c[0] + c[1], reverse=True):
        if len(out) >= n_best_size:
            break
        start_char, end_char = int(meta.offsets[row, start, 0]), int(meta.offsets[row, end, 1])
        text = context[start_char:end_char]
        if not text.strip() or text in seen:  # a span of zero-width tokens has no text
            continue
        seen.add(text)
        out.append(
            {
                "text": text,
                "start_logit": float(s_score),
                "end_logit": float(e_score),
                "start_char": start_char,
                "end_char": end_char,
            }
        )
    return out


def _finish(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not entries:
        entries = [{"text": "", "start_logit": _NO_SPAN_SCORE / 2, "end_logit": _NO_SPAN_SCORE / 2}]
    probs = _softmax([e["start_logit"] + e["end_logit"] for e in entries])
    return [
        {"text": e["text"], "probability": p, "start_logit": e["start_logit"], "end_logit": e["end_logit"]}
        for e, p in zip(entries, probs)
    ]


def _with_null(entries: list[dict[str, Any]], null_entry: dict[str, Any], n_best_size: int) -> list[dict]:
    """The n-best list with the null entry merged in by score, kept even when it would fall off the end."""
    entries = sorted(entries + [null_entry], key=lambda e: e["start_logit"] + e["end_logit"], reverse=True)
    if null_entry not in entries[:n_best_size]:
        entries = entries[: n_best_size - 1] + [null_entry]
    return entries[:n_best_size]


def _postprocess(
    examples: Sequence[SquadExample],
    meta: SquadMeta,
    version_2: bool,
    n_best_size: int,
    threshold: float,
    window_candidates: Callable[[int], Iterable[_Candidate]],
    null: Callable[[list[int], float], tuple[float, dict[str, Any] | None]],
) -> SquadPredictions:
    """The loop both heads share: per example, candidates from every window → n-best → prediction.

    `window_candidates(row)`: the valid spans of one window. `null(rows, best_score)` (v2 only):
    `(null_odds, null n-best entry or None)` for an example's windows, given its best non-null score
    (`_NO_SPAN_SCORE` when there is none). v2 predicts "" when null_odds > `threshold`.
    """
    preds, nbest_json, null_odds, non_null, spans = {}, {}, {}, {}, {}
    for ex, rows in zip(examples, _features_by_example(meta, len(examples))):
        candidates = [c for row in rows for c in window_candidates(row)]
        entries = _nbest(ex.context, meta, candidates, n_best_size)
        best = entries[0] if entries else None
        non_null[ex.qas_id] = best["text"] if best else ""
        if best:
            spans[ex.qas_id] = (best["start_char"], best["end_char"])
        if version_2 and rows:
            best_score = best["start_logit"] + best["end_logit"] if best else _NO_SPAN_SCORE
            null_odds[ex.qas_id], null_entry = null(rows, best_score)
            if null_entry is not None:
                entries = _with_null(entries, null_entry, n_best_size)
            preds[ex.qas_id] = "" if best is None or null_odds[ex.qas_id] > threshold else best["text"]
        else:
            preds[ex.qas_id] = non_null[ex.qas_id]
        nbest_json[ex.qas_id] = _finish(entries)
    return SquadPredictions(preds, nbest_json, null_odds if version_2 else None, non_null, spans)


def postprocess_default(
    examples: Sequence[SquadExample],
    meta: SquadMeta,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> SquadPredictions:
    """Answers from start/end logits [N, T] of HF's `AlbertForQuestionAnswering` (BERT-style).

    Per window: the n_best_size best starts × ends, valid spans only (`_valid_spans`); score = start
    logit + end logit; text = context[start token's start offset : end token's end offset]. v2: the
    null score is the minimum over windows of start_logit[CLS] + end_logit[CLS], the null entry is in
    the n-best list, null_odds = null score − best non-null score, and the prediction is "" when
    null_odds > null_score_diff_threshold.
    """
    start_logits, end_logits = np.asarray(start_logits, np.float32), np.asarray(end_logits, np.float32)

    def window_candidates(row: int) -> list[_Candidate]:
        s_log, e_log = start_logits[row], end_logits[row]
        starts = np.argsort(-s_log, kind="stable")[:n_best_size]
        ends = np.argsort(-e_log, kind="stable")[:n_best_size]
        valid = _valid_spans(meta, row, starts[:, None], ends[None, :], max_answer_length)
        return [
            (float(s_log[starts[i]]), float(e_log[ends[j]]), row, int(starts[i]), int(ends[j]))
            for i, j in zip(*np.nonzero(valid))
        ]

    def null(rows: list[int], best_score: float) -> tuple[float, dict[str, Any]]:
        row = min(rows, key=lambda r: start_logits[r, 0] + end_logits[r, 0])  # the first minimum
        s0, e0 = float(start_logits[row, 0]), float(end_logits[row, 0])
        entry = {"text": "", "start_logit": s0, "end_logit": e0}
        return float(start_logits[row, 0] + end_logits[row, 0]) - best_score, entry

    return _postprocess(
        examples, meta, version_2, n_best_size, null_score_diff_threshold, window_candidates, null
    )


def postprocess_albert_v2(
    examples: Sequence[SquadExample],
    meta: SquadMeta,
    outputs: Mapping[str, np.ndarray],
    version_2: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_threshold: float = 0.0,
) -> SquadPredictions:
    """Answers from the original ALBERT v2 head's beam (`start_top_log_probs`/`start_top_index` [N, K1],
    `end_top_log_probs`/`end_top_index` [N, K1, K2], `cls_logits` [N]), as the original's
    accumulate/write_predictions_v2.

    Candidates: the K1×K2 beam's valid spans, score = start log-prob + end log-prob (the n-best
    entries' start_logit/end_logit hold these log-probs). The null score is the minimum over windows
    of cls_logits; null_odds = that score (not a difference), and v2 predicts "" when it is >
    `null_score_threshold` (the original compares the cls score itself with the threshold).
    """
    s_lp = np.asarray(outputs["start_top_log_probs"], np.float32)
    s_idx = np.asarray(outputs["start_top_index"])
    e_lp = np.asarray(outputs["end_top_log_probs"], np.float32)
    e_idx = np.asarray(outputs["end_top_index"])
    cls = np.asarray(outputs["cls_logits"], np.float32)

    def window_candidates(row: int) -> list[_Candidate]:
        valid = _valid_spans(meta, row, s_idx[row][:, None], e_idx[row], max_answer_length)
        return [
            (float(s_lp[row, i]), float(e_lp[row, i, j]), row, int(s_idx[row, i]), int(e_idx[row, i, j]))
            for i, j in zip(*np.nonzero(valid))
        ]

    def null(rows: list[int], best_score: float) -> tuple[float, None]:
        return float(cls[rows].min()), None  # no null entry in the n-best list

    return _postprocess(examples, meta, version_2, n_best_size, null_score_threshold, window_candidates, null)


# --- official metrics ------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """The official normalisation: lower case, drop ASCII punctuation, articles a/an/the, extra whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_score(gold: str, pred: str) -> int:
    """1 when the normalised texts are equal."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str, empty_matches_empty: bool = True) -> float:
    """Bag-of-tokens F1 of the normalised texts. v2 (`empty_matches_empty`): 1 when both are empty, 0
    when only one is; v1 scores any empty side 0."""
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if empty_matches_empty and (not gold_toks or not pred_toks):
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _gold(examples: Sequence[Any]) -> list[tuple[str, list[str]]]:
    """(id, answer texts) from SquadExamples, or from the articles of an official file's `data`."""
    out = []
    for item in examples:
        if isinstance(item, SquadExample):
            out.append((item.qas_id, [t for t, _ in item.answers]))
        else:
            for paragraph in item["paragraphs"]:
                for qa in paragraph["qas"]:
                    out.append((str(qa["id"]), [a["text"] for a in qa["answers"]]))
    return out


def squad_v1_metrics(dataset_examples: Sequence[Any], predictions: Mapping[str, str]) -> dict[str, float]:
    """evaluate-v1.1.py: {"exact_match", "f1"} on 0–100, max over ground truths; a missing prediction
    scores 0. `dataset_examples`: SquadExamples or an official file's `data` list."""
    gold = _gold(dataset_examples)
    em = f1 = 0.0
    missing = [qid for qid, _ in gold if qid not in predictions]
    if missing:
        log.warning("%d question(s) have no prediction and score 0 (first: %s)", len(missing), missing[0])
    for qid, truths in gold:
        if qid not in predictions or not truths:
            continue
        pred = predictions[qid]
        em += max(exact_score(t, pred) for t in truths)
        f1 += max(f1_score(t, pred, empty_matches_empty=False) for t in truths)
    total = max(len(gold), 1)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _best_threshold(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """The official `find_best_thresh`: answer every question with na_prob ≤ t, pick the t (one of the
    na_probs, or 0.0) that maximises the total score; returns (score on 0–100, t)."""
    score = best = sum(1 for v in has_ans.values() if not v)  # answering nothing
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            score += scores[qid]
        else:
            score += -1 if preds[qid] else 0
        if score > best:
            best, best_thresh = score, na_probs[qid]
    return 100.0 * best / len(scores), float(best_thresh)


def squad_v2_metrics(
    examples: Sequence[Any],
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """evaluate-v2.0.py with its na-prob file: a question is predicted unanswerable when its na_prob >
    na_prob_thresh; exact/f1 (0–100) and total, HasAns_* / NoAns_* (when there are such questions), and
    best_exact/best_f1 with their thresholds from the official search over na_probs. Gold answers that
    normalise to "" are dropped; no gold answer means the only correct answer is "". Without
    `na_probs` every question's is 0.0 (as the script without a file). A missing prediction counts
    as "" (the script would skip it in `total` and fail on HasAns/NoAns).
    """
    gold = _gold(examples)
    missing = [qid for qid, _ in gold if qid not in predictions]
    if missing:
        log.warning(
            "%d question(s) have no prediction and count as no-answer (first: %s)", len(missing), missing[0]
        )
    preds = {qid: predictions.get(qid, "") for qid, _ in gold}
    has_ans = {qid: bool(truths) for qid, truths in gold}
    probs = {qid: float((na_probs or {}).get(qid, 0.0)) for qid, _ in gold}
    exact_raw, f1_raw = {}, {}
    for qid, truths in gold:
        truths = [t for t in truths if normalize_answer(t)] or [""]
        exact_raw[qid] = float(max(exact_score(t, preds[qid]) for t in truths))
        f1_raw[qid] = max(f1_score(t, preds[qid]) for t in truths)

    def thresholded(raw: dict[str, float]) -> dict[str, float]:
        return {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact_t, f1_t = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids: list[str], prefix: str = "") -> dict[str, float]:
        n = len(qids)
        return {
            f"{prefix}exact": 100.0 * sum(exact_t[q] for q in qids) / n,
            f"{prefix}f1": 100.0 * sum(f1_t[q] for q in qids) / n,
            f"{prefix}total": float(n),
        }

    if not gold:
        raise ValueError("squad_v2_metrics needs at least one question")
    out = summary(list(exact_t))
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        qids = [q for q in exact_t if has_ans[q] == wanted]
        if qids:
            out.update(summary(qids, prefix))
    out["best_exact"], out["best_exact_thresh"] = _best_threshold(preds, exact_raw, probs, has_ans)
    out["best_f1"], out["best_f1_thresh"] = _best_threshold(preds, f1_raw, probs, has_ans)
    return out


# --- the task --------------------------------------------------------------------------------------


class SquadTask(Task):
    """SQuAD v1.1 / v2.0 span extraction with HF's QA head (`qa_head="default"`) or the original
    ALBERT v2 head (`"albert_v2"`, `squad_head.AlbertForQuestionAnsweringV2`).

    Files are official SQuAD JSON; without one, the split comes from the HF hub. v2 evaluation: the
    reported exact/f1 are at `null_score_diff_threshold` (default head: on null − best non-null
    score; albert_v2 head: on the min cls logit), best_* from the official search over null_odds
    applied to the best non-null answers (as the original's evaluate_v2).
    """

    selection_metric = "f1"
    sequence_inputs = ("p_mask",)

    def __init__(
        self,
        version: str = "2.0",
        train_file: str | None = None,
        predict_file: str | None = None,
        doc_stride: int = 128,
        max_query_length: int = 64,
        n_best_size: int = 20,
        max_answer_length: int = 30,
        qa_head: str = "default",
        null_score_diff_threshold: float = 0.0,
    ):
        version = str(version)
        if version not in VERSIONS:
            raise errors.ConfigError(f"SQuAD version must be one of {VERSIONS}, got {version!r}")
        if qa_head not in QA_HEADS:
            raise errors.ConfigError(f"qa_head must be one of {QA_HEADS}, got {qa_head!r}")
        for name, value in (
            ("doc_stride", doc_stride),
            ("max_query_length", max_query_length),
            ("n_best_size", n_best_size),
            ("max_answer_length", max_answer_length),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise errors.ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.version, self.train_file, self.predict_file = version, train_file, predict_file
        self.doc_stride, self.max_query_length = doc_stride, max_query_length
        self.n_best_size, self.max_answer_length = n_best_size, max_answer_length
        self.qa_head, self.null_score_diff_threshold = qa_head, float(null_score_diff_threshold)
        self.name = f"squad{version}"
        if qa_head == "default":
            self.head = "AlbertForQuestionAnswering"
            self.token_outputs = ("start_logits", "end_logits")
        else:
            self.head = AlbertForQuestionAnsweringV2
            self.token_outputs = ()  # top-k indices and log-probs, not per-token arrays

    @property
    def num_labels(self) -> int:
        return 2

    def splits(self) -> dict[str, str]:
        return {"train": "train", "dev": "eval"}

    def read(self, split: str) -> list[SquadExample]:
        if split == "train":
            path, hf_split = self.train_file, "train"
        elif split == "dev":
            path, hf_split = self.predict_file, "validation"
        else:
            raise errors.ConfigError(f"unknown SQuAD split {split!r}; splits are {sorted(self.splits())}")
        training = split == "train"
        return read_squad(path, training) if path else load_hf(self.version, hf_split)

    def features(
        self, examples: Sequence[SquadExample], tokenizer, max_seq_length: int, training: bool
    ) -> Features:
        return convert_examples_to_features(
            examples, tokenizer, max_seq_length, self.doc_stride, self.max_query_length, training
        )

    def model_inputs(self, batch: dict[str, jax.Array], training: bool) -> dict[str, Any]:
        if self.qa_head == "default":
            return {}
        inputs = {"p_mask": batch["p_mask"]}
        if training:
            inputs["start_positions"] = batch["start_positions"]
        return inputs

    def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        span = 0.5 * (
            cross_entropy(outputs.start_logits, batch["start_positions"])
            + cross_entropy(outputs.end_logits, batch["end_positions"])
        )
        if self.qa_head == "albert_v2":
            labels = batch["is_impossible"].astype(jnp.float32)
            span = span + 0.5 * optax.sigmoid_binary_cross_entropy(
                outputs.cls_logits.astype(jnp.float32), labels
            )
        return span, jnp.ones_like(span)

    def outputs(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if self.qa_head == "default":
            return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits}
        return {
            "start_top_log_probs": outputs.start_top_log_probs,
            "start_top_index": outputs.start_top_index,
            "end_top_log_probs": outputs.end_top_log_probs,
            "end_top_index": outputs.end_top_index,
            "cls_logits": outputs.cls_logits,
        }

    def postprocess(
        self, examples: Sequence[SquadExample], features: Features, outputs: Mapping[str, np.ndarray]
    ) -> SquadPredictions:
        """Model outputs (one row per feature, in feature order) → predictions, n-best and null odds."""
        n = len(features)
        for key, value in outputs.items():
            if len(value) != n:
                raise ValueError(f"outputs[{key!r}] has {len(value)} rows for {n} features")
        common = {
            "version_2": self.version == "2.0",
            "n_best_size": self.n_best_size,
            "max_answer_length": self.max_answer_length,
        }
        if self.qa_head == "default":
            return postprocess_default(
                examples,
                features.meta,
                outputs["start_logits"],
                outputs["end_logits"],
                null_score_diff_threshold=self.null_score_diff_threshold,
                **common,
            )
        return postprocess_albert_v2(
            examples, features.meta, outputs, null_score_threshold=self.null_score_diff_threshold, **common
        )

    def evaluate(
        self,
        split: str,
        examples: Sequence[SquadExample],
        features: Features,
        outputs: Arrays,
        out_dir: OutDir,
    ) -> dict[str, float]:
        result = self.postprocess(examples, features, outputs)
        if out_dir:
            result.write(out_dir)
        if self.splits().get(split) == "predict":
            return {}
        if self.version == "1.1":
            return squad_v1_metrics(examples, result.predictions)
        # The best non-null answers with null_odds at the threshold score exactly as predictions.json;
        # they also let the best-threshold search see answers above the configured threshold.
        return squad_v2_metrics(
            examples, result.best_non_null, result.null_odds, self.null_score_diff_threshold
        )
