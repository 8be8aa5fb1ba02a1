"""Tests for albert_jax.data.text: sources, sentence splitting and bad-input errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import textwrap

import pytest

from albert_jax.data import text as text_lib
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


# --- format="auto": the layout is decided from evidence across the file, never from its head alone.

_NOUNS = ["king", "miller", "fox", "river", "tailor", "queen", "giant", "well"]


def _original_layout(n_docs: int, n_sentences: int) -> str:
    """Documents in the layout of the original's create_pretraining_data.py: one sentence per line,
    a blank line between documents."""
    docs = []
    for d in range(n_docs):
        docs.append(
            "\n".join(
                f"The {_NOUNS[(d + i) % 8]} of tale {d} went to the {_NOUNS[i % 8]}, and it was day {i}."
                if i % 3
                else f"“Where is the {_NOUNS[d % 8]}?” asked the old woman of tale {d}."
                for i in range(n_sentences)
            )
        )
    return "\n\n".join(docs) + "\n"


def _front_matter() -> str:
    """600+ lines of a book's front matter: title page, many short title lines, a long contents."""
    title = ["GRIMM’S FAIRY TALES", "EDITED BY", "FRANCES JENKINS OLCOTT", "", "Illustrated By", "Rie Cramer"]
    contents = ["CONTENTS", ""] + [
        f"CHAPTER {i}. THE {_NOUNS[i % 8].upper()} AND THE {i}TH WISH {i * 7}" for i in range(300)
    ]
    titles = [f"Plate {i}: The {_NOUNS[i % 8]} at the door" for i in range(300)]
    return "\n".join(title + [""] + contents + [""] + titles) + "\n\n"


def test_auto_reads_original_layout_after_long_front_matter(tmp_path):
    """The head (600+ lines) is all front matter, yet the file is read as one sentence per line."""
    front = _front_matter()
    assert front.count("\n") > 600
    path = _write(tmp_path / "book.txt", front + _original_layout(40, 6))
    docs = list(iter_documents(CorpusSpec(files=path)))
    assert docs == list(iter_documents(CorpusSpec(files=path, format="lines")))
    body = docs[-40:]
    assert [len(d) for d in body] == [6] * 40
    assert body[0][0] == "“Where is the king?” asked the old woman of tale 0."
    front_lines = [line for line in front.splitlines() if line]
    assert len(docs) == 40 + 5  # the front matter's five blocks are documents too, as in the original
    assert sum(map(len, docs)) == 40 * 6 + len(front_lines) == 846


def _wrapped_prose(width: int) -> str:
    paragraphs = []
    for p in range(30):
        sentences = [
            f"The {_NOUNS[(p + i) % 8]} of part {p} walked a long way through the dark wood to the "
            f"house of the {_NOUNS[i % 8]}, where it stayed until the morning of day {i}."
            for i in range(4)
        ]
        paragraphs.append(textwrap.fill(" ".join(sentences), width=width))
    return "CHAPTER ONE\n\n\n" + "\n\n".join(paragraphs) + "\n"


@pytest.mark.parametrize("width", [70, 100_000], ids=["hard-wrapped", "one-paragraph-per-line"])
def test_auto_reads_prose_as_paragraphs(tmp_path, width):
    path = _write(tmp_path / "prose.txt", _wrapped_prose(width))
    docs = list(iter_documents(CorpusSpec(files=path)))
    assert docs == list(iter_documents(CorpusSpec(files=path, format="paragraphs")))
    assert sum(map(len, docs)) == 1 + 30 * 4  # every sentence whole, however the lines were wrapped


@pytest.mark.parametrize(
    "text",
    [
        "CHAPTER ONE\n\nCHAPTER TWO\nTHE FROG-KING\n\nContents\n",  # no evidence for either layout
        _original_layout(85, 4) + "\n" + _wrapped_prose(70),  # as much evidence for both
    ],
    ids=["headings-only", "mixed"],
)
def test_auto_refuses_an_ambiguous_file(tmp_path, text):
    path = _write(tmp_path / "unclear.txt", text)
    with pytest.raises(CorpusError, match=re.escape(path) + ": cannot tell its layout") as e:
        list(iter_documents(CorpusSpec(files=path)))
    message = str(e.value)
    assert "set data.format to lines (" in message and " or paragraphs (" in message
    assert "\n" not in message
    assert list(iter_documents(CorpusSpec(files=path, format="lines")))  # an explicit format reads it


def test_log_names_layout_and_counts(tmp_path, caplog):
    lines = _write(tmp_path / "lines.txt", LINES_TEXT)
    prose = _write(tmp_path / "prose.txt", _wrapped_prose(70))
    with caplog.at_level(logging.INFO, logger="albert_jax.data.text"):
        list(iter_documents(CorpusSpec(files=f"{lines},{prose}")))
        list(iter_documents(CorpusSpec(files=lines, format="paragraphs")))
    logged = [r.getMessage() for r in caplog.records]
    assert logged[0].startswith(
        f"corpus file {lines}: reading it in the lines layout (auto, from the whole file: 3 one-sentence lines"
    )
    assert logged[1] == f"corpus file {lines}: read 2 documents, 5 sentences (lines layout)"
    assert logged[2].startswith(
        f"corpus file {prose}: reading it in the paragraphs layout (auto, from the whole file:"
    )
    assert logged[3] == f"corpus file {prose}: read 2 documents, 121 sentences (paragraphs layout)"
    assert logged[4] == f"corpus file {lines}: reading it in the paragraphs layout (data.format)"
    assert logged[5] == f"corpus file {lines}: read 1 documents, 5 sentences (paragraphs layout)"


def test_auto_samples_blocks_throughout_a_large_file(tmp_path, monkeypatch, caplog):
    """Past the whole-file size, blocks from start to end are the evidence: a head of front matter
    longer than the first blocks does not decide."""
    monkeypatch.setattr(text_lib, "_LAYOUT_WHOLE_FILE_BYTES", 16 << 10)
    monkeypatch.setattr(text_lib, "_LAYOUT_BLOCKS", 8)
    monkeypatch.setattr(text_lib, "_LAYOUT_BLOCK_BYTES", 1 << 10)
    path = _write(tmp_path / "big.txt", _front_matter() + _original_layout(200, 6))
    assert os.path.getsize(path) > 16 << 10
    with caplog.at_level(logging.INFO, logger="albert_jax.data.text"):
        docs = list(iter_documents(CorpusSpec(files=path)))
    assert docs == list(iter_documents(CorpusSpec(files=path, format="lines")))
    assert "reading it in the lines layout (auto, from 8 blocks of 1 KiB spread through its" in caplog.text
    prose = _write(tmp_path / "big_prose.txt", _wrapped_prose(70) * 3)
    assert os.path.getsize(prose) > 16 << 10
    assert text_lib._detect_layout(prose)[0] == "paragraphs"


@pytest.mark.skipif(not GRIMM.exists(), reason=f"shared data absent: {GRIMM}")
def test_grimm_in_the_original_layout(tmp_path):
    """The real book, sentence-split into the original's layout (one document per document read from
    the raw text): its title page and contents do not make auto read it as paragraphs."""
    raw = list(iter_documents(CorpusSpec(files=os.fspath(GRIMM), format="paragraphs")))
    path = _write(tmp_path / "grimm_lines.txt", "\n\n".join("\n".join(d) for d in raw) + "\n")
    docs = list(iter_documents(CorpusSpec(files=path)))
    assert len(docs) == len(raw) > 100
    assert docs == raw
