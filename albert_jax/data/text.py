"""Pretraining text sources: files, Hugging Face datasets, TFDS, and an embedded corpus.

Every source yields *documents*, each a ``list[str]`` of sentences, which is the unit
ALBERT's ``create_pretraining_data.py`` works on (segments A and B of an example are
consecutive sentences of one document).

Text files come in two layouts (``CorpusSpec.format``):

* ``"lines"``: the original ALBERT/BERT layout. One sentence per line; a blank line ends a
  document.
* ``"paragraphs"``: raw prose such as a Project Gutenberg book. Hard-wrapped lines are joined,
  a single blank line separates paragraphs, and each paragraph is split into sentences with
  :func:`split_sentences`. A run of two or more blank lines (the usual spacing around chapter
  headings) ends a document, and a document is also cut after
  :data:`MAX_DOCUMENT_PARAGRAPHS` paragraphs so that books without such spacing still give
  many documents.
* ``"auto"`` (default) decides per file from evidence across the whole file (a file over 16 MiB:
  64 blocks of 256 KiB spread evenly from its start to its end, so the work is bounded). A line
  is evidence for ``"lines"`` when it is one complete sentence (it starts a sentence, ends in
  sentence punctuation, holds one sentence) and the next line of its block starts another; for
  ``"paragraphs"`` when it ends mid-sentence and the next line goes on in lower case (a hard-wrapped
  sentence), or when it holds two or more sentences of three or more words. Other lines (headings,
  title pages, tables of contents) count for neither, so front matter of any length does not sway
  the choice. A layout needs 75% of the evidence; a file with none, or with mixed evidence, is a
  :class:`CorpusError` asking for ``data.format``. The log names the layout chosen for each file
  and why, and the documents and sentences read from it.

The Project Gutenberg license header and footer (``*** START OF ...`` / ``*** END OF ...``, and
the ``End of the Project Gutenberg EBook`` line before it) are stripped when present.

With every source field empty, the embedded corpus is used: text that ships with every CPython, so
it needs no download. It is the reference manual's topics (``pydoc_data.topics``, one document per
section) followed by the standard library's docstrings (one document per docstring of two or more
prose sentences), about 13k sentences in 3.2k documents.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator

from etils import epath

from albert_jax import errors

__all__ = [
    "MAX_DOCUMENT_PARAGRAPHS",
    "CorpusError",
    "CorpusSpec",
    "iter_documents",
    "source_fingerprint",
    "split_sentences",
]

log = logging.getLogger(__name__)

# Bump when the text -> sentences logic changes, so cached tokenizations are rebuilt.
TEXT_PIPELINE_VERSION = 4
MAX_DOCUMENT_PARAGRAPHS = 50
# format="auto": files up to this size are read whole to choose their layout; larger ones are judged
# on _LAYOUT_BLOCKS blocks of _LAYOUT_BLOCK_BYTES spread evenly from start to end (bounded work).
_LAYOUT_WHOLE_FILE_BYTES = 16 << 20
_LAYOUT_BLOCKS = 64
_LAYOUT_BLOCK_BYTES = 256 << 10
# The share of the evidence that one layout needs; between the two the file is ambiguous.
_LAYOUT_SHARE = 0.75
# Packaged `datasets` builders whose rows are lines of text files.
_HF_LINE_BUILDERS = ("text", "bookcorpus", "bookcorpusopen")
_HF_FILE_BUILDERS = ("text", "json", "csv", "parquet", "arrow")


class CorpusError(errors.InputError):
    """A corpus source is missing, empty or unreadable (the message names the path)."""


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """Where pretraining text comes from. All fields empty selects the embedded corpus.

    Attributes:
      files: glob pattern(s) of UTF-8 text files, comma-separated. With ``dataset`` set to a
        packaged builder (``"text"``, ``"json"``, ...), these are its ``data_files``.
      format: ``"lines"``, ``"paragraphs"`` or ``"auto"`` (see the module docstring). For HF
        datasets, ``"lines"`` means one sentence per row (blank rows end documents) and
        ``"paragraphs"`` one document per row; ``"auto"`` picks ``"lines"`` for the ``text`` and
        bookcorpus builders.
      dataset: Hugging Face dataset name or local directory for ``datasets.load_dataset``, or a
        directory written by ``save_to_disk`` (read with ``datasets.load_from_disk``).
      dataset_config: its configuration name (e.g. ``"20231101.en"`` for wikipedia).
      split: the split to read (HF datasets and TFDS).
      text_column: the column / feature holding the text.
      tfds: a TFDS dataset name, read through ``tfds.data_source``, or the directory of a prepared
        dataset (``.../name/1.0.0``, read with ``tfds.builder_from_directory``).
    """

    files: str = ""
    format: str = "auto"
    dataset: str = ""
    dataset_config: str = ""
    split: str = "train"
    text_column: str = "text"
    tfds: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("auto", "lines", "paragraphs"):
            raise errors.ConfigError(
                f"CorpusSpec.format must be auto, lines or paragraphs, got {self.format!r}"
            )
        if self.dataset and self.tfds:
            raise errors.ConfigError("CorpusSpec: set at most one of dataset and tfds")

    @property
    def kind(self) -> str:
        """``"hf"``, ``"tfds"``, ``"files"`` or ``"embedded"``."""
        if self.dataset:
            return "hf"
        if self.tfds:
            return "tfds"
        if self.files:
            return "files"
        return "embedded"

    def describe(self) -> str:
        """A short human-readable name of the source, for logs and error messages."""
        if self.kind == "hf":
            cfg = f"/{self.dataset_config}" if self.dataset_config else ""
            files = f" ({self.files})" if self.files else ""
            return f"HF dataset {self.dataset}{cfg}[{self.split}]{files}"
        if self.kind == "tfds":
            return f"TFDS {self.tfds}[{self.split}]"
        if self.kind == "files":
            return self.files
        return "embedded corpus (CPython docs and docstrings)"


# ----------------------------------------------------------------------------------------------
# Sentence splitting.

# Abbreviations after which a period never ends a sentence (titles, Latin shorthands).
_NEVER_FINAL = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "rev",
        "hon",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "cmdr",
        "gov",
        "sen",
        "rep",
        "messrs",
        "mme",
        "mlle",
        "e.g",
        "i.e",
        "cf",
        "viz",
        "vs",
        "al",
        "fig",
        "figs",
        "eq",
        "eqs",
        "no",
        "nos",
        "vol",
        "vols",
        "pp",
        "ca",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    ]
)
# Abbreviations that may end a sentence: a boundary only if the next word is capitalised.
_MAYBE_FINAL = frozenset(["etc", "u.s", "u.k", "a.m", "p.m", "b.c", "a.d", "ph.d"])
_BOUNDARY = re.compile(r"(\.\.\.|…|[.!?]+)([\"'”’»)\]]*)\s+")
_OPENERS = "\"'“‘«([¿¡"
_LAST_WORD = re.compile(r"([\w.'’]*)$")


def split_sentences(text: str) -> list[str]:
    """Splits prose into sentences with a small rule-based splitter.

    A boundary is sentence punctuation (``. ! ? ...``) optionally followed by closing quotes or
    brackets, then whitespace, then a word that does not start in lower case. A period does not
    end a sentence after a title or Latin abbreviation (``Mr.``, ``e.g.``, ``cf.``), after a
    single-letter initial other than ``I`` (``J. R. R. Tolkien``; a possessive such as ``Paul's`` is a
    word), or inside a number (``3.14``, since no space follows). Whitespace, including newlines from
    hard-wrapped text, is collapsed.
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.end()
        if end >= len(text):
            break
        nxt = text[end]
        if nxt in _OPENERS:
            nxt = text[end + 1] if end + 1 < len(text) else ""
        if not nxt or nxt.islower():
            continue
        if m.group(1) == ".":
            # The word the period belongs to (letters, inner periods and apostrophes: "e.g", "paul's").
            word = _LAST_WORD.search(text[start : m.start()]).group(1).lower()
            initial = len(word) == 1 and word.isalpha() and word != "i"  # "it was I. They" ends
            if word in _NEVER_FINAL or initial:
                continue
            if word in _MAYBE_FINAL and not nxt.isupper():
                continue
        sentences.append(text[start : m.end()].strip())
        start = end
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# ----------------------------------------------------------------------------------------------
# Text files.


def _is_url(path: str) -> bool:
    return "://" in path


def _glob(part: str) -> list[str]:
    """The files that one pattern matches; a URL (gs://) is globbed through etils.epath."""
    if not _is_url(part):
        matches = glob.glob(os.path.expanduser(part), recursive=True)
        return sorted(m for m in matches if os.path.isfile(m))
    if not glob.has_magic(part):
        return [part] if epath.Path(part).is_file() else []
    parts = part.split("/")
    fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root = epath.Path("/".join(parts[:fixed]))
    return sorted(str(p) for p in root.glob("/".join(parts[fixed:])) if p.is_file())


def _expand_files(pattern: str) -> list[str]:
    paths: list[str] = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        matches = _glob(part)
        if not matches:
            raise CorpusError(f"corpus files not found: no file matches {part!r}")
        paths.extend(matches)
    if not paths:
        raise CorpusError(f"corpus files not found: no file matches {pattern!r}")
    return paths


def _read_lines(path: str) -> Iterator[str]:
    """Yields the lines of a UTF-8 file (no line ends, BOM removed); CorpusError on bad bytes."""
    offset = 0
    try:
        with epath.Path(path).open("rb") as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{path}: not valid UTF-8 at byte offset {offset + e.start}") from None
                if offset == 0:
                    line = line.removeprefix("\ufeff")
                offset += len(raw)
                yield line.rstrip("\r\n")
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None


_GUTENBERG_END = re.compile(r"\s*End of (the )?Project Gutenberg", re.IGNORECASE)


def _strip_gutenberg(lines: Iterable[str]) -> Iterator[str]:
    """Drops the Project Gutenberg header and footer when the file has them."""
    buffered: list[str] = []
    started = False
    for line in lines:
        if not started:
            if line.startswith("*** START OF"):
                started = True
                buffered = []
                continue
            buffered.append(line)
            if len(buffered) > 1000:  # no header: pass everything through
                started = True
                yield from buffered
                buffered = []
            continue
        if line.startswith("*** END OF") or _GUTENBERG_END.match(line):
            return
        yield line
    yield from buffered


_SENTENCE_END = (".", "!", "?", "…", "。", "！", "？")
_CLOSERS = "\"'”’»)]"


def _ends_sentence(line: str) -> bool:
    return line.rstrip(_CLOSERS).endswith(_SENTENCE_END)


def _starts_lower(line: str) -> bool:
    line = line.lstrip(_OPENERS)
    return bool(line) and line[0].islower()


@dataclasses.dataclass
class _LayoutEvidence:
    """What ``format="auto"`` counts in a file's lines (see the module docstring)."""

    sentence_lines: int = 0  # one whole sentence, and the next line of its block starts another
    wrapped_lines: int = 0  # ends mid-sentence, and the next line goes on in lower case
    multi_sentence_lines: int = 0  # two or more sentences of three or more words
    nonblank_lines: int = 0

    def add(self, lines: Iterable[str]) -> None:
        """Counts one run of consecutive lines (the whole file, or one sampled block)."""
        prev = None  # (holds one sentence, ends one, starts one) of the previous line of the block
        for line in lines:
            line = line.strip()
            if not line:
                prev = None
                continue
            self.nonblank_lines += 1
            sentences = split_sentences(line)
            if sum(len(s.split()) >= 3 for s in sentences) >= 2:
                self.multi_sentence_lines += 1
            ends = _ends_sentence(line)
            if prev is not None:
                one, ended, started = prev
                if one and ended and started:
                    self.sentence_lines += 1
                elif not ended and _starts_lower(line):
                    self.wrapped_lines += 1
            prev = (len(sentences) == 1, ends, prev is None or prev[1])

    @property
    def for_lines(self) -> int:
        return self.sentence_lines

    @property
    def for_paragraphs(self) -> int:
        return self.wrapped_lines + self.multi_sentence_lines

    def summary(self) -> str:
        return (
            f"{self.sentence_lines:,} one-sentence lines, {self.wrapped_lines:,} lines wrapping a "
            f"sentence onto the next, {self.multi_sentence_lines:,} lines of several sentences, "
            f"in {self.nonblank_lines:,} non-blank lines"
        )


def _sampled_blocks(path: str, size: int) -> Iterator[list[str]]:
    """`_LAYOUT_BLOCKS` blocks of whole lines spread evenly through a large file, first to last."""
    step = (size - _LAYOUT_BLOCK_BYTES) / (_LAYOUT_BLOCKS - 1)
    try:
        with epath.Path(path).open("rb") as f:
            for i in range(_LAYOUT_BLOCKS):
                offset = round(i * step)
                f.seek(offset)
                data = f.read(_LAYOUT_BLOCK_BYTES)
                if offset > 0:  # drop the line the block starts inside
                    data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
                if offset + _LAYOUT_BLOCK_BYTES < size:  # and the one it ends inside
                    data = data[: data.rfind(b"\n") + 1]
                text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
                yield [line.rstrip("\r") for line in text.split("\n")]
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None


def _detect_layout(path: str) -> tuple[str, str]:
    """The layout of a text file for ``format="auto"``, and why (for the log).

    Raises:
      CorpusError: the file has too little evidence for either layout, or mixed evidence.
    """
    evidence = _LayoutEvidence()
    try:
        size = _size_and_mtime(path)[0]
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {path}: {e.strerror or e}") from None
    if size <= _LAYOUT_WHOLE_FILE_BYTES:
        where = "the whole file"
        evidence.add(_strip_gutenberg(_read_lines(path)))
    else:
        where = (
            f"{_LAYOUT_BLOCKS} blocks of {_LAYOUT_BLOCK_BYTES >> 10} KiB spread through its {size:,} bytes"
        )
        for block in _sampled_blocks(path, size):
            evidence.add(_strip_gutenberg(block))
    if evidence.nonblank_lines == 0:
        return "lines", "no text"  # nothing to read either way; iter_documents reports the empty corpus
    why = f"auto, from {where}: {evidence.summary()}"
    total = evidence.for_lines + evidence.for_paragraphs
    if total and evidence.for_lines >= _LAYOUT_SHARE * total:
        return "lines", why
    if total and evidence.for_paragraphs >= _LAYOUT_SHARE * total:
        return "paragraphs", why
    raise CorpusError(
        f"{path}: cannot tell its layout (data.format=auto found {evidence.summary()}; either layout "
        f"needs {_LAYOUT_SHARE:.0%} of the evidence); set data.format to lines (one sentence per line, "
        "a blank line between documents) or paragraphs (prose, a blank line between paragraphs)"
    )


def _documents_from_lines(lines: Iterable[str]) -> Iterator[list[str]]:
    doc: list[str] = []
    for line in lines:
        line = line.strip()
        if line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


_NOISE_PARAGRAPH = re.compile(r"^\[(Illustration|Footnote)[^\]]*\]$", re.IGNORECASE)


def _documents_from_paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    doc: list[str] = []
    para: list[str] = []
    n_paragraphs = 0
    blank_run = 0

    def flush_paragraph() -> None:
        nonlocal para, n_paragraphs
        text = " ".join(para)
        para = []
        if text and not _NOISE_PARAGRAPH.match(text):
            doc.extend(split_sentences(text))
            n_paragraphs += 1

    for line in lines:
        if line.strip():
            if blank_run >= 2 or n_paragraphs >= MAX_DOCUMENT_PARAGRAPHS:
                if doc:
                    yield doc
                doc, n_paragraphs = [], 0
            blank_run = 0
            para.append(line.strip())
        else:
            if para:
                flush_paragraph()
            blank_run += 1
    if para:
        flush_paragraph()
    if doc:
        yield doc


def _file_documents(path: str, fmt: str) -> Iterator[list[str]]:
    why = "data.format"
    if fmt == "auto":
        fmt, why = _detect_layout(path)
    lines = _strip_gutenberg(_read_lines(path))
    docs = _documents_from_lines(lines) if fmt == "lines" else _documents_from_paragraphs(lines)
    yield from _logged(docs, f"corpus file {path}", fmt, why)


def _logged(docs: Iterable[list[str]], name: str, fmt: str, why: str) -> Iterator[list[str]]:
    """``docs``, logging the layout they are read in first and how many there were at the end."""
    log.info("%s: reading it in the %s layout (%s)", name, fmt, why)
    n_docs = n_sentences = 0
    for doc in docs:
        n_docs += 1
        n_sentences += len(doc)
        yield doc
    log.info("%s: read %d documents, %d sentences (%s layout)", name, n_docs, n_sentences, fmt)


# ----------------------------------------------------------------------------------------------
# Hugging Face datasets and TFDS.


def _hf_documents(spec: CorpusSpec) -> Iterator[list[str]]:
    import datasets  # pylint: disable=g-import-not-at-top

    kwargs = {}
    if spec.files:
        kwargs["data_files"] = _expand_files(spec.files) if spec.dataset in _HF_FILE_BUILDERS else spec.files
    try:
        if _is_saved_hf_dataset(spec.dataset):  # load_dataset refuses what save_to_disk wrote
            ds = datasets.load_from_disk(spec.dataset)
            ds = ds[spec.split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(spec.dataset, spec.dataset_config or None, split=spec.split, **kwargs)
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (not found, offline, config)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorpusError(f"cannot load {spec.describe()}: {msg}") from None
    if spec.text_column not in ds.column_names:
        raise CorpusError(
            f"{spec.describe()} has no column {spec.text_column!r} (columns: {ds.column_names})"
        )
    fmt, why = spec.format, "data.format"
    if fmt == "auto":
        line_builder = spec.dataset.split("/")[-1] in _HF_LINE_BUILDERS
        fmt = "lines" if line_builder else "paragraphs"
        why = (
            "auto: a text/bookcorpus builder, a sentence per row"
            if line_builder
            else "auto: a document per row"
        )
    texts = (row[spec.text_column] or "" for row in ds.select_columns([spec.text_column]))
    yield from _logged(_documents_from_texts(texts, fmt), spec.describe(), fmt, why)


def _is_saved_hf_dataset(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(
        os.path.join(path, "dataset_dict.json")
    )


def _documents_from_texts(texts: Iterable[str], fmt: str) -> Iterator[list[str]]:
    """Rows as lines (blank rows end documents) or as one document of paragraph text each."""
    if fmt == "lines":
        yield from _documents_from_lines(texts)
        return
    for text in texts:
        doc = list(_iter_row_sentences(text))
        if doc:
            yield doc


def _iter_row_sentences(text: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n|\n", text):
        yield from split_sentences(para)


def _tfds_documents(spec: CorpusSpec) -> Iterator[list[str]]:
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise ImportError("TFDS corpora need tensorflow_datasets: pip install 'albert_jax[tfds]'") from None
    try:
        if os.path.isdir(spec.tfds):  # a prepared dataset's directory, e.g. ~/tensorflow_datasets/name/1.0.0
            source = tfds.builder_from_directory(spec.tfds).as_data_source(split=spec.split)
        else:
            source = tfds.data_source(spec.tfds, split=spec.split)
    except Exception as e:  # noqa: BLE001 -- TFDS raises many types for a missing dataset
        raise CorpusError(f"cannot load {spec.describe()}: {str(e).splitlines()[0]}") from None

    def texts() -> Iterator[str]:
        for i in range(len(source)):
            value = source[i][spec.text_column]
            yield value.decode("utf-8") if isinstance(value, bytes) else str(value)

    fmt, why = spec.format, "data.format"
    if fmt == "auto":
        fmt, why = "paragraphs", "auto: one document per TFDS example"
    yield from _logged(_documents_from_texts(texts(), fmt), spec.describe(), fmt, why)


# ----------------------------------------------------------------------------------------------
# Embedded corpus.

_RST_UNDERLINE = re.compile(r"^([*=\-~^\"'+#])\1{2,}\s*$")


def _embedded_documents() -> Iterator[list[str]]:
    """Text that ships with every CPython: the reference manual's topics, then the docstrings."""
    yield from _pydoc_topic_documents()
    yield from _stdlib_docstring_documents()


# Standard-library folders whose docstrings are tests, demos or vendored code rather than prose.
_STDLIB_SKIP = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "site-packages",
        "dist-packages",
        "lib2to3",
        "turtledemo",
        "__pycache__",
        "ensurepip",
        "config-3",
    }
)


def _stdlib_docstring_documents() -> Iterator[list[str]]:
    """One document per standard-library docstring (module, class or function) with two or more prose
    sentences.

    A docstring is one coherent text; a module's docstrings one after another are not (``ast.walk`` goes
    breadth first, and consecutive functions rarely continue each other), so joining them would give
    sentence-order examples whose order cannot be told. Read with ``ast`` (nothing is imported), in
    sorted path order, so the text is fixed for a given Python version (which ``source_fingerprint``
    includes).
    """
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith("config-"))
        paths.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if not text:
                    continue
                doc: list[str] = []
                for para in _prose_paragraphs(text.splitlines()):
                    if len(para) >= 40 and sum(c.isalpha() or c == " " for c in para) > 0.85 * len(para):
                        doc.extend(split_sentences(para))
                if len(doc) >= 2:
                    yield doc


def _pydoc_topic_documents() -> Iterator[list[str]]:
    """CPython's bundled documentation: one document per (sub)section, prose paragraphs only."""
    from pydoc_data.topics import topics  # pylint: disable=g-import-not-at-top

    for name in sorted(topics):
        lines = topics[name].splitlines()
        sections: list[list[str]] = [[]]
        for i, line in enumerate(lines):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if _RST_UNDERLINE.match(nxt) and line.strip():
                sections.append([])  # a heading starts a new document; drop the heading itself
                continue
            if _RST_UNDERLINE.match(line):
                continue
            sections[-1].append(line)
        for section in sections:
            doc: list[str] = []
            for para in _prose_paragraphs(section):
                doc.extend(split_sentences(para))
            if doc:
                yield doc


def _prose_paragraphs(lines: list[str]) -> Iterator[str]:
    """Unindented paragraphs of reST text; indented blocks (code, grammar, tables) are dropped."""
    para: list[str] = []
    for line in lines + [""]:
        if line.strip() and not line.startswith(" "):
            para.append(line.strip())
            continue
        if para:
            text = " ".join(para)
            # Paragraphs introducing a literal block end in "::" and lists/tables are noise.
            if not text.startswith(("*", "+", "|", ">>>", "..")):
                yield text.replace("::", ":").replace('"', "")
            para = []


# ----------------------------------------------------------------------------------------------
# Public entry points.


def iter_documents(spec: CorpusSpec) -> Iterator[list[str]]:
    """Yields the documents of ``spec`` (each a non-empty list of sentences).

    Raises:
      CorpusError: files are missing or not UTF-8, a dataset cannot be loaded, or the whole
        source has no sentence.
    """
    if spec.kind == "hf":
        docs = _hf_documents(spec)
    elif spec.kind == "tfds":
        docs = _tfds_documents(spec)
    elif spec.kind == "files":
        paths = _expand_files(spec.files)
        docs = (doc for path in paths for doc in _file_documents(path, spec.format))
    else:
        docs = _embedded_documents()
    n = 0
    for doc in docs:
        n += 1
        yield doc
    if n == 0:
        raise CorpusError(f"corpus is empty: {spec.describe()} has no sentences")


def source_fingerprint(spec: CorpusSpec) -> str:
    """A stable hash of the source's identity: file paths, sizes and mtimes (also of a dataset
    directory's files), or dataset ids.

    Raises:
      CorpusError: the file pattern matches nothing.
    """
    key: dict = {"spec": dataclasses.asdict(spec), "text_version": TEXT_PIPELINE_VERSION}
    if spec.files and (spec.kind == "files" or spec.dataset in _HF_FILE_BUILDERS):
        stats = []
        for path in _expand_files(spec.files):
            stats.append((path if _is_url(path) else os.path.abspath(path), *_size_and_mtime(path)))
        key["files"] = stats
    local = spec.dataset if spec.kind == "hf" else spec.tfds
    if os.path.isdir(local):  # a dataset on disk: its files, so that rewriting it rebuilds the cache
        key["dataset_files"] = [
            (os.path.abspath(os.path.join(root, f)), *_size_and_mtime(os.path.join(root, f)))
            for root, _, names in sorted(os.walk(local))
            for f in sorted(names)
        ]
    if spec.kind == "embedded":
        key["python"] = sys.version
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _size_and_mtime(path: str) -> tuple[int, int]:
    if _is_url(path):
        st = epath.Path(path).stat()  # gs://: whole seconds
        return st.length, st.mtime
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns
