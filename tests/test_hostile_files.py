"""Hostile checkpoint files: whatever a downloaded file holds, loading it is a clean one-line error.

Targeted tests craft each known attack (views past their storage, malformed pickles, zip bombs, bad
safetensors headers, absurd configs, broken SentencePiece models, index paths leaving the directory).
The fuzz test mutates valid files and loads every mutant in a subprocess, so that a segfault fails the
test (naming the case) instead of killing the suite.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch
from test_modeling import init as random_params  # random values on init's shapes, no compile

from albert_jax import hf, hf_files, modeling
from albert_jax.config import AlbertConfig
from albert_jax.tokenizer import AlbertTokenizer

ROOT = Path(__file__).resolve().parent.parent
SPIECE = Path(__file__).parent / "fixtures" / "tokenizer" / "spiece.model"
TINY = {
    "vocab_size": 20,
    "embedding_size": 8,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_hidden_groups": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 8,
}


# --- crafting torch.save archives ----------------------------------------------------------------


ITEMSIZE = {"FloatStorage": 4, "DoubleStorage": 8, "LongStorage": 8, "BoolStorage": 1}


class Storage:
    """A storage as torch.save pickles it (a persistent id); `pid` overrides the id to craft bad ones."""

    def __init__(self, key: str, data: bytes, kind: str = "FloatStorage", numel: Any = None, pid: Any = None):
        numel = len(data) // ITEMSIZE[kind] if numel is None else numel
        self.key, self.data = key, data
        self.pid = ("storage", getattr(torch, kind), key, "cpu", numel) if pid is None else pid


class Tensor:
    """Pickles as torch.save pickles a tensor, with whatever offset, size and stride it is given."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any):
        self.args = (storage, offset, size, stride, *(rest or (False, collections.OrderedDict())))

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, Storage) else None


def floats(*values: float) -> bytes:
    return np.asarray(values, np.float32).tobytes()


def write_zip(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_bin(path: Path, state: Any = None, *, data_pkl: bytes | None = None, storages=()) -> Path:
    """A torch.save-style archive: data.pkl pickles `state` (or is `data_pkl`), plus each storage's bytes."""
    if data_pkl is None:
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(state)
        data_pkl = buffer.getvalue()
    members = {"archive/data.pkl": data_pkl, "archive/byteorder": b"little"}
    members.update({f"archive/data/{s.key}": s.data for s in storages})
    return write_zip(path, members)


def one_tensor(path: Path, offset: Any, size: Any, stride: Any, data: bytes = floats(1, 2, 3, 4)) -> Path:
    storage = Storage("0", data)
    return write_bin(path, {"w": Tensor(storage, offset, size, stride)}, storages=[storage])


def refused(path: Path, *patterns: str) -> str:
    """Load `path` with the loader its name calls for; assert a one-line ValueError naming it and matching."""
    load = {
        ".bin": hf_files.load_torch_bin,
        ".safetensors": hf_files.load_safetensors,
        ".json": AlbertConfig.from_json,
    }
    with pytest.raises(ValueError) as info:
        load.get(path.suffix, AlbertTokenizer)(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for pattern in patterns:
        assert re.search(pattern, message), (pattern, message)
    return message


# --- torch .bin: views -----------------------------------------------------------------------------


def test_bin_50m_elements_over_4_is_refused(tmp_path):
    # Before the checks, as_strided read 200 MB past a 16-byte buffer: a segfault.
    path = one_tensor(tmp_path / "evil.bin", 0, (50_000_000,), (1,))
    refused(path, r"tensor 'w' views elements up to 49999999 .* of a 4-element storage")


@pytest.mark.parametrize(
    "offset, size, stride, pattern",
    [
        (1, (4,), (1,), r"up to 4 \(offset 1"),  # one past the end
        (5, (1,), (1,), r"up to 5 "),
        (0, (2, 3), (3, 1), r"up to 5 "),
        (0, (2, 2), (1, 4), r"up to 5 "),
        (-1, (1,), (1,), r"storage offset -1, not an integer in \[0, 2\*\*63\)"),
        (0, (-2,), (1,), r"size \(-2,\) with an entry that is not in \[0, 2\*\*63\)"),
        (0, (2,), (-1,), r"stride \(-1,\) with an entry"),
        (0.0, (1,), (1,), r"storage offset 0\.0"),
        (True, (1,), (1,), r"storage offset True"),
        (2**64, (1,), (1,), r"storage offset a 65-bit integer"),
        (10**400, (1,), (1,), r"storage offset a 1329-bit integer"),
        (0, (2**62, 2**62), (1, 1), r"views elements up to"),
        (0, (2,), (2**62,), r"views elements up to"),
        (0, (1.5,), (1,), r"has size a tuple with an entry that is not in \[0, 2\*\*63\)"),
        (0, "4", (1,), r"size '4', not a tuple"),
        (0, (4,), None, r"stride None, not a tuple"),
        (0, (1,) * 65, (1,) * 65, r"not a tuple of at most 64 integers"),
        (0, (2, 2), (1,), r"size \(2, 2\) but stride \(1,\)"),
        (0, (10**9,), (0,), r"past 4× the file's size"),  # stride 0: 4 GB from one float
        (5, (0, 3), (3, 1), r"starts at element 5 of a 4-element storage"),
        (0, (0, 2**62), (1, 1), r"too large for numpy"),
    ],
)
def test_bin_crafted_views_are_refused(tmp_path, offset, size, stride, pattern):
    refused(one_tensor(tmp_path / "evil.bin", offset, size, stride), r"tensor 'w' ", pattern)


@pytest.mark.parametrize(
    "offset, size, stride, expected",
    [
        (0, (4,), (1,), [1, 2, 3, 4]),
        (3, (1,), (1,), [4]),
        (0, (2, 2), (1, 2), [[1, 3], [2, 4]]),  # a transpose
        (1, (3,), (0,), [2, 2, 2]),  # an expand
        (2, (1, 2), (2**62, 1), [[3, 4]]),  # a size-1 dimension never steps: its stride is irrelevant
        (4, (0, 7), (7, 1), np.zeros((0, 7))),
        (0, (), (), 1),  # a scalar
    ],
)
def test_bin_views_inside_their_storage_load(tmp_path, offset, size, stride, expected):
    loaded = hf_files.load_torch_bin(one_tensor(tmp_path / "ok.bin", offset, size, stride))["w"]
    np.testing.assert_array_equal(loaded, np.asarray(expected, np.float32))
    assert loaded.shape == np.shape(expected) and loaded.flags.writeable


def test_crafted_archives_match_torch_save(tmp_path):
    """The crafting helpers write what torch.save writes, so the crafted cases test the real format."""
    x = torch.arange(12.0).reshape(3, 4)
    torch.save({"t": x.t(), "row": x[1]}, tmp_path / "real.bin")
    storage = Storage("0", x.numpy().tobytes())
    write_bin(
        tmp_path / "crafted.bin",
        {"t": Tensor(storage, 0, (4, 3), (1, 4)), "row": Tensor(storage, 4, (4,), (1,))},
        storages=[storage],
    )
    real, crafted = (
        hf_files.load_torch_bin(tmp_path / "real.bin"),
        hf_files.load_torch_bin(tmp_path / "crafted.bin"),
    )
    for key in real:
        np.testing.assert_array_equal(real[key], crafted[key])
        np.testing.assert_array_equal(real[key], {"t": x.t(), "row": x[1]}[key].numpy())


# --- torch .bin: storages, persistent ids, data.pkl ---------------------------------------------


def test_bin_storage_length_is_checked(tmp_path):
    odd = Storage("0", b"\0" * 6)  # 1.5 floats
    write_bin(tmp_path / "odd.bin", {"w": Tensor(odd, 0, (1,), (1,))}, storages=[odd])
    refused(tmp_path / "odd.bin", r"tensor 'w' .*has 6 bytes, not a whole number of float32 elements")
    short = Storage("0", floats(1, 2), numel=4)
    write_bin(tmp_path / "short.bin", {"w": Tensor(short, 0, (2,), (1,))}, storages=[short])
    refused(tmp_path / "short.bin", r"tensor 'w' .*holds 2 elements but data.pkl says 4")
    wide = Storage("0", floats(1, 2, 3), kind="DoubleStorage")  # 12 bytes as float64
    write_bin(tmp_path / "wide.bin", {"w": Tensor(wide, 0, (1,), (1,))}, storages=[wide])
    refused(tmp_path / "wide.bin", r"not a whole number of float64 elements")


@pytest.mark.parametrize(
    "pid, pattern",
    [
        (("storage", torch.FloatStorage, "0"), r"persistent id a tuple is not \('storage'"),
        (("module", torch.FloatStorage, "0", "cpu", 4), r"persistent id a tuple"),
        ("storage", r"persistent id 'storage' is not"),
        (("storage", collections.OrderedDict, "0", "cpu", 4), r"storage type a type is not a torch storage"),
        (("storage", torch.FloatStorage, 0, "cpu", 4), r"storage key 0 is not a name"),
        (("storage", torch.FloatStorage, "0", "cpu", -4), r"storage size -4 is not"),
        (("storage", torch.FloatStorage, "0", "cpu", "4"), r"storage size '4' is not"),
    ],
)
def test_bin_malformed_persistent_ids(tmp_path, pid, pattern):
    storage = Storage("0", floats(1, 2, 3, 4), pid=pid)
    write_bin(tmp_path / "evil.bin", {"w": Tensor(storage, 0, (4,), (1,))}, storages=[storage])
    refused(tmp_path / "evil.bin", r"data\.pkl cannot be read safely", pattern)


@pytest.mark.parametrize(
    "state, pattern",
    [
        ([1, 2], r"data\.pkl holds a list, not a dict of tensors"),
        (None, r"data\.pkl holds None, not a dict"),
        ({3: 4}, r"data\.pkl has a key that is 3, not a tensor name"),
        ({"w": 3.0}, r"tensor 'w' is 3\.0, not a tensor"),
        ({"w": {"nested": "dict"}}, r"tensor 'w' is a dict, not a tensor"),
        (
            {"w": Tensor(Storage("0", floats(1)), 0, (1,), (1,))},
            r"tensor 'w' .*data/0' is missing from the archive",
        ),
        ({"w": Tensor(5, 0, (1,), (1,))}, r"tensor 'w' has 5 where its storage should be"),
        ({"w": "x" * 1000}, r"tensor 'w' is 'xxxx.*…, not a tensor"),  # long values are shortened
    ],
)
def test_bin_data_pkl_must_be_a_dict_of_tensors(tmp_path, state, pattern):
    refused(write_bin(tmp_path / "evil.bin", state), pattern)


def test_bin_missing_members(tmp_path):
    refused(write_zip(tmp_path / "no_pickle.bin", {"archive/data/0": floats(1)}), r"no single data\.pkl")
    two = {"a/data.pkl": pickle.dumps({}, protocol=2), "b/data.pkl": pickle.dumps({}, protocol=2)}
    refused(write_zip(tmp_path / "two_pickles.bin", two), r"no single data\.pkl")


def test_bin_parameters_and_rebuild_arguments(tmp_path):
    storage = Storage("0", floats(1, 2))
    parameter = Tensor(storage, 0, (2,), (1,))

    class Parameter:
        def __reduce__(self):
            return torch._utils._rebuild_parameter, (parameter, True, collections.OrderedDict())

    class WrappedTuple:  # _rebuild_parameter never hands back a non-tensor (the nesting scan relies on it)
        def __reduce__(self):
            return torch._utils._rebuild_parameter, ((1, 2), True, collections.OrderedDict())

    write_bin(tmp_path / "param.bin", {"p": Parameter()}, storages=[storage])
    np.testing.assert_array_equal(hf_files.load_torch_bin(tmp_path / "param.bin")["p"], [1, 2])
    refused(
        write_bin(tmp_path / "wrapped.bin", {"p": WrappedTuple()}),
        r"tensor 'p' is a tensor record with fewer",
    )
    short = Tensor(storage, 0, (2,), (1,))
    short.args = short.args[:3]
    refused(
        write_bin(tmp_path / "short.bin", {"s": short}, storages=[storage]), r"tensor 's' is a tensor record"
    )


def test_bin_bool_storage_bytes_become_real_bools(tmp_path):
    storage = Storage("0", bytes([0, 1, 2, 255]), kind="BoolStorage")
    write_bin(tmp_path / "b.bin", {"b": Tensor(storage, 0, (4,), (1,))}, storages=[storage])
    loaded = hf_files.load_torch_bin(tmp_path / "b.bin")["b"]
    assert loaded.dtype == np.bool_ and loaded.tolist() == [False, True, True, True]
    assert loaded.view(np.uint8).tolist() == [0, 1, 1, 1]


# --- torch .bin: pickle-level attacks ------------------------------------------------------------


def test_bin_deep_tuple_key_is_refused_before_it_crashes(tmp_path):
    # Hashing a 10**6-deep tuple as a dict key overflows the C stack: a segfault in plain pickle.loads.
    evil = b"\x80\x02}" + b")" + b"\x85" * 1_000_000 + b"K\x01s."
    refused(write_bin(tmp_path / "evil.bin", data_pkl=evil), r"nests tuples more than 64 deep")


def test_bin_deep_nesting_is_refused_cleanly(tmp_path):
    n = 100_000
    deep_list = b"\x80\x02}X\x01\x00\x00\x00w" + b"]" * n + b"a" * (n - 1) + b"s."
    refused(write_bin(tmp_path / "list.bin", data_pkl=deep_list), r"tensor 'w' is a list, not a tensor")
    # Nesting built through the memo, where the stack stays shallow.
    via_memo = b"\x80\x02}X\x01\x00\x00\x00w]q\x00" + b"h\x00]q\x00a0" * n + b"s."
    refused(write_bin(tmp_path / "memo.bin", data_pkl=via_memo), r"tensor 'w' is a list, not a tensor")
    tuples = b"\x80\x02(" + b"(" * 100 + b"t" * 100 + b"t."
    refused(write_bin(tmp_path / "marks.bin", data_pkl=tuples), r"nests tuples more than 64 deep")


@pytest.mark.parametrize(
    "data_pkl, pattern",
    [
        (b"\x80\x02}r\xf0\xff\xff\xff.", r"memo index 4294967280 at opcode 2 is out of range"),
        (b"\x80\x02}p99999999999\n.", r"memo index 99999999999"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.", r"bytes8.*only 4 remain"),
        (
            b"\x80\x02X" + struct.pack("<I", 2**31) + b"abc.",
            r"expected 2147483648 bytes in a unicodestring4, but only 4 remain",
        ),
        (b"\x80\x02}", r"pickle exhausted before seeing STOP"),
        (b"\x80\x02\xff.", r"opcode b'\\xff' unknown"),
        (b"\x80\x02a.", r"stack underflow"),
        (b"\x80\x02cos\nsystem\n.", r"'os'\.'system' is not allowed"),
        (b"\x80\x02}X\x01\x00\x00\x00wctorch\nFloatStorage\n)Rs.", r"TypeError: .* is not callable"),
        (b"\x80\x02}X\x01\x00\x00\x00wL" + b"9" * 5000 + b"L\ns.", r"Exceeds the limit \(4300 digits\)"),
    ],
)
def test_bin_hostile_pickles(tmp_path, data_pkl, pattern):
    refused(write_bin(tmp_path / "evil.bin", data_pkl=data_pkl), pattern)


# --- torch .bin: archive-level attacks -----------------------------------------------------------


def _patch_declared_size(path: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that the central directory declares for `member`."""
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        name_length = struct.unpack_from("<H", data, i + 28)[0]
        if data[i + 46 : i + 46 + name_length] == member.encode():
            struct.pack_into("<I", data, i + 24, size)
            path.write_bytes(bytes(data))
            return
        i = data.find(b"PK\x01\x02", i + 4)
    raise AssertionError(f"{member} is not in {path}")


def test_bin_zip_bombs_are_refused(tmp_path):
    zeros = Storage("0", bytes(20_000_000))  # deflates to ~20 kB
    with zipfile.ZipFile(tmp_path / "bomb.bin", "w", zipfile.ZIP_DEFLATED) as archive:
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump({"w": Tensor(zeros, 0, (5_000_000,), (1,))})
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/data/0", zeros.data)
    assert (tmp_path / "bomb.bin").stat().st_size < 100_000
    refused(tmp_path / "bomb.bin", r"members declare 20000\d+ bytes uncompressed, over 10× .*zip bomb")
    storage = Storage("0", floats(1, 2, 3, 4))
    write_bin(tmp_path / "declared.bin", {"w": Tensor(storage, 0, (4,), (1,))}, storages=[storage])
    _patch_declared_size(tmp_path / "declared.bin", "archive/data/0", 0xFFFFFFF0)
    refused(tmp_path / "declared.bin", r"declare 42949\d+ bytes uncompressed")


def test_bin_compressed_members_within_bounds_load(tmp_path):
    storage = Storage("0", floats(1, 2, 3, 4))
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({"w": Tensor(storage, 0, (4,), (1,))})
    members = {"archive/data.pkl": buffer.getvalue(), "archive/data/0": storage.data}
    write_zip(tmp_path / "deflated.bin", members, zipfile.ZIP_DEFLATED)
    np.testing.assert_array_equal(hf_files.load_torch_bin(tmp_path / "deflated.bin")["w"], [1, 2, 3, 4])


def test_bin_corrupt_and_foreign_files(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "real.bin")
    data = (tmp_path / "real.bin").read_bytes()
    (tmp_path / "truncated.bin").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "truncated.bin", r"truncated or corrupt zip archive")
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint at all")
    refused(tmp_path / "garbage.bin", r"neither a zip archive nor torch's legacy format")
    (tmp_path / "empty.bin").write_bytes(b"")
    refused(tmp_path / "empty.bin", r"neither a zip archive")
    storage_at = data.index(np.ones(3, np.float32).tobytes())
    (tmp_path / "crc.bin").write_bytes(data[:storage_at] + b"\1" + data[storage_at + 1 :])
    refused(tmp_path / "crc.bin", r"tensor 'w' .*cannot be read \(BadZipFile: Bad CRC-32")


def test_bin_legacy_format(tmp_path):
    x = torch.arange(6.0).reshape(2, 3)
    torch.save({"w": x}, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(hf_files.load_torch_bin(tmp_path / "legacy.bin")["w"], x.numpy())
    data = (tmp_path / "legacy.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) - 10])
    refused(tmp_path / "cut.bin", r"is not a readable torch checkpoint")
    torch.save([x], tmp_path / "list.bin", _use_new_zipfile_serialization=False)
    refused(tmp_path / "list.bin", r"holds a list, not a dict of tensors")


# --- safetensors ---------------------------------------------------------------------------------


def write_safetensors(path: Path, header: Any, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header, data, length, pattern",
    [
        ({"a": F32}, bytes(8), 2**62, r"header too large"),
        ({"a": F32}, bytes(8), 10**6, r"invalid header length"),
        ([1, 2], b"", None, r"invalid JSON in header"),
        (b'"abc"', b"", None, r"invalid JSON in header"),
        (b'{"\xff": 1}', b"", None, r"invalid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, b"", None, r"invalid JSON"),
        ({"a": {**F32, "data_offsets": [0, 16]}}, bytes(8), None, r"invalid shape, data type, or offset"),
        ({"a": {**F32, "shape": [3]}}, bytes(8), None, r"invalid shape, data type, or offset"),
        ({"a": {**F32, "dtype": "F64"}}, bytes(8), None, r"invalid shape, data type, or offset"),
        ({"a": F32, "b": F32}, bytes(8), None, r"invalid offset for tensor"),  # overlapping
        ({"a": {**F32, "data_offsets": [4, 12]}}, bytes(12), None, r"invalid offset"),
        ({"a": F32}, bytes(12), None, r"not fully covered"),
        ({"a": {**F32, "shape": [-2]}}, bytes(8), None, r"invalid JSON"),
        ({"a": {**F32, "shape": [2**62, 4]}}, bytes(8), None, r"overflow"),
        ({"a": {**F32, "dtype": "XX"}}, bytes(8), None, r"tensor 'a' has dtype 'XX', which safetensors"),
        ({"a": {**F32, "data_offsets": [0.0, 8.0]}}, bytes(8), None, r"invalid JSON"),
        ({"__metadata__": [1], "a": F32}, bytes(8), None, r"invalid JSON"),
        (
            {"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}},
            bytes(2),
            None,
            r"tensor 'a' has dtype 'F8_E4M3', which safetensors.numpy cannot load",
        ),
        ({"a": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1), None, r"dtype 'F4'"),
        (b"", b"", None, r"EOF while parsing"),
    ],
)
def test_safetensors_hostile_headers(tmp_path, header, data, length, pattern):
    refused(
        write_safetensors(tmp_path / "evil.safetensors", header, data, length),
        r"not a valid|safetensors\.numpy cannot load",
        pattern,
    )


def test_safetensors_truncated_and_tiny_files(tmp_path):
    safetensors.numpy.save_file({"a": np.arange(6, dtype=np.float32)}, tmp_path / "ok.safetensors")
    data = (tmp_path / "ok.safetensors").read_bytes()
    for cut in (0, 3, 8, 20, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        refused(path, r"header too small|invalid header length|EOF|incomplete|invalid JSON")


def test_safetensors_valid_dtypes_still_load(tmp_path):
    import ml_dtypes

    state = {"bf16": np.arange(3).astype(ml_dtypes.bfloat16), "b": np.array([True, False]), "i": np.arange(4)}
    safetensors.numpy.save_file(state, tmp_path / "ok.safetensors")
    loaded = hf_files.load_safetensors(tmp_path / "ok.safetensors")
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


# --- config.json ---------------------------------------------------------------------------------


def write_config(path: Path, **changes: Any) -> Path:
    d = AlbertConfig(**TINY).to_hf_dict()
    d.update(changes)
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"hidden_size": "768"}, r"hidden_size must be a positive integer, got '768'"),
        ({"hidden_size": 8.0}, r"hidden_size must be a positive integer, got 8\.0"),
        ({"vocab_size": -5}, r"vocab_size must be a positive integer, got -5"),
        ({"vocab_size": 10**12}, r"vocab_size is 1000000000000, above the sanity limit 4194304"),
        ({"hidden_size": 10**12, "num_attention_heads": 1}, r"hidden_size is 1000000000000, above"),
        ({"num_hidden_layers": 10**30}, r"num_hidden_layers is a 100-bit integer, above"),
        ({"num_hidden_layers": True}, r"num_hidden_layers must be a positive integer, got True"),
        ({"intermediate_size": None}, r"intermediate_size must be a positive integer, got None"),
        ({"intermediate_size": [1]}, r"got list"),
        (
            {
                "hidden_size": 1 << 16,
                "intermediate_size": 1 << 18,
                "num_attention_heads": 1,
                "num_hidden_groups": 2,
            },
            r"about 1\.07e\+11 parameters, above the sanity limit 1\.72e\+10",
        ),
        ({"hidden_dropout_prob": "0.1"}, r"hidden_dropout_prob must be a number in \[0, 1\), got '0\.1'"),
        (
            {"hidden_dropout_prob": float("nan")},
            r"hidden_dropout_prob must be a number in \[0, 1\), got nan",
        ),
        ({"layer_norm_eps": float("inf")}, r"layer_norm_eps must be a non-negative finite number"),
        ({"initializer_range": -1}, r"initializer_range must be a non-negative finite number"),
        ({"hidden_act": ["gelu"]}, r"hidden_act list is not one of"),
        ({"pad_token_id": None}, r"pad_token_id must be an integer, got None"),
        ({"pad_token_id": 99}, r"pad_token_id \(99\) is outside the vocabulary"),
        ({"model_type": "bert"}, r"describes a 'bert' model"),
        ({"model_type": ["x"] * 100}, r"describes a non-ALBERT model"),
        ({"id2label": [1, 2, 3]}, r"id2label must be a JSON object, got a list"),
    ],
)
def test_config_bad_fields(tmp_path, changes, pattern):
    refused(write_config(tmp_path / "config.json", **changes), pattern)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b'{"vocab_size": 30', r"is not valid JSON"),
        (b"", r"is not valid JSON"),
        (b'{"vocab_size": 30}\xff\xfe', r"is not UTF-8 text"),
        ('{"model_type": "albert"}'.encode("utf-16"), r"is not UTF-8 text"),
        (b"[1, 2]", r"must hold a JSON object, not a list"),
        (b'"albert"', r"must hold a JSON object, not a str"),
        (b"null", r"must hold a JSON object, not a NoneType"),
        (b"[" * 100_000 + b"]" * 100_000, r"nests too deeply"),
        (b'{"vocab_size": ' + b"9" * 5000 + b"}", r"not a usable config\.json: Exceeds the limit"),
    ],
)
def test_config_malformed_files(tmp_path, content, pattern):
    (tmp_path / "config.json").write_bytes(content)
    refused(tmp_path / "config.json", pattern)


def test_config_errors_name_the_overrides(tmp_path):
    path = write_config(tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"config\.json \(with overrides num_attention_heads\): invalid"):
        AlbertConfig.from_json(path, num_attention_heads=3)


def test_config_limits_leave_published_models_alone():
    for size in ("base", "large", "xlarge", "xxlarge"):
        AlbertConfig.from_preset(size)
    AlbertConfig(vocab_size=250_002, max_position_embeddings=8192, num_labels=100_000)


# --- spiece.model --------------------------------------------------------------------------------


def test_spiece_truncated_or_garbage(tmp_path):
    data = SPIECE.read_bytes()
    for name, content in {
        "cut.model": data[:1000],
        "cut_late.model": data[:-3],
        "empty.model": b"",
        "garbage.model": b"\x00\xff" * 100,
        "text.model": b"hello world\n",
    }.items():
        (tmp_path / name).write_bytes(content)
        message = refused(tmp_path / name)
        assert "ParseFromArray" not in message, message


def test_spiece_piece_that_is_not_utf8(tmp_path):
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(SPIECE.read_bytes())
    piece = next(p.piece for p in model.pieces if not p.piece.isascii() and len(p.piece.encode()) >= 2)
    encoded = piece.encode()
    data = SPIECE.read_bytes()
    field = bytes([0x0A, len(encoded)]) + encoded  # SentencePiece.piece, field 1
    assert data.count(field) == 1
    (tmp_path / "bad.model").write_bytes(data.replace(field, field[:-1] + b"\xff"))
    refused(tmp_path / "bad.model", r"has a piece that is not UTF-8")


# --- index files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shard",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../../x.safetensors",
        "..",
        "",
        ".",
        "C:\\x.safetensors",
        "a\\..\\b",
        3,
        None,
    ],
)
def test_index_paths_must_stay_inside_the_directory(tmp_path, shard):
    model = tmp_path / "model"
    model.mkdir()
    safetensors.numpy.save_file({"a": np.ones(2, np.float32)}, model / "ok.safetensors")
    index = {"weight_map": {"a": "ok.safetensors", "b": shard}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=r"model\.safetensors\.index\.json: tensor 'b' maps to .*not a file inside"
    ):
        hf_files.load_state_dict(model)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b'{"weight_map": ["a"]}', r"has no weight_map object"),
        (b"[]", r"has no weight_map object"),
        (b'{"weight_map": {', r"is not valid JSON"),
        (b"\xff", r"is not UTF-8 text"),
    ],
)
def test_index_malformed(tmp_path, content, pattern):
    (tmp_path / "pytorch_model.bin.index.json").write_bytes(content)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin\.index\.json " + pattern):
        hf_files.load_state_dict(tmp_path)


def test_index_in_subfolder_loads(tmp_path):
    (tmp_path / "shards").mkdir()
    safetensors.numpy.save_file({"a": np.ones(2, np.float32)}, tmp_path / "shards" / "one.safetensors")
    index = {"weight_map": {"a": "shards/one.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert list(hf_files.load_state_dict(tmp_path)) == ["a"]


# --- the fuzz test -------------------------------------------------------------------------------

# Runs in a subprocess: loads every file in a directory, prints each case's name before it starts (so a
# crash names it) and "BAD ..." for any outcome other than a load or a clean, named, one-line error.
HARNESS = r"""
import os, sys
import numpy as np
from albert_jax import hf, hf_files
from albert_jax.config import AlbertConfig
from albert_jax.tokenizer import AlbertTokenizer

cases, config = sys.argv[1], AlbertConfig.from_json(sys.argv[2])
signatures, counts = set(), {"loaded": 0, "refused": 0, "bad": 0}
for name in sorted(os.listdir(cases)):
    path = os.path.join(cases, name)
    print("CASE", name, flush=True)
    try:
        if name.endswith(".bin") or name.endswith(".safetensors"):
            state = (hf_files.load_torch_bin if name.endswith(".bin") else hf_files.load_safetensors)(path)
            assert isinstance(state, dict), type(state)
            for key, value in state.items():
                assert isinstance(key, str) and isinstance(value, np.ndarray), (key, type(value))
                value.tobytes()  # touch every byte
            # A load that changed shapes must still be caught by the shape checks.
            signature = tuple(sorted((k, v.shape, v.dtype.str) for k, v in state.items()))
            if signature not in signatures:
                signatures.add(signature)
                try:
                    hf.params_from_hf(config, "AlbertModel", state)
                except ValueError:
                    pass
        elif name.endswith(".json"):
            AlbertConfig.from_json(path)
        else:
            AlbertTokenizer(path).encode("Hello world, 9, [MASK] ÄÖ ﬁ")
        counts["loaded"] += 1
    except (ValueError, OSError) as e:
        message = str(e)
        if name not in message or "\n" in message:
            print("BAD", name, "unclear message:", repr(message[:300]), flush=True)
            counts["bad"] += 1
        else:
            counts["refused"] += 1
    except BaseException as e:
        print("BAD", name, type(e).__name__, repr(str(e)[:300]), flush=True)
        counts["bad"] += 1
print("SUMMARY", counts, flush=True)
"""


def _flip(rng: random.Random, data: bytes, flips: int, start: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        i = rng.randrange(start, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _splat(rng: random.Random, data: bytes) -> bytes:
    """Overwrite a few bytes with values that make sizes huge, zero or negative."""
    out = bytearray(data)
    i = rng.randrange(len(out))
    fill = rng.choice([b"\xff", b"\x00", b"\x7f", b"\x80"]) * rng.randint(1, 8)
    out[i : i + len(fill)] = fill
    return bytes(out[: len(data)])


def _cuts(rng: random.Random, data: bytes, n: int) -> list[int]:
    return sorted({0, 1, 8, len(data) - 1, len(data) // 2, *(rng.randrange(len(data)) for _ in range(n))})


def _mutants(rng: random.Random, data: bytes, cuts: int, flips: int, splats: int):
    for cut in _cuts(rng, data, cuts):
        yield f"cut{cut}", data[:cut]
    for i in range(flips):
        yield f"flip{i}", _flip(rng, data, rng.randint(1, 8))
    for i in range(splats):
        yield f"splat{i}", _splat(rng, data)


def _bin_cases(rng: random.Random, state: dict[str, torch.Tensor], tmp: Path):
    torch.save(state, tmp / "base.bin")
    base = (tmp / "base.bin").read_bytes()
    yield "base", base
    yield from _mutants(rng, base, cuts=30, flips=60, splats=30)
    with zipfile.ZipFile(io.BytesIO(base)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pkl_name = next(n for n in members if n.endswith("/data.pkl"))
    storage_names = sorted(n for n in members if "/data/" in n)

    def rezip(**changes: bytes | None) -> bytes:  # valid CRCs, so the mutation reaches our checks
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in {**members, **changes}.items():
                if data is not None:
                    archive.writestr(name, data)
        return out.getvalue()

    pkl = members[pkl_name]
    for cut in _cuts(rng, pkl, 20):
        yield f"pkl-cut{cut}", rezip(**{pkl_name: pkl[:cut]})
    for i in range(150):
        yield f"pkl-flip{i}", rezip(**{pkl_name: _flip(rng, pkl, rng.randint(1, 3))})
    for i in range(100):
        yield f"pkl-splat{i}", rezip(**{pkl_name: _splat(rng, pkl)})
    for old, new in [
        (b"FloatStorage", b"DoubleStorage"),
        (b"FloatStorage", b"HalfStorage"),
        (b"FloatStorage", b"BoolStorage"),
        (b"LongStorage", b"ByteStorage"),
        (b"LongStorage", b"FloatStorage"),
        (b"BFloat16Storage", b"LongStorage"),
        (b"_rebuild_tensor_v2", b"_rebuild_tensor_v3"),
        (b"OrderedDict", b"defaultdict"),
    ]:
        yield f"pkl-{old.decode()}-{new.decode()}", rezip(**{pkl_name: pkl.replace(old, new)})
    for name in rng.sample(storage_names, 8):
        data, key = members[name], name.rsplit("/", 1)[1]
        yield f"storage{key}-short", rezip(**{name: data[: -rng.randint(1, 3)]})
        yield f"storage{key}-long", rezip(**{name: data + bytes(rng.randint(1, 5))})
        yield f"storage{key}-empty", rezip(**{name: b""})
        yield f"storage{key}-missing", rezip(**{name: None})
    # Crafted views over a 4-float storage.
    for i, (offset, size, stride) in enumerate(
        [
            (0, (50_000_000,), (1,)),
            (0, (5,), (1,)),
            (4, (1,), (1,)),
            (0, (2, 2), (2, 2)),
            (3, (2,), (0,)),
            (0, (2**40,), (0,)),
            (2**63, (1,), (1,)),
            (0, (2**63 - 1, 2), (0, 1)),
            (-3, (1,), (1,)),
            (0, (1,), (-1,)),
            (0, (2, 2), (2,)),
            (0, [2, 2], [2, 1]),
            (None, (1,), (1,)),
            (0, (0, 2**63 - 1), (0, 0)),
            (0, (), ()),
        ]
    ):
        storage = Storage("0", floats(1, 2, 3, 4))
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump({"w": Tensor(storage, offset, size, stride)})
        yield f"view{i}", rezip(**{pkl_name: buffer.getvalue(), f"{pkl_name[:-8]}/data/0": storage.data})
    n = 100_000
    for label, evil in {
        "deep-tuple-key": b"\x80\x02})" + b"\x85" * n + b"K\x01s.",
        "deep-list": b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".",
        "memo-index": b"\x80\x02}r\xf0\xff\xff\xff.",
        "bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.",
    }.items():
        yield f"pkl-{label}", rezip(**{pkl_name: evil})
    yield (
        "bomb",
        write_zip(
            tmp / "bomb.bin", {pkl_name: pkl, storage_names[0]: bytes(30_000_000)}, zipfile.ZIP_DEFLATED
        ).read_bytes(),
    )
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    legacy = buffer.getvalue()
    for label, data in _mutants(rng, legacy, cuts=6, flips=8, splats=4):
        yield f"legacy-{label}", data


def _safetensors_cases(rng: random.Random, state: dict[str, np.ndarray], tmp: Path):
    safetensors.numpy.save_file(state, tmp / "base.safetensors")
    base = (tmp / "base.safetensors").read_bytes()
    yield "base", base
    yield from _mutants(rng, base, cuts=30, flips=50, splats=20)
    (length,) = struct.unpack("<Q", base[:8])
    header, data = json.loads(base[8 : 8 + length]), base[8 + length :]
    for i in range(100):
        h = json.loads(json.dumps(header))
        key = rng.choice([k for k in h if k != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        h[key][field] = rng.choice(
            {
                "dtype": [
                    "F64",
                    "F16",
                    "BF16",
                    "I8",
                    "BOOL",
                    "U64",
                    "F8_E4M3",
                    "F8_E5M2",
                    "F4",
                    "XX",
                    5,
                    None,
                ],
                "shape": [[], [0], [-1], [2**62, 4], [1.5], "abc", [2**64], h[key]["shape"][::-1], [1, 1, 1]],
                "data_offsets": [[0, 2**62], [8, 0], [0], "x", [-1, 4], [0, len(data)], [2**64, 0]],
            }[field]
        )
        raw = json.dumps(h).encode()
        yield f"header{i}-{field}", struct.pack("<Q", len(raw)) + raw + data
    raw = json.dumps(header).encode()
    for label, length_field in {"len-huge": 2**63, "len-file": len(base), "len-short": len(raw) - 1}.items():
        yield label, struct.pack("<Q", length_field) + raw + data
    padded = raw + b" " * 7
    yield "len-padded", struct.pack("<Q", len(padded)) + padded + data  # valid: trailing spaces


def _config_cases(rng: random.Random, config: dict[str, Any]):
    base = json.dumps(config).encode()
    yield "base", base
    yield from _mutants(rng, base, cuts=15, flips=15, splats=10)
    hostile = ["768", -1, 0, 10**12, 2**70, 1.5, None, True, [], {}, float("nan"), 1e308]
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "hidden_dropout_prob",
        "layer_norm_eps",
        "pad_token_id",
        "hidden_act",
        "id2label",
        "model_type",
    ):
        for value in rng.sample(hostile, 6):
            yield f"{field}-{value!r}"[:60], json.dumps({**config, field: value}).encode()
    yield from {
        "list": b"[]",
        "null": b"null",
        "deep": b"[" * 50_000 + b"]" * 50_000,
        "latin1": '{"é": 1}'.encode("latin-1"),
    }.items()


def _spiece_cases(rng: random.Random):
    data = SPIECE.read_bytes()
    yield "base", data
    yield from _mutants(rng, data, cuts=20, flips=60, splats=20)
    for i in range(5):
        yield f"garbage{i}", rng.randbytes(rng.randrange(1, 2000))


@pytest.mark.slow
def test_fuzz_hostile_files_in_a_subprocess(tmp_path):
    rng = random.Random(20240611)
    config = AlbertConfig(**TINY)
    module = modeling.AlbertModel(config)
    numpy_state = hf.params_to_hf(config, random_params(module))
    torch_state = {k: torch.from_numpy(v.copy()) for k, v in numpy_state.items()}
    x = torch.arange(12.0).reshape(3, 4)
    torch_state.update(  # views, shared storage, and dtypes numpy lacks
        {
            "odd.t": x.t(),
            "odd.row": x[1],
            "odd.bf16": x.bfloat16(),
            "odd.i64": torch.arange(5),
            "odd.bool": x > 5,
            "odd.expand": torch.ones(1).expand(4),
            "odd.scalar": torch.tensor(2.0),
        }
    )
    cases = tmp_path / "cases"
    cases.mkdir()
    (tmp_path / "work").mkdir()
    written = 0
    for ext, generated in [
        ("bin", _bin_cases(rng, torch_state, tmp_path / "work")),
        ("safetensors", _safetensors_cases(rng, numpy_state, tmp_path / "work")),
        ("json", _config_cases(rng, config.to_hf_dict())),
        ("model", _spiece_cases(rng)),
    ]:
        for label, content in generated:
            safe = re.sub(r"[^\w.-]+", "_", label)
            (cases / f"{ext}-{written:04d}-{safe}.{ext}").write_bytes(content)
            written += 1
    config.save_json(tmp_path / "config.json")

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", HARNESS, str(cases), str(tmp_path / "config.json")],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    started = [line.split(" ", 1)[1] for line in run.stdout.splitlines() if line.startswith("CASE ")]
    bad = [line for line in run.stdout.splitlines() if line.startswith("BAD ")]
    assert run.returncode == 0, (
        f"the loader subprocess died (exit {run.returncode}) on case {started[-1] if started else '?'} "
        f"({cases}); stderr tail: {run.stderr[-2000:]}"
    )
    assert not bad, "\n".join(bad[:20])
    summary = next(line for line in run.stdout.splitlines() if line.startswith("SUMMARY"))
    assert len(started) == written > 800, (len(started), written)
    print(f"{written} cases in {elapsed:.1f} s: {summary}")
