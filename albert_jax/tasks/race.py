"""RACE: four-way multiple-choice reading comprehension, with the original ALBERT recipe.

Data: the official layout `RACE/{train,dev,test}/{middle,high}/*.txt` (each file one JSON object
with an article and its questions), or, without a data directory, Hugging Face's `ehovy/race`
("all" config). Every question becomes one `RaceExample`; all three splits are labelled.

Features follow google-research/albert `race_utils.py`: for each of the four options one sequence
`[CLS] article [SEP] qa [SEP]` (segment 0 up to the first [SEP], 1 after), where qa is the question
with every "_" replaced by the option when the question has a blank, else "question option". qa
keeps its LAST `max_qa_length` tokens and the article is cut on the right to fit `max_seq_length`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from albert_jax import errors
from albert_jax.tasks.base import Arrays, DataError, Features, OutDir, Task, cross_entropy

LEVELS = ("middle", "high")
LETTERS = ("A", "B", "C", "D")
NUM_CHOICES = 4
HF_NAME, HF_CONFIG = "ehovy/race", "all"
HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class RaceExample:
    """One question. `example_id` is "{level}/{file}-{question index}", e.g. "high/1001.txt-0"."""

    example_id: str
    level: str  # "middle" | "high" ("" when unknown, e.g. an HF row whose id names no level)
    article: str
    question: str
    options: tuple[str, ...]  # 4 options
    label: int  # 0..3 for A..D


def _file_order(path: Path) -> tuple[int, int, str]:
    """Numeric file names in numeric order (2.txt before 10.txt), others after, by name."""
    stem = path.stem
    return (0, int(stem), path.name) if stem.isdigit() else (1, 0, path.name)


def _parse_article(data: Any, where: str, level: str, name: str) -> list[RaceExample]:
    """The examples of one article object; `where` names the source in error messages."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("article", "questions", "options", "answers") if k not in data]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    questions, options, answers = data["questions"], data["options"], data["answers"]
    if not (isinstance(questions, list) and isinstance(options, list) and isinstance(answers, list)):
        raise DataError(f"{where}: 'questions', 'options' and 'answers' must be lists")
    if not len(questions) == len(options) == len(answers):
        raise DataError(
            f"{where}: {len(questions)} questions, {len(options)} option lists and {len(answers)} answers "
            "(they must match)"
        )
    article = data["article"]
    if not isinstance(article, str):
        raise DataError(f"{where}: 'article' must be a string")
    out = []
    for i, (question, opts, answer) in enumerate(zip(questions, options, answers)):
        out.append(
            _make_example(
                f"{level}/{name}-{i}", level, article, question, opts, answer, f"{where} question {i}"
            )
        )
    return out


def _make_example(
    example_id: str, level: str, article: str, question: Any, options: Any, answer: Any, where: str
) -> RaceExample:
    if not isinstance(question, str):
        raise DataError(f"{where}: the question must be a string")
    if not isinstance(options, (list, tuple)) or len(options) != NUM_CHOICES:
        n = len(options) if isinstance(options, (list, tuple)) else type(options).__name__
        raise DataError(f"{where}: expected {NUM_CHOICES} options, got {n}")
    if not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: options must be strings")
    if answer not in LETTERS:
        raise DataError(f"{where}: answer {answer!r} is not one of A, B, C, D")
    return RaceExample(example_id, level, article, question, tuple(options), LETTERS.index(answer))


def read_race_dir(split_dir: str | os.PathLike) -> list[RaceExample]:
    """Examples of one split directory `{split}/{middle,high}/*.txt`, middle first, files in numeric order.

    A missing level directory is allowed (a middle- or high-only copy), but not both.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(
            f"RACE split directory not found: {str(split_dir)!r} (expected RACE/<split>/<level>/*.txt)"
        )
    level_dirs = [(level, split_dir / level) for level in LEVELS if (split_dir / level).is_dir()]
    if not level_dirs:
        raise DataError(f"{str(split_dir)!r} has neither a middle/ nor a high/ directory")
    examples: list[RaceExample] = []
    n_files = 0
    for level, level_dir in level_dirs:
        for path in sorted(level_dir.glob("*.txt"), key=_file_order):
            n_files += 1
            try:
                text = path.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: bad JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            examples.extend(_parse_article(data, str(path), level, path.name))
    if n_files == 0:
        raise DataError(f"no .txt files under {str(split_dir)!r}/{{middle,high}}")
    return examples


_HF_ID = re.compile(r"^(middle|high)/?(.+)$")


def examples_from_hf(rows: Iterable[Mapping[str, Any]]) -> list[RaceExample]:
    """Map `ehovy/race` rows (example_id, article, question, options, answer) to examples.

    HF's example_id names the article ("high10024.txt") and repeats for each of its questions; it
    becomes "high/10024.txt-{k}" with k the question's position among that article's rows, as
    `read_race_dir` names the same question.
    """
    seen: dict[str, int] = {}
    out = []
    for n, row in enumerate(rows):
        article_id = str(row["example_id"])
        k = seen.get(article_id, 0)
        seen[article_id] = k + 1
        m = _HF_ID.match(article_id)
        level, name = (m.group(1), m.group(2)) if m else ("", article_id)
        example_id = f"{level}/{name}-{k}" if level else f"{name}-{k}"
        if not isinstance(row["article"], str):
            raise DataError(f"{HF_NAME} row {n}: 'article' must be a string")
        out.append(
            _make_example(
                example_id,
                level,
                row["article"],
                row["question"],
                row["options"],
                row["answer"],
                f"{HF_NAME} row {n}",
            )
        )
    return out


def load_hf(split: str) -> list[RaceExample]:
    """`split` ("train" | "dev" | "test") of `ehovy/race` "all" from the Hugging Face hub."""
    import datasets  # heavy; only needed without a data directory

    return examples_from_hf(datasets.load_dataset(HF_NAME, HF_CONFIG, split=HF_SPLITS[split]))


def build_qa(question: str, option: str) -> str:
    """The second segment of one choice: fill the blank(s) "_" with the option, else append it."""
    return question.replace("_", option) if "_" in question else f"{question} {option}"


def race_features(
    examples: Sequence[RaceExample], tokenizer, max_seq_length: int, max_qa_length: int = 128
) -> Features:
    """Inputs [N, 4, T] int32 (T = max_seq_length) and `labels` [N] int32; meta is None."""
    if max_seq_length < 4:
        raise errors.ConfigError(f"max_seq_length must be at least 4 for RACE, got {max_seq_length}")
    n = len(examples)
    ids = np.full((n, NUM_CHOICES, max_seq_length), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((n, NUM_CHOICES, max_seq_length), np.int32)
    types = np.zeros((n, NUM_CHOICES, max_seq_length), np.int32)
    labels = np.array([ex.label for ex in examples], np.int32).reshape(n)
    # An article is shared by its ~3.5 questions: encode each distinct one once.
    distinct = list(dict.fromkeys(ex.article for ex in examples))
    encoded = dict(zip(distinct, tokenizer.encode_batch(distinct) if distinct else []))
    articles = [encoded[ex.article] for ex in examples]
    qas = (
        tokenizer.encode_batch([build_qa(ex.question, o) for ex in examples for o in ex.options]) if n else []
    )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    # The original keeps max_qa_length qa tokens even when that leaves no room for the article
    # (a negative slice); we cap qa at max_seq_length - 3 so the sequence always fits.
    qa_budget = min(max_qa_length, max_seq_length - 3)
    for i, article in enumerate(articles):
        for c in range(NUM_CHOICES):
            qa = qas[i * NUM_CHOICES + c][-qa_budget:] if qa_budget > 0 else []
            ctx = article[: max_seq_length - 3 - len(qa)]
            seq = [cls, *ctx, sep, *qa, sep]
            ids[i, c, : len(seq)] = seq
            mask[i, c, : len(seq)] = 1
            types[i, c, len(ctx) + 2 : len(seq)] = 1
    return Features(
        inputs={"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}
    )


def race_accuracy(examples: Sequence[RaceExample], predictions: np.ndarray) -> dict[str, float]:
    """`accuracy` overall and `accuracy_{level}` for each level that has examples."""
    predictions = np.asarray(predictions).reshape(-1)
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    labels = np.array([ex.label for ex in examples], np.int64)
    levels = np.array([ex.level for ex in examples], dtype=object)
    correct = predictions == labels
    metrics = {"accuracy": float(correct.mean()) if len(correct) else 0.0}
    for level in LEVELS:
        sel = levels == level
        if sel.any():
            metrics[f"accuracy_{level}"] = float(correct[sel].mean())
    return metrics


class RaceTask(Task):
    """RACE multiple choice (middle + high); the metric is accuracy, also per level."""

    name = "race"
    head = "AlbertForMultipleChoice"
    selection_metric = "accuracy"

    def __init__(self, data_dir: str | None, max_qa_length: int = 128) -> None:
        if max_qa_length < 1:
            raise errors.ConfigError(f"max_qa_length must be positive, got {max_qa_length}")
        self.data_dir = data_dir
        self.max_qa_length = max_qa_length

    @property
    def num_labels(self) -> int:
        return NUM_CHOICES  # the multiple-choice head scores each choice with one logit and ignores it

    def splits(self) -> dict[str, str]:
        return {"train": "train", "dev": "eval", "test": "eval"}

    def split_dir(self, split: str) -> Path:
        """`data_dir/RACE/{split}` if it exists, else `data_dir/{split}` (data_dir is the RACE folder)."""
        assert self.data_dir is not None
        nested = Path(self.data_dir) / "RACE" / split
        return nested if nested.is_dir() else Path(self.data_dir) / split

    def read(self, split: str) -> list[RaceExample]:
        if split not in HF_SPLITS:
            raise errors.ConfigError(f"unknown RACE split {split!r}; expected one of {', '.join(HF_SPLITS)}")
        if self.data_dir is None:
            return load_hf(split)
        return read_race_dir(self.split_dir(split))

    def features(
        self, examples: Sequence[RaceExample], tokenizer, max_seq_length: int, training: bool
    ) -> Features:
        del training  # every example gives exactly one row either way
        return race_features(examples, tokenizer, max_seq_length, self.max_qa_length)

    def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        logits = outputs.logits  # [B, 4]
        loss = cross_entropy(logits, batch["labels"])  # [B]
        return loss, jnp.ones_like(loss)

    def outputs(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        del batch
        return {"logits": outputs.logits.astype(jnp.float32)}  # [B, 4]

    def evaluate(
        self,
        split: str,
        examples: Sequence[RaceExample],
        features: Features,
        outputs: Arrays,
        out_dir: OutDir,
    ) -> dict[str, float]:
        del features
        predictions = np.argmax(np.asarray(outputs["logits"]), axis=-1)  # [N]
        metrics = race_accuracy(examples, predictions)
        if out_dir is not None:
            epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
            with (epath.Path(out_dir) / f"{split}.tsv").open("w") as f:
                f.write("id\tprediction\n")
                for ex, p in zip(examples, predictions):
                    f.write(f"{ex.example_id}\t{LETTERS[int(p)]}\n")
        return metrics

    def degenerate(
        self, outputs: dict[str, np.ndarray], split: str | None = None, *, features: Features | None = None
    ) -> str | None:
        """A one-line warning when every prediction (of at least two) is the same letter, else None.

        `split` names the split in the message (as GLUE's); `features` is unused (kept for NER's signature).
        """
        del features
        predictions = np.argmax(np.asarray(outputs["logits"]), axis=-1).reshape(-1)
        if len(predictions) >= 2 and np.all(predictions == predictions[0]):
            letter = LETTERS[int(predictions[0])]
            where = f" on {split}" if split else ""
            n = len(predictions)
            return f"predicts only {letter!r}{where} ({n} questions); the model may have collapsed"
        return None
