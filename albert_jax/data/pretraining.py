"""ALBERT pretraining examples: a tokenized, memory-mapped sentence table and example creation.

:class:`TokenizedCorpus` tokenizes a :class:`~albert_jax.data.text.CorpusSpec` once into a cache
directory keyed by the source fingerprint, the tokenizer fingerprint and :data:`FORMAT_VERSION`.
The cache holds a flat ``int32`` token array and sentence / document offsets, all memory-mapped.

Examples follow google-research/albert ``create_pretraining_data.py``:

* ``create_instances_from_document`` groups consecutive sentences of a document into chunks of
  a target length (``seq_len - 3``, or with probability ``short_seq_prob`` a random length in
  ``[2, seq_len - 3]``). Here the grouping is computed once per (corpus, config, seed) and kept
  as arrays (:class:`ChunkIndex`), so that every example is addressable by an index.
* :func:`make_example` turns one chunk into an example: a random split point ``a_end`` gives
  segments A and B, with probability 0.5 they are swapped (sentence-order label 1),
  ``truncate_seq_pair`` trims them to ``seq_len - 3`` tokens, and ``[CLS] A [SEP] B [SEP]`` is
  masked with ALBERT's whole-word n-gram masking (:func:`create_masked_lm_predictions`).

Differences from the original, all deliberate:

* Every random draw comes from a ``np.random.Generator`` passed in (the loader seeds it from
  (seed, epoch, chunk index)); the original draws n-gram lengths from the unseeded global
  numpy RNG.
* The short target length is drawn per chunk, not once per document (the original makes every
  chunk of a document short together, which is noisy on corpora with few documents).
* A chunk always has at least two sentences: a sentence reaching the target length alone is
  grouped with the next one, and a lone sentence at the end of a document joins the previous
  chunk. The original instead takes segment B from a *random other document* for one-sentence
  chunks (a next-sentence-prediction leftover that mislabels SOP). Documents with a single
  sentence therefore yield no example.
* Random replacement tokens are drawn from the vocabulary without the five special tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from array import array
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from albert_jax import errors
from albert_jax.data.text import CorpusError, CorpusSpec, iter_documents, source_fingerprint

__all__ = [
    "FORMAT_VERSION",
    "ChunkIndex",
    "MaskedLmPredictions",
    "PretrainDataConfig",
    "TokenInfo",
    "TokenizedCorpus",
    "create_masked_lm_predictions",
    "is_start_piece",
    "make_example",
    "truncate_seq_pair",
]

log = logging.getLogger(__name__)

# Bump when the cache layout changes; part of the cache directory name.
FORMAT_VERSION = 1
NUM_SPECIAL_TOKENS = 5  # pad, unk, [CLS], [SEP], [MASK]
_EVAL_SPLIT_SEED = 0xA1BE27
_CHUNK_STREAM = 0xC4A9  # keeps the chunking RNG stream apart from the example RNG streams


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    """How examples are made from the corpus (mirrors create_pretraining_data.py flags).

    Attributes:
      seq_len: max_seq_length, including [CLS] and the two [SEP].
      short_seq_prob: probability that a chunk gets a random shorter target length.
      masked_lm_prob: fraction of tokens to mask (before the max_predictions cap).
      max_predictions: max_predictions_per_seq; the masked_lm_* arrays have this length.
      max_ngram: longest masked n-gram in whole words; P(n) is proportional to 1/n.
      dynamic_masking: new masks (and A/B split, SOP swap, truncation) every epoch; if False, an
        example depends only on (seed, chunk index).
      eval_fraction: fraction of documents held out for evaluation.
    """

    seq_len: int = 512
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    max_ngram: int = 3
    dynamic_masking: bool = True
    eval_fraction: float = 0.02

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise errors.ConfigError(f"seq_len must be at least 8, got {self.seq_len}")
        if not 0 <= self.eval_fraction < 1:
            raise errors.ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_ngram < 1 or self.max_predictions < 1:
            raise errors.ConfigError("max_ngram and max_predictions must be positive")

    @property
    def max_num_tokens(self) -> int:
        """Tokens left for A and B after [CLS], [SEP], [SEP]."""
        return self.seq_len - 3


class Tokenizer(Protocol):
    """The part of ``albert_jax.tokenizer.AlbertTokenizer`` this module uses."""

    vocab_size: int
    fingerprint: str
    pad_token_id: int
    unk_token_id: int
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int

    def encode_batch(self, texts: list[str], num_threads: int = -1) -> list[list[int]]: ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...


_SPECIAL_PIECES = frozenset('!"#$%&"()*+,-./:;?@[\\]^_`{|}~') | {"€", "£"}
_ENGLISH_AND_SPECIAL = frozenset("abcdefghijklmnopqrstuvwxyz") | _SPECIAL_PIECES


def is_start_piece(piece: str) -> bool:
    """ALBERT's ``_is_start_piece``: does this SentencePiece piece start a whole word?

    True for pieces starting with "▁" or "<", punctuation pieces, and pieces with any character
    outside a-z and punctuation (digits, non-English letters), which are masked on their own.
    """
    return (
        piece.startswith(("▁", "<"))
        or piece in _SPECIAL_PIECES
        or not all(c.lower() in _ENGLISH_AND_SPECIAL for c in piece)
    )


@dataclasses.dataclass(frozen=True)
class TokenInfo:
    """Vocabulary facts needed to build examples (stored with the corpus cache)."""

    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    start_piece: np.ndarray  # [vocab_size] bool, is_start_piece of every id

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer) -> TokenInfo:
        """Reads the special ids and word-start flags of ``tok``'s vocabulary."""
        pieces = tok.convert_ids_to_tokens(list(range(tok.vocab_size)))
        ids = {
            f"{name}_id": getattr(tok, f"{name}_token_id") for name in ("pad", "unk", "cls", "sep", "mask")
        }
        start_piece = np.array([is_start_piece(p) for p in pieces], dtype=bool)
        return cls(vocab_size=tok.vocab_size, start_piece=start_piece, **ids)


# ----------------------------------------------------------------------------------------------
# Example creation.


def truncate_seq_pair(
    tokens_a: np.ndarray, tokens_b: np.ndarray, max_num_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """ALBERT's ``truncate_seq_pair`` in closed form.

    The original removes one token at a time from the longer segment (B on ties), from the
    front or the back with probability 0.5 each. This computes the final lengths directly and
    draws the number of front removals of each segment as Binomial(removed, 0.5), which has the
    same distribution.
    """
    la, lb = len(tokens_a), len(tokens_b)
    if la + lb <= max_num_tokens:
        return tokens_a, tokens_b
    short = min(la, lb)
    if max_num_tokens - short >= short:  # only the longer segment is cut
        if la > lb:
            new_a, new_b = max_num_tokens - lb, lb
        else:
            new_a, new_b = la, max_num_tokens - la
    else:  # both are cut down to (about) half; B goes first on ties, so A keeps the odd token
        new_b = max_num_tokens // 2
        new_a = max_num_tokens - new_b
    out = []
    for toks, new_len in ((tokens_a, new_a), (tokens_b, new_b)):
        removed = len(toks) - new_len
        front = int(rng.binomial(removed, 0.5)) if removed else 0
        out.append(toks[front : front + new_len])
    return out[0], out[1]


class MaskedLmPredictions(NamedTuple):
    """The result of :func:`create_masked_lm_predictions`."""

    output_ids: np.ndarray  # the sequence after replacement
    positions: np.ndarray  # [k] int32, ascending
    labels: np.ndarray  # [k] int32, the original ids at ``positions``
    ngram_lengths: list[int]  # n (in words) of every masked n-gram, after shortening
    # (words left from the visited word to the end, n as drawn and cut at the end) for every visited word
    drawn_ngrams: list[tuple[int, int]]


def create_masked_lm_predictions(
    input_ids: np.ndarray,
    cfg: PretrainDataConfig,
    info: TokenInfo,
    rng: np.random.Generator,
) -> MaskedLmPredictions:
    """ALBERT's whole-word n-gram masking of an unpadded ``[CLS] A [SEP] B [SEP]`` sequence.

    Candidate words are runs of non-special tokens starting at a start piece. Words are visited
    in random order; each draws n in [1, max_ngram] with P(n) ~ 1/n, cuts the n-gram at the last
    word (as the original's slice ``cand_indexes[w:w + n]`` does), shortens it while it would
    exceed the budget, and is skipped if it overlaps an earlier n-gram. The budget is
    ``min(max_predictions, max(1, round(len * masked_lm_prob)))``. Each chosen token becomes
    [MASK] with p=0.8, stays with p=0.1, or becomes a random token.

    The drawn n follow P(n) ~ 1/n (6:3:2 for max_ngram=3) at every word; after the cut, the
    second-to-last word gets 1 or 2 words in the ratio 6:5 and the last word 1. The masked
    n-grams are shorter on average, as in the original: n-grams are shortened to fit the remaining
    budget, and longer ones more often overlap earlier n-grams and are skipped (about
    0.63 : 0.25 : 0.12 at seq 512 with max_predictions 20).
    """
    ids = np.asarray(input_ids)
    output = ids.copy()
    special = (ids == info.cls_id) | (ids == info.sep_id)
    cand = np.flatnonzero(~special)
    num_to_predict = min(cfg.max_predictions, max(1, round(len(ids) * cfg.masked_lm_prob)))
    empty = np.zeros(0, np.int32)
    if cfg.masked_lm_prob == 0 or len(cand) == 0:
        return MaskedLmPredictions(output, empty, empty, [], [])
    starts = info.start_piece[ids[cand]]
    starts[0] = True
    word_offsets = np.append(np.flatnonzero(starts), len(cand))  # word w = cand[wo[w]:wo[w+1]]
    num_words = len(word_offsets) - 1

    pvals = 1.0 / np.arange(1, cfg.max_ngram + 1)
    cum_p = np.cumsum(pvals) / pvals.sum()

    covered = np.zeros(num_words, dtype=bool)
    chosen_words: list[tuple[int, int]] = []
    drawn: list[tuple[int, int]] = []
    num_masked = 0
    for w in rng.permutation(num_words):
        if num_masked >= num_to_predict:
            break
        # n from all of [1, max_ngram] wherever the word is, then cut at the last word: the original draws
        # from the full distribution and slices cand_indexes[w:w + n] (no re-weighting over the words left).
        n = min(int(np.searchsorted(cum_p, rng.random(), side="right")) + 1, cfg.max_ngram)
        n = min(n, num_words - w)
        drawn.append((num_words - w, n))
        size = word_offsets[w + n] - word_offsets[w]
        while num_masked + size > num_to_predict and n > 1:
            n -= 1
            size = word_offsets[w + n] - word_offsets[w]
        if num_masked + size > num_to_predict or covered[w : w + n].any():
            continue
        covered[w : w + n] = True
        chosen_words.append((w, n))
        num_masked += size

    if not chosen_words:
        return MaskedLmPredictions(output, empty, empty, [], drawn)
    positions = np.sort(
        np.concatenate([cand[word_offsets[w] : word_offsets[w + n]] for w, n in chosen_words])
    )
    labels = ids[positions]
    u = rng.random(len(positions))
    to_mask = u < 0.8
    to_random = u >= 0.9
    output[positions[to_mask]] = info.mask_id
    output[positions[to_random]] = rng.integers(
        NUM_SPECIAL_TOKENS, info.vocab_size, size=int(to_random.sum())
    )
    return MaskedLmPredictions(
        output, positions.astype(np.int32), labels.astype(np.int32), [n for _, n in chosen_words], drawn
    )


def make_example(
    chunk_sentences: Sequence[np.ndarray],
    rng: np.random.Generator,
    cfg: PretrainDataConfig,
    info: TokenInfo,
) -> dict[str, np.ndarray]:
    """Builds one SOP + masked-LM example from a chunk of consecutive sentences.

    Returns a dict of ``input_ids``, ``attention_mask``, ``token_type_ids`` ([seq_len] int32),
    ``masked_lm_positions``, ``masked_lm_ids`` ([max_predictions] int32),
    ``masked_lm_weights`` ([max_predictions] float32, 1 for real predictions) and
    ``sentence_order_label`` ([] int32, 1 when A and B are swapped).
    """
    n = len(chunk_sentences)
    if n >= 2:
        a_end = int(rng.integers(1, n))
        tokens_a = np.concatenate(chunk_sentences[:a_end])
        tokens_b = np.concatenate(chunk_sentences[a_end:])
    else:  # not produced by ChunkIndex; split a lone sentence so callers never crash
        toks = np.asarray(chunk_sentences[0])
        if len(toks) < 2:
            raise ValueError("a chunk needs at least two tokens")
        cut = int(rng.integers(1, len(toks)))
        tokens_a, tokens_b = toks[:cut], toks[cut:]
    label = 0
    if rng.random() < 0.5:
        tokens_a, tokens_b = tokens_b, tokens_a
        label = 1
    tokens_a, tokens_b = truncate_seq_pair(tokens_a, tokens_b, cfg.max_num_tokens, rng)

    la, lb = len(tokens_a), len(tokens_b)
    length = la + lb + 3
    ids = np.empty(length, np.int32)
    ids[0] = info.cls_id
    ids[1 : 1 + la] = tokens_a
    ids[1 + la] = info.sep_id
    ids[2 + la : 2 + la + lb] = tokens_b
    ids[-1] = info.sep_id
    masked, positions, labels, *_ = create_masked_lm_predictions(ids, cfg, info, rng)

    T, P = cfg.seq_len, cfg.max_predictions
    input_ids = np.full(T, info.pad_id, np.int32)
    input_ids[:length] = masked
    attention_mask = np.zeros(T, np.int32)
    attention_mask[:length] = 1
    token_type_ids = np.zeros(T, np.int32)
    token_type_ids[2 + la : length] = 1
    k = len(positions)
    lm_positions = np.zeros(P, np.int32)
    lm_positions[:k] = positions
    lm_ids = np.zeros(P, np.int32)
    lm_ids[:k] = labels
    lm_weights = np.zeros(P, np.float32)
    lm_weights[:k] = 1.0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "masked_lm_positions": lm_positions,
        "masked_lm_ids": lm_ids,
        "masked_lm_weights": lm_weights,
        "sentence_order_label": np.asarray(label, np.int32),
    }


# ----------------------------------------------------------------------------------------------
# Tokenized corpus cache.


@dataclasses.dataclass(frozen=True)
class ChunkIndex:
    """Chunks of consecutive sentences: chunk i is sentences ``[start[i], stop[i])``."""

    start: np.ndarray  # [C] int64, global sentence ids
    stop: np.ndarray  # [C] int64, exclusive
    target_len: np.ndarray  # [C] int32, the target length drawn for the chunk

    def __len__(self) -> int:
        return len(self.start)


def _chunk_document(
    lengths: np.ndarray, first: int, cfg: PretrainDataConfig, rng: np.random.Generator, out: list
) -> None:
    """Appends (start, stop, target) chunks of one document (create_instances_from_document)."""
    n = len(lengths)
    if n < 2:
        return

    def draw_target() -> int:
        if rng.random() < cfg.short_seq_prob:
            return int(rng.integers(2, cfg.max_num_tokens + 1))
        return cfg.max_num_tokens

    begin = len(out)
    target = draw_target()
    chunk_start, current = 0, 0
    for i in range(n):
        current += int(lengths[i])
        if i == n - 1 or (current >= target and i > chunk_start):
            out.append([first + chunk_start, first + i + 1, target])
            chunk_start, current = i + 1, 0
            target = draw_target()
    if len(out) - begin >= 2 and out[-1][1] - out[-1][0] == 1:
        last = out.pop()
        out[-1][1] = last[1]  # a lone trailing sentence joins the previous chunk


class TokenizedCorpus:
    """A memory-mapped table of tokenized sentences grouped into documents.

    Files in the cache directory: ``tokens.bin`` (flat int32 ids), ``sentence_offsets.npy``
    ([S+1] int64 token offsets), ``document_offsets.npy`` ([D+1] int64 sentence offsets),
    ``start_piece.npy`` and ``meta.json``. Objects pickle as their path (for grain workers).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        with open(os.path.join(path, "meta.json")) as f:
            self.meta: dict[str, Any] = json.load(f)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise CorpusError(f"{path}: corpus cache has an unsupported format version")
        self.tokens = np.memmap(
            os.path.join(path, "tokens.bin"), dtype=np.int32, mode="r", shape=(self.meta["num_tokens"],)
        )
        self.sentence_offsets = np.load(os.path.join(path, "sentence_offsets.npy"), mmap_mode="r")
        self.document_offsets = np.load(os.path.join(path, "document_offsets.npy"), mmap_mode="r")
        special = self.meta["special_ids"]
        self.token_info = TokenInfo(
            vocab_size=self.meta["vocab_size"],
            start_piece=np.load(os.path.join(path, "start_piece.npy")),
            **special,
        )
        self._chunk_cache: dict[tuple, ChunkIndex] = {}

    def __reduce__(self):
        return (TokenizedCorpus, (self.path,))

    def __repr__(self) -> str:
        return (
            f"TokenizedCorpus({self.meta['source']!r}, documents={self.num_documents}, "
            f"sentences={self.num_sentences}, tokens={self.num_tokens}, path={self.path!r})"
        )

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def sentence(self, i: int) -> np.ndarray:
        """Token ids of sentence ``i`` (a read-only view)."""
        return self.tokens[self.sentence_offsets[i] : self.sentence_offsets[i + 1]]

    def sentences(self, start: int, stop: int) -> list[np.ndarray]:
        """Token ids of sentences ``[start, stop)``."""
        offs = self.sentence_offsets[start : stop + 1]
        return [self.tokens[offs[j] : offs[j + 1]] for j in range(len(offs) - 1)]

    def document_sentence_range(self, d: int) -> range:
        """Global sentence ids of document ``d``."""
        return range(int(self.document_offsets[d]), int(self.document_offsets[d + 1]))

    def document_split(self, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train, eval) document ids; a fixed-seed choice among documents with 2+ sentences."""
        counts = np.diff(self.document_offsets)
        usable = np.flatnonzero(counts >= 2)
        n_eval = round(len(usable) * eval_fraction)
        if eval_fraction > 0 and len(usable) >= 2:
            n_eval = min(max(n_eval, 1), len(usable) - 1)
        perm = np.random.default_rng(_EVAL_SPLIT_SEED).permutation(len(usable))
        eval_docs = np.sort(usable[perm[:n_eval]])
        train_docs = np.setdiff1d(np.arange(self.num_documents), eval_docs)
        return train_docs, eval_docs

    def chunks(self, cfg: PretrainDataConfig, split: str = "train", seed: int = 0) -> ChunkIndex:
        """The chunk index of a split: computed once per (cfg, split, seed), cached on disk."""
        if split not in ("train", "eval", "all"):
            raise errors.ConfigError(f"split must be train, eval or all, got {split!r}")
        key = (cfg.seq_len, cfg.short_seq_prob, cfg.eval_fraction if split != "all" else None, split, seed)
        if key in self._chunk_cache:
            return self._chunk_cache[key]
        name = "chunks-" + hashlib.sha256(repr(key).encode()).hexdigest()[:16] + ".npz"
        file = os.path.join(self.path, name)
        if os.path.exists(file):
            with np.load(file) as z:
                index = ChunkIndex(z["start"], z["stop"], z["target_len"])
        else:
            index = self._compute_chunks(cfg, split, seed)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.savez(f, start=index.start, stop=index.stop, target_len=index.target_len)
                os.replace(tmp, file)
            except OSError:  # a read-only cache still works, just without the chunk cache
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._chunk_cache[key] = index
        return index

    def _compute_chunks(self, cfg: PretrainDataConfig, split: str, seed: int) -> ChunkIndex:
        if split == "all":
            docs = np.arange(self.num_documents)
        else:
            train_docs, eval_docs = self.document_split(cfg.eval_fraction)
            docs = train_docs if split == "train" else eval_docs
        rng = np.random.default_rng([seed, _CHUNK_STREAM])
        lengths = np.diff(self.sentence_offsets)
        out: list[list[int]] = []
        for d in docs:
            lo, hi = int(self.document_offsets[d]), int(self.document_offsets[d + 1])
            _chunk_document(lengths[lo:hi], lo, cfg, rng, out)
        arr = np.asarray(out, dtype=np.int64).reshape(-1, 3)
        return ChunkIndex(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].astype(np.int32))

    def chunk_sentences(self, index: ChunkIndex, i: int) -> list[np.ndarray]:
        """Token ids of the sentences of chunk ``i``."""
        return self.sentences(int(index.start[i]), int(index.stop[i]))

    # ------------------------------------------------------------------------------------------

    @staticmethod
    def cache_key(spec: CorpusSpec, tokenizer: Tokenizer) -> str:
        """The cache directory name for (source, tokenizer, format version)."""
        digest = hashlib.sha256(
            f"{source_fingerprint(spec)}|{tokenizer.fingerprint}|{FORMAT_VERSION}".encode()
        ).hexdigest()[:16]
        return f"pretrain-{spec.kind}-v{FORMAT_VERSION}-{digest}"

    @classmethod
    def build(
        cls,
        spec: CorpusSpec,
        tokenizer: Tokenizer,
        cache_dir: str,
        *,
        batch_sentences: int = 16384,
    ) -> TokenizedCorpus:
        """Tokenizes ``spec`` into ``cache_dir`` (or reuses an earlier build with the same key).

        The build writes into a temporary directory renamed into place at the end, so a killed
        or failed build leaves no partial cache, and an existing cache is never touched.

        Raises:
          CorpusError: the source is missing, unreadable or has no tokens.
        """
        final = os.path.join(cache_dir, cls.cache_key(spec, tokenizer))
        if os.path.exists(os.path.join(final, "meta.json")):
            log.info("reusing cache %s for %s", final, spec.describe())
            return cls(final)
        os.makedirs(cache_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=cache_dir)
        try:
            cls._write(spec, tokenizer, tmp, batch_sentences)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.exists(os.path.join(final, "meta.json")):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(final)

    @staticmethod
    def _write(spec: CorpusSpec, tok: Tokenizer, out_dir: str, batch_sentences: int) -> None:
        t0 = time.time()
        sentence_lengths = array("q")
        sentence_docs = array("q")
        pending: list[str] = []
        pending_docs: list[int] = []
        num_tokens = 0

        with open(os.path.join(out_dir, "tokens.bin"), "wb") as f:

            def flush() -> None:
                nonlocal num_tokens
                encoded = tok.encode_batch(pending, num_threads=-1)
                for ids, doc in zip(encoded, pending_docs):
                    if ids:
                        sentence_lengths.append(len(ids))
                        sentence_docs.append(doc)
                flat = [i for ids in encoded for i in ids]
                np.asarray(flat, dtype=np.int32).tofile(f)
                num_tokens += len(flat)
                pending.clear()
                pending_docs.clear()

            for doc_id, doc in enumerate(iter_documents(spec)):
                pending.extend(doc)
                pending_docs.extend([doc_id] * len(doc))
                if len(pending) >= batch_sentences:
                    flush()
            if pending:
                flush()

        if num_tokens == 0:
            raise CorpusError(f"corpus is empty: {spec.describe()} has no tokens")
        lengths = np.frombuffer(sentence_lengths, dtype=np.int64)
        docs = np.frombuffer(sentence_docs, dtype=np.int64)
        sentence_offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=sentence_offsets[1:])
        # Documents whose sentences all encoded to nothing disappear; ids are renumbered.
        doc_starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        document_offsets = np.append(doc_starts, len(docs)).astype(np.int64)
        np.save(os.path.join(out_dir, "sentence_offsets.npy"), sentence_offsets)
        np.save(os.path.join(out_dir, "document_offsets.npy"), document_offsets)
        info = TokenInfo.from_tokenizer(tok)
        np.save(os.path.join(out_dir, "start_piece.npy"), info.start_piece)
        meta = {
            "format_version": FORMAT_VERSION,
            "source": spec.describe(),
            "spec": dataclasses.asdict(spec),
            "source_fingerprint": source_fingerprint(spec),
            "tokenizer_fingerprint": tok.fingerprint,
            "vocab_size": info.vocab_size,
            "special_ids": {
                "pad_id": info.pad_id,
                "unk_id": info.unk_id,
                "cls_id": info.cls_id,
                "sep_id": info.sep_id,
                "mask_id": info.mask_id,
            },
            "num_tokens": num_tokens,
            "num_sentences": len(lengths),
            "num_documents": len(document_offsets) - 1,
        }
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        log.info(
            "tokenized %s: %d documents, %d sentences, %d tokens in %.1fs",
            spec.describe(),
            meta["num_documents"],
            meta["num_sentences"],
            num_tokens,
            time.time() - t0,
        )
