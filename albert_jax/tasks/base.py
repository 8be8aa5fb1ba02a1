"""What a fine-tuning task is: examples in, model inputs out, and host-side scoring of predictions.

A task never touches the training loop. It names a head, turns examples into `Features` (numpy
arrays with one row per model input, plus host-only metadata), says how to compute a per-row loss and
which per-row outputs to bring back to the host, and scores those outputs with the official metric.
`training/finetune.py` wires a task into the one loop in `training/trainer.py`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import errors

# Inputs whose last axis is the sequence axis: the loop pads batches only as far as a length bucket.
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

Arrays = dict[str, np.ndarray]  # host arrays by output name, one row per feature
OutDir = str | os.PathLike | None  # where `evaluate` writes prediction files (None: nowhere)


class DataError(errors.InputError):
    """A user's data file is missing, malformed or inconsistent; the message names file, row and fix."""


@dataclasses.dataclass
class Features:
    """Model inputs of one split.

    `inputs`: name -> array with leading dim N (rows). Always `input_ids`, `attention_mask`,
      `token_type_ids` ([N, T] int32, or [N, C, T] for multiple choice), padded on the right to
      max_seq_length, plus the task's label arrays (e.g. `labels` [N], `start_positions` [N]).
    `meta`: anything host-only that `evaluate` needs (row -> example index, offsets, …).
    """

    inputs: dict[str, np.ndarray]
    meta: Any = None

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])


class Task(abc.ABC):
    """One fine-tuning task. Subclasses set the class attributes and implement the methods."""

    name: str  # e.g. "sst2", "squad2.0", "race", "ner"
    head: str  # a class name in modeling.HEADS, e.g. "AlbertForSequenceClassification"
    selection_metric: str  # key in the metrics of eval_splits()[0] used to pick the best checkpoint
    # Inputs besides SEQUENCE_INPUTS whose last axis is the sequence axis (e.g. NER "labels").
    sequence_inputs: tuple[str, ...] = ()
    # Outputs of `outputs()` whose axis 1 is the sequence axis: padded back to max_seq_length with
    # `token_output_fill` before `evaluate` sees them.
    token_outputs: tuple[str, ...] = ()
    token_output_fill: float = -1e9

    @property
    @abc.abstractmethod
    def num_labels(self) -> int:
        """The head's `num_labels` (1 for regression, 2 for QA start/end)."""

    @property
    def label_names(self) -> tuple[str, ...]:
        """The classes' names, in label-id order, for an exported model's `id2label` (() when the
        outputs are not named classes: regression, QA spans, multiple choice)."""
        return ()

    @abc.abstractmethod
    def splits(self) -> dict[str, str]:
        """Split name -> role: "train", "eval" (scored) or "predict" (unlabelled, e.g. GLUE test)."""

    @abc.abstractmethod
    def read(self, split: str) -> Sequence[Any]:
        """The examples of `split` (raises DataError with a one-line message on bad data)."""

    @abc.abstractmethod
    def features(self, examples: Sequence[Any], tokenizer, max_seq_length: int, training: bool) -> Features:
        """Examples -> model inputs. `training=False` keeps every example scorable (windows, no drops)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(loss_sum [B], weight [B]) in float32 from the head's outputs. The loop's loss is
        sum(loss_sum) / sum(weight) over the whole batch (weight 1 per row for classification, the
        number of labelled tokens for NER), which keeps gradient accumulation exact."""

    @abc.abstractmethod
    def outputs(self, outputs: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Per-row arrays to bring to the host for scoring (e.g. {"logits": [B, L]}); jit-traced."""

    @abc.abstractmethod
    def evaluate(
        self, split: str, examples: Sequence[Any], features: Features, outputs: Arrays, out_dir: OutDir
    ) -> dict[str, float]:
        """Scores one split with the official metric; `outputs` holds exactly one row per feature.

        With `out_dir`, also writes the split's prediction files there (e.g. `{split}.tsv`). For a
        "predict" split there are no labels: write predictions and return {}.
        """

    def loss_weight(self, batch: dict[str, jax.Array]) -> jax.Array:
        """The rows' loss weights [B] without running the model (sums to the batch's loss denominator);
        one per row unless a task overrides it (NER: its labelled tokens)."""
        return jnp.ones(batch["input_ids"].shape[0], jnp.float32)

    def degenerate(
        self, outputs: dict[str, np.ndarray], split: str | None = None, *, features=None
    ) -> str | None:
        """A one-line warning when the predictions collapsed (e.g. one class for every row), else None."""
        del outputs, split, features
        return None

    def model_inputs(self, batch: dict[str, jax.Array], training: bool) -> dict[str, Any]:
        """Extra keyword inputs of the head (e.g. SQuAD's p_mask); none by default."""
        del batch, training
        return {}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-row softmax cross-entropy in float32; 'BL,B->B'."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
