"""Hardened readers for Hugging Face checkpoint files: `torch.save` archives, safetensors, JSON indexes.

Checkpoints come from the internet, so a weights file may be hostile. These readers guard against:

- code execution: `pytorch_model.bin` is unpickled allowing only the globals that rebuild tensors
  (no torch needed; torch's legacy pre-1.6 format goes through `torch.load(weights_only=True)`);
- memory and stack exhaustion: zip bombs, views that repeat one storage many times, huge memo indexes
  and deeply nested tuples in the pickle (checked at the opcode level before it runs);
- out-of-bounds reads: every storage offset, size and stride is checked against its storage;
- safetensors dtypes numpy cannot hold, oversized or malformed JSON, and shard names in a
  `*.index.json` that leave the checkpoint directory.

Any problem is a one-line ValueError naming the file (and the tensor, once known), never a crash.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from albert_jax import errors


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (read without importing torch; bfloat16 kept) or an array-like -> numpy array."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            return x.float().numpy().astype(ml_dtypes.bfloat16)
        return x.numpy()
    return np.asarray(jax.device_get(x))


_MAX_ZIP_INFLATION = 10  # declared uncompressed bytes per archive byte; torch.save stores members (≈1×)
_MAX_VIEW_AMPLIFICATION = 4  # loaded bytes per archive byte; tied weights view one storage twice (≈2×)
_MAX_TUPLE_NESTING = 64  # torch pickles nest 3 deep
_MAX_NDIM = 64  # numpy's limit
_MAX_JSON_BYTES = 64 << 20
_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickled 0x1950a86a20f9469cfc6c (LONG1)
# Safetensors dtypes that safetensors.numpy can return (F8_*/F6_*/F4 need types numpy lacks).
_SAFETENSORS_NUMPY_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "C64", "U64", "I64", "F64"}
)

_TORCH_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Refused(errors.InputError):
    """A file failed a check; the message is complete (one line, names the file)."""


class _BadTensor(Exception):
    """Why one tensor record is refused; the caller adds the file and the state-dict key."""


def _reason(e: BaseException) -> str:
    """`Type: first line of the message`, at most 200 characters."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _brief(value: Any, limit: int = 60) -> str:
    """A short one-line rendering of a value read from a file; containers only by type."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"  # repr of a huge int is slow, or refused
    small_ints = isinstance(value, tuple) and len(value) <= 8 and all(type(v) is int for v in value)
    if not (small_ints or isinstance(value, (int, float, str, bytes, type(None)))):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _index(value: Any) -> int | None:
    """`value` if it is an int in [0, 2**63), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


# --- torch.save zip archives ---------------------------------------------------------------------


class _StorageRef:
    """A persistent id from data.pkl: storage `key` holds `numel` elements of `dtype`."""

    __slots__ = ("dtype", "key", "numel")

    def __init__(self, dtype: np.dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _PendingTensor:
    """The arguments of one `_rebuild_tensor_v2` call, checked once the tensor's state-dict key is known."""

    __slots__ = ("args",)

    def __init__(self, args: tuple):
        self.args = args


def _rebuild_parameter(data: Any = None, *unused: Any) -> _PendingTensor:
    # Never hand back a non-tensor argument: _scan_pickle assumes calls do not return tuples.
    return data if isinstance(data, _PendingTensor) else _PendingTensor(())


_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_IN_PLACE = frozenset({"BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"})
_TUPLE_N = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


def _scan_pickle(data: bytes) -> None:
    """Check a pickle at the opcode level for what the C unpickler does blindly, before it runs.

    The unpickler grows its memo to whatever index a PUT names (gigabytes for `LONG_BINPUT 2**32-1`),
    and hashing a dict key that is a tuple nested ~10**5 deep overflows the C stack: a segfault, not a
    RecursionError. Tuples are immutable, so their nesting follows from the opcodes: each stack and
    memo slot carries the tuple depth of its object (0 for anything else; no allowed call returns a
    tuple). Raises ValueError.
    """
    stack: list[int] = []  # the tuple depth of each object on the stack
    marks: list[int] = []  # stack positions of the MARKs, as the unpickler keeps them
    memo: dict[int, int] = {}

    def pop(n: int = 1) -> list[int]:
        if n > len(stack) - (marks[-1] if marks else 0):
            raise ValueError("pickle stack underflow")
        items = stack[len(stack) - n :]
        del stack[len(stack) - n :]
        return items

    def pop_mark() -> list[int]:
        if not marks:
            raise ValueError("pickle has no MARK to pop to")
        i = marks.pop()
        items = stack[i:]
        del stack[i:]
        return items

    for count, (op, arg, _pos) in enumerate(pickletools.genops(data)):
        name = op.name
        if name in _MEMO_PUT:
            index = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index <= count:
                raise ValueError(f"memo index {_brief(index)} at opcode {count} is out of range")
            memo[index] = pop()[0]
            stack.append(memo[index])
        elif name in _MEMO_GET:
            stack.append(memo.get(arg, 0))
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "POP" and marks and marks[-1] == len(stack):
            marks.pop()
        elif name == "DUP":
            stack.extend(pop() * 2)
        elif name in _TUPLE_N or name == "TUPLE":
            items = pop_mark() if name == "TUPLE" else pop(_TUPLE_N[name])
            depth = 1 + max(items, default=0)
            if depth > _MAX_TUPLE_NESTING:
                raise ValueError(f"pickle nests tuples more than {_MAX_TUPLE_NESTING} deep")
            stack.append(depth)
        else:
            before = op.stack_before
            if pickletools.markobject in before:
                pop_mark()
                before = before[: before.index(pickletools.markobject)]
            popped = pop(len(before))
            kept = popped[:1] if name in _IN_PLACE else []
            stack.extend(kept or [0] * len(op.stack_after))


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles torch.save's data.pkl allowing only tensor-rebuilding globals; tensors stay pending."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _TORCH_STORAGES:
            return np.dtype(_TORCH_STORAGES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda *args: _PendingTensor(args)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{_brief(module)}.{_brief(name)} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(
                f"persistent id {_brief(pid)} is not ('storage', type, key, location, numel)"
            )
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError(f"storage type {_brief(dtype)} is not a torch storage class")
        if not isinstance(key, str) or not key:
            raise pickle.UnpicklingError(f"storage key {_brief(key)} is not a name")
        if _index(numel) is None:
            raise pickle.UnpicklingError(f"storage size {_brief(numel)} is not a non-negative integer")
        return _StorageRef(dtype, key, numel)


class _TensorReader:
    """Turns pending tensors into arrays, reading each storage once and bounding the total."""

    def __init__(self, archive: zipfile.ZipFile, root: str, budget: int):
        self._archive, self._root, self._budget = archive, root, budget
        self._raw: dict[str, bytes] = {}

    def _storage(self, ref: _StorageRef) -> np.ndarray:
        name = f"{self._root}/data/{ref.key}"
        if ref.key not in self._raw:
            try:
                self._raw[ref.key] = self._archive.read(name)
            except KeyError:
                raise _BadTensor(f"its storage {_brief(name)} is missing from the archive") from None
            except Exception as e:  # noqa: BLE001 (CRC errors, truncation: whatever zipfile finds)
                raise _BadTensor(f"its storage {_brief(name)} cannot be read ({_reason(e)})") from None
        raw, item = self._raw[ref.key], ref.dtype.itemsize
        if len(raw) % item:
            raise _BadTensor(
                f"its storage {_brief(name)} has {len(raw)} bytes, not a whole number of {ref.dtype} elements"
            )
        if len(raw) // item != ref.numel:
            raise _BadTensor(
                f"its storage {_brief(name)} holds {len(raw) // item} elements but data.pkl says {ref.numel}"
            )
        # Bools are read as bytes and compared with 0 below: numpy bools must be exactly 0 or 1.
        return np.frombuffer(raw, np.uint8 if ref.dtype == np.bool_ else ref.dtype)

    def tensor(self, value: Any) -> np.ndarray:
        if not isinstance(value, _PendingTensor):
            raise _BadTensor(f"is {_brief(value)}, not a tensor")
        if len(value.args) < 4:
            raise _BadTensor("is a tensor record with fewer than 4 fields")
        ref, offset, size, stride = value.args[:4]
        if not isinstance(ref, _StorageRef):
            raise _BadTensor(f"has {_brief(ref)} where its storage should be")
        if _index(offset) is None:
            raise _BadTensor(f"has storage offset {_brief(offset)}, not an integer in [0, 2**63)")
        for what, dims in (("size", size), ("stride", stride)):
            if not isinstance(dims, (tuple, list)) or len(dims) > _MAX_NDIM:
                raise _BadTensor(f"has {what} {_brief(dims)}, not a tuple of at most {_MAX_NDIM} integers")
            if any(_index(d) is None for d in dims):
                raise _BadTensor(f"has {what} {_brief(tuple(dims))} with an entry that is not in [0, 2**63)")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride):
            raise _BadTensor(f"has size {_brief(size)} but stride {_brief(stride)}")
        dtype = ref.dtype
        data = self._storage(ref)
        n = data.size
        numel = math.prod(size)
        if numel == 0:
            if offset > n:
                raise _BadTensor(f"starts at element {offset} of a {n}-element storage")
            try:
                return np.empty(size, dtype)
            except ValueError:
                raise _BadTensor(f"has size {_brief(size)}, too large for numpy") from None
        last = offset + sum((d - 1) * s for d, s in zip(size, stride))
        if last >= n:
            raise _BadTensor(
                f"views elements up to {last} (offset {offset}, size {_brief(size)}, stride {_brief(stride)}) "
                f"of a {n}-element storage"
            )
        nbytes = numel * dtype.itemsize  # may exceed the storage's through stride-0 dimensions
        if nbytes > self._budget:
            raise _BadTensor(
                f"would take the loaded tensors past {_MAX_VIEW_AMPLIFICATION}× the file's size "
                "(views that repeat or broadcast a storage)"
            )
        self._budget -= nbytes
        item = data.itemsize
        # A dimension of size 1 never steps, so its stride (possibly huge) is irrelevant.
        strides = tuple(s * item if d > 1 else 0 for d, s in zip(size, stride))
        view = np.lib.stride_tricks.as_strided(data[offset:], shape=size, strides=strides, writeable=False)
        return view != 0 if dtype == np.bool_ else view.copy()


def _read_torch_zip(archive: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    if declared > _MAX_ZIP_INFLATION * size + (1 << 20):
        raise _Refused(
            f"{path}: its members declare {declared} bytes uncompressed, over {_MAX_ZIP_INFLATION}× the "
            f"archive's {size} bytes (a zip bomb?)"
        )
    names = {info.filename for info in infos}
    pickles = [name for name in names if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _Refused(f"{path} is not a torch.save archive (no single data.pkl)")
    root = pickles[0][: -len("/data.pkl")]
    if f"{root}/byteorder" in names and archive.read(f"{root}/byteorder") != b"little":
        raise _Refused(f"{path} was written on a big-endian machine; load it with torch")
    try:
        data = archive.read(pickles[0])
        _scan_pickle(data)
        state = _TorchUnpickler(data).load()
    except Exception as e:  # noqa: BLE001 (RecursionError, MemoryError, …: a hostile or corrupt pickle)
        raise _Refused(f"{path}: data.pkl cannot be read safely ({_reason(e)})") from None
    if not isinstance(state, dict):
        raise _Refused(f"{path}: data.pkl holds {_brief(state)}, not a dict of tensors")
    reader = _TensorReader(archive, root, budget=_MAX_VIEW_AMPLIFICATION * size + (1 << 20))
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise _Refused(f"{path}: data.pkl has a key that is {_brief(key)}, not a tensor name")
        try:
            out[key] = reader.tensor(value)
        except _BadTensor as e:
            raise _Refused(f"{path}: tensor {_brief(key)} {e}") from None
    return out


def _load_legacy_torch(path: Path) -> dict[str, np.ndarray]:
    """torch's pre-1.6 format, which only torch reads (with weights_only=True: no arbitrary globals)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(b"PK"):
        raise _Refused(f"{path} is a truncated or corrupt zip archive")
    if not (head.startswith(b"\x80") and _LEGACY_TORCH_MAGIC in head):
        raise _Refused(f"{path} is not a torch checkpoint (neither a zip archive nor torch's legacy format)")
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} uses torch's legacy (pre-1.6) format; pip install torch to read it"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (whatever torch raises on a bad file)
        raise _Refused(f"{path} is not a readable torch checkpoint ({_reason(e)})") from None
    if not isinstance(state, Mapping):
        raise _Refused(f"{path} holds {_brief(state)}, not a dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise _Refused(f"{path}: entry {_brief(key)} is {_brief(value)}, not a named tensor")
    return {key: to_numpy(value) for key, value in state.items()}


def load_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A `torch.save`d state dict -> numpy arrays, without torch (zip format; legacy files need torch).

    The file may be hostile: only tensor-rebuilding globals are unpickled, and every offset, size and
    stride is checked against its storage. Any problem is a one-line ValueError naming the file (and
    the tensor, once known).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return _load_legacy_torch(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return _read_torch_zip(archive, path)
    except _Refused:
        raise
    except Exception as e:  # noqa: BLE001 (a corrupt archive can raise nearly anything from zipfile)
        raise _Refused(f"{path} is not a readable torch checkpoint ({_reason(e)})") from None


# --- safetensors and sharded indexes -------------------------------------------------------------


def _safetensors_header(path: Path) -> Any:
    """The JSON header of a safetensors file, or None where it cannot be read (safetensors then says why)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if length > min(100_000_000, path.stat().st_size - 8):  # safetensors' own limit
            return None
        try:
            return json.loads(f.read(length))
        except (ValueError, RecursionError):
            return None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A safetensors file -> numpy arrays; a malformed or hostile file is a one-line ValueError naming it.

    safetensors (≥0.4) validates the header itself: its size, its JSON, offsets inside the file,
    tensors contiguous and not overlapping, shape × dtype matching the byte range. This adds the
    file's name, and refuses dtypes numpy cannot hold before safetensors.numpy fails on them obscurely.
    """
    path = Path(path)
    header = _safetensors_header(path)
    if isinstance(header, dict):
        for name, info in header.items():
            dtype = info.get("dtype") if isinstance(info, dict) and name != "__metadata__" else None
            if isinstance(dtype, str) and dtype not in _SAFETENSORS_NUMPY_DTYPES:
                raise _Refused(
                    f"{path}: tensor {_brief(name)} has dtype {_brief(dtype)}, which safetensors.numpy cannot load"
                )
    try:
        return safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
        raise _Refused(f"{path} is not a valid safetensors file ({_reason(e)})") from None


def _read_json_file(path: Path) -> Any:
    """Parsed JSON; a file that is too large, not UTF-8 or not JSON is a one-line ValueError naming it."""
    size = path.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise _Refused(f"{path} is {size} bytes, too large for a JSON index")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _Refused(f"{path} is not UTF-8 text") from None
    except RecursionError:
        raise _Refused(f"{path} nests too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer with too many digits
        raise _Refused(f"{path} is not valid JSON ({_reason(e)})") from None


def _index_shards(index: Path) -> list[str]:
    """The shard files a `*.index.json` names, each a relative path that stays inside its directory.

    The check is on the names, not on resolved paths: a Hub snapshot's files are symlinks into the
    cache's blob store, outside the snapshot directory.
    """
    content = _read_json_file(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise _Refused(f"{index} has no weight_map object")
    shards = set()
    for key, shard in weight_map.items():
        parts = PurePosixPath(shard).parts if isinstance(shard, str) else ()
        if (
            not parts
            or PurePosixPath(shard).is_absolute()
            or PureWindowsPath(shard).drive
            or ".." in parts
            or "\\" in shard
            or "\0" in shard
        ):
            raise _Refused(
                f"{index}: tensor {_brief(key)} maps to {_brief(shard)}, not a file inside {index.parent}"
            )
        shards.add(shard)
    return sorted(shards)


def load_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All weights in an HF model directory: model.safetensors, pytorch_model.bin, or a sharded index."""
    directory = Path(directory)
    loaders = {
        "model.safetensors": load_safetensors,
        "pytorch_model.bin": load_torch_bin,
    }
    for name, load in loaders.items():
        if (directory / name).is_file():
            return load(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            return {k: v for shard in _index_shards(index) for k, v in load(directory / shard).items()}
    raise errors.MissingError(
        f"no weights in {directory}: looked for model.safetensors, pytorch_model.bin and their .index.json"
    )
