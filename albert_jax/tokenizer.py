"""The ALBERT SentencePiece tokenizer: identical to the original google-research/albert one on
ordinary text.

The original is ``tokenization.py`` as ``create_pretraining_data.py`` runs it
(``preprocess_text``, then ``encode_pieces``). The reference this module is tested against is the
*slow* ``AlbertTokenizer`` of transformers 4.x (transformers 5's ``tokenizers`` port differs from
it on real text, for example around user-defined symbols such as ``(``). The two agree on
ordinary text; in these four cases we follow HF's slow tokenizer, which is what the users of every
hub checkpoint got from transformers 4.x:

* **Literal special tokens.** ``<pad> <unk> [CLS] [SEP] [MASK]`` written in the text (in exactly
  that case) become their ids, and ``[MASK]`` swallows the whitespace on its left. The original
  has no such step: it lowercases them with the rest of the text (under do_lower_case) and
  SentencePiece reads them as characters (``The [MASK] sat`` -> ``▁the ▁[ m as k ] ▁sat`` with the
  test vocabulary).
* **TeX quotes.** ````` and ``''`` become ``"``. The original's ``preprocess_text`` has no quote
  rule and keeps them; HF's (taken from XLNet's) has it.
* **Greek sigma.** Lowercasing goes character by character and comes before accent stripping, so
  a word-final ``Σ`` becomes ``σ`` (the original's ``str.lower()`` gives ``ς``) and the lunate
  ``Ϲ`` becomes ``ς`` (the original strips accents first, NFKD turns ``Ϲ`` into ``Σ``, and lowercasing
  gives ``σ``, or ``ς`` word-finally).
* **Digit + comma pieces.** A piece such as ``5,`` that does not start with ``▁`` is re-split as
  ``5 ,``. The original means the same, but under Python 3 its test for the ``▁`` that
  re-encoding the digits adds compares ``str`` with ``bytes`` and never holds, so it keeps that
  ``▁``: ``25,`` is ``▁2 5 ,`` here and ``▁2 ▁ 5 ,`` there. A piece that starts with ``▁`` is
  re-split the same way by both.

Encoding a text does, in order:

1. with ``do_lower_case``, lowercase every character except the literal special tokens
   (``<pad> <unk> [CLS] [SEP] [MASK]``), character by character as transformers 4.x does;
2. split the text on those special tokens, which become their own ids; ``[MASK]`` swallows the
   whitespace on its left;
3. ``preprocess_text`` every other piece of text: collapse whitespace, turn ````` and ``''``
   into ``"``, strip accents (NFKD, drop combining marks) unless ``keep_accents``, lowercase;
4. SentencePiece, then re-split every piece that ends in a digit followed by ``,``
   (``▁9,`` -> ``▁9 ,``), as BERT/ALBERT do.

Besides :class:`AlbertTokenizer` the module has :func:`train_tokenizer` (spm_train with the flags of
the ALBERT README) and a command line: ``python -m albert_jax.tokenizer train --input FILES
--vocab-size N --output PREFIX``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from etils import epath

from albert_jax import errors, hub

SPIECE_UNDERLINE = "▁"
PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
MODEL_FILE_NAME = "spiece.model"
CONFIG_FILE_NAME = "tokenizer_config.json"
# spm_train flags from the ALBERT README, one symbol per item. They go to sentencepiece as lists:
# a comma-joined string is parsed as CSV there, so its `"` would open a quoted field and leave
# `(`, `)` and one junk piece `,-,.,–,£,€` instead of the eight symbols.
ALBERT_CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
ALBERT_USER_DEFINED_SYMBOLS = ("(", ")", '"', "-", ".", "–", "£", "€")

# Literal special tokens in the text are split out before SentencePiece. None is a prefix of
# another, so leftmost matching equals transformers' trie.
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_LSTRIP_TOKENS = frozenset({MASK_TOKEN})  # tokens that eat the whitespace on their left
_TRUNCATION = {True: True, "longest_first": True, False: False, "do_not_truncate": False}
_PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
# What padding positions hold, per encoding key (input_ids: the <pad> id), as transformers pads.
_PAD_FILL: dict[str, Any] = {
    "token_type_ids": 0,
    "attention_mask": 0,
    "special_tokens_mask": 1,
    "offset_mapping": (0, 0),
}
_PADDED_KEYS = frozenset({"input_ids", *_PAD_FILL})


@functools.cache
def _combining_re() -> re.Pattern[str]:
    """A regex matching every character with a nonzero canonical combining class."""
    chars = [chr(c) for c in range(0x300, sys.maxunicode + 1) if unicodedata.combining(chr(c))]
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


def _strip_accents(text: str) -> str:
    """NFKD, then drop combining marks (the reference's accent stripping), fast for ASCII."""
    if text.isascii():
        return text
    return _combining_re().sub("", unicodedata.normalize("NFKD", text))


def _lower_per_char(text: str) -> str:
    """Lowercase character by character, as transformers 4.x does before splitting specials.

    Differs from ``str.lower`` only for a word-final ``Σ`` (no final-sigma rule). Applied before
    accent stripping, it also turns ``Ϲ`` into ``ς`` where the original gives ``σ`` (see the
    module docstring).
    """
    return text.lower() if "Σ" not in text else "".join(c.lower() for c in text)


def preprocess_text(
    text: str, *, remove_space: bool = True, lower: bool = True, keep_accents: bool = False
) -> str:
    """HF's ``preprocess_text`` for ALBERT: collapse whitespace, turn ````` and ``''`` into ``"``,
    strip accents unless ``keep_accents``, lowercase.

    The original google-research/albert one has no quote rule and always strips accents.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = " ".join(text.split()) if remove_space else text
    out = out.replace("``", '"').replace("''", '"')
    if not keep_accents:
        out = _strip_accents(out)
    if lower:
        out = out.lower()
    return out


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


Span = tuple[str, int, int]  # an output character and the [start, end) of the input it came from


def _collapse_spaces(spans: list[Span]) -> list[Span]:
    """Runs of whitespace -> one " " spanning the run, none at either end (as " ".join(s.split()))."""
    out, i, n = [], 0, len(spans)
    while i < n:
        j = i
        while j < n and spans[j][0].isspace():
            j += 1
        if j == i:
            out.append(spans[i])
            i += 1
            continue
        if out and j < n:
            out.append((" ", spans[i][1], spans[j - 1][2]))
        i = j
    return out


def _merge_quote_pairs(spans: list[Span]) -> list[Span]:
    """`` and '' -> ", in one left-to-right pass (equal to the reference's two replaces)."""
    out, i = [], 0
    while i < len(spans):
        pair = i + 1 < len(spans) and spans[i][0] == spans[i + 1][0] and spans[i][0] in "`'"
        out.append(('"', spans[i][1], spans[i + 1][2]) if pair else spans[i])
        i += 2 if pair else 1
    return out


def _special_id(token: str) -> property:
    """A read-only `<name>_token_id` attribute: the vocabulary's id of `token`."""
    return property(lambda self: self._special_ids[token], doc=f"The id of {token}.")


class AlbertTokenizer:
    """ALBERT's SentencePiece tokenizer; see the module docstring for the exact pipeline.

    Args:
        model_file: a SentencePiece ``.model`` trained with ALBERT's flags (it must hold the pieces
            ``<pad> <unk> [CLS] [SEP] [MASK]``).
        do_lower_case: lowercase the text.
        remove_space: strip and collapse whitespace.
        keep_accents: keep accents (otherwise NFKD and drop combining marks).
    """

    def __init__(
        self,
        model_file: str | os.PathLike,
        do_lower_case: bool = True,
        remove_space: bool = True,
        keep_accents: bool = False,
    ) -> None:
        if not isinstance(model_file, (str, os.PathLike)):
            raise TypeError(f"model_file must be a path, got {type(model_file).__name__}")
        path = epath.Path(model_file)  # local or gs://: sentencepiece gets the bytes, never the path
        if path.is_dir():
            raise errors.InputError(
                f"model_file {str(path)!r} is a directory; use AlbertTokenizer.from_pretrained for a checkpoint folder"
            )
        if not path.is_file():
            raise errors.MissingError(f"SentencePiece model file not found: {str(path)!r}")
        size = path.stat().length
        if size >= 1 << 31:  # protobuf's limit: this is not a SentencePiece model
            raise errors.InputError(f"{str(path)!r} is {size} bytes, too large for a SentencePiece model")
        self.model_file = str(path)
        self.do_lower_case = bool(do_lower_case)
        self.remove_space = bool(remove_space)
        self.keep_accents = bool(keep_accents)
        self._load(path.read_bytes())

    # ----------------------------------------------------------------------------- set-up

    def _load(self, model_bytes: bytes) -> None:
        # sentencepiece 0.2 validates the ModelProto itself (a RuntimeError, no abort: the hostile-file
        # fuzz test checks that in a subprocess), but leaves pieces that are not UTF-8 to fail later.
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_bytes)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "ParseFromArray" in reason:
                reason = "truncated, or not a serialized ModelProto"
            raise errors.InputError(
                f"{self.model_file!r} is not a SentencePiece model ({reason.removeprefix('INTERNAL: ')})"
            ) from None
        self._model_bytes = model_bytes
        self._sp = sp
        try:
            sp.IdToPiece(list(range(sp.get_piece_size())))
        except UnicodeDecodeError:
            raise errors.InputError(
                f"SentencePiece model {self.model_file!r} has a piece that is not UTF-8"
            ) from None
        self._special_ids = self._read_special_ids()
        self._special_id_set = frozenset(self._special_ids.values())
        self._comma_known = sp.PieceToId(",") != sp.unk_id()
        self._digit_comma = self._build_digit_comma_table()

    def _read_special_ids(self) -> dict[str, int]:
        sp = self._sp
        ids = {}
        for token in SPECIAL_TOKENS:
            i = sp.PieceToId(token)
            if sp.IdToPiece(i) != token:
                raise errors.InputError(
                    f"SentencePiece model {self.model_file!r} has no {token!r} piece; train the vocabulary with "
                    "ALBERT's flags (albert_jax.train_tokenizer: pad_id=0, unk_id=1, control symbols [CLS],[SEP],[MASK])"
                )
            ids[token] = i
        return ids

    def _resplit_pieces(self, piece: str) -> list[tuple[str, int, int]]:
        """HF's re-split of a piece ending in digit + ``,``, with offsets into its text.

        A piece that does not start with ``▁`` loses the ``▁`` that re-encoding its digits adds
        (the original keeps it under Python 3; see the module docstring). Offsets are relative to
        ``piece.replace("▁", "")``.
        """
        body = piece[:-1].replace(SPIECE_UNDERLINE, "")
        enc = self._sp.encode(body, out_type="offset_mapping")
        subs = [[p, s, e] for p, (s, e) in zip(enc["pieces"], enc["offsets"])]
        if piece[0] != SPIECE_UNDERLINE and subs and subs[0][0][0] == SPIECE_UNDERLINE:
            if len(subs[0][0]) == 1:
                subs = subs[1:]
            else:
                subs[0][0] = subs[0][0][1:]
        subs.append([piece[-1], len(body), len(body) + 1])
        return [(p, s, e) for p, s, e in subs]

    def _build_digit_comma_table(self) -> dict[int, tuple[tuple[int, ...], tuple[tuple[int, int], ...]]]:
        """For every vocabulary piece ending in digit + ``,``: its replacement ids and their offsets."""
        sp = self._sp
        table = {}
        for i in range(sp.get_piece_size()):
            if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i):
                continue
            piece = sp.IdToPiece(i)
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                subs = self._resplit_pieces(piece)
                table[i] = (tuple(sp.PieceToId(p) for p, _, _ in subs), tuple((s, e) for _, s, e in subs))
        return table

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_sp", "_special_ids", "_special_id_set", "_comma_known", "_digit_comma"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load(state["_model_bytes"])

    def __repr__(self) -> str:
        return (
            f"AlbertTokenizer(model_file={self.model_file!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, remove_space={self.remove_space}, keep_accents={self.keep_accents})"
        )

    # ------------------------------------------------------------------- loading and saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> AlbertTokenizer:
        """Load from a checkpoint folder (``spiece.model`` + optional ``tokenizer_config.json``), a
        ``.model`` file, or a Hugging Face Hub id such as ``albert/albert-base-v2`` (see ``hub.local_dir``).

        Keyword arguments override the flags read from ``tokenizer_config.json``.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        given, path = path, epath.Path(path)
        if path.is_file():
            return cls(path, **kwargs)
        if not path.is_dir():
            path = epath.Path(hub.local_dir(given))
        model = path / MODEL_FILE_NAME
        if not model.is_file():
            raise errors.MissingError(f"no {MODEL_FILE_NAME} in {str(path)!r}")
        flags: dict[str, Any] = {}
        config = path / CONFIG_FILE_NAME
        if config.is_file():
            try:
                saved = json.loads(config.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise errors.InputError(f"{str(config)!r} is not valid JSON: {e}") from None
            flags = {k: saved[k] for k in ("do_lower_case", "remove_space", "keep_accents") if k in saved}
        flags.update(kwargs)
        return cls(model, **flags)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``spiece.model`` and a ``tokenizer_config.json`` that transformers can read."""
        path = epath.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MODEL_FILE_NAME).write_bytes(self._model_bytes)
        config = {
            "tokenizer_class": "AlbertTokenizer",
            "do_lower_case": self.do_lower_case,
            "remove_space": self.remove_space,
            "keep_accents": self.keep_accents,
            "bos_token": CLS_TOKEN,
            "eos_token": SEP_TOKEN,
            "unk_token": UNK_TOKEN,
            "sep_token": SEP_TOKEN,
            "pad_token": PAD_TOKEN,
            "cls_token": CLS_TOKEN,
            "mask_token": MASK_TOKEN,
        }
        (path / CONFIG_FILE_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @property
    def fingerprint(self) -> str:
        """A stable hex digest of the model bytes and the preprocessing flags (for data caches)."""
        h = hashlib.sha256(self._model_bytes)
        flags = {
            "do_lower_case": self.do_lower_case,
            "remove_space": self.remove_space,
            "keep_accents": self.keep_accents,
        }
        h.update(json.dumps(flags, sort_keys=True).encode())
        return h.hexdigest()

    # ------------------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the SentencePiece model."""
        return self._sp.get_piece_size()

    def check_vocab_size(self, vocab_size: int, where: str) -> None:
        """The one check that a model's `vocab_size` matches this vocabulary (errors.ConfigError naming
        `where`, the two sizes and the fix)."""
        if self.vocab_size != vocab_size:
            raise errors.ConfigError(
                f"{where}: the vocabulary {self.model_file} has {self.vocab_size} pieces but the model's "
                f"vocab_size is {vocab_size}; set --config.model.vocab_size={self.vocab_size} or use a "
                "matching spiece.model"
            )

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Every piece with its id, ``{piece: id}``, as transformers' ``get_vocab``."""
        return {piece: i for i, piece in enumerate(self._sp.IdToPiece(list(range(self.vocab_size))))}

    pad_token_id = _special_id(PAD_TOKEN)
    unk_token_id = _special_id(UNK_TOKEN)
    cls_token_id = _special_id(CLS_TOKEN)
    sep_token_id = _special_id(SEP_TOKEN)
    mask_token_id = _special_id(MASK_TOKEN)

    @property
    def all_special_ids(self) -> list[int]:
        return [self._special_ids[t] for t in SPECIAL_TOKENS]

    def _check_id(self, i: Any) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"token ids must be ints, got {type(i).__name__}")
        if not 0 <= i < self.vocab_size:
            raise errors.InputError(
                f"token id {int(i)} is out of range for a vocabulary of {self.vocab_size}"
            )
        return int(i)

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Piece for one id, or a list of pieces for a sequence of ids."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self._sp.IdToPiece(self._check_id(ids))
        return [self._sp.IdToPiece(self._check_id(i)) for i in np.asarray(ids).reshape(-1).tolist()]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Id for one piece, or a list of ids; unknown pieces give ``unk_token_id``."""
        if isinstance(tokens, str):
            return self._sp.PieceToId(tokens)
        return [self._sp.PieceToId(_check_text(t, "token")) for t in tokens]

    # ------------------------------------------------------------------------ tokenizing

    def preprocess(self, text: str) -> str:
        """ALBERT's ``preprocess_text`` with this tokenizer's flags (lowercasing per character first)."""
        _check_text(text, "text")
        if self.do_lower_case:
            text = _lower_per_char(text)
        return self._normalize(text)

    def _normalize(self, text: str) -> str:
        return preprocess_text(
            text, remove_space=self.remove_space, lower=self.do_lower_case, keep_accents=self.keep_accents
        )

    def _lowered(self, text: str) -> str:
        """Step 1: lowercase everything except literal special tokens."""
        if not self.do_lower_case:
            return text
        if "<" not in text and "[" not in text:
            return _lower_per_char(text)
        parts = _SPECIAL_RE.split(text)
        return "".join(p if i % 2 else _lower_per_char(p) for i, p in enumerate(parts))

    def _segments(self, lowered: str) -> list[tuple[str, int, bool]]:
        """Step 2: ``(segment, start, is_special)`` pieces of the lowered text, empty ones dropped."""
        if "<" not in lowered and "[" not in lowered:
            return [(lowered, 0, False)] if lowered else []
        parts = _SPECIAL_RE.split(lowered)
        starts, pos = [], 0
        for p in parts:
            starts.append(pos)
            pos += len(p)
        for i in range(1, len(parts), 2):
            if parts[i] in _LSTRIP_TOKENS:
                parts[i - 1] = parts[i - 1].rstrip()
        return [(p, s, bool(i % 2)) for i, (p, s) in enumerate(zip(parts, starts)) if p]

    def _fix_digit_comma(self, ids: list[int]) -> list[int]:
        """Step 4 on ids: replace each piece ending in digit + ``,`` by its re-split."""
        if self._digit_comma.keys().isdisjoint(ids):
            return ids
        out: list[int] = []
        for i in ids:
            sub = self._digit_comma.get(i)
            if sub is None:
                out.append(i)
            else:
                out.extend(sub[0])
        return out

    def _tokenize_normalized(self, text: str) -> list[str]:
        """Steps 3-4 on preprocessed text: the reference ``_tokenize`` on pieces."""
        pieces = self._sp.encode(text, out_type=str)
        out: list[str] = []
        for piece in pieces:
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                out.extend(p for p, _, _ in self._resplit_pieces(piece))
            else:
                out.append(piece)
        return out

    def tokenize(self, text: str) -> list[str]:
        """SentencePiece pieces of ``text`` (literal special tokens included, no [CLS]/[SEP] added)."""
        _check_text(text, "text")
        tokens: list[str] = []
        for seg, _, special in self._segments(self._lowered(text)):
            tokens.extend([seg] if special else self._tokenize_normalized(self._normalize(seg)))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without [CLS]/[SEP]."""
        return self.encode_batch([_check_text(text, "text")], num_threads=1)[0]

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """``[encode(t) for t in texts]``, with SentencePiece's batched, multithreaded encode.

        ``num_threads=-1`` lets SentencePiece use all cores.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a str; use encode() for one text")
        normalized: list[str] = []
        layouts: list[int | list[int]] = []  # index into normalized, or a list of (index | ~special_id)
        for n, text in enumerate(texts):
            _check_text(text, f"texts[{n}]")
            segments = self._segments(self._lowered(text))
            if len(segments) == 1 and not segments[0][2]:
                layouts.append(len(normalized))
                normalized.append(self._normalize(segments[0][0]))
                continue
            layout = []
            for seg, _, special in segments:
                if special:
                    layout.append(~self._special_ids[seg])
                else:
                    layout.append(len(normalized))
                    normalized.append(self._normalize(seg))
            layouts.append(layout)
        if self._comma_known:
            encoded = self._sp.encode(normalized, out_type=int, num_threads=num_threads) if normalized else []
            encoded = [self._fix_digit_comma(ids) for ids in encoded]
        else:  # the id table cannot describe unknown pieces that end in ","; go through pieces
            encoded = [self.convert_tokens_to_ids(self._tokenize_normalized(t)) for t in normalized]
        out: list[list[int]] = []
        for layout in layouts:
            if isinstance(layout, int):
                out.append(encoded[layout])
            else:
                ids: list[int] = []
                for k in layout:
                    if k < 0:
                        ids.append(~k)
                    else:
                        ids.extend(encoded[k])
                out.append(ids)
        return out

    # --------------------------------------------------------------------------- offsets

    def _aligned_normalize(self, seg: str) -> tuple[str, list[int], list[int]]:
        """Step 3 with, for every output character, the ``[start, end)`` span of ``seg`` it came from."""
        spans = [(c, i, i + 1) for i, c in enumerate(seg)]  # (character, start, end)
        if self.remove_space:
            spans = _collapse_spaces(spans)
        spans = _merge_quote_pairs(spans)
        if not self.keep_accents or self.do_lower_case:
            folded = []
            for c, start, end in spans:
                out = (
                    c if self.keep_accents else _strip_accents(c)
                )  # NFKD is per character once marks are gone
                folded += [(o, start, end) for o in (out.lower() if self.do_lower_case else out)]
            spans = folded
        normalized = self._normalize(seg)
        if len(normalized) != len(spans):  # not expected; keep ids exact and give coarse spans
            return normalized, [0] * len(normalized), [len(seg)] * len(normalized)
        return normalized, [start for _, start, _ in spans], [end for _, _, end in spans]

    @staticmethod
    def _dropped_by_spm(char: str, body: str, more: bool) -> bool:
        """Whether a leading format/control ``char`` of a piece's span was deleted by SentencePiece."""
        return more and not body.startswith(char) and unicodedata.category(char) in ("Cf", "Cc")

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of ``text`` (as :meth:`encode`) and, per token, its ``(start, end)`` span in ``text``.

        Spans are character offsets into the original ``text``, before lowercasing, accent stripping
        and whitespace collapsing: ``text[start:end]`` is what the token came from. A token that covers
        no character (a bare ``▁``) gets the empty span where the next character starts. Used for
        ``return_offsets_mapping`` and for SQuAD answer spans.
        """
        _check_text(text, "text")
        lowered = self._lowered(text)
        if len(lowered) == len(text):
            lmap = None
        else:  # lowercasing expanded some characters (e.g. "İ"); map lowered positions back
            lmap = [j for j, c in enumerate(text) for _ in self._lowered(c)]
            if len(lmap) != len(lowered):
                lmap = [min(j, len(text) - 1) for j in range(len(lowered))]

        def orig(pos_start: int, pos_end: int) -> tuple[int, int]:
            if lmap is None:
                return pos_start, pos_end
            if pos_start == pos_end:
                p = lmap[pos_start] if pos_start < len(lmap) else len(text)
                return p, p
            return lmap[pos_start], lmap[pos_end - 1] + 1

        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for seg, seg_start, special in self._segments(lowered):
            if special:
                ids.append(self._special_ids[seg])
                offsets.append(orig(seg_start, seg_start + len(seg)))
                continue
            norm, starts, ends = self._aligned_normalize(seg)
            enc = self._sp.encode(norm, out_type="offset_mapping")
            for i, piece, (b, e) in zip(enc["ids"], enc["pieces"], enc["offsets"]):
                body = piece.lstrip(SPIECE_UNDERLINE)
                while b < e and (
                    norm[b].isspace() or self._dropped_by_spm(norm[b], body, b + 1 < e or not body)
                ):
                    b += 1  # the span starts at the piece's first kept character
                if i in self._digit_comma and norm[b:e] == piece.replace(SPIECE_UNDERLINE, ""):
                    sub_ids, sub_offsets = self._digit_comma[i]
                    spans = [(b + s, b + t) for s, t in sub_offsets]
                elif i in self._digit_comma:
                    sub_ids = self._digit_comma[i][0]
                    spans = [(b, e)] * len(sub_ids)
                else:
                    sub_ids, spans = (i,), [(b, e)]
                for sub_id, (s, t) in zip(sub_ids, spans):
                    if s >= t:  # a bare "▁": empty span where the next character starts
                        p = seg_start + (starts[s] if s < len(norm) else len(seg))
                        span = orig(p, p)
                    else:
                        span = orig(seg_start + starts[s], seg_start + ends[t - 1])
                    ids.append(sub_id)
                    offsets.append(span)
        return ids, offsets

    # ------------------------------------------------------------------------ model inputs

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        max_length: int | None = None,
        truncation: bool | str = False,
        padding: bool | str = False,
        return_tensors: str | None = None,
        return_offsets_mapping: bool = False,
    ) -> dict[str, Any]:
        """Model inputs ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``, like transformers' tokenizers.

        Returns a dict with ``input_ids``, ``token_type_ids``, ``attention_mask`` (and
        ``offset_mapping``: ``(start, end)`` character spans into the original text or text pair,
        ``(0, 0)`` for special and padding tokens). Truncation is ``longest_first`` from the right;
        padding is on the right with ``<pad>``. ``return_tensors="np"`` gives int32 arrays of shape
        ``(batch, length)`` (batch 1 for a single text).
        """
        batched = not isinstance(text, str)
        if batched:
            if not isinstance(text, Sequence) or isinstance(text, (bytes, bytearray)):
                raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
            texts = [_check_text(t, f"text[{n}]") for n, t in enumerate(text)]
            if text_pair is None:
                pairs = None
            else:
                if isinstance(text_pair, str) or not isinstance(text_pair, Sequence):
                    raise TypeError(
                        f"text_pair must be a list of str when text is a list, got {type(text_pair).__name__}"
                    )
                pairs = [_check_text(t, f"text_pair[{n}]") for n, t in enumerate(text_pair)]
                if len(pairs) != len(texts):
                    raise errors.InputError(
                        f"text and text_pair have different lengths ({len(texts)} vs {len(pairs)})"
                    )
        else:
            texts = [text]
            pairs = None if text_pair is None else [_check_text(text_pair, "text_pair")]
        if truncation not in _TRUNCATION:
            raise errors.InputError(
                f"truncation must be True, False, 'longest_first' or 'do_not_truncate', got {truncation!r}"
            )
        if padding not in _PADDING:
            raise errors.InputError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
            )
        if return_tensors not in (None, "np"):
            raise errors.InputError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)):
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        truncate, pad = _TRUNCATION[truncation], _PADDING[padding]
        n_special = 2 if pairs is None else 3
        if truncate and max_length is not None and max_length < n_special:
            raise errors.InputError(
                f"max_length={max_length} leaves no room for the {n_special} special tokens"
            )
        if pad == "max_length" and max_length is None:
            raise errors.InputError("padding='max_length' needs max_length")

        if return_offsets_mapping:
            enc_a = [self.encode_with_offsets(t) for t in texts]
            enc_b = None if pairs is None else [self.encode_with_offsets(t) for t in pairs]
        else:
            all_ids = self.encode_batch(texts + (pairs or []))
            enc_a = [(ids, None) for ids in all_ids[: len(texts)]]
            enc_b = None if pairs is None else [(ids, None) for ids in all_ids[len(texts) :]]

        rows: dict[str, list] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        if return_offsets_mapping:
            rows["offset_mapping"] = []
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        for n, (a, a_off) in enumerate(enc_a):
            b, b_off = (None, None) if enc_b is None else enc_b[n]
            if truncate and max_length is not None:
                keep_a, keep_b = _longest_first(len(a), None if b is None else len(b), max_length - n_special)
                a, a_off = a[:keep_a], a_off and a_off[:keep_a]
                if b is not None:
                    b, b_off = b[:keep_b], b_off and b_off[:keep_b]
            ids = cls + a + sep
            types = [0] * len(ids)
            if b is not None:
                ids += b + sep
                types += [1] * (len(b) + 1)
            rows["input_ids"].append(ids)
            rows["token_type_ids"].append(types)
            rows["attention_mask"].append([1] * len(ids))
            if return_offsets_mapping:
                offs = [(0, 0)] + list(a_off) + [(0, 0)]
                if b is not None:
                    offs += list(b_off) + [(0, 0)]
                rows["offset_mapping"].append(offs)

        if pad is not None:
            self._pad_rows(rows, _pad_target(rows["input_ids"], pad, max_length, None))
        if return_tensors == "np":
            return _as_arrays(rows)
        if batched:
            return rows
        return {key: values[0] for key, values in rows.items()}

    def _pad_rows(self, rows: dict[str, list[list[Any]]], target: int) -> None:
        """Right-pad, in place, every padded key of each row by what its input_ids lack of `target`."""
        fill = {"input_ids": self.pad_token_id, **_PAD_FILL}
        for n, ids in enumerate(rows["input_ids"]):
            missing = target - len(ids)
            for key in fill.keys() & rows.keys():
                rows[key][n] = list(rows[key][n]) + [fill[key]] * missing

    def pad(
        self,
        encoded_inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Pad encodings on the right, as transformers' ``tokenizer.pad`` (ALBERT pads on the right).

        ``encoded_inputs``: one encoding (a dict of id lists, as :meth:`__call__` returns for one text),
        a batch (a dict of lists of lists, or of 2-D arrays), or a list of encodings (a data loader's
        collate function). ``input_ids`` are padded with ``<pad>``, ``token_type_ids`` with 0,
        ``attention_mask`` with 0 (and made, all ones, when absent), ``special_tokens_mask`` with 1,
        ``offset_mapping`` with ``(0, 0)``; other keys are left as they are. ``padding``: True or
        ``'longest'`` pads to the longest sequence, ``'max_length'`` to ``max_length``, False or
        ``'do_not_pad'`` not at all; ``pad_to_multiple_of`` rounds that length up. Nothing is
        truncated. ``return_attention_mask=False`` drops the mask (transformers would leave it unpadded).
        ``return_tensors="np"`` (the default for numpy inputs) gives int32 arrays, ``(batch, length)``
        for a batch and ``(length,)`` for one encoding.
        """
        if (
            isinstance(encoded_inputs, (list, tuple))
            and encoded_inputs
            and isinstance(encoded_inputs[0], Mapping)
        ):
            encoded_inputs = {key: [e[key] for e in encoded_inputs] for key in encoded_inputs[0]}
        if not isinstance(encoded_inputs, Mapping) or "input_ids" not in encoded_inputs:
            raise errors.InputError(
                "pad needs an encoding, a batch of encodings or a list of them, with input_ids"
            )
        if padding not in _PADDING:
            raise errors.InputError(
                f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}"
            )
        if return_tensors not in (None, "np"):
            raise errors.InputError(f"return_tensors must be None or 'np', got {return_tensors!r}")
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise errors.InputError(f"{name} must be a positive int or None, got {value!r}")
        strategy = _PADDING[padding]
        if strategy == "max_length" and max_length is None:
            raise errors.InputError("padding='max_length' needs max_length")
        if return_tensors is None and any(_is_array(v) for v in encoded_inputs.values()):
            return_tensors = "np"  # arrays in, arrays out
        ids = encoded_inputs["input_ids"]
        if len(ids) == 0:
            return {**encoded_inputs, **({"attention_mask": []} if return_attention_mask else {})}
        batched = isinstance(ids[0], (list, tuple)) or _is_array(ids[0])
        rows = {}
        for key, value in encoded_inputs.items():  # every key as a batch, the padded keys' rows as lists
            batch = _as_row(value) if batched else [value]
            rows[key] = [_as_row(r) for r in batch] if key in _PADDED_KEYS else batch
        if any(len(value) != len(rows["input_ids"]) for value in rows.values()):
            raise errors.InputError("every key of encoded_inputs must hold as many sequences as input_ids")
        for row in rows["input_ids"]:
            for i in row:
                if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                    raise TypeError(f"input_ids must be ints, got {type(i).__name__}")
        if return_attention_mask is False:
            rows.pop("attention_mask", None)
        elif "attention_mask" not in rows:
            rows["attention_mask"] = [[1] * len(r) for r in rows["input_ids"]]
        if strategy is not None:
            self._pad_rows(rows, _pad_target(rows["input_ids"], strategy, max_length, pad_to_multiple_of))
        result = _as_arrays(rows) if return_tensors == "np" else rows
        return result if batched else {key: values[0] for key, values in result.items()}

    # --------------------------------------------------------------------------- decoding

    def decode(
        self,
        ids: int | Iterable[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        """Text of ``ids``, as transformers 4.x's slow ``AlbertTokenizer.decode``.

        ``clean_up_tokenization_spaces`` removes the spaces BERT-style tokenization leaves before
        punctuation and contractions (``" ."`` -> ``"."``, ``" n't"`` -> ``"n't"``), as transformers does.
        """
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            ids = [ids]
        ids = [self._check_id(i) for i in np.asarray(ids).reshape(-1).tolist()]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_id_set]
        out, current, prev_special = "", [], False
        for token in (self._sp.IdToPiece(i) for i in ids):
            if token in SPECIAL_TOKENS:
                if not prev_special:
                    out += " "
                out += self._sp.decode_pieces(current) + token
                prev_special, current = True, []
            else:
                current.append(token)
                prev_special = False
        out += self._sp.decode_pieces(current)
        return _clean_up_tokenization(out.strip()) if clean_up_tokenization_spaces else out.strip()

    def batch_decode(
        self,
        sequences: Iterable[Iterable[int]],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> list[str]:
        """:meth:`decode` of each sequence of a batch (a list of id lists, or a 2-D array), as transformers'.

        One flat sequence of ids decodes to a one-element list, as in transformers.
        """
        if _is_array(sequences):
            sequences = np.asarray(sequences).tolist()  # numpy, jax and torch arrays
        sequences = list(sequences)
        if sequences and isinstance(sequences[0], (int, np.integer)):
            sequences = [sequences]
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]


def _clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before ``. ? ! ,`` and English contractions."""
    for old, new in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(old, new)
    for suffix in ("m", "s", "ve", "re"):
        text = text.replace(f" '{suffix}", f"'{suffix}")
    return text


def _is_array(value: Any) -> bool:
    """A numpy, jax or torch array (anything numpy converts), not a list or a scalar."""
    return hasattr(value, "__array__") and getattr(value, "ndim", 0) > 0


def _as_row(value: Any) -> list[Any]:
    """One sequence of an encoding as a list (arrays become nested lists)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    raise TypeError(f"encodings must hold lists or arrays, got {type(value).__name__}")


def _pad_target(rows: list[list[int]], strategy: str, max_length: int | None, multiple: int | None) -> int:
    """The length to pad to: the longest row or `max_length`, rounded up to a multiple of `multiple`."""
    target = max((len(r) for r in rows), default=0) if strategy == "longest" else max_length
    if multiple and target % multiple:
        target += multiple - target % multiple
    return target


def _as_arrays(rows: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """Padded keys' rows as int32 arrays ``(batch, length)`` (``(batch, length, 2)`` for offset_mapping)."""
    result = {}
    for key, values in rows.items():
        if key not in _PADDED_KEYS:
            result[key] = np.asarray(values)
            continue
        if len({len(r) for r in values}) > 1:
            raise errors.InputError("sequences have different lengths; use padding=True to return arrays")
        shape = (len(values), -1, 2) if key == "offset_mapping" else (len(values), -1)
        result[key] = np.asarray(values, dtype=np.int32).reshape(shape)
    return result


def _longest_first(len_a: int, len_b: int | None, budget: int) -> tuple[int, int]:
    """How many tokens of A and B to keep: transformers' ``longest_first``, right side."""
    if len_b is None:
        return min(len_a, budget), 0
    remove = len_a + len_b - budget
    if remove <= 0:
        return len_a, len_b
    first = min(abs(len_b - len_a), remove)
    second = remove - first
    if len_a > len_b:
        remove_a, remove_b = first + second // 2, second - second // 2
    else:
        remove_a, remove_b = second // 2, first + second - second // 2
    return len_a - remove_a, len_b - remove_b


# ------------------------------------------------------------------------------ training


class _Sentences:
    """Preprocessed, non-empty training sentences; remembers an error raised while iterating."""

    def __init__(self, source: Iterable[str] | list[Path], files: bool, flags: dict[str, bool]) -> None:
        self.source, self.files, self.flags = source, files, flags
        self.error: BaseException | None = None

    def _raw(self) -> Iterator[str]:
        if self.files:
            for path in self.source:
                with open(path, encoding="utf-8") as f:
                    for line in f:
                        yield line.rstrip("\r\n")
        else:
            for n, line in enumerate(self.source):
                if not isinstance(line, str):
                    raise TypeError(f"training sentences must be str, item {n} is {type(line).__name__}")
                yield line

    def __iter__(self) -> Iterator[str]:
        try:
            lower = self.flags["do_lower_case"]
            for line in self._raw():
                text = preprocess_text(
                    _lower_per_char(line) if lower else line,
                    remove_space=self.flags["remove_space"],
                    lower=lower,
                    keep_accents=self.flags["keep_accents"],
                )
                if text.strip():
                    yield text
        except BaseException as e:  # sentencepiece would turn it into an opaque RuntimeError
            self.error = e
            raise


def _looks_like_file(item: str) -> bool:
    """An existing file, or a one-word string with a text-file extension (so a typo is an error)."""
    if os.path.isfile(item):
        return True
    return bool(item) and not any(c.isspace() for c in item) and item.lower().endswith(_TEXT_FILE_SUFFIXES)


_TEXT_FILE_SUFFIXES = (".txt", ".text", ".tsv", ".csv", ".json", ".jsonl", ".raw", ".md")


def _training_source(source: Any) -> tuple[Iterable[str] | list[Path], bool]:
    """Classify ``files_or_text_iterator``: ``(paths, True)`` or ``(sentences, False)``."""
    if isinstance(source, (str, os.PathLike)):
        paths = [Path(source)]
    elif (
        isinstance(source, (list, tuple))
        and source
        and (
            any(isinstance(p, os.PathLike) for p in source)
            or all(isinstance(p, str) and _looks_like_file(p) for p in source)
        )
    ):
        paths = [Path(p) for p in source]
    elif isinstance(source, Iterable) and not isinstance(source, (bytes, bytearray, dict)):
        return source, False
    else:
        raise TypeError(
            f"files_or_text_iterator must be a path, a list of paths or an iterable of str, got {type(source).__name__}"
        )
    for p in paths:
        if not p.is_file():
            raise errors.MissingError(f"training file not found: {str(p)!r}")
    return paths, True


# Bump when `train_tokenizer`'s defaults (flags, preprocessing) change what it trains: vocabularies that
# `data.prepare.vocabulary` keeps in a data cache are keyed by it.
TRAINING_VERSION = 1


def train_tokenizer(
    files_or_text_iterator: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str],
    output_prefix: str | os.PathLike,
    vocab_size: int = 30000,
    *,
    do_lower_case: bool = True,
    remove_space: bool = True,
    keep_accents: bool = False,
    character_coverage: float = 0.99995,
    model_type: str = "unigram",
    input_sentence_size: int = 10_000_000,
    shuffle_input_sentence: bool = True,
    num_threads: int | None = None,
    **extra_spm_flags: Any,
) -> str:
    """Train an ALBERT SentencePiece vocabulary; returns the path of ``{output_prefix}.model``.

    Uses the ALBERT README's spm_train flags (pad_id=0, unk_id=1, no bos/eos, control symbols
    ``[CLS] [SEP] [MASK]``, the eight user-defined symbols ``( ) " - . – £ €``, each one piece,
    unigram, character coverage 0.99995, shuffled input of at most 10M sentences) and passes the
    text through the tokenizer's preprocessing first, so the vocabulary matches what
    :meth:`AlbertTokenizer.encode` sees.

    The input is a path, a list of paths (UTF-8 text, one sentence per line), or any iterable of
    str sentences. A list counts as paths when an item is an ``os.PathLike``, or when every item is
    an existing file or a one-word name ending in a text-file extension such as ``.txt`` (a missing
    file is then a ``FileNotFoundError``). A ``vocab_size`` larger than the text supports is a
    ``ValueError``; pass ``hard_vocab_limit=False`` to get a smaller vocabulary instead. Extra
    keyword arguments go to ``SentencePieceTrainer.train`` (e.g. ``minloglevel=0`` for full logs).
    Writes ``{output_prefix}.model`` and ``{output_prefix}.vocab``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise errors.ConfigError(f"vocab_size must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}")
    if not isinstance(output_prefix, (str, os.PathLike)):
        raise TypeError(f"output_prefix must be a path, got {type(output_prefix).__name__}")
    source, files = _training_source(files_or_text_iterator)
    prefix = Path(output_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    flags = {"do_lower_case": do_lower_case, "remove_space": remove_space, "keep_accents": keep_accents}
    sentences = _Sentences(source, files, flags)
    spm_flags: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_id": 0,
        "unk_id": 1,
        "bos_id": -1,
        "eos_id": -1,
        "control_symbols": list(ALBERT_CONTROL_SYMBOLS),  # a list: sentencepiece CSV-encodes lists only
        "user_defined_symbols": list(ALBERT_USER_DEFINED_SYMBOLS),
        "shuffle_input_sentence": shuffle_input_sentence,
        "input_sentence_size": input_sentence_size,
        "character_coverage": character_coverage,
        "model_type": model_type,
        "num_threads": num_threads or os.cpu_count() or 1,
        "minloglevel": 1,
    }
    spm_flags.update(extra_spm_flags)
    # Through a writer, not model_prefix: the model then records no (temporary) output path, so the same
    # text and flags give the same bytes, and the same fingerprint for the data caches.
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, **spm_flags)
    except RuntimeError as e:
        if sentences.error is not None:
            raise sentences.error from None
        message = str(e)
        if "Vocabulary size too high" in message or "Vocabulary size is smaller" in message:
            limit = re.search(r"value <= (\d+)", message)
            hint = f" (at most {limit.group(1)})" if limit else ""
            raise errors.InputError(
                f"vocab_size={vocab_size} is too large for this training text{hint}; "
                "use a smaller vocab_size, more text, or hard_vocab_limit=False"
            ) from None
        if "sentences_.empty()" in message:
            raise errors.InputError("no training text: the input has no non-empty lines") from None
        raise errors.InputError(f"sentencepiece training failed: {message.strip()}") from None
    Path(f"{prefix}.model").write_bytes(model.getvalue())
    _write_vocab(model.getvalue(), f"{prefix}.vocab")
    return f"{prefix}.model"


def _write_vocab(model: bytes, path: str) -> None:
    """spm_train's ``.vocab`` listing: one ``piece<TAB>score`` line per id (C++'s default float format)."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.get_piece_size()))


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``train`` a vocabulary, or ``encode`` text with one."""
    parser = argparse.ArgumentParser(
        prog="python -m albert_jax.tokenizer", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train an ALBERT SentencePiece vocabulary")
    train.add_argument(
        "--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, one sentence per line"
    )
    train.add_argument(
        "--output", required=True, metavar="PREFIX", help="writes PREFIX.model and PREFIX.vocab"
    )
    train.add_argument("--vocab-size", type=int, default=30000)
    train.add_argument("--model-type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    train.add_argument("--character-coverage", type=float, default=0.99995)
    train.add_argument("--input-sentence-size", type=int, default=10_000_000)
    train.add_argument("--num-threads", type=int, default=None)
    train.add_argument("--cased", action="store_true", help="do not lowercase")
    train.add_argument("--keep-accents", action="store_true", help="do not strip accents")
    train.add_argument(
        "--soft-vocab-limit", action="store_true", help="allow a smaller vocabulary than --vocab-size"
    )
    encode = commands.add_parser("encode", help="print the pieces and ids of each line of text")
    encode.add_argument("--model", required=True, help="a .model file or a folder with spiece.model")
    encode.add_argument("text", nargs="*", help="text to encode (default: lines of stdin)")
    from albert_jax import cli  # the entry point's error path (imports jax; the library does not)

    return cli.argparse_main(parser, _run_command, argv)


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "train":
        extra = {"hard_vocab_limit": False} if args.soft_vocab_limit else {}
        path = train_tokenizer(
            [Path(p) for p in args.input],
            args.output,
            args.vocab_size,
            do_lower_case=not args.cased,
            keep_accents=args.keep_accents,
            character_coverage=args.character_coverage,
            model_type=args.model_type,
            input_sentence_size=args.input_sentence_size,
            num_threads=args.num_threads,
            **extra,
        )
        print(path)
    else:
        tok = AlbertTokenizer.from_pretrained(args.model)
        for line in args.text or (line.rstrip("\n") for line in sys.stdin):
            print(json.dumps({"tokens": tok.tokenize(line), "ids": tok.encode(line)}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
