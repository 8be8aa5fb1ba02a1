"""Tests for albert_jax.data.pretraining: the token cache, chunking, SOP and n-gram masking."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from albert_jax.data.pretraining import (
    RANDOM_NEXT,
    PretrainDataConfig,
    TokenInfo,
    TokenizedCorpus,
    create_masked_lm_predictions,
    is_start_piece,
    truncate_seq_pair,
)
from albert_jax.data.text import CorpusError, CorpusSpec, iter_documents

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "tokenizer" / "spiece.model"
GRIMM = ROOT.parent / "shared" / "data" / "corpus" / "grimm_tales.txt"
CFG = PretrainDataConfig(seq_len=128, max_predictions=20)
NUM_EPOCHS = 5  # ~700 chunks x 5 epochs of fresh masks: a few thousand examples


def load_tokenizer(tmp_dir: pathlib.Path):
    """The repository's fixture vocabulary, or a small one trained on the embedded corpus."""
    from albert_jax.tokenizer import AlbertTokenizer, train_tokenizer

    if FIXTURE_MODEL.exists():
        return AlbertTokenizer(str(FIXTURE_MODEL))
    text = [s for doc in iter_documents(CorpusSpec()) for s in doc]
    return AlbertTokenizer(train_tokenizer(text, str(tmp_dir / "spm"), vocab_size=1000))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def corpus(tokenizer, tmp_path_factory):
    return TokenizedCorpus.build(CorpusSpec(), tokenizer, str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def examples(corpus):
    """Examples of every training chunk for NUM_EPOCHS epochs, stacked, with (epoch, chunk id)."""
    out, ids = [], []
    for epoch in range(NUM_EPOCHS):
        chunks = corpus.chunks(CFG, "train", seed=0, epoch=epoch)
        for c in range(len(chunks)):
            out.append(corpus.example(chunks, c, np.random.default_rng([0, epoch, c]), CFG))
            ids.append((epoch, c))
    stacked = {k: np.stack([e[k] for e in out]) for k in out[0]}
    return stacked, ids, [corpus.chunks(CFG, "train", seed=0, epoch=e) for e in range(NUM_EPOCHS)]


def _unmasked(ex: dict[str, np.ndarray]) -> np.ndarray:
    """input_ids with the original tokens put back at the masked positions."""
    ids = ex["input_ids"].copy()
    k = int(ex["masked_lm_weights"].sum())
    ids[ex["masked_lm_positions"][:k]] = ex["masked_lm_ids"][:k]
    return ids


def _row(stacked, i):
    return {k: v[i] for k, v in stacked.items()}


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    if len(needle) > len(haystack):
        return False
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((windows == needle).all(axis=1).any())


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "piece, expected",
    [
        ("▁the", True),
        ("<unk>", True),
        (".", True),
        ("€", True),
        ("ing", False),
        ("s", False),
        ("12", True),
        ("é", True),
        ("ab-c", False),
    ],
)
def test_is_start_piece(piece, expected):
    assert is_start_piece(piece) == expected


def _reference_truncate_lengths(la: int, lb: int, m: int) -> tuple[int, int]:
    while la + lb > m:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


@pytest.mark.parametrize(
    "la, lb, m",
    [
        (3, 4, 10),
        (50, 3, 20),
        (3, 50, 20),
        (30, 30, 21),
        (30, 30, 20),
        (40, 12, 30),
        (11, 10, 19),
        (200, 1, 5),
    ],
)
def test_truncate_seq_pair_matches_reference(la, lb, m):
    a, b = np.arange(la), 1000 + np.arange(lb)
    rng = np.random.default_rng(0)
    fronts = []
    for _ in range(200):
        ta, tb = truncate_seq_pair(a, b, m, rng)
        assert (len(ta), len(tb)) == _reference_truncate_lengths(la, lb, m)
        assert _contains(a, ta) and _contains(b, tb)
        fronts.append(int(ta[0]) if len(ta) else 0)
    if la - _reference_truncate_lengths(la, lb, m)[0] >= 10:
        # Front removals are Binomial(removed, 0.5): on average half of the removed tokens.
        removed = la - _reference_truncate_lengths(la, lb, m)[0]
        assert abs(np.mean(fronts) - removed / 2) < 0.15 * removed


def test_layout_and_special_tokens(examples, corpus):
    stacked, _, _ = examples
    info = corpus.token_info
    for i in range(0, len(stacked["input_ids"]), 7):
        ex = _row(stacked, i)
        ids = _unmasked(ex)
        length = int(ex["attention_mask"].sum())
        assert (ex["attention_mask"][:length] == 1).all() and (ex["attention_mask"][length:] == 0).all()
        assert ids[0] == info.cls_id
        seps = np.flatnonzero(ids == info.sep_id)
        assert len(seps) == 2 and seps[1] == length - 1
        assert (ids[length:] == info.pad_id).all() and (ex["input_ids"][length:] == info.pad_id).all()
        assert not np.isin(ids[1:length], [info.cls_id, info.pad_id]).any()
        tt = ex["token_type_ids"]
        assert (tt[: seps[0] + 1] == 0).all() and (tt[seps[0] + 1 : length] == 1).all()
        assert (tt[length:] == 0).all()
        assert 1 <= seps[0] - 1 and 1 <= length - seps[0] - 2  # A and B are non-empty
        assert length <= CFG.seq_len


def test_dtypes_and_shapes(examples):
    stacked, _, _ = examples
    n = len(stacked["input_ids"])
    expect = {
        "input_ids": ((n, 128), np.int32),
        "attention_mask": ((n, 128), np.int32),
        "token_type_ids": ((n, 128), np.int32),
        "masked_lm_positions": ((n, 20), np.int32),
        "masked_lm_ids": ((n, 20), np.int32),
        "masked_lm_weights": ((n, 20), np.float32),
        "sentence_order_label": ((n,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in stacked.items()} == expect


def test_masked_positions_valid(examples, corpus):
    stacked, _, _ = examples
    info = corpus.token_info
    w = stacked["masked_lm_weights"]
    k = w.sum(1).astype(int)
    assert ((w == 0) | (w == 1)).all()
    # Real predictions come first; padding entries are all zero.
    assert (np.cumsum(w == 0, axis=1)[w == 1] == 0).all()
    assert (stacked["masked_lm_positions"][w == 0] == 0).all() and (
        stacked["masked_lm_ids"][w == 0] == 0
    ).all()
    for i in range(len(k)):
        pos = stacked["masked_lm_positions"][i, : k[i]]
        length = stacked["attention_mask"][i].sum()
        assert (np.diff(pos) > 0).all() and (pos > 0).all() and (pos < length).all()
        orig = stacked["masked_lm_ids"][i, : k[i]]
        assert not np.isin(orig, [info.cls_id, info.sep_id, info.pad_id]).any()


def test_masked_fraction(examples):
    stacked, _, _ = examples
    k = stacked["masked_lm_weights"].sum(1)
    length = stacked["attention_mask"].sum(1)
    budget = np.minimum(CFG.max_predictions, np.maximum(1, np.round(length * CFG.masked_lm_prob)))
    assert (k <= budget).all()
    # k = 0 only when every word is longer than the budget (tiny examples), as in the original.
    assert (k == 0).mean() < 0.01
    assert (k == budget).mean() > 0.95
    frac = k.sum() / length.sum()
    assert 0.14 < frac < 0.16, frac


def test_replacement_split_80_10_10(examples, corpus):
    stacked, _, _ = examples
    w = stacked["masked_lm_weights"] == 1
    rows, cols = np.nonzero(w)
    current = stacked["input_ids"][rows, stacked["masked_lm_positions"][rows, cols]]
    original = stacked["masked_lm_ids"][rows, cols]
    n = len(current)
    assert n > 20000
    mask = (current == corpus.token_info.mask_id).mean()
    kept = (current == original).mean()
    random = 1 - mask - kept
    assert abs(mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.01 and abs(random - 0.1) < 0.01, (mask, kept)


def test_sop_labels_balanced_and_correct(examples, corpus):
    stacked, ids, chunks = examples
    labels = stacked["sentence_order_label"]
    kinds = np.array([chunks[e].kind[c] for e, c in ids])
    within = kinds != RANDOM_NEXT
    assert abs(labels[within].mean() - 0.5) < 0.03, labels[within].mean()  # swapped half the time
    assert (labels[~within] == 1).all() and 0.05 < (~within).mean() < 0.5  # one-sentence chunks
    info = corpus.token_info
    offs = corpus.sentence_offsets
    for i in range(0, len(labels), 5):
        row = _unmasked(_row(stacked, i))
        seps = np.flatnonzero(row == info.sep_id)
        a, b = row[1 : seps[0]], row[seps[0] + 1 : seps[1]]
        e, c = ids[i]
        start, a_end, stop = (
            int(x) for x in (chunks[e].start[c], chunks[e].start[c] + chunks[e].a_len[c], chunks[e].stop[c])
        )
        first, second = (a, b) if labels[i] == 0 else (b, a)
        # A is the chunk's first a_len sentences; B the rest (swapped for label 1) or another document's.
        assert _contains(corpus.tokens[offs[start] : offs[a_end]], first if within[i] else a), i
        if within[i]:
            assert _contains(corpus.tokens[offs[a_end] : offs[stop]], second), i


def test_ngram_lengths_6_3_2(corpus, examples):
    stacked, _, _ = examples
    drawn, masked = np.zeros(CFG.max_ngram + 1), np.zeros(CFG.max_ngram + 1)
    for i in range(0, len(stacked["input_ids"]), 2):
        ids = _unmasked(_row(stacked, i))[: stacked["attention_mask"][i].sum()]
        out = create_masked_lm_predictions(ids, CFG, corpus.token_info, np.random.default_rng(i))
        masked += np.bincount(out.ngram_lengths, minlength=CFG.max_ngram + 1)
        full = [n for left, n in out.drawn_ngrams if left >= CFG.max_ngram]  # away from the end
        drawn += np.bincount(full, minlength=CFG.max_ngram + 1)
        assert sum(out.ngram_lengths) <= len(out.positions)  # every word has at least one token
    expected = np.array([6, 3, 2]) / 11
    drawn_frac = drawn[1:] / drawn[1:].sum()
    assert np.abs(drawn_frac - expected).max() < 0.02, drawn_frac
    # Masked n-grams are biased to 1 (budget shortening, overlap skips), as in the original; the more so
    # the shorter the examples (most of the embedded corpus's docstrings are shorter than CFG.seq_len).
    masked_frac = masked[1:] / masked[1:].sum()
    assert masked_frac[0] > masked_frac[1] > masked_frac[2]
    assert np.abs(masked_frac - expected).max() < 0.14, masked_frac


def test_ngram_length_near_the_end_is_cut_not_reweighted():
    """n is drawn 6:3:2 at every word and the n-gram then cut at the last word, as the original's
    ``cand_indexes[w:w + n]`` is; so P(n-gram of k words) with w words left is

      w >= 3: 1, 2, 3 words with 6/11, 3/11, 2/11 = 0.545, 0.273, 0.182
      w == 2: 1, 2 words with 6/11, 5/11 = 0.545, 0.455   (re-weighting over 2 words gave 2/3, 1/3)
      w == 1: 1 word always.

    Sequences of 5 one-token words with a budget of 5 visit most words, so every position gets 13k
    to 15k draws; each frequency must be within 5 standard errors (about 0.02) of the above.
    """
    vocab = 20
    info = TokenInfo(vocab, 0, 1, 2, 3, 4, start_piece=np.ones(vocab, bool))  # every token is a word
    cfg = PretrainDataConfig(seq_len=16, masked_lm_prob=1.0, max_predictions=5, max_ngram=3)
    ids = np.array([2, 10, 11, 3, 12, 13, 14, 3])  # [CLS] A [SEP] B [SEP]: 5 words, numbered across [SEP]
    rng = np.random.default_rng(0)
    counts = np.zeros((6, 4))  # [words left, n]
    for _ in range(15_000):
        for left, n in create_masked_lm_predictions(ids, cfg, info, rng).drawn_ngrams:
            counts[left, n] += 1
    full = np.array([6, 3, 2]) / 11
    expected = {5: full, 4: full, 3: full, 2: np.array([6, 5, 0]) / 11, 1: np.array([1.0, 0, 0])}
    for left, p in expected.items():
        total = counts[left].sum()
        assert total > 12_000, (left, total)
        freq = counts[left, 1:] / total
        tolerance = 5 * np.sqrt(p * (1 - p) / total)
        assert np.all(np.abs(freq - p) <= tolerance), (left, freq, p)


def test_masks_whole_words(corpus, examples):
    stacked, _, _ = examples
    start = corpus.token_info.start_piece
    info = corpus.token_info
    for i in range(0, len(stacked["input_ids"]), 11):
        ex = _row(stacked, i)
        ids = _unmasked(ex)
        k = int(ex["masked_lm_weights"].sum())
        masked = np.zeros(len(ids), bool)
        masked[ex["masked_lm_positions"][:k]] = True
        for p in np.flatnonzero(masked):
            # A masked continuation piece's word start (previous non-special token) is masked too.
            if not start[ids[p]] and p > 1 and ids[p - 1] not in (info.sep_id, info.cls_id):
                assert masked[p - 1], (i, p)


def test_same_rng_same_example_new_epoch_new_masks(corpus):
    chunks = corpus.chunks(CFG, "train", seed=0)
    make = lambda key: corpus.example(chunks, 3, np.random.default_rng(key), CFG)
    a, b = make([0, 0, 3]), make([0, 0, 3])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    epochs = [make([0, e, 3]) for e in range(6)]
    positions = {tuple(e["masked_lm_positions"]) for e in epochs}
    assert len(positions) == 6


def test_no_global_rng(corpus):
    chunks = corpus.chunks(CFG, "train", seed=0)
    one = int(np.flatnonzero(chunks.kind == RANDOM_NEXT)[0])  # draws a random document too
    for c in (1, one):
        np.random.seed(1)
        a = corpus.example(chunks, c, np.random.default_rng(5), CFG)
        np.random.seed(2)
        b = corpus.example(chunks, c, np.random.default_rng(5), CFG)
        assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------
# The token cache and the chunk index.


def test_corpus_table_matches_tokenizer(corpus, tokenizer):
    docs = [d for d in iter_documents(CorpusSpec())]
    flat = [s for d in docs for s in d]
    assert corpus.num_sentences <= len(flat)
    # Spot check: the first document's sentences, tokenized directly.
    first = [tokenizer.encode(s) for s in docs[0]]
    first = [ids for ids in first if ids]
    got = [corpus.sentence(i).tolist() for i in corpus.document_sentence_range(0)]
    assert got == first
    assert corpus.tokens.dtype == np.int32 and isinstance(corpus.tokens, np.memmap)
    assert corpus.num_documents > 100


def test_cache_reused(tokenizer, tmp_path, monkeypatch, caplog):
    first = TokenizedCorpus.build(CorpusSpec(), tokenizer, str(tmp_path))

    def boom(*args, **kwargs):
        raise AssertionError("retokenized")

    monkeypatch.setattr(tokenizer, "encode_batch", boom)
    with caplog.at_level("INFO"):
        second = TokenizedCorpus.build(CorpusSpec(), tokenizer, str(tmp_path))
    assert second.path == first.path
    assert "reusing cache" in caplog.text
    assert np.array_equal(first.tokens, second.tokens)
    assert len(os.listdir(tmp_path)) == 1


def test_cache_key_depends_on_source_and_tokenizer(tokenizer, tmp_path):
    a = TokenizedCorpus.cache_key(CorpusSpec(), tokenizer)
    p = tmp_path / "x.txt"
    p.write_text("One sentence here.\nAnother one.\n")
    b = TokenizedCorpus.cache_key(CorpusSpec(files=str(p)), tokenizer)
    assert a != b

    class Other:
        fingerprint = "other-vocab"

    assert TokenizedCorpus.cache_key(CorpusSpec(), Other()) != a


def test_failed_build_leaves_nothing(tokenizer, tmp_path, monkeypatch):
    good_file = tmp_path / "good.txt"
    good_file.write_text("A first sentence here.\nA second sentence here.\n")
    cache = tmp_path / "cache"
    good = TokenizedCorpus.build(CorpusSpec(files=str(good_file)), tokenizer, str(cache))
    before = sorted(os.listdir(cache))

    calls = {"n": 0}
    real = tokenizer.encode_batch

    def flaky(texts, num_threads=-1):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # a build killed half way
        return real(texts, num_threads=num_threads)

    monkeypatch.setattr(tokenizer, "encode_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        TokenizedCorpus.build(CorpusSpec(), tokenizer, str(cache), batch_sentences=256)
    assert sorted(os.listdir(cache)) == before
    assert TokenizedCorpus(good.path).num_sentences == 2


@pytest.mark.parametrize("kind", ["missing", "empty", "latin1"])
def test_bad_corpus_build(tokenizer, tmp_path, kind):
    path = tmp_path / "corpus.txt"
    if kind == "empty":
        path.write_text("")
    elif kind == "latin1":
        path.write_bytes("caf\xe9\n".encode("latin-1"))
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(CorpusError, match=str(path).replace(".", r"\.")) as e:
        TokenizedCorpus.build(CorpusSpec(files=str(path)), tokenizer, str(cache))
    assert "\n" not in str(e.value)
    assert os.listdir(cache) == []


def test_chunk_index(corpus):
    chunks = corpus.chunks(CFG, "train", seed=0)
    again = TokenizedCorpus(corpus.path).chunks(CFG, "train", seed=0)  # recomputed: the same
    assert np.array_equal(chunks.start, again.start) and np.array_equal(chunks.stop, again.stop)
    other = corpus.chunks(CFG, "train", seed=1)
    assert not np.array_equal(chunks.target_len, other.target_len)
    assert (chunks.stop - chunks.start >= 1).all() and (chunks.a_len >= 1).all()
    assert (chunks.start[1:] >= chunks.stop[:-1]).all()  # ordered, non-overlapping
    doc_of = np.searchsorted(corpus.document_offsets, chunks.start, side="right") - 1
    assert np.array_equal(doc_of, chunks.doc)
    assert (chunks.stop <= np.asarray(corpus.document_offsets)[doc_of + 1]).all()  # within a document
    # SOP: a chunk of 2+ sentences is in order or swapped; a one-sentence chunk takes a random B.
    one = chunks.stop - chunks.start == 1
    assert (chunks.kind[one] == RANDOM_NEXT).all() and (chunks.kind[~one] != RANDOM_NEXT).all()
    assert (chunks.a_len[~one] < (chunks.stop - chunks.start)[~one]).all()
    # Consecutive chunks of a document stop as soon as the target is reached.
    lengths = np.diff(corpus.sentence_offsets)
    doc_end = np.asarray(corpus.document_offsets)[doc_of + 1]
    for c in range(0, len(chunks), 9):
        s, e = chunks.start[c], chunks.stop[c]
        assert lengths[s : e - 1].sum() < chunks.target_len[c] and (
            e == doc_end[c] or lengths[s:e].sum() >= chunks.target_len[c]
        )


def test_train_eval_split(corpus):
    train_docs, eval_docs = corpus.document_split(CFG.eval_fraction)
    assert len(np.intersect1d(train_docs, eval_docs)) == 0
    assert len(train_docs) + len(eval_docs) == corpus.num_documents
    assert len(eval_docs) >= 1
    t, e = corpus.chunks(CFG, "train", 0), corpus.chunks(CFG, "eval", 0)
    eval_sentences = set(np.concatenate([corpus.document_sentence_range(d) for d in eval_docs]).tolist())
    assert all(s not in eval_sentences for s in t.start.tolist())
    assert all(s in eval_sentences for s in e.start.tolist()) and len(e) > 0


@pytest.mark.skipif(not GRIMM.exists(), reason=f"shared data absent: {GRIMM}")
def test_grimm_examples(tokenizer, tmp_path):
    corpus = TokenizedCorpus.build(CorpusSpec(files=str(GRIMM)), tokenizer, str(tmp_path))
    cfg = PretrainDataConfig(seq_len=512)
    chunks = corpus.chunks(cfg, "train", 0)
    assert len(chunks) > 100
    ex = corpus.example(chunks, 0, np.random.default_rng(0), cfg)
    sample = [corpus.example(chunks, c, np.random.default_rng(c), cfg) for c in range(0, len(chunks), 5)]
    assert np.mean([e["attention_mask"].sum() for e in sample]) > 300  # 351-399 over seeds 0-3
    assert np.mean([e["masked_lm_weights"].sum() == 20 for e in sample]) > 0.6  # 0.72-0.92
    assert ex["input_ids"].shape == (512,)
