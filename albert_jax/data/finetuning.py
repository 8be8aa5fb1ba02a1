"""Fine-tuning batches: feature arrays -> grain training batches and padded evaluation batches.

Both pad only as far as a *length bucket*: the smallest of a fixed set of lengths that holds every
row of the (global) batch, so a run compiles at most `len(buckets)` shapes and short GLUE sentences
are not padded to 512. Rows are right-padded, so slicing the sequence axis keeps every real token.

Training (`train_dataset`): `range(N) -> shuffle(seed), reshuffled each epoch -> repeat -> batch(G)`,
then each global batch of indices picks its bucket from all G rows (so every process agrees) and
process p takes its contiguous block `[p*G/P, (p+1)*G/P)`. The iterator state is a position:
checkpointable with orbax like pretraining's.

Evaluation (`eval_batches`): rows in order, the last batch padded with copies of its last row and a
`valid` mask, so every example gets exactly one prediction.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import grain
import jax
import numpy as np

from albert_jax.tasks.base import SEQUENCE_INPUTS


def default_buckets(max_seq_length: int) -> tuple[int, ...]:
    """Multiples of 8 up to 64, then four per doubling (80, 96, 112, 128, 160, …, 448, 512), below
    `max_seq_length`, and `max_seq_length` itself.

    A batch is padded to at most 8 tokens or a quarter past its longest row (coarser buckets padded
    SST-2 batches to 60 tokens a row where the longest rows average 43). Only the lengths that occur
    compile, and the persistent compilation cache keeps them for the next run.
    """
    out, b = {max_seq_length}, 8
    while b < max_seq_length:
        out.add(b)
        b += 8 if b < 64 else 1 << (b.bit_length() - 3)
    return tuple(sorted(out))


def sequence_keys(sequence_inputs: Sequence[str] = ()) -> tuple[str, ...]:
    """The inputs cut to a batch's bucket on their last axis: the model's, and a task's own."""
    return (*SEQUENCE_INPUTS, *sequence_inputs)


def row_lengths(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Real tokens per row [N] (multiple choice: the longest choice)."""
    mask = inputs["attention_mask"]
    lengths = mask.sum(axis=-1)
    return lengths.reshape(len(mask), -1).max(axis=1)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def _take(inputs: dict[str, np.ndarray], rows: np.ndarray, length: int, seq_keys: Sequence[str]) -> dict:
    return {k: (v[rows, ..., :length] if k in seq_keys else v[rows]) for k, v in inputs.items()}


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """Global batch of row indices -> this process's block, cut to the batch's bucket."""

    inputs: dict[str, np.ndarray]
    lengths: np.ndarray
    buckets: tuple[int, ...]
    seq_keys: tuple[str, ...]
    process_index: int
    process_count: int

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        length = bucket_for(int(self.lengths[rows].max()), self.buckets)
        block = len(rows) // self.process_count
        mine = rows[self.process_index * block : (self.process_index + 1) * block]
        return _take(self.inputs, mine, length, self.seq_keys)


def train_dataset(
    inputs: dict[str, np.ndarray],
    *,
    global_batch_size: int,
    seed: int,
    buckets: Sequence[int],
    sequence_inputs: Sequence[str] = (),
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Endless shuffled training batches of this process's rows (see the module docstring)."""
    n = len(inputs["input_ids"])
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.range(n).shuffle(seed=seed % 2**32).repeat(None)
    ds = ds.batch(global_batch_size, drop_remainder=True)
    ds = ds.map(
        _TrainBatch(
            inputs,
            row_lengths(inputs),
            tuple(buckets),
            sequence_keys(sequence_inputs),
            process_index,
            process_count,
        )
    )
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=4))


def eval_batches(
    inputs: dict[str, np.ndarray],
    *,
    global_batch_size: int,
    buckets: Sequence[int],
    sequence_inputs: Sequence[str] = (),
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(this process's block of each global batch, the global batch's valid-row mask [G]), in order."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    n = len(inputs["input_ids"])
    lengths = row_lengths(inputs)
    seq_keys = sequence_keys(sequence_inputs)
    block = global_batch_size // process_count
    for start in range(0, n, global_batch_size):
        rows = np.arange(start, min(start + global_batch_size, n))
        valid = np.zeros(global_batch_size, bool)
        valid[: len(rows)] = True
        rows = np.concatenate([rows, np.full(global_batch_size - len(rows), rows[-1])])
        length = bucket_for(int(lengths[rows].max()), buckets)
        mine = rows[process_index * block : (process_index + 1) * block]
        yield _take(inputs, mine, length, seq_keys), valid
