"""GLUE: the nine tasks plus the diagnostic set (ax), read from the official TSV files or the HF hub.

`TASKS` is the one table of formats (read from `glue_tasks.json`): where each task's files live in the layout of the GLUE download
script (`download_glue_data.py`), which columns hold the texts and the label, the label strings as
written in the files, the metrics and the GLUE-server submission file names. Everything else reads it.

Examples keep labels as written in the data ("entailment", "0", 3.8); class ids are positions in the
task's label list, so an MNLI model's logits are ordered contradiction, entailment, neutral.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from albert_jax import errors
from albert_jax.tasks.base import Arrays, DataError, Features, OutDir, Task, cross_entropy

LAYOUT_HINT = "the GLUE download script's layout (download_glue_data.py)"
STSB_RANGE = (0.0, 5.0)


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where one kind of split file keeps its fields: header names, or 0-based positions if no header."""

    header: bool
    text_a: str | int
    text_b: str | int | None
    label: str | int | None  # None: unlabelled (test files)


_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_HF_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    """One row of the GLUE table. Fields left None take the layout most tasks share: the three files
    train/dev/test.tsv, the test file's columns those of train and dev without the label, the first
    metric selecting checkpoints, `<dir>.tsv` as the submission file, and the nyu-mll/glue config
    named as the task with the train/validation/test splits."""

    name: str
    dir: str  # folder under the glue_data root
    labelled: Columns  # train and dev files
    labels: tuple[str, ...]  # as written in the files; () for regression (STS-B)
    metrics: tuple[str, ...]
    hf_text: tuple[str, str | None]  # HF columns of text_a, text_b
    hf_label_names: dict[str, str]  # HF ClassLabel name -> label as written in the files
    files: dict[str, str] = dataclasses.field(default_factory=lambda: dict(_FILES))  # split -> file in `dir`
    test: Columns | None = None
    selection_metric: str | None = None
    submission: dict[str, str] | None = None  # predict split -> file name the GLUE server expects
    hf_config: str | None = None  # nyu-mll/glue config
    hf_splits: dict[str, str] = dataclasses.field(default_factory=lambda: dict(_HF_SPLITS))

    def __post_init__(self) -> None:
        defaults = {
            "test": dataclasses.replace(self.labelled, label=None),
            "selection_metric": self.metrics[0],
            "submission": {"test": f"{self.dir}.tsv"},
            "hf_config": self.name,
        }
        for field, value in defaults.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)


def _read_table() -> dict[str, GlueSpec]:
    """`glue_tasks.json` (next to this module): one row per task, only the fields that differ from the
    defaults of `GlueSpec`, and a `note` where the format needs a word."""
    rows = json.loads(resources.files(__package__).joinpath("glue_tasks.json").read_text(encoding="utf-8"))
    tasks = {}
    for row in rows:
        row.pop("note", None)
        for key in ("labelled", "test"):
            if key in row:
                row[key] = Columns(**row[key])
        for key in ("labels", "metrics", "hf_text"):
            row[key] = tuple(row[key])
        tasks[row["name"]] = GlueSpec(**row)
    return tasks


TASKS: dict[str, GlueSpec] = _read_table()


@dataclasses.dataclass(frozen=True)
class GlueExample:
    """One row of a split; `index` is its 0-based row in the split file (the index prediction files use)."""

    index: int
    text_a: str
    text_b: str | None
    label: str | float | None


def get_spec(task: str) -> GlueSpec:
    """The table row of `task` ("sst2"; "SST-2" and "sts-b" style names are accepted too)."""
    spec = TASKS.get(task.lower().replace("-", ""))
    if spec is None:
        raise DataError(f"unknown GLUE task {task!r}; valid names: {', '.join(TASKS)}")
    return spec


def split_role(split: str) -> str:
    """The role of a split, from its name: "train", "eval" (dev*) or "predict" (test*)."""
    return "train" if split.startswith("train") else "eval" if split.startswith("dev") else "predict"


def _check_split(spec: GlueSpec, split: str) -> None:
    if split not in spec.files:
        raise DataError(
            f"GLUE task {spec.name!r} has no split {split!r}; its splits: {', '.join(spec.files)}"
        )


def split_path(task: str, data_dir: str, split: str) -> str:
    """The file of `split`; `data_dir` is the glue_data root (holding the task folders) or the task folder."""
    spec = get_spec(task)
    _check_split(spec, split)
    if not os.path.isdir(data_dir):
        raise DataError(f"GLUE data_dir {data_dir} is not a directory; it should follow {LAYOUT_HINT}")
    task_dir = os.path.join(data_dir, spec.dir)
    if not os.path.isdir(task_dir):
        task_dir = data_dir  # the task folder itself
    return os.path.join(task_dir, spec.files[split])


def _decoded_lines(path: str) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8 raises DataError naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}, line {lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8; "
                    "GLUE files are UTF-8"
                ) from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # MRPC's files start with a byte-order mark
            yield line


def read_split(task: str, data_dir: str, split: str) -> list[GlueExample]:
    """The examples of one split file (raises DataError with a one-line message on bad data)."""
    spec = get_spec(task)
    path = split_path(task, data_dir, split)
    if not os.path.isfile(path):
        raise DataError(
            f"{path} not found: data_dir must be the glue_data root holding {spec.dir}/ or the {spec.dir} "
            f"folder itself, in {LAYOUT_HINT}"
        )
    role = split_role(split)
    cols = spec.test if role == "predict" else spec.labelled
    # GLUE text holds stray and unbalanced quotes: fields are split on tabs only.
    reader = csv.reader(_decoded_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        return _read_rows(spec, role, cols, path, reader)
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}") from None


def _read_rows(spec: GlueSpec, role: str, cols: Columns, path: str, reader: Any) -> list[GlueExample]:
    header = next(reader, None) if cols.header else None
    if cols.header and header is None:
        raise DataError(f"{path} is empty; expected the GLUE {spec.dir} format")
    positions = _positions(spec, cols, path, header)
    need = max(p for p in positions.values() if p is not None) + 1
    examples: list[GlueExample] = []
    row_index = -1
    for row_index, row in enumerate(reader):
        where = f"{path}, line {reader.line_num}"
        if len(row) < need:
            # The reference processor (transformers' QqpProcessor) skips QQP rows with missing fields,
            # which the real train/dev data has a few of; so do we. A test row is never dropped: the
            # submission needs one prediction per test row.
            if spec.name == "qqp" and role != "predict":
                continue
            raise DataError(
                f"{where}: {len(row)} tab-separated fields, need at least {need} "
                f"for the GLUE {spec.dir} format"
            )
        label = None if positions["label"] is None else _parse_label(spec, row[positions["label"]], where)
        text_b = None if positions["text_b"] is None else row[positions["text_b"]]
        examples.append(
            GlueExample(index=row_index, text_a=row[positions["text_a"]], text_b=text_b, label=label)
        )
    if not examples:
        if row_index >= 0:
            what = "has no usable rows"
        else:
            what = "has a header but no data rows" if cols.header else "is empty"
        raise DataError(f"{path} {what}; expected the GLUE {spec.dir} format")
    return examples


def _positions(spec: GlueSpec, cols: Columns, path: str, header: list[str] | None) -> dict[str, int | None]:
    """Field positions of text_a, text_b and label, looked up in the header where the file has one."""
    fields = {"text_a": cols.text_a, "text_b": cols.text_b, "label": cols.label}
    if header is None:
        return fields  # type: ignore[return-value]
    names = [h.strip() for h in header]
    missing = [c for c in fields.values() if c is not None and c not in names]
    if missing:
        raise DataError(
            f"{path}, line 1: header lacks column(s) {', '.join(map(repr, missing))} (has {names}); "
            f"expected the GLUE {spec.dir} format"
        )
    return {k: None if c is None else names.index(c) for k, c in fields.items()}


def _parse_label(spec: GlueSpec, value: str, where: str) -> str | float:
    value = value.strip()
    if not spec.labels:
        lo, hi = STSB_RANGE
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not lo <= score <= hi:
            raise DataError(f"{where}: score {value!r} is not a number in [{lo:g}, {hi:g}]")
        return score
    if value not in spec.labels:
        raise DataError(f"{where}: label {value!r} is not one of {list(spec.labels)}")
    return value


def hf_examples(task: str, dataset: Any) -> list[GlueExample]:
    """Rows of one nyu-mll/glue split (a `datasets.Dataset`) as GlueExamples; label -1 means unlabelled.

    Class ids go back to the file label strings through the ClassLabel names (HF orders MNLI entailment,
    neutral, contradiction and calls CoLA's classes unacceptable/acceptable).
    """
    spec = get_spec(task)
    col_a, col_b = spec.hf_text
    names = getattr(dataset.features["label"], "names", None)
    # One batch of plain lists: iterating rows or `Column`s costs ~10 us a value.
    columns = dataset.select_columns([c for c in (col_a, col_b, "label") if c is not None])[:]
    texts_b = [None] * len(columns[col_a]) if col_b is None else columns[col_b]
    examples = []
    for i, (text_a, text_b, raw) in enumerate(zip(columns[col_a], texts_b, columns["label"], strict=True)):
        if raw is None or raw < 0:
            label = None
        elif names is None:
            label = round(float(raw), 6)  # STS-B's float32 score, without float32 noise digits
        else:
            label = spec.hf_label_names.get(names[raw])
            if label is None:
                raise DataError(
                    f"nyu-mll/glue {spec.hf_config}: row {i} has label {names[raw]!r}, not one of "
                    f"{list(spec.hf_label_names)}"
                )
        examples.append(GlueExample(index=i, text_a=text_a, text_b=text_b, label=label))
    return examples


def load_hf(task: str, split: str, load_dataset: Callable[..., Any] | None = None) -> list[GlueExample]:
    """One split from the HF hub's nyu-mll/glue (`load_dataset` defaults to `datasets.load_dataset`)."""
    spec = get_spec(task)
    _check_split(spec, split)
    if load_dataset is None:
        import datasets

        load_dataset = datasets.load_dataset
    return hf_examples(task, load_dataset("nyu-mll/glue", spec.hf_config, split=spec.hf_splits[split]))


def _as_labels(spec: GlueSpec, values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Label strings (or, for STS-B, float64 scores) from label strings or class ids."""
    arr = np.asarray(values)
    if not spec.labels:
        return arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        return np.asarray(spec.labels, dtype=object)[arr].astype(str)
    return arr.astype(str)


def _correlation(fn: Callable[..., Any], a: np.ndarray, b: np.ndarray) -> float:
    try:
        return float(fn(a, b)[0])
    except ValueError:  # fewer than two points
        return math.nan


def metrics(
    task: str, predictions: Sequence[Any] | np.ndarray, labels: Sequence[Any] | np.ndarray
) -> dict[str, float]:
    """The task's GLUE metrics as fractions: labels as written in the data (or class ids), floats for STS-B.

    Degenerate inputs give NaN where the metric is undefined (a constant STS-B prediction has no
    Pearson/Spearman correlation; an empty split has no metric at all). Matthews correlation of constant
    predictions is 0, as scikit-learn (and so the GLUE reference scorer) defines it.
    """
    from scipy import stats
    from sklearn import metrics as skm

    spec = get_spec(task)
    preds, gold = _as_labels(spec, predictions), _as_labels(spec, labels)
    if preds.shape != gold.shape:
        raise ValueError(f"{len(preds)} predictions for {len(gold)} labels")
    if len(gold) == 0:
        return {name: math.nan for name in spec.metrics}
    scorers: dict[str, Callable[[], float]] = {
        "accuracy": lambda: float(np.mean(preds == gold)),
        # f1 of the positive class: MRPC and QQP label it "1".
        "f1": lambda: float(skm.f1_score(gold, preds, pos_label="1", zero_division=0.0)),
        "matthews_correlation": lambda: float(skm.matthews_corrcoef(gold, preds)),
        "pearson": lambda: _correlation(stats.pearsonr, preds, gold),
        "spearmanr": lambda: _correlation(stats.spearmanr, preds, gold),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: scorers[name]() for name in spec.metrics}


def submission_file(task: str, split: str) -> str:
    """The GLUE-server file name of a predict split, e.g. ("mnli", "test_matched") -> "MNLI-m.tsv"."""
    spec = get_spec(task)
    if split not in spec.submission:
        raise DataError(
            f"GLUE task {spec.name!r} submits only {', '.join(spec.submission)}, not split {split!r}"
        )
    return spec.submission[split]


def _write_predictions(path: epath.Path, examples: Sequence[GlueExample], predictions: Sequence[str]) -> None:
    with path.open("w") as f:  # UTF-8; local, gcsfuse or gs://
        f.write("index\tprediction\n")
        f.writelines(f"{e.index}\t{p}\n" for e, p in zip(examples, predictions, strict=True))


def _formatted(spec: GlueSpec, predictions: Sequence[Any] | np.ndarray, clip: bool = False) -> list[str]:
    values = _as_labels(spec, predictions)
    if spec.labels:
        return [str(v) for v in values]
    if clip:
        values = np.clip(values, *STSB_RANGE)
    return [f"{v:.6f}" for v in values]


def write_submission(
    task: str,
    split: str,
    examples: Sequence[GlueExample],
    predictions: Sequence[Any] | np.ndarray,
    out_dir: str | os.PathLike,
) -> str:
    """Writes the GLUE-server file of a predict split into `out_dir` and returns its path.

    `predictions`: label strings or class ids (STS-B: scores, clipped to [0, 5]). The server reads
    `index\\tprediction` with the labels as written in the data ("entailment", or 0/1 for binary tasks).
    """
    spec = get_spec(task)
    path = epath.Path(out_dir) / submission_file(task, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_predictions(path, examples, _formatted(spec, predictions, clip=True))
    return str(path)


class GlueTask(Task):
    """One GLUE task, read from `data_dir` (official TSVs) or, without it, from the HF hub."""

    head = "AlbertForSequenceClassification"

    def __init__(self, task: str, data_dir: str | None = None):
        self.spec = get_spec(task)
        self.name = self.spec.name
        self.selection_metric = self.spec.selection_metric
        self.data_dir = data_dir

    @property
    def num_labels(self) -> int:
        return len(self.spec.labels) or 1

    @property
    def label_names(self) -> tuple[str, ...]:
        """The Hub's ClassLabel names (SST-2: negative, positive), else the labels as the files write them."""
        hub_name = {label: name for name, label in self.spec.hf_label_names.items()}
        return tuple(hub_name.get(label, label) for label in self.spec.labels)

    @property
    def regression(self) -> bool:
        return not self.spec.labels

    def splits(self) -> dict[str, str]:
        """Every train and dev split; a test split when its file exists (always from the hub, and for ax)."""
        out = {}
        for split in self.spec.files:
            role = split_role(split)
            if (
                role == "predict"
                and self.data_dir is not None
                and len(self.spec.files) > 1
                and not os.path.isfile(split_path(self.name, self.data_dir, split))
            ):
                continue
            out[split] = role
        return out

    def read(self, split: str) -> list[GlueExample]:
        if self.data_dir is None:
            return load_hf(self.name, split)
        return read_split(self.name, self.data_dir, split)

    def features(
        self, examples: Sequence[GlueExample], tokenizer, max_seq_length: int, training: bool
    ) -> Features:
        """[CLS] a [SEP] (b [SEP]) padded to max_seq_length, longest_first truncation; one row per example."""
        del training  # every example is one row either way
        n = len(examples)
        if n == 0:
            keys = ("input_ids", "attention_mask", "token_type_ids")
            inputs = {k: np.zeros((0, max_seq_length), np.int32) for k in keys}
        else:
            pairs = [e.text_b for e in examples]
            if any(p is None for p in pairs) and not all(p is None for p in pairs):
                raise errors.InputError("examples mix single sentences and sentence pairs")
            enc = tokenizer(
                [e.text_a for e in examples],
                None if pairs[0] is None else pairs,
                max_length=max_seq_length,
                truncation=True,
                padding="max_length",
                return_tensors="np",
            )
            inputs = {
                k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")
            }
        if self.regression:
            labels = np.array([0.0 if e.label is None else e.label for e in examples], np.float32)
        else:
            ids = {label: i for i, label in enumerate(self.spec.labels)}
            labels = np.array([0 if e.label is None else ids[e.label] for e in examples], np.int32)
        inputs["labels"] = labels.reshape(n)
        return Features(inputs=inputs)

    def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Cross-entropy per row; squared error for STS-B (HF's MSELoss with num_labels=1)."""
        logits = outputs.logits.astype(jnp.float32)
        if self.regression:
            per_row = jnp.square(logits[:, 0] - batch["labels"].astype(jnp.float32))
        else:
            per_row = cross_entropy(logits, batch["labels"])
        return per_row, jnp.ones_like(per_row)

    def outputs(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        del batch
        return {"logits": outputs.logits}

    def predictions(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Label strings (argmax) or, for STS-B, float scores; one per row."""
        logits = np.asarray(outputs["logits"])
        if self.regression:
            return logits[:, 0].astype(np.float64)
        return np.asarray(self.spec.labels)[np.argmax(logits, axis=-1)]

    def evaluate(
        self,
        split: str,
        examples: Sequence[GlueExample],
        features: Features,
        outputs: Arrays,
        out_dir: OutDir,
    ) -> dict[str, float]:
        """Scores an eval split; with `out_dir`, writes `{split}.tsv` (and a predict split's server file)."""
        predictions = self.predictions(outputs)
        if len(predictions) != len(examples) or len(features) != len(examples):
            raise errors.InputError(
                f"{split}: {len(predictions)} outputs and {len(features)} features "
                f"for {len(examples)} examples"
            )
        role = split_role(split)
        if out_dir is not None:
            epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
            _write_predictions(
                epath.Path(out_dir) / f"{split}.tsv", examples, _formatted(self.spec, predictions)
            )
            if role == "predict":
                write_submission(self.name, split, examples, predictions, out_dir)
        if role == "predict":
            return {}
        labels = [e.label for e in examples]
        if any(label is None for label in labels):
            raise errors.InputError(f"{split}: an eval split needs every example labelled")
        return metrics(self.name, predictions, labels)

    def degenerate(
        self, outputs: dict[str, np.ndarray], split: str | None = None, *, features: Features | None = None
    ) -> str | None:
        """A one-line warning when every prediction is the same (e.g. "predicts only 'entailment' on dev")."""
        predictions = self.predictions(outputs)
        if len(predictions) < 2 or not np.all(predictions == predictions[0]):
            return None
        only = f"{predictions[0]:g}" if self.regression else repr(str(predictions[0]))
        return f"predicts only {only}" + (f" on {split}" if split else "")
