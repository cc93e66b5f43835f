"""Files that survive a crash: written whole or not at all, and checked when read.

Two things every stateful part of freshrec needs and writes the same way:

- `write_atomically`: a temporary file, flushed to disk, renamed over the target, and the directory
  flushed too (the rename is durable only once the directory is), so a reader sees the old file or the new
  one, never half of one;
- `write_tensor_file` / `read_tensor_file`: a safetensors file whose header also holds the SHA-256 of its
  tensor bytes, so a file truncated, flipped or cut by a faulty copy is refused by name instead of loaded.
  safetensors holds numbers only, so loading a file can never run code (no pickle anywhere).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors

from freshrec.errors import FreshrecError

__all__ = [
    "DamagedFileError",
    "read_tensor_file",
    "safetensors_chunks",
    "write_atomically",
    "write_tensor_file",
]

State = dict[str, np.ndarray]

#: The header key of a checked tensor file: JSON with the caller's metadata and ``sha256`` of the data.
_HEADER_KEY = "freshrec"

_SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16", "uint32": "U32",
    "int32": "I32", "uint64": "U64", "int64": "I64", "float16": "F16", "float32": "F32", "float64": "F64",
}  # fmt: skip


class DamagedFileError(FreshrecError):
    """A file is missing, truncated or altered: it was not loaded."""


def write_atomically(path: str | Path, data: bytes | Sequence[memoryview], fsync: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one whole.

    Without `fsync` the rename is still atomic for other processes, but a power loss may leave an empty
    file (for tests and benchmarks only)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            for chunk in [data] if isinstance(data, bytes) else data:
                file.write(chunk)
            file.flush()
            if fsync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def safetensors_chunks(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> list[memoryview]:
    """The bytes of a safetensors file as views of the arrays themselves: a large state is hashed and
    written without first being copied into one buffer (``safetensors.numpy.save`` copies it)."""
    entries, views = _tensor_views(tensors)
    return [_header(entries, metadata), *views]


def write_tensor_file(
    path: str | Path,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, Any],
    fsync: bool = True,
    sparse: bool = False,
) -> int:
    """Write `tensors` and JSON `metadata` to `path` atomically, with the SHA-256 of the tensor bytes in
    the header; returns the file's size.

    With `sparse`, an array whose rows are mostly one repeated row (the free slots of a table, the empty
    buckets of a hash set: most of a young trainer's state) is stored as that row plus the rows that
    differ from it; `read_tensor_file` restores it exactly.
    """
    if sparse:
        tensors, shapes = _sparse(tensors)
        metadata = {**metadata, _SPARSE_KEY: shapes}
    entries, views = _tensor_views(tensors)
    digest = hashlib.sha256()
    for view in views:
        digest.update(view)
    header = _header(entries, {_HEADER_KEY: json.dumps({**metadata, "sha256": digest.hexdigest()})})
    write_atomically(path, [header, *views], fsync=fsync)
    return len(header) + sum(view.nbytes for view in views)


def read_tensor_file(path: str | Path) -> tuple[State, dict[str, Any]]:
    """The tensors and metadata `write_tensor_file` wrote; `DamagedFileError` naming the file and what is
    wrong if it is missing, cut short or altered."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise DamagedFileError(f"{path} is missing") from error
    length, metadata = _parse_header(path, data)
    expected = metadata.pop("sha256")
    body = memoryview(data)[8 + length :]
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise DamagedFileError(
            f"{path}: its {len(body)} bytes of tensors have sha256 {actual[:12]}..., the header says "
            f"{expected[:12]}...: the file is damaged"
        )
    try:
        tensors = load_tensors(data)
    except Exception as error:  # the checksum matched, so the writer itself wrote a bad file
        raise DamagedFileError(f"{path} is not a safetensors file: {error}") from None
    return _dense(tensors, metadata.pop(_SPARSE_KEY, {})), metadata


def read_tensor_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata `write_tensor_file` wrote, from the header alone: neither the tensors are read nor
    their checksum verified (for a reader that only reports, such as `freshrec status`)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
            data = prefix + file.read(min(length, _MAX_HEADER_BYTES))
    except FileNotFoundError as error:
        raise DamagedFileError(f"{path} is missing") from error
    return _parse_header(path, data)[1]


def _parse_header(path: Path, data: bytes) -> tuple[int, dict[str, Any]]:
    """(length of the JSON header, freshrec's metadata in it, the checksum included)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        metadata = json.loads(header["__metadata__"][_HEADER_KEY])
        if "sha256" not in metadata:
            raise KeyError("sha256")
    except (struct.error, ValueError, KeyError, TypeError) as error:
        raise DamagedFileError(
            f"{path} has no readable freshrec header ({len(data)} bytes): {error}"
        ) from None
    return length, metadata


#: safetensors caps its own header at 100 MB; a longer length field means a damaged file.
_MAX_HEADER_BYTES = 100_000_000
#: Header key naming the arrays stored sparse, with their dtype and shape.
_SPARSE_KEY = "sparse_arrays"
#: Arrays shorter than this are stored as they are: their bytes do not matter.
_SPARSE_MIN_ROWS = 1024


def _sparse(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays mostly made of one row (their last, or zeros) as ``name@fill``, ``name@rows``,
    ``name@values``; the others as they are."""
    stored: dict[str, np.ndarray] = {}
    shapes: dict[str, Any] = {}
    for name, array in tensors.items():
        array = np.asarray(array)
        if array.ndim == 0 or len(array) < _SPARSE_MIN_ROWS:
            stored[name] = array
            continue
        rows = _row_words(array)
        fill = rows[-1]  # free slots sit at the end of a table; empty hash buckets are zeros
        differs = np.flatnonzero((rows != fill).any(axis=1))
        if len(differs) * 2 > len(array) and fill.any():
            fill = np.zeros_like(fill)
            differs = np.flatnonzero(rows.any(axis=1))
        if len(differs) * 2 > len(array):  # mostly distinct rows: sparse would be larger
            stored[name] = array
            continue
        shapes[name] = [array.dtype.name, list(array.shape)]
        stored[f"{name}@fill"] = fill.view(array.dtype).reshape(array.shape[1:])
        stored[f"{name}@rows"] = differs.astype(np.int64)
        stored[f"{name}@values"] = array[differs]
    return stored, shapes


def _row_words(array: np.ndarray) -> np.ndarray:
    """`array` as [rows, words] of the widest unsigned integers that divide a row: rows compare as bits
    (NaN equals itself, -0.0 differs from 0.0) in as few comparisons as possible."""
    flat = np.ascontiguousarray(array).reshape(len(array), -1)
    row_bytes = flat.shape[1] * array.dtype.itemsize
    for word in (np.uint64, np.uint32, np.uint16, np.uint8):
        if row_bytes % np.dtype(word).itemsize == 0:
            return flat.view(np.uint8).view(word) if row_bytes else flat.view(np.uint8)
    raise AssertionError("unreachable: every row is a whole number of bytes")


def _dense(tensors: dict[str, np.ndarray], shapes: Mapping[str, Any]) -> State:
    for name, (dtype, shape) in shapes.items():
        fill = tensors.pop(f"{name}@fill")
        rows, values = tensors.pop(f"{name}@rows"), tensors.pop(f"{name}@values")
        array = np.empty(tuple(shape), dtype=dtype)
        array[...] = fill
        array[rows] = values
        tensors[name] = array
    return tensors


def _tensor_views(tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], list[memoryview]]:
    entries: dict[str, Any] = {}
    views, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype.name not in _SAFETENSORS_DTYPES:
            raise FreshrecError(f"tensor {name!r} has dtype {array.dtype}, which safetensors cannot hold")
        # safetensors is little-endian and C-ordered; reshape(-1) keeps 0-d and empty arrays viewable
        flat = np.ascontiguousarray(array.reshape(-1), dtype=array.dtype.newbyteorder("<")).view(np.uint8)
        entry = {"dtype": _SAFETENSORS_DTYPES[array.dtype.name], "shape": list(array.shape)}
        entries[name] = {**entry, "data_offsets": [offset, offset + flat.nbytes]}
        views.append(memoryview(flat))
        offset += flat.nbytes
    return entries, views


def _header(entries: dict[str, Any], metadata: Mapping[str, str]) -> memoryview:
    encoded = json.dumps({"__metadata__": dict(metadata), **entries}, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    return memoryview(struct.pack("<Q", len(encoded)) + encoded)
