"""Tests for albert_jax.data.text: sources, sentence splitting and bad-input errors."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re

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
