"""CoNLL-2003 named-entity recognition as token classification, scored at entity level by seqeval.

Data: CoNLL column files (`word POS chunk NER`, blank lines between sentences, `-DOCSTART-` lines
skipped) named `train.txt`, `valid.txt`/`dev.txt`, `test.txt` (or `eng.train`, `eng.testa`,
`eng.testb`) under a data directory, or, without one, Hugging Face's `eriktks/conll2003`.

Features: each word is encoded on its own (SentencePiece gives it a leading "▁"), and a row is
`[CLS] sub-tokens [SEP]`. A word's label sits on its FIRST sub-token; other sub-tokens and the
specials carry -100 (ignored). A word that encodes to nothing (e.g. only characters that
normalisation removes) becomes one `<unk>`, so every word has a first sub-token; a single word
longer than the window keeps only its first `max_seq_length - 2` sub-tokens.

Long sentences are not truncated: they are split into windows of whole words, window starts
`stride` sub-tokens apart (default half a window), so consecutive windows overlap. Every word is
scored from exactly one window, the one where it has the most context (SQuAD's max-context rule:
min(left, right) sub-tokens around its first sub-token, plus 0.01 x window length; the earliest
window wins a tie). For evaluation only those scoring positions carry labels, so the loss counts
each word once; for training every first sub-token of every window is labelled.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from albert_jax import errors
from albert_jax.tasks.base import Arrays, DataError, Features, OutDir, Task, cross_entropy

# CoNLL-2003 IOB tags in the order of HF eriktks/conll2003's `ner_tags` ClassLabel.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
LABEL_IDS = {tag: i for i, tag in enumerate(LABELS)}
IGNORE = -100
DOCSTART = "-DOCSTART-"
# Split -> accepted file names under data_dir, first found wins.
SPLIT_FILES = {
    "train": ("train.txt", "eng.train"),
    "dev": ("valid.txt", "dev.txt", "eng.testa"),
    "test": ("test.txt", "eng.testb"),
}
HF_NAME = "eriktks/conll2003"
HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: its position in the split, its words and their IOB tags."""

    index: int
    words: tuple[str, ...]
    tags: tuple[str, ...]


@dataclasses.dataclass
class NerMeta:
    """Row -> sentence mapping of NER features.

    `sentence` [N]: the sentence index of each row. `word_ids` [N, T]: at each word's first
    sub-token the word's index in its sentence, -1 elsewhere. `scored` [N, T] bool: True where this
    row is the one that scores that word.
    """

    sentence: np.ndarray
    word_ids: np.ndarray
    scored: np.ndarray


def read_conll(path: str | os.PathLike) -> list[Sentence]:
    """Sentences of one CoNLL file; the word is the first column and the NER tag the last."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"CoNLL file not found: {str(path)!r}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if words:
            sentences.append(Sentence(len(sentences), tuple(words), tuple(tags)))
            words.clear()
            tags.clear()

    for lineno, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            flush()
            continue
        if cols[0] == DOCSTART:
            flush()
            continue
        if len(cols) < 2:
            raise DataError(f"{path}:{lineno}: expected 'word ... NER-tag' columns, got {line.strip()!r}")
        if cols[-1] not in LABEL_IDS:
            raise DataError(f"{path}:{lineno}: tag {cols[-1]!r} is not a CoNLL-2003 tag ({' '.join(LABELS)})")
        words.append(cols[0])
        tags.append(cols[-1])
    flush()
    return sentences


def find_split_file(data_dir: str | os.PathLike, split: str) -> Path | None:
    """The file of `split` under `data_dir` (see SPLIT_FILES), or None."""
    for name in SPLIT_FILES[split]:
        path = Path(data_dir) / name
        if path.is_file():
            return path
    return None


def sentences_from_hf(
    rows: Iterable[Mapping[str, Any]], tag_names: Sequence[str] | None = None
) -> list[Sentence]:
    """Map HF rows (`tokens`, integer `ner_tags`) to sentences; empty sentences are dropped.

    `tag_names` are the ClassLabel names of `ner_tags` (default: LABELS); a name outside LABELS is
    a DataError.
    """
    names = tuple(tag_names) if tag_names is not None else LABELS
    bad = [n for n in names if n not in LABEL_IDS]
    if bad:
        raise DataError(f"{HF_NAME}: ner_tags names {bad} are not CoNLL-2003 tags ({' '.join(LABELS)})")
    out = []
    for n, row in enumerate(rows):
        tokens, tag_ids = list(row["tokens"]), list(row["ner_tags"])
        if len(tokens) != len(tag_ids):
            raise DataError(f"{HF_NAME} row {n}: {len(tokens)} tokens but {len(tag_ids)} ner_tags")
        if not tokens:
            continue
        if any(not 0 <= t < len(names) for t in tag_ids):
            raise DataError(f"{HF_NAME} row {n}: ner_tags {tag_ids} out of range 0..{len(names) - 1}")
        out.append(Sentence(len(out), tuple(tokens), tuple(names[t] for t in tag_ids)))
    return out


def load_hf(split: str) -> list[Sentence]:
    """`split` ("train" | "dev" | "test") of `eriktks/conll2003` from the Hugging Face hub."""
    import datasets  # heavy; only needed without a data directory

    ds = datasets.load_dataset(HF_NAME, split=HF_SPLITS[split])
    feature = getattr(ds.features["ner_tags"], "feature", None)
    return sentences_from_hf(ds, getattr(feature, "names", None))


def _windows(lengths: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word spans [start, end) whose sub-token lengths fit `budget`, starting about `stride` apart.

    Every word lies in at least one span and each span adds at least one new word.
    """
    n = len(lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])  # [n + 1]
    spans = []
    start = 0
    while True:
        # Largest end with offsets[end] - offsets[start] <= budget (at least one word).
        end = max(start + 1, int(np.searchsorted(offsets, offsets[start] + budget, side="right")) - 1)
        end = min(end, n)
        spans.append((start, end))
        if end == n:
            return spans
        # Next start: the first word `stride` sub-tokens on, but late enough that word `end` fits.
        by_stride = int(np.searchsorted(offsets, offsets[start] + stride, side="left"))
        to_progress = int(np.searchsorted(offsets, offsets[end + 1] - budget, side="left"))
        start = min(end, max(start + 1, by_stride, to_progress))


def _max_context_owner(lengths: Sequence[int], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For each word, the span scoring it [num_words]: the one where its first sub-token has the
    largest min(left, right) context plus 0.01 x span length; the earliest span wins a tie."""
    best = np.full(len(lengths), -np.inf)
    owner = np.zeros(len(lengths), np.int64)
    for k, (a, b) in enumerate(spans):
        starts = np.concatenate([[0], np.cumsum(lengths[a:b])[:-1]])  # first sub-token of each word
        total = sum(lengths[a:b])
        score = np.minimum(starts, total - 1 - starts) + 0.01 * total
        better = score > best[a:b]
        best[a:b] = np.where(better, score, best[a:b])
        owner[a:b] = np.where(better, k, owner[a:b])
    return owner


def ner_features(
    sentences: Sequence[Sentence], tokenizer, max_seq_length: int, training: bool, stride: int | None = None
) -> Features:
    """Inputs [N, T] int32 (`input_ids`, `attention_mask`, `token_type_ids`, `labels` with -100 =
    ignore) and `NerMeta`. `stride` is in sub-tokens (default: half of max_seq_length - 2)."""
    budget = max_seq_length - 2
    if budget < 1:
        raise errors.ConfigError(f"max_seq_length must be at least 3 for NER, got {max_seq_length}")
    stride = max(1, budget // 2) if stride is None else stride
    if stride < 1:
        raise errors.ConfigError(f"stride must be positive, got {stride}")
    distinct = list(dict.fromkeys(w for s in sentences for w in s.words))  # words repeat a lot
    pieces_of = dict(zip(distinct, tokenizer.encode_batch(distinct) if distinct else []))
    unk, cls, sep = tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id

    rows_ids, rows_labels, rows_words, rows_scored, rows_sentence = [], [], [], [], []
    for si, sent in enumerate(sentences):
        pieces = [(pieces_of[w] or [unk])[:budget] for w in sent.words]
        if not pieces:
            continue
        lengths = [len(p) for p in pieces]
        if sum(lengths) <= budget:  # the common case: one window that scores every word
            spans, owner = [(0, len(pieces))], [0] * len(pieces)
        else:
            spans = _windows(lengths, budget, stride)
            owner = _max_context_owner(lengths, spans).tolist()
        for k, (a, b) in enumerate(spans):
            ids, labels, word_ids, scored = [cls], [IGNORE], [-1], [False]
            for w in range(a, b):
                scores = owner[w] == k
                ids += pieces[w]
                labels += [LABEL_IDS[sent.tags[w]] if (training or scores) else IGNORE]
                labels += [IGNORE] * (len(pieces[w]) - 1)
                word_ids += [w] + [-1] * (len(pieces[w]) - 1)
                scored += [bool(scores)] + [False] * (len(pieces[w]) - 1)
            ids.append(sep)
            labels.append(IGNORE)
            word_ids.append(-1)
            scored.append(False)
            rows_ids.append(ids)
            rows_labels.append(labels)
            rows_words.append(word_ids)
            rows_scored.append(scored)
            rows_sentence.append(si)

    n = len(rows_ids)
    input_ids = np.full((n, max_seq_length), tokenizer.pad_token_id, np.int32)
    attention_mask = np.zeros((n, max_seq_length), np.int32)
    labels = np.full((n, max_seq_length), IGNORE, np.int32)
    word_ids = np.full((n, max_seq_length), -1, np.int32)
    scored = np.zeros((n, max_seq_length), bool)
    for r in range(n):
        t = len(rows_ids[r])
        input_ids[r, :t] = rows_ids[r]
        attention_mask[r, :t] = 1
        labels[r, :t] = rows_labels[r]
        word_ids[r, :t] = rows_words[r]
        scored[r, :t] = rows_scored[r]
    return Features(
        inputs={
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": np.zeros((n, max_seq_length), np.int32),
            "labels": labels,
        },
        meta=NerMeta(np.array(rows_sentence, np.int64).reshape(n), word_ids, scored),
    )


def assemble_words(meta: NerMeta, values: np.ndarray, num_words: Sequence[int]) -> list[np.ndarray]:
    """Per-sentence word values [num_words[s]] gathered from per-token `values` [N, T] at the
    scoring positions. Raises ValueError unless every word is scored exactly once."""
    values = np.asarray(values)
    if values.shape[:2] != meta.word_ids.shape:
        raise ValueError(f"values of shape {values.shape} for features of shape {meta.word_ids.shape}")
    rows, cols = np.nonzero(meta.scored)
    sent = meta.sentence[rows]
    word = meta.word_ids[rows, cols]
    out = [np.zeros(n, values.dtype) for n in num_words]
    count = [np.zeros(n, np.int64) for n in num_words]
    for s, w, v in zip(sent.tolist(), word.tolist(), values[rows, cols]):
        out[s][w] = v
        count[s][w] += 1
    for s, c in enumerate(count):
        if len(c) and not np.all(c == 1):
            w = int(np.flatnonzero(c != 1)[0])
            raise ValueError(f"sentence {s} word {w} is scored {int(c[w])} times (expected once)")
    return out


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/f1 (seqeval's default, conlleval-style) and token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    # zero_division=0 is seqeval's default value without its warning (no predicted/gold entities).
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "accuracy": float(accuracy_score(gold, pred)),
    }


class NerTask(Task):
    """CoNLL-2003 NER (9 IOB tags); the selection metric is entity-level f1."""

    name = "ner"
    head = "AlbertForTokenClassification"
    selection_metric = "f1"
    sequence_inputs = ("labels",)
    token_outputs = ("logits",)

    def __init__(self, data_dir: str | None, stride: int | None = None) -> None:
        self.data_dir = data_dir
        self.stride = stride

    @property
    def num_labels(self) -> int:
        return len(LABELS)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(LABELS)

    def splits(self) -> dict[str, str]:
        roles = {"train": "train", "dev": "eval", "test": "eval"}
        if self.data_dir is None:
            return roles
        return {s: r for s, r in roles.items() if find_split_file(self.data_dir, s) is not None}

    def read(self, split: str) -> list[Sentence]:
        if split not in SPLIT_FILES:
            raise errors.ConfigError(f"unknown NER split {split!r}; expected one of {', '.join(SPLIT_FILES)}")
        if self.data_dir is None:
            return load_hf(split)
        path = find_split_file(self.data_dir, split)
        if path is None:
            names = " or ".join(SPLIT_FILES[split])
            raise DataError(f"no {split} file in {self.data_dir!r} (expected {names})")
        sentences = read_conll(path)
        if not sentences:
            raise DataError(f"{path}: no sentences")
        return sentences

    def features(
        self, examples: Sequence[Sentence], tokenizer, max_seq_length: int, training: bool
    ) -> Features:
        return ner_features(examples, tokenizer, max_seq_length, training, self.stride)

    def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        labels = batch["labels"]  # [B, T]
        labelled = labels != IGNORE
        ce = cross_entropy(outputs.logits, jnp.where(labelled, labels, 0))  # [B, T]
        return jnp.sum(jnp.where(labelled, ce, 0.0), axis=1), jnp.sum(labelled, axis=1).astype(jnp.float32)

    def loss_weight(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.sum(batch["labels"] != IGNORE, axis=1).astype(jnp.float32)  # labelled tokens per row

    def outputs(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        del batch
        return {"logits": outputs.logits.astype(jnp.float32)}  # [B, T, 9]

    def predictions(
        self, examples: Sequence[Sentence], features: Features, outputs: dict[str, np.ndarray]
    ) -> list[list[str]]:
        """Predicted tag of every word of every sentence."""
        pred_ids = np.argmax(np.asarray(outputs["logits"]), axis=-1)  # [N, T]
        words = assemble_words(features.meta, pred_ids, [len(s.words) for s in examples])
        return [[LABELS[int(i)] for i in w] for w in words]

    def evaluate(
        self, split: str, examples: Sequence[Sentence], features: Features, outputs: Arrays, out_dir: OutDir
    ) -> dict[str, float]:
        pred = self.predictions(examples, features, outputs)
        gold = [list(s.tags) for s in examples]
        if out_dir is not None:
            epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
            with (epath.Path(out_dir) / f"{split}.txt").open("w") as f:
                for s, p in zip(examples, pred):
                    for word, g, t in zip(s.words, s.tags, p):
                        f.write(f"{word} {g} {t}\n")
                    f.write("\n")
        return entity_metrics(gold, pred)

    def degenerate(
        self, outputs: dict[str, np.ndarray], split: str | None = None, *, features: Features | None = None
    ) -> str | None:
        """A one-line warning when every token is predicted "O", else None.

        `split` names the split in the message. With `features`, only the scored word positions count;
        without, every position does (specials and padding included), which can miss a collapse but
        never warns falsely.
        """
        pred_ids = np.argmax(np.asarray(outputs["logits"]), axis=-1)  # [N, T]
        if features is not None:
            pred_ids = pred_ids[features.meta.scored]
        if pred_ids.size and np.all(pred_ids == LABEL_IDS["O"]):
            where = f" on {split}" if split else ""
            return f"predicts only 'O'{where} (all {pred_ids.size} tokens); the model may have collapsed"
        return None
