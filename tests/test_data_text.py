"""Tests for albert_jax.data.text: sources, sentence splitting and bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil

import pytest

from albert_jax.data.text import CorpusError, CorpusSpec, iter_documents, source_fingerprint, split_sentences

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
GRIMM = SHARED_DATA / "corpus" / "grimm_tales.txt"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("Fruit, e.g. apples, i.e. food. Next one.", ["Fruit, e.g. apples, i.e. food.", "Next one."]),
        ("Pi is 3.14 roughly. Yes.", ["Pi is 3.14 roughly.", "Yes."]),
        ("J. R. R. Tolkien wrote it. Done.", ["J. R. R. Tolkien wrote it.", "Done."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("“Wait,” said the Frog. “Take me.” But no.", ["“Wait,” said the Frog.", "“Take me.”", "But no."]),
        ("He went... and came back... Later it rained.", ["He went... and came back...", "Later it rained."]),
        ("Apples, pears, etc. are fruit. Etc. Fine.", ["Apples, pears, etc. are fruit.", "Etc.", "Fine."]),
        ("Hard-wrapped\nline one. And\n  line two.", ["Hard-wrapped line one.", "And line two."]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


GOLD = json.loads((pathlib.Path(__file__).parent / "fixtures" / "sentences" / "gold.json").read_text("utf-8"))


@pytest.mark.parametrize("case", GOLD, ids=[c["text"][:30] for c in GOLD])
def test_split_sentences_gold(case):
    """The hand-checked hard cases that benchmarks/sentence_split.py scores every splitter on."""
    assert split_sentences(case["text"]) == case["sentences"]


LINES_TEXT = """First sentence of doc one.
Second sentence of doc one.
Third one here.

Doc two starts here.
And ends here.
"""

PARAGRAPH_TEXT = """The Project Gutenberg EBook of Something

*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***



CHAPTER ONE


It was a dark night. The wind howled
through the trees, and Mr. Brown sat
by the fire.

He read a book. It was long.



CHAPTER TWO


Morning came. The sun rose.

[Illustration: a sunrise]

Birds sang loudly.

*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***
License text. More license text.
"""


def _write(path: pathlib.Path, text: str | bytes) -> str:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("fmt", ["lines", "auto"])
def test_lines_layout(tmp_path, fmt):
    path = _write(tmp_path / "a.txt", LINES_TEXT)
    docs = list(iter_documents(CorpusSpec(files=path, format=fmt)))
    assert docs == [
        ["First sentence of doc one.", "Second sentence of doc one.", "Third one here."],
        ["Doc two starts here.", "And ends here."],
    ]


@pytest.mark.parametrize("fmt", ["paragraphs", "auto"])
def test_paragraph_layout_and_gutenberg(tmp_path, fmt):
    path = _write(tmp_path / "book.txt", PARAGRAPH_TEXT.replace("\n", "\r\n"))
    docs = list(iter_documents(CorpusSpec(files=path, format=fmt)))
    assert docs == [
        ["CHAPTER ONE"],
        [
            "It was a dark night.",
            "The wind howled through the trees, and Mr. Brown sat by the fire.",
            "He read a book.",
            "It was long.",
        ],
        ["CHAPTER TWO"],
        ["Morning came.", "The sun rose.", "Birds sang loudly."],
    ]


def test_glob_and_multiple_patterns(tmp_path):
    _write(tmp_path / "a.txt", "A one.\nA two.\n")
    _write(tmp_path / "b.txt", "B one.\nB two.\n")
    _write(tmp_path / "c.md", "C one.\nC two.\n")
    docs = list(iter_documents(CorpusSpec(files=f"{tmp_path}/*.txt,{tmp_path}/c.md")))
    assert [d[0] for d in docs] == ["A one.", "B one.", "C one."]


def test_embedded_corpus():
    docs = list(iter_documents(CorpusSpec()))
    assert len(docs) > 100
    sentences = [s for d in docs for s in d]
    assert len(sentences) > 1000
    assert all(isinstance(s, str) and s.strip() == s and s for s in sentences)
    assert not any(set(s) <= set("*=-~") for s in sentences)  # reST underlines removed


def test_hf_text_dataset_on_local_file(tmp_path):
    pytest.importorskip("datasets")
    path = _write(tmp_path / "a.txt", LINES_TEXT)
    spec = CorpusSpec(dataset="text", files=path)
    assert list(iter_documents(spec)) == list(iter_documents(CorpusSpec(files=path, format="lines")))
    # Rows as whole documents of paragraph text.
    docs = list(iter_documents(CorpusSpec(dataset="text", files=path, format="paragraphs")))
    assert docs[0] == ["First sentence of doc one."]


# Three documents of prose paragraphs (one line each), as a file in the paragraphs layout: one blank
# line between paragraphs, two between documents. A dataset row holds one document.
DOCUMENTS = [
    [
        "It was a dark night. The wind howled through the trees, and Mr. Brown sat by the fire.",
        "He read a book. It was long, e.g. four hundred pages.",
    ],
    ["Morning came. The sun rose.", "Birds sang loudly! Dr. Smith woke at 6 a.m. and left."],
    ["A third document starts here. It has one paragraph only."],
]
ROWS = ["\n\n".join(paragraphs) for paragraphs in DOCUMENTS]


@pytest.fixture
def from_files(tmp_path):
    """The documents read from the same text as a file: what every other source must reproduce."""
    path = _write(tmp_path / "docs.txt", "\n\n\n".join(ROWS) + "\n")
    docs = list(iter_documents(CorpusSpec(files=path, format="paragraphs")))
    assert len(docs) == 3 and sum(map(len, docs)) == 10  # the sentence splitter ran
    return docs


def _hf_json(tmp_path, datasets):
    datasets.Dataset.from_dict({"body": ROWS}).to_json(tmp_path / "docs.jsonl")
    return CorpusSpec(dataset="json", files=str(tmp_path / "docs.jsonl"), text_column="body")


def _hf_parquet_dir(tmp_path, datasets):
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict({"text": ROWS}).to_parquet(tmp_path / "pq" / "train.parquet")
    datasets.Dataset.from_dict({"text": ["Not this split. Nor this."]}).to_parquet(
        tmp_path / "pq" / "test.parquet"
    )
    return CorpusSpec(dataset=str(tmp_path / "pq"))


def _hf_saved(tmp_path, datasets):
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(tmp_path / "saved")
    return CorpusSpec(dataset=str(tmp_path / "saved"))


def _hf_saved_dict(tmp_path, datasets):
    other = datasets.Dataset.from_dict({"text": ["Not this split. Nor this."]})
    datasets.DatasetDict(
        {"validation": other, "train": datasets.Dataset.from_dict({"text": ROWS})}
    ).save_to_disk(tmp_path / "saved_dict")
    return CorpusSpec(dataset=str(tmp_path / "saved_dict"), split="train")


@pytest.mark.parametrize("make_spec", [_hf_json, _hf_parquet_dir, _hf_saved, _hf_saved_dict])
def test_hf_dataset_matches_files(tmp_path, from_files, make_spec):
    """Local `datasets` sources, offline, one document per row: the same documents as the file."""
    datasets = pytest.importorskip("datasets")
    spec = make_spec(tmp_path, datasets)
    assert list(iter_documents(spec)) == from_files


def test_hf_saved_dataset_fingerprint_follows_its_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    spec = _hf_saved(tmp_path, datasets)
    before = source_fingerprint(spec)
    assert source_fingerprint(spec) == before
    datasets.Dataset.from_dict({"text": ROWS[:1]}).save_to_disk(tmp_path / "rewritten")
    shutil.rmtree(tmp_path / "saved")
    (tmp_path / "rewritten").rename(tmp_path / "saved")
    assert source_fingerprint(spec) != before  # another dataset under the same path: a new token cache


def test_tfds_dataset_matches_files(tmp_path, from_files):
    """A TFDS dataset built here (array_record, no TensorFlow needed), read through its directory."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class AlbertJaxTestDocs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {
                "train": self._generate_examples(ROWS),
                "test": self._generate_examples(["Not this. No."]),
            }

        def _generate_examples(self, rows):
            for i, row in enumerate(rows):
                yield i, {"text": row}

    builder = AlbertJaxTestDocs(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    spec = CorpusSpec(tfds=os.fspath(builder.data_dir))
    assert list(iter_documents(spec)) == from_files
    assert source_fingerprint(spec) != source_fingerprint(CorpusSpec(tfds=spec.tfds, split="test"))


def test_tfds_source():
    spec = CorpusSpec(tfds="no_such_dataset_xyz")
    if importlib.util.find_spec("tensorflow_datasets") is None:
        with pytest.raises(ImportError, match=r"pip install 'albert_jax\[tfds\]'"):
            next(iter_documents(spec))
        pytest.skip("tensorflow_datasets is not installed (only the install hint was checked)")
    with pytest.raises(CorpusError, match="no_such_dataset_xyz"):
        next(iter_documents(spec))


def test_missing_glob(tmp_path):
    pattern = str(tmp_path / "nothing*.txt")
    with pytest.raises(CorpusError, match="nothing\\*.txt"):
        list(iter_documents(CorpusSpec(files=pattern)))
    with pytest.raises(CorpusError, match="nothing"):
        source_fingerprint(CorpusSpec(files=pattern))


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file(tmp_path, content):
    path = _write(tmp_path / "empty.txt", content)
    with pytest.raises(CorpusError, match=re.escape(f"corpus is empty: {path}")) as e:
        list(iter_documents(CorpusSpec(files=path)))
    assert "\n" not in str(e.value)


def test_non_utf8_file(tmp_path):
    path = _write(tmp_path / "latin1.txt", "Good line.\nBad caf\xe9 line.\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=re.escape(path) + ": not valid UTF-8 at byte offset 18") as e:
        list(iter_documents(CorpusSpec(files=path, format="lines")))
    assert "\n" not in str(e.value)


def test_source_fingerprint(tmp_path):
    path = _write(tmp_path / "a.txt", LINES_TEXT)
    spec = CorpusSpec(files=path)
    fp = source_fingerprint(spec)
    assert fp == source_fingerprint(CorpusSpec(files=path))
    assert fp != source_fingerprint(CorpusSpec(files=path, format="paragraphs"))
    _write(tmp_path / "a.txt", LINES_TEXT + "More.\n")
    assert fp != source_fingerprint(spec)
    assert source_fingerprint(CorpusSpec()) != source_fingerprint(CorpusSpec(dataset="wikipedia"))


def test_spec_validation():
    with pytest.raises(ValueError, match="format"):
        CorpusSpec(format="xml")


@pytest.mark.skipif(not GRIMM.exists(), reason=f"shared data absent: {GRIMM}")
def test_grimm_book():
    docs = list(iter_documents(CorpusSpec(files=os.fspath(GRIMM))))
    text = " ".join(s for d in docs for s in d)
    assert "Project Gutenberg" not in text  # header and license footer stripped
    assert "In old times, when wishing was having, there lived a King whose daughters" in text
    assert len(docs) > 50
    assert sum(len(d) for d in docs) > 3000
