"""The grain input pipeline for pretraining and its conversion to global jax arrays.

Pipeline (``grain.MapDataset``, so that every element is addressable and the iterator state is
just a position)::

    Examples: index -> (epoch, position): epoch e is a pass over that epoch's chunks
      (TokenizedCorpus.chunks(seed, e): documents re-chunked every epoch), in an order shuffled by
      (seed, e); example = TokenizedCorpus.example with rng = default_rng([seed, epoch, chunk])
      -> batch(global_batch // process_count) -> [process_index::process_count]
      -> to_iter_dataset(read_threads) (-> mp_prefetch when worker_count > 0)

An example depends only on (seed, epoch, index), or on (seed, index) with static masking (then
every epoch has epoch 0's chunks), so the data do not depend on the process count, the worker
count or where training resumed. Epochs differ in length (the chunking is redrawn); the stream
runs through them in order. Global batch ``b`` is elements ``[b * G, (b + 1) * G)`` of the stream,
and process ``p`` holds its contiguous block ``[b * G + p * G / P, b * G + (p + 1) * G / P)``,
so the assembled global array is the same for any number of hosts.

Checkpointing: the iterator supports ``get_state()`` / ``set_state()``; with orbax use
``grain.checkpoint.CheckpointSave(iterator)`` / ``grain.checkpoint.CheckpointRestore(iterator)``
inside ``ocp.args.Composite`` (see :func:`pretraining_dataset`).
"""

from __future__ import annotations

import bisect
import dataclasses
import sys

import grain
import jax
import numpy as np
from absl import flags

from albert_jax import errors
from albert_jax.data.pretraining import ChunkIndex, PretrainDataConfig, TokenizedCorpus

__all__ = ["Examples", "make_global_batch", "pretraining_dataset"]

_STATIC_EPOCH = 2**31 - 1  # stands in for the epoch in the RNG key when masking is static
_SHUFFLE_STREAM = 0x5F1E  # keeps the per-epoch order's RNG stream apart from the others
_FOREVER = sys.maxsize


class Examples(grain.MapDataset):
    """``index -> example`` over ``num_epochs`` passes (None: forever) of a split's chunks.

    Picklable for grain worker processes: only the corpus path and the settings travel; each
    process recomputes the few epochs it touches.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        cfg: PretrainDataConfig,
        *,
        split: str,
        seed: int,
        num_epochs: int | None,
        shuffle: bool,
    ):
        super().__init__()
        self.corpus, self.cfg, self.split, self.seed = corpus, cfg, split, seed
        self.num_epochs, self.shuffle = num_epochs, shuffle
        self._starts = [0]  # first index of each epoch computed so far
        self._orders: dict[int, np.ndarray] = {}
        if num_epochs is None:
            self._length = _FOREVER
        else:
            while len(self._starts) <= num_epochs:
                self._starts.append(self._starts[-1] + len(self.chunks(len(self._starts) - 1)))
            self._length = self._starts[num_epochs]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_orders"] = {}
        return state

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"Examples(split={self.split!r}, seed={self.seed}, num_epochs={self.num_epochs})"

    def chunks(self, epoch: int) -> ChunkIndex:
        """The chunks of ``epoch`` (epoch 0's for every epoch with static masking)."""
        return self.corpus.chunks(self.cfg, self.split, self.seed, epoch if self.cfg.dynamic_masking else 0)

    def locate(self, index: int) -> tuple[int, int]:
        """(epoch, chunk id) of element ``index``."""
        if self.num_epochs is None and not self.cfg.dynamic_masking:  # every epoch is as long
            n = len(self.chunks(0))
            epoch, pos = divmod(index, n)
        else:
            while self._starts[-1] <= index:
                self._starts.append(self._starts[-1] + len(self.chunks(len(self._starts) - 1)))
            epoch = bisect.bisect_right(self._starts, index) - 1
            pos = index - self._starts[epoch]
        if not self.shuffle:
            return epoch, pos
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch, _SHUFFLE_STREAM])
            self._orders[epoch] = rng.permutation(len(self.chunks(epoch)))
            while len(self._orders) > 2:
                self._orders.pop(next(iter(self._orders)))
        return epoch, int(self._orders[epoch][pos])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, chunk = self.locate(int(index))
        key = epoch if self.cfg.dynamic_masking else _STATIC_EPOCH
        rng = np.random.default_rng([self.seed, key, chunk])
        return self.corpus.example(self.chunks(epoch), chunk, rng, self.cfg)


def pretraining_dataset(
    corpus: TokenizedCorpus,
    cfg: PretrainDataConfig,
    *,
    split: str,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
    read_threads: int = 0,
) -> grain.IterDataset:
    """Batches of this process's share of ALBERT pretraining examples.

    Args:
      corpus: the tokenized corpus.
      cfg: example configuration.
      split: ``"train"`` (shuffled, reshuffled and re-masked each epoch, forever unless
        ``num_epochs``) or ``"eval"`` (held-out documents, one pass in a fixed order, static
        masks).
      global_batch_size: examples per step over all processes.
      seed: seeds chunking, shuffling and example creation.
      process_index, process_count: this process's slice; default ``jax.process_index()`` and
        ``jax.process_count()``.
      num_epochs: passes over the training chunks; None repeats forever (train only).
      worker_count: grain worker processes (0 = make examples in this process).
      read_threads: threads making batches ahead in each process. Example creation is
        GIL-bound Python, so threads rarely help; use worker processes for throughput.

    Returns:
      A ``grain.IterDataset`` of dicts of numpy arrays with leading dim
      ``global_batch_size // process_count``; iterate it and keep the iterator, whose state
      goes into checkpoints::

        it = iter(ds)
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(it)))
        mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(it)))

    Raises:
      ValueError: bad split, batch size not divisible by the process count, or the split has
        fewer examples than one global batch.
    """
    if split not in ("train", "eval"):
        raise errors.ConfigError(f"split must be 'train' or 'eval', got {split!r}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise errors.ConfigError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count={process_count}"
        )
    if not 0 <= process_index < process_count:
        raise errors.ConfigError(f"process_index={process_index} not in [0, {process_count})")
    chunks = corpus.chunks(cfg, split, seed)
    if len(chunks) < global_batch_size:
        raise errors.ConfigError(
            f"the {split} split of {corpus.meta['source']} has {len(chunks)} examples at "
            f"seq_len={cfg.seq_len}, fewer than global_batch_size={global_batch_size}"
        )
    train = split == "train"
    if not train:
        cfg = dataclasses.replace(cfg, dynamic_masking=False)
    ds = Examples(corpus, cfg, split=split, seed=seed, num_epochs=num_epochs if train else 1, shuffle=train)
    if len(ds) < _FOREVER:  # finite: keep whole global batches so every process has as many
        ds = ds[: len(ds) - len(ds) % global_batch_size]
    # Batch first, then take every process_count-th batch: process p holds the contiguous block p of
    # each global batch, so the global array has the same row order whatever the number of hosts.
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    ds = ds[process_index::process_count]
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=8))
    if worker_count > 0:
        # grain's worker processes read absl flags, which programs without absl.app never parse.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def make_global_batch(
    local_batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """Assembles per-process batches into global arrays sharded along the batch axis.

    ``sharding`` should partition axis 0 over the data-parallel devices (e.g.
    ``NamedSharding(mesh, PartitionSpec("data"))``); the global batch is the process-local
    batch times the process count.
    """
    process_count = jax.process_count()
    if process_count == 1:  # the local batch is the global one: one batched transfer
        return jax.device_put({k: np.asarray(v) for k, v in local_batch.items()}, sharding)
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_shape = (value.shape[0] * process_count, *value.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
