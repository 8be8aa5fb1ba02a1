"""Tests for albert_jax.tasks.ner: CoNLL reader, HF mapping, word windows, metrics and errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

from albert_jax.tasks.base import DataError
from albert_jax.tasks.ner import (
    IGNORE,
    LABEL_IDS,
    LABELS,
    NerTask,
    Sentence,
    assemble_words,
    ner_features,
    read_conll,
    sentences_from_hf,
)
from albert_jax.tokenizer import AlbertTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
CONLL_DIR = FIXTURES / "conll"
TOKENIZER = AlbertTokenizer(FIXTURES / "tokenizer" / "spiece.model")
SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def sentences() -> dict[str, list[Sentence]]:
    task = NerTask(str(CONLL_DIR))
    return {split: task.read(split) for split in SPLITS}


def test_task_attributes():
    task = NerTask(str(CONLL_DIR))
    assert (task.name, task.head, task.num_labels, task.selection_metric) == (
        "ner",
        "AlbertForTokenClassification",
        9,
        "f1",
    )
    assert task.sequence_inputs == ("labels",) and task.token_outputs == ("logits",)
    assert task.splits() == {"train": "train", "dev": "eval", "test": "eval"}
    assert LABELS == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def test_read_conll_fixture(sentences):
    train = sentences["train"]
    # -DOCSTART- lines and runs of blank lines start no sentence.
    assert [len(s.words) for s in train] == [9, 2, 2, 12]
    assert [s.index for s in train] == [0, 1, 2, 3]
    assert train[0].words[:3] == ("EU", "rejects", "German")
    assert train[0].tags[:3] == ("B-ORG", "O", "B-MISC")
    assert train[2] == Sentence(2, ("BRUSSELS", "1996-08-22"), ("B-LOC", "O"))
    assert [len(s.words) for s in sentences["dev"]] == [8, 2, 53]
    assert [len(s.words) for s in sentences["test"]] == [12, 2, 6]


@pytest.mark.parametrize(
    "names, present",
    [
        (("eng.train", "eng.testa", "eng.testb"), ("train", "dev", "test")),
        (("train.txt", "dev.txt"), ("train", "dev")),
        (("valid.txt",), ("dev",)),
    ],
)
def test_split_file_names(tmp_path, names, present):
    for name, source in zip(names, ("train.txt", "valid.txt", "test.txt")):
        shutil.copy(CONLL_DIR / ("valid.txt" if name == "valid.txt" else source), tmp_path / name)
    task = NerTask(str(tmp_path))
    assert tuple(task.splits()) == present
    for split in present:
        assert task.read(split)
    missing = [s for s in SPLITS if s not in present]
    for split in missing:
        with pytest.raises(DataError, match=f"no {split} file"):
            task.read(split)


@pytest.mark.parametrize(
    "text, message",
    [
        ("EU NNP B-NP B-ORG\nrejects VBZ B-VP B-FOO\n", "bad.txt:2: tag 'B-FOO' is not a CoNLL-2003 tag"),
        ("EU NNP B-NP B-ORG\n\nlonely\n", "bad.txt:3: expected 'word ... NER-tag' columns"),
        ("EU NNP B-NP b-org\n", "bad.txt:1: tag 'b-org'"),
    ],
)
def test_bad_lines(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_conll(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_not_utf8(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"caf\xe9 NN B-NP O\n")
    with pytest.raises(DataError, match="not UTF-8"):
        NerTask(str(tmp_path)).read("train")


def test_first_sub_token_carries_the_label(sentences):
    sent = sentences["dev"][0]
    feats = ner_features([sent], TOKENIZER, 64, training=False)
    assert feats.inputs["input_ids"].shape == (1, 64)
    ids, labels = [TOKENIZER.cls_token_id], [IGNORE]
    for word, tag in zip(sent.words, sent.tags):
        pieces = TOKENIZER.encode(word)
        ids += pieces
        labels += [LABEL_IDS[tag]] + [IGNORE] * (len(pieces) - 1)
    ids.append(TOKENIZER.sep_token_id)
    labels.append(IGNORE)
    n = len(ids)
    assert any(len(TOKENIZER.encode(w)) > 1 for w in sent.words)  # some words split
    assert feats.inputs["input_ids"][0, :n].tolist() == ids
    assert feats.inputs["labels"][0, :n].tolist() == labels
    assert (feats.inputs["labels"][0, n:] == IGNORE).all()
    assert feats.inputs["attention_mask"][0].tolist() == [1] * n + [0] * (64 - n)
    assert not feats.inputs["token_type_ids"].any()
    for name in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert feats.inputs[name].dtype == np.int32


def test_word_without_pieces_becomes_unk():
    assert TOKENIZER.encode("\u0301") == []
    sent = Sentence(0, ("Peter", "\u0301", "went"), ("B-PER", "O", "O"))
    feats = ner_features([sent], TOKENIZER, 16, training=False)
    n_peter = len(TOKENIZER.encode("Peter"))
    assert feats.inputs["input_ids"][0, 1 + n_peter] == TOKENIZER.unk_token_id
    assert feats.meta.word_ids[0, 1 + n_peter] == 1
    [tags] = assemble_words(feats.meta, feats.inputs["labels"], [3])
    assert [LABELS[t] for t in tags] == list(sent.tags)


@pytest.mark.parametrize("max_seq_length", [4, 8, 16, 32, 128])
@pytest.mark.parametrize("stride", [None, 1, 3, 100])
def test_windows_score_every_word_once(sentences, max_seq_length, stride):
    for split in SPLITS:
        sents = sentences[split]
        feats = ner_features(sents, TOKENIZER, max_seq_length, training=False, stride=stride)
        meta = feats.meta
        # Gold labels reassembled through the windows are the input tags (assemble_words also
        # checks that every word is scored exactly once).
        tags = assemble_words(meta, feats.inputs["labels"], [len(s.words) for s in sents])
        assert [[LABELS[t] for t in w] for w in tags] == [list(s.tags) for s in sents]
        # Labels sit exactly on the scoring positions; every row is [CLS] ... [SEP] within T.
        assert ((feats.inputs["labels"] != IGNORE) == meta.scored).all()
        lengths = feats.inputs["attention_mask"].sum(1)
        assert (lengths <= max_seq_length).all()
        assert (feats.inputs["input_ids"][:, 0] == TOKENIZER.cls_token_id).all()
        assert (feats.inputs["input_ids"][np.arange(len(feats)), lengths - 1] == TOKENIZER.sep_token_id).all()
        # Each row holds a run of consecutive whole words.
        for r in range(len(feats)):
            words = meta.word_ids[r][meta.word_ids[r] >= 0]
            assert (np.diff(words) == 1).all()


def test_long_sentence_gets_overlapping_windows(sentences):
    long = sentences["dev"][2]
    feats = ner_features([long], TOKENIZER, 32, training=False)
    assert len(feats) > 2
    spans = [tuple(w[w >= 0][[0, -1]]) for w in feats.meta.word_ids]
    assert spans[0][0] == 0 and spans[-1][1] == len(long.words) - 1
    assert all(b[0] <= a[1] for a, b in zip(spans, spans[1:]))  # overlap or adjacency, never a gap
    assert any(b[0] <= a[1] for a, b in zip(spans, spans[1:]))  # some words seen twice


def _context(meta, lengths, r, c) -> float:
    """SQuAD's max-context score of the word whose first sub-token is at row r, column c."""
    left = c - 1  # after [CLS]
    right = lengths[r] - 2 - 1 - left
    return min(left, right) + 0.01 * (lengths[r] - 2)


def test_each_word_is_scored_from_its_max_context_window(sentences):
    sents = sentences["dev"]
    feats = ner_features(sents, TOKENIZER, 16, training=False)
    meta, lengths = feats.meta, feats.inputs["attention_mask"].sum(1)
    best: dict[tuple[int, int], float] = {}
    for r, c in zip(*np.nonzero(meta.word_ids >= 0)):
        key = (int(meta.sentence[r]), int(meta.word_ids[r, c]))
        best[key] = max(best.get(key, -1.0), _context(meta, lengths, r, c))
    for r, c in zip(*np.nonzero(meta.scored)):
        key = (int(meta.sentence[r]), int(meta.word_ids[r, c]))
        assert _context(meta, lengths, r, c) == pytest.approx(best[key])


def test_training_labels_every_first_sub_token(sentences):
    sents = sentences["dev"]
    feats = ner_features(sents, TOKENIZER, 16, training=True)
    assert ((feats.inputs["labels"] != IGNORE) == (feats.meta.word_ids >= 0)).all()
    assert (feats.inputs["labels"] != IGNORE).sum() > sum(len(s.words) for s in sents)  # overlaps


def _logits_for(feats, word_tags: list[list[str]]) -> np.ndarray:
    """Logits [N, T, 9] that predict `word_tags` at every first sub-token, in every window."""
    n, t = feats.inputs["input_ids"].shape
    logits = np.random.default_rng(1).normal(size=(n, t, len(LABELS))).astype(np.float32)
    for r, c in zip(*np.nonzero(feats.meta.word_ids >= 0)):
        tag = word_tags[feats.meta.sentence[r]][feats.meta.word_ids[r, c]]
        logits[r, c, LABEL_IDS[tag]] = 100.0
    return logits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_seqeval(sentences, tmp_path, seed):
    sents = sentences["dev"] + sentences["test"]
    task = NerTask(str(CONLL_DIR))
    feats = task.features(sents, TOKENIZER, 16, training=False)
    rng = np.random.default_rng(seed)
    # Predictions: the gold tags with about a third of the words replaced at random.
    pred = [[LABELS[rng.integers(9)] if rng.random() < 0.3 else t for t in s.tags] for s in sents]
    gold = [list(s.tags) for s in sents]
    metrics = task.evaluate("dev", sents, feats, {"logits": _logits_for(feats, pred)}, str(tmp_path))
    assert metrics == pytest.approx(
        {
            "precision": precision_score(gold, pred),
            "recall": recall_score(gold, pred),
            "f1": f1_score(gold, pred),
            "accuracy": accuracy_score(gold, pred),
        }
    )
    blocks = (tmp_path / "dev.txt").read_text(encoding="utf-8").split("\n\n")
    assert blocks[-1] == ""
    assert blocks[:-1] == [
        "\n".join(f"{w} {g} {p}" for w, g, p in zip(s.words, s.tags, ps)) for s, ps in zip(sents, pred)
    ]


def test_perfect_predictions(sentences):
    sents = sentences["dev"]
    task = NerTask(str(CONLL_DIR))
    feats = task.features(sents, TOKENIZER, 32, training=False)
    metrics = task.evaluate(
        "dev", sents, feats, {"logits": _logits_for(feats, [s.tags for s in sents])}, None
    )
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}


def test_degenerate(sentences):
    task = NerTask(str(CONLL_DIR))
    sents = sentences["dev"]
    feats = task.features(sents, TOKENIZER, 32, training=False)
    all_o = _logits_for(feats, [["O"] * len(s.words) for s in sents])
    assert task.degenerate({"logits": all_o}, features=feats) is not None  # specials may say anything
    all_o[:, :, 0] = 1000.0
    warning = task.degenerate({"logits": all_o})
    assert warning is not None and "'O'" in warning and "\n" not in warning
    good = _logits_for(feats, [s.tags for s in sents])
    assert task.degenerate({"logits": good}, features=feats) is None
    assert task.degenerate({"logits": good}) is None


def test_loss_counts_labelled_tokens_only():
    task = NerTask(None)
    logits = jax.random.normal(jax.random.key(0), (2, 5, 9))
    labels = jnp.array([[IGNORE, 3, IGNORE, 0, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE, IGNORE]], jnp.int32)
    out = type("Out", (), {"logits": logits})()
    loss_sum, weight = task.loss(out, {"labels": labels})
    logp = jax.nn.log_softmax(logits)
    np.testing.assert_allclose(loss_sum, [-(logp[0, 1, 3] + logp[0, 3, 0]), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(weight, [2.0, 0.0])
    assert task.outputs(out, {})["logits"].shape == (2, 5, 9)


def _hf_dataset(tokens, tags, names) -> datasets.Dataset:
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=list(names))),
        }
    )
    return datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags}, features=features)


def test_hf_mapping(sentences):
    sents = sentences["train"]
    ds = _hf_dataset([list(s.words) for s in sents], [[LABEL_IDS[t] for t in s.tags] for s in sents], LABELS)
    assert sentences_from_hf(ds, ds.features["ner_tags"].feature.names) == sents
    assert sentences_from_hf(ds) == sents


def test_hf_mapping_reads_label_names():
    names = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-MISC", "I-MISC")
    ds = _hf_dataset([["Peter", "in", "Paris"], []], [[3, 0, 1], []], names)
    [sent] = sentences_from_hf(ds, ds.features["ner_tags"].feature.names)  # the empty row is dropped
    assert sent == Sentence(0, ("Peter", "in", "Paris"), ("B-PER", "O", "B-LOC"))


def test_hf_mapping_rejects_unknown_names():
    ds = _hf_dataset([["Peter"]], [[1]], ["O", "B-PERSON"])
    with pytest.raises(DataError, match="B-PERSON"):
        sentences_from_hf(ds, ds.features["ner_tags"].feature.names)
