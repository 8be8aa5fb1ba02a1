"""ALBERT pretraining examples: a tokenized, memory-mapped sentence table and example creation.

:class:`TokenizedCorpus` tokenizes a :class:`~albert_jax.data.text.CorpusSpec` once into a cache
directory keyed by the source fingerprint, the tokenizer fingerprint and :data:`FORMAT_VERSION`.
The cache holds a flat ``int32`` token array and sentence / document offsets, all memory-mapped.

Examples are made as google-research/albert's ``create_pretraining_data.py`` makes them (its
``create_instances_from_document`` and ``create_masked_lm_predictions``), with the same
distributions:

* Every pass over the corpus (epoch) re-chunks each document: a target length is drawn once per
  document (``seq_len - 3``, or with probability ``short_seq_prob`` a random length in
  ``[2, seq_len - 3]``), and consecutive sentences are grouped until a chunk reaches it. A random
  split point gives segments A and B. :meth:`TokenizedCorpus.chunks` computes one epoch's chunks
  for all documents at once (vectorised), as arrays (:class:`ChunkIndex`), so that every example is
  addressable by (seed, epoch, index).
* ``sentence_objective="sop"``: B is swapped before A with probability 0.5 (label 1).
  ``"nsp"``: with probability 0.5 B is taken from a random other document (label 1) and the
  chunk's unused sentences start the next chunk, as the original's ``random_next_sentence``.
  ``"none"``: A and B in order (no sentence loss is trained).
* A one-sentence chunk (a sentence reaching the target alone, or a document's last) gets its B from
  a random other document, labelled 1, in every mode (``single_sentence_chunks="random_next"``,
  the original's behaviour). ``"merge"`` is this project's alternative: chunks have at least two
  sentences (a lone last sentence joins the chunk before) and one-sentence documents are skipped.
* ``truncate_seq_pair`` trims A and B to ``seq_len - 3`` tokens, and ``[CLS] A [SEP] B [SEP]`` is
  masked with whole-word n-gram masking (:func:`create_masked_lm_predictions`); random replacements
  are drawn from the whole vocabulary, special tokens included, as in the original.

Departures, both without effect on the distributions: every random draw comes from a
``np.random.Generator`` seeded from (seed, epoch, index) (the original draws n-gram lengths from the
unseeded global numpy RNG), and documents are shuffled per epoch instead of all passes' examples
together (``dupe_factor``).
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
_EVAL_SPLIT_SEED = 0xA1BE27
_CHUNK_STREAM = 0xC4A9  # keeps the chunking RNG stream apart from the example RNG streams
# Chunk kinds: how segment B relates to A (every kind but IN_ORDER has sentence_order_label 1).
IN_ORDER, SWAPPED, RANDOM_NEXT = 0, 1, 2


SENTENCE_OBJECTIVES = ("sop", "nsp", "none")
SINGLE_SENTENCE_CHUNKS = ("random_next", "merge")


@dataclasses.dataclass(frozen=True)
class PretrainDataConfig:
    """How examples are made from the corpus (mirrors create_pretraining_data.py flags).

    Attributes:
      seq_len: max_seq_length, including [CLS] and the two [SEP].
      short_seq_prob: probability that a document gets a random shorter target length (per epoch).
      masked_lm_prob: fraction of tokens to mask (before the max_predictions cap).
      max_predictions: max_predictions_per_seq; the masked_lm_* arrays have this length.
      max_ngram: longest masked n-gram (``ngram``), in whole words with ``whole_word_masking``.
      dynamic_masking: new chunks, masks, A/B splits and swaps every epoch; if False, an example
        depends only on (seed, chunk index), and every epoch has the same chunks.
      eval_fraction: fraction of documents held out for evaluation.
      sentence_objective: ``"sop"`` (ALBERT), ``"nsp"`` (BERT's next-sentence prediction, the
        original's ``random_next_sentence``) or ``"none"`` (MLM only): how segment B is chosen and
        what ``sentence_order_label`` means (1: swapped, or B from another document).
      single_sentence_chunks: ``"random_next"`` (the original: B from a random other document,
        label 1) or ``"merge"`` (chunks of at least two sentences; one-sentence documents unused).
      favor_shorter_ngram: P(n) ~ 1/n (the original's default); False reverses it (favours long).
      whole_word_masking: mask whole words (a start piece and its continuations; the original's
        ``do_whole_word_mask``); False masks single pieces.
    """

    seq_len: int = 512
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    max_ngram: int = 3
    dynamic_masking: bool = True
    eval_fraction: float = 0.02
    sentence_objective: str = "sop"
    single_sentence_chunks: str = "random_next"
    favor_shorter_ngram: bool = True
    whole_word_masking: bool = True

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise errors.ConfigError(f"seq_len must be at least 8, got {self.seq_len}")
        if not 0 <= self.eval_fraction < 1:
            raise errors.ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_ngram < 1 or self.max_predictions < 1:
            raise errors.ConfigError("max_ngram and max_predictions must be positive")
        for name, choices in (
            ("sentence_objective", SENTENCE_OBJECTIVES),
            ("single_sentence_chunks", SINGLE_SENTENCE_CHUNKS),
        ):
            if getattr(self, name) not in choices:
                raise errors.ConfigError(
                    f"data.{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )

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

    Candidate words are runs of non-special tokens starting at a start piece (single pieces
    without ``cfg.whole_word_masking``). Words are visited in random order; each draws n in
    [1, max_ngram] with P(n) ~ 1/n (~ 1/(max_ngram + 1 - n) without ``favor_shorter_ngram``), cuts the n-gram at the last
    word (as the original's slice ``cand_indexes[w:w + n]`` does), shortens it while it would
    exceed the budget, and is skipped if it overlaps an earlier n-gram. The budget is
    ``min(max_predictions, max(1, round(len * masked_lm_prob)))``. Each chosen token becomes
    [MASK] with p=0.8, stays with p=0.1, or becomes a random token of the whole vocabulary (special
    tokens included, as the original draws from all of ``vocab_words``).

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
    starts = info.start_piece[ids[cand]] if cfg.whole_word_masking else np.ones(len(cand), bool)
    starts[0] = True
    word_offsets = np.append(np.flatnonzero(starts), len(cand))  # word w = cand[wo[w]:wo[w+1]]
    num_words = len(word_offsets) - 1

    pvals = 1.0 / np.arange(1, cfg.max_ngram + 1)
    if not cfg.favor_shorter_ngram:
        pvals = pvals[::-1]
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
    output[positions[to_random]] = rng.integers(0, info.vocab_size, size=int(to_random.sum()))
    return MaskedLmPredictions(
        output, positions.astype(np.int32), labels.astype(np.int32), [n for _, n in chosen_words], drawn
    )


def make_example(
    tokens_a: np.ndarray,
    tokens_b: np.ndarray,
    label: int,
    rng: np.random.Generator,
    cfg: PretrainDataConfig,
    info: TokenInfo,
) -> dict[str, np.ndarray]:
    """Truncates segments A and B, lays out ``[CLS] A [SEP] B [SEP]`` and masks it.

    Returns a dict of ``input_ids``, ``attention_mask``, ``token_type_ids`` ([seq_len] int32),
    ``masked_lm_positions``, ``masked_lm_ids``, ``masked_lm_weights`` ([max_predictions]; weights
    1 for real predictions) and ``sentence_order_label`` ([] int32: 1 when B was swapped before A or
    comes from another document, the original's ``is_random_next``).
    """
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


@dataclasses.dataclass(frozen=True)
class ChunkIndex:
    """One epoch's chunks of one split. Chunk i is sentences ``[start[i], stop[i])`` of document
    ``doc[i]``: A is its first ``a_len[i]`` sentences; B the rest (``IN_ORDER``), the rest placed
    before A (``SWAPPED``), or sentences of a random other document of ``documents``
    (``RANDOM_NEXT``, where ``stop = start + a_len``)."""

    start: np.ndarray  # [C] int64, global sentence ids, ascending
    stop: np.ndarray  # [C] int64, exclusive
    a_len: np.ndarray  # [C] int32, sentences in A
    kind: np.ndarray  # [C] int8, IN_ORDER | SWAPPED | RANDOM_NEXT
    target_len: np.ndarray  # [C] int32, the target length drawn for the chunk's document
    doc: np.ndarray  # [C] int64, document ids
    documents: np.ndarray  # [D] int64, the split's documents (where a random B comes from)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def labels(self) -> np.ndarray:
        """[C] int32 sentence_order_label of every chunk."""
        return (self.kind != IN_ORDER).astype(np.int32)


def chunk_documents(
    sentence_lengths: np.ndarray,
    document_offsets: np.ndarray,
    documents: np.ndarray,
    cfg: PretrainDataConfig,
    rng: np.random.Generator,
) -> ChunkIndex:
    """One pass of ``create_instances_from_document`` over ``documents``, all documents at a time.

    ``sentence_lengths`` [S] are the corpus's sentence lengths in tokens, ``document_offsets``
    [D+1] its documents' first sentences. Each document draws its target length; then every
    document's next chunk is cut at once per round: the shortest run of sentences from its current
    position whose length reaches the target (or the rest of the document), with its split point
    and kind drawn as the original draws them. Work is O(chunks), in numpy.
    """
    merge = cfg.single_sentence_chunks == "merge"
    documents = np.asarray(documents, np.int64)
    lo = np.asarray(document_offsets, np.int64)[documents]
    hi = np.asarray(document_offsets, np.int64)[documents + 1]
    cum = np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)])
    target = np.full(len(documents), cfg.max_num_tokens, np.int64)
    short = rng.random(len(documents)) < cfg.short_seq_prob
    target[short] = rng.integers(2, cfg.max_num_tokens + 1, size=int(short.sum()))
    live = np.flatnonzero(hi - lo >= (2 if merge else 1))
    pos = lo.copy()
    rounds: list[tuple[np.ndarray, ...]] = []
    while len(live):
        p, end, t = pos[live], hi[live], target[live]
        stop = np.clip(np.searchsorted(cum, cum[p] + t, side="left"), p + 1, end)
        if merge:  # at least two sentences, and no lone sentence left at the end
            stop = np.minimum(np.maximum(stop, p + 2), end)
            stop = np.where(end - stop == 1, end, stop)
        n = stop - p
        a_len = rng.integers(1, np.maximum(n, 2))  # [1, n - 1]; 1 for a one-sentence chunk
        coin = rng.random(len(p)) < 0.5
        kind = np.full(len(p), IN_ORDER, np.int8)
        if cfg.sentence_objective == "sop":
            kind[coin] = SWAPPED
        elif cfg.sentence_objective == "nsp":
            kind[coin] = RANDOM_NEXT
        kind[n == 1] = RANDOM_NEXT
        random_b = kind == RANDOM_NEXT
        # A random B leaves the chunk's other sentences unused; the next chunk starts with them.
        stop = np.where(random_b, p + a_len, stop)
        keep = n >= 2 if merge else slice(None)  # merge: an NSP put-back can leave one sentence
        rounds.append(tuple(x[keep] for x in (p, stop, a_len, kind, t, documents[live])))
        pos[live] = stop
        live = live[stop < end]
    if not rounds:
        empty = np.zeros(0, np.int64)
        return ChunkIndex(
            empty, empty, empty.astype(np.int32), empty.astype(np.int8), empty, empty, documents
        )
    start, stop, a_len, kind, t, doc = (np.concatenate(x) for x in zip(*rounds))
    order = np.argsort(start, kind="stable")
    return ChunkIndex(
        start[order],
        stop[order],
        a_len[order].astype(np.int32),
        kind[order],
        t[order].astype(np.int32),
        doc[order],
        documents,
    )


# ----------------------------------------------------------------------------------------------
# Tokenized corpus cache.


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
        """(train, eval) document ids; a fixed-seed choice among documents with 2+ sentences (so
        that held-out SOP examples come from within documents)."""
        counts = np.diff(self.document_offsets)
        usable = np.flatnonzero(counts >= 2)
        n_eval = round(len(usable) * eval_fraction)
        if eval_fraction > 0 and len(usable) >= 2:
            n_eval = min(max(n_eval, 1), len(usable) - 1)
        perm = np.random.default_rng(_EVAL_SPLIT_SEED).permutation(len(usable))
        eval_docs = np.sort(usable[perm[:n_eval]])
        train_docs = np.setdiff1d(np.arange(self.num_documents), eval_docs)
        return train_docs, eval_docs

    def split_documents(self, split: str, eval_fraction: float) -> np.ndarray:
        """The document ids of ``"train"``, ``"eval"`` (see :meth:`document_split`) or ``"all"``."""
        if split not in ("train", "eval", "all"):
            raise errors.ConfigError(f"split must be train, eval or all, got {split!r}")
        if split == "all":
            return np.arange(self.num_documents)
        train_docs, eval_docs = self.document_split(eval_fraction)
        return train_docs if split == "train" else eval_docs

    def chunks(
        self, cfg: PretrainDataConfig, split: str = "train", seed: int = 0, epoch: int = 0
    ) -> ChunkIndex:
        """The chunks of one epoch of a split: a pure function of (corpus, cfg, split, seed, epoch),
        computed in memory (:func:`chunk_documents`; the last few epochs are kept)."""
        key = (cfg.seq_len, cfg.short_seq_prob, cfg.eval_fraction, cfg.sentence_objective)
        key += (cfg.single_sentence_chunks, split, seed, epoch)
        if key not in self._chunk_cache:
            docs = self.split_documents(split, cfg.eval_fraction)
            rng = np.random.default_rng([seed, epoch, _CHUNK_STREAM])
            lengths = np.diff(self.sentence_offsets)
            self._chunk_cache[key] = chunk_documents(lengths, self.document_offsets, docs, cfg, rng)
            while len(self._chunk_cache) > 4:
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
        return self._chunk_cache[key]

    def segments(
        self, index: ChunkIndex, i: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens A, tokens B, sentence_order_label) of chunk ``i``, before truncation.

        A random B (``RANDOM_NEXT``) is the original's: another document of the split (10 tries),
        a random first sentence in it, and sentences up to ``target_len - len(A)`` tokens."""
        start, a_end, stop = int(index.start[i]), int(index.start[i] + index.a_len[i]), int(index.stop[i])
        offs = self.sentence_offsets
        tokens_a = self.tokens[offs[start] : offs[a_end]]
        kind = int(index.kind[i])
        if kind != RANDOM_NEXT:
            tokens_b = self.tokens[offs[a_end] : offs[stop]]
            if kind == SWAPPED:
                tokens_a, tokens_b = tokens_b, tokens_a
            return tokens_a, tokens_b, int(kind != IN_ORDER)
        for _ in range(10):
            other = int(index.documents[rng.integers(len(index.documents))])
            if other != index.doc[i]:
                break
        lo, hi = int(self.document_offsets[other]), int(self.document_offsets[other + 1])
        first = int(rng.integers(lo, hi))
        need = int(index.target_len[i]) - len(tokens_a)
        last = int(np.clip(np.searchsorted(offs, offs[first] + need, side="left"), first + 1, hi))
        return tokens_a, self.tokens[offs[first] : offs[last]], 1

    def example(
        self, index: ChunkIndex, i: int, rng: np.random.Generator, cfg: PretrainDataConfig
    ) -> dict[str, np.ndarray]:
        """The training example of chunk ``i`` (:meth:`segments`, then :func:`make_example`)."""
        tokens_a, tokens_b, label = self.segments(index, i, rng)
        return make_example(tokens_a, tokens_b, label, rng, cfg, self.token_info)

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
