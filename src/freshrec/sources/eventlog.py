"""The embedded durable event log: append-only segment files on local disk, the default broker of freshrec.

The HTTP ingest appends validated `EventBatch` es; the trainer tails the log with `EventLogReader`, a
`Source`. No server: one writer process per directory (an exclusive ``flock`` on ``writer.lock``), any
number of reader processes. Every event gets a 64-bit offset, one more than the event before it.

On disk, a directory holds segment files named by the offset of their first event
(``00000000000000000000.log``) and ``consumers/<name>.offset`` files. A segment is a sequence of
records, one per append, each a 24-byte header followed by a columnar payload::

    header   u32 header_crc   CRC32 of the 20 header bytes that follow it
             u32 payload_crc  CRC32 of the payload
             u32 payload_len  bytes, a multiple of 8 (records stay 8-byte aligned)
             u64 base_offset  offset of the record's first event
             u32 count        events in the record
    payload  u8 version (1), u8 0, u16 schema_len, u32 n_buffers,
             schema: compact JSON ``[[column, kind], ...]``, n_buffers x u32 buffer lengths,
             then the buffers, each padded to 8 bytes.

Column kinds: ``i64``, ``f64``, ``i8`` (raw little-endian numbers), ``str`` (Arrow string layout:
validity bitmap, int32 offsets, UTF-8 data) and ``mixed`` (a tag per row, then the ints, floats and
strings as dense sub-columns) for object columns that mix str, int, float, bool and None. Arrow IPC was
measured first: its schema and message framing cost ~830 bytes per record against 216 here for a
one-event append (int ids), the HTTP ingest's common case; the buffers keep Arrow's layout. Readers
decode the records of a batch together, one numpy operation per column, not per record.

The header has its own CRC so that a damaged length field is never mistaken for a torn tail: a record
that is incomplete, or damaged and followed by nothing but zeros (what a crash leaves at the end of a
file), is a torn tail, cut off when the writer opens the log; a damaged record with data after it is
corruption, reported with the file and byte position, never skipped.

This module never decodes with pickle, never rewrites a record once written (only a torn tail is cut),
never lets a reader see a record that is incomplete or fails its CRC, and never deletes the active
segment.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from freshrec.errors import ConfigError, SourceError
from freshrec.events import EventBatch
from freshrec.sources.base import RawBatch

__all__ = [
    "CorruptLogError",
    "EventLog",
    "EventLogConfig",
    "EventLogError",
    "EventLogReader",
    "LogLockedError",
    "OffsetOutOfRangeError",
    "TornTail",
    "decode_records",
    "encode_payload",
]

_log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIIQI")  # header_crc, payload_crc, payload_len, base_offset, count
_PAYLOAD_HEADER = struct.Struct("<BBHI")  # version, reserved, schema_len, n_buffers
_FORMAT_VERSION = 1
_ZEROS = bytes(8)  # padding
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
_CONSUMER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_LOCK_FILE = "writer.lock"
_CONSUMERS_DIR = "consumers"
_READ_CHUNK = 1 << 20  # bytes per read: big enough to amortise syscalls, small enough to bound memory
_MAX_PAYLOAD = (1 << 32) - 8  # payload_len is a u32
_RETENTION_CHECK_SECONDS = 30.0  # a quiet log still ages out old segments, checked at most this often
_INT64_MAX = np.iinfo(np.int64).max
_ID_COLUMNS = ("event_id", "user_id", "item_id")

# Row tags of a "mixed" column.
_NONE, _INT, _FLOAT, _STR, _BOOL = 0, 1, 2, 3, 4
_TAGS: dict[type, int] = {
    type(None): _NONE,
    int: _INT,
    float: _FLOAT,
    str: _STR,
    bool: _BOOL,
    np.str_: _STR,
    np.bool_: _BOOL,
    **{t: _INT for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)},
    **{t: _FLOAT for t in (np.float16, np.float32, np.float64)},
}
_STR_TYPES = frozenset({str, np.str_})
_NULLABLE_STR_TYPES = _STR_TYPES | {type(None)}
_INT_TYPES = frozenset(t for t, tag in _TAGS.items() if tag == _INT)
_FLOAT_TYPES = frozenset(t for t, tag in _TAGS.items() if tag == _FLOAT)
_BUFFERS_PER_KIND = {"i64": 1, "f64": 1, "i8": 1, "str": 3, "mixed": 6}


class EventLogError(SourceError):
    """The event log cannot be written or read as asked."""


class LogLockedError(EventLogError):
    """Another `EventLog` (in this or another process) already writes to the directory."""


class CorruptLogError(EventLogError):
    """A record in the middle of the log is damaged: the log cannot be read past it.

    Attributes
    ----------
    path
        The segment file.
    position
        Byte position of the damaged record in the file.
    offset
        Offset of the first event the damaged record should hold.
    """

    def __init__(self, path: Path, position: int, offset: int, reason: str) -> None:
        self.path, self.position, self.offset = path, position, offset
        super().__init__(
            f"event log segment {str(path)!r} is corrupt at byte {position} (the record of offset {offset}): "
            f"{reason}. The records before it are intact; to keep them and drop everything from offset "
            f"{offset} on, stop the writer, truncate the file to {position} bytes (truncate -s {position} "
            f"{str(path)!r}) and delete the later segment files, then restore the lost events from upstream"
        )


class OffsetOutOfRangeError(EventLogError):
    """A reader asked for an offset that is not in the log (deleted by retention, or not written yet)."""


@dataclass(frozen=True)
class TornTail:
    """What `EventLog.open` cut from the end of the active segment after a crash.

    >>> TornTail(Path("00000000000000000000.log"), 480, 37, "incomplete record").dropped_bytes
    37
    """

    path: Path
    position: int
    dropped_bytes: int
    reason: str


@dataclass(frozen=True)
class EventLogConfig:
    """Where the log lives and how it trades durability, latency and disk space.

    Parameters
    ----------
    directory
        The log's directory (created if missing). Local disk only: the writer lock is an ``flock``.
    segment_bytes
        A new segment starts when the next record would take the active one past this size (a single
        record larger than it gets a segment of its own). Retention deletes whole segments.
    fsync
        ``"every-batch"``: `EventLog.append` returns only once its record is written *and* fdatasync'ed:
        the events survive a crash of the process and of the machine. Concurrent appends from several
        threads share one fdatasync (group commit). ``"interval"``: `append` returns once ``write()``
        has put the record in the page cache: readers see it at once and it survives a crash of the
        process, not of the machine; a background thread fdatasyncs every `fsync_interval_ms`, so an
        event is durable at most that long (plus one fdatasync) after its append returned. Use
        `EventLog.wait_durable` to answer a client only once its events are durable.
    fsync_interval_ms
        The flusher's period in ``"interval"`` mode.
    retention_seconds
        Sealed segments whose last write is older than this are deleted, oldest first, but never one that a
        registered consumer still needs (its committed offset falls before the segment's end): time
        retention waits for consumers, so a consumer that stops committing keeps the log growing until
        it is forgotten (`EventLog.forget_consumer`) or `retention_bytes` steps in.
    retention_bytes
        While the segments together exceed this size, the oldest sealed segment is deleted, whether or not a
        consumer still needs it: size retention protects the disk. A consumer that then resumes before the
        first remaining offset gets `OffsetOutOfRangeError` (or skips ahead, see `EventLogReader`).

    >>> EventLogConfig("events", fsync="interval", fsync_interval_ms=20).segment_bytes
    67108864
    """

    directory: str | Path
    segment_bytes: int = 64 * 2**20
    fsync: Literal["every-batch", "interval"] = "every-batch"
    fsync_interval_ms: float = 50.0
    retention_seconds: float | None = None
    retention_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.fsync not in ("every-batch", "interval"):
            raise ConfigError(f"fsync={self.fsync!r} is not a policy; use 'every-batch' or 'interval'")
        if self.segment_bytes < 1024:
            raise ConfigError(
                f"segment_bytes={self.segment_bytes} is too small; use at least 1024 (e.g. 64 MiB)"
            )
        if not self.fsync_interval_ms > 0:
            raise ConfigError(f"fsync_interval_ms={self.fsync_interval_ms} must be > 0 (e.g. 50)")
        if self.retention_seconds is not None and not self.retention_seconds > 0:
            raise ConfigError(f"retention_seconds={self.retention_seconds} must be > 0, or None to keep all")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ConfigError(f"retention_bytes={self.retention_bytes} must be > 0, or None to keep all")


# -- files ------------------------------------------------------------------------------------------------


def _segment_path(directory: Path, base_offset: int) -> Path:
    return directory / f"{base_offset:020d}.log"


def _list_segments(directory: Path) -> list[int]:
    """Base offsets of the segment files in `directory`, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, names) if m)


def _fsync_directory(directory: Path) -> None:
    """Make file creations and renames in `directory` durable (the file's own fsync does not cover them)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_consumer_name(name: str) -> str:
    if not isinstance(name, str) or not _CONSUMER_NAME.match(name):
        raise ConfigError(
            f"consumer name {name!r} is not usable as a file name; use 1-100 letters, digits, '_', '.' or '-'"
        )
    return name


def _read_consumers(directory: Path) -> dict[str, int]:
    """Committed offset of every registered consumer of the log in `directory`."""
    folder = directory / _CONSUMERS_DIR
    consumers = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name.endswith(".offset"):
                with contextlib.suppress(FileNotFoundError):  # forgotten in the meantime
                    consumers[entry.name[: -len(".offset")]] = _read_offset_file(Path(entry.path))
    return consumers


def _read_offset_file(path: Path) -> int:
    text = path.read_text()
    try:
        offset = json.loads(text)["offset"]
        if type(offset) is not int or offset < 0:
            raise ValueError(offset)
    except (ValueError, KeyError, TypeError) as error:
        raise EventLogError(
            f"consumer offset file {str(path)!r} holds {text[:80]!r}, not {{'offset': <int >= 0>}}; "
            f"delete it to restart that consumer from start_offset"
        ) from error
    return offset


def _write_offset_file(path: Path, offset: int) -> None:
    """Replace `path` atomically: a crash leaves the old offset or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(temporary, "w") as file:
        file.write(json.dumps({"offset": offset, "committed_at": time.time()}))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


# -- record encoding --------------------------------------------------------------------------------------


def _pad(n: int) -> int:
    return -n % 8


@lru_cache(maxsize=256)
def _schema_bytes(schema: tuple[tuple[str, str], ...]) -> bytes:
    return json.dumps([list(column) for column in schema], separators=(",", ":")).encode()


@lru_cache(maxsize=1024)
def _parse_schema(raw: bytes) -> tuple[tuple[str, str], ...]:
    schema = tuple((str(name), str(kind)) for name, kind in json.loads(raw))
    for name, kind in schema:
        if kind not in _BUFFERS_PER_KIND:
            raise ValueError(f"column {name!r} has unknown kind {kind!r}")
    return schema


def _string_buffers(values: np.ndarray | list[Any], column: str) -> list[Any]:
    """Arrow string layout of `values` (str or None): validity bitmap (empty when no None), offsets, data."""
    try:
        array = pa.array(values, type=pa.string())
    except (pa.ArrowException, TypeError, ValueError) as error:
        raise EventLogError(f"column {column!r}: cannot store its strings as UTF-8 ({error})") from error
    if isinstance(array, pa.ChunkedArray):  # over 2 GiB of text: int32 offsets overflow
        raise EventLogError(f"column {column!r} holds over 2 GiB of text; append the batch in smaller parts")
    n = len(array)
    validity, offsets, data = array.buffers()
    offsets_view = memoryview(offsets)[: 4 * (n + 1)]
    end = int(np.frombuffer(offsets_view, dtype=np.int32)[-1]) if n else 0
    return [
        b"" if validity is None or array.null_count == 0 else memoryview(validity)[: (n + 7) // 8],
        offsets_view if n else np.zeros(1, dtype=np.int32).tobytes(),
        memoryview(data)[:end] if data is not None else b"",
    ]


def _encode_column(name: str, values: np.ndarray) -> tuple[str, list[Any]]:
    """The kind and buffers of one column; numbers stay raw, object columns are classified once."""
    kind = values.dtype.kind
    if kind == "i":
        return "i64", [np.ascontiguousarray(values, dtype="<i8")]
    if kind == "u":
        if len(values) and values.max() > _INT64_MAX:
            raise EventLogError(f"column {name!r} holds integers above 2**63-1; store such ids as strings")
        return "i64", [np.ascontiguousarray(values, dtype="<i8")]
    if kind == "f":
        return "f64", [np.ascontiguousarray(values, dtype="<f8")]
    rows = values.tolist()
    types = set(map(type, rows))
    if types <= _NULLABLE_STR_TYPES and types & _STR_TYPES or not rows:
        return "str", _string_buffers(values, name)
    try:
        if types <= _INT_TYPES:
            return "i64", [np.array(rows, dtype="<i8")]
        if types <= _FLOAT_TYPES:
            return "f64", [np.array(rows, dtype="<f8")]
    except OverflowError as error:
        raise EventLogError(
            f"column {name!r} holds an integer outside int64; store it as a string"
        ) from error
    return "mixed", _mixed_buffers(name, rows, types)


def _mixed_buffers(name: str, rows: list[Any], types: set[type]) -> list[Any]:
    unknown = [t.__name__ for t in types if t not in _TAGS]
    if unknown:
        raise EventLogError(
            f"column {name!r} holds values of type {', '.join(sorted(unknown))}; the log stores str, int, "
            f"float, bool or None: validate events with freshrec.preprocess.validate before appending"
        )
    tags = np.fromiter(map(_TAGS.__getitem__, map(type, rows)), dtype=np.int8, count=len(rows))
    objects = np.array(rows, dtype=object)
    try:
        integers = np.array(objects[(tags == _INT) | (tags == _BOOL)].tolist(), dtype="<i8")
    except OverflowError as error:
        raise EventLogError(
            f"column {name!r} holds an integer outside int64; store it as a string"
        ) from error
    floats = np.array(objects[tags == _FLOAT].tolist(), dtype="<f8")
    return [tags, integers, floats, *_string_buffers(objects[tags == _STR], name)]


def encode_payload(batch: EventBatch) -> bytes:
    """The payload of one record holding `batch` (no header: the offsets are not known yet)."""
    columns: list[tuple[str, np.ndarray]] = [
        ("event_id", batch.event_id),
        ("timestamp", np.asarray(batch.timestamp, dtype=np.float64)),
        ("user_id", batch.user_id),
        ("item_id", batch.item_id),
        ("kind", batch.kind),
        ("value", np.asarray(batch.value, dtype=np.float64)),
        *batch.context.items(),
    ]
    schema: list[tuple[str, str]] = []
    buffers: list[Any] = []
    for name, values in columns:
        values = np.asarray(values)
        if name == "kind":
            if values.dtype.kind not in "iu" or (
                len(values) and not -128 <= values.min() <= values.max() <= 127
            ):
                raise EventLogError(
                    f"column 'kind' has dtype {values.dtype} or codes outside int8; expected int8 codes "
                    f"into EVENT_KINDS (validate events with freshrec.preprocess.validate first)"
                )
            kind, column_buffers = "i8", [np.ascontiguousarray(values, dtype=np.int8)]
        else:
            kind, column_buffers = _encode_column(name, values)
        schema.append((name, kind))
        buffers.extend(column_buffers)
    schema_raw = _schema_bytes(tuple(schema))
    if len(schema_raw) > 0xFFFF:
        raise EventLogError(f"the batch's column names take {len(schema_raw)} bytes; keep them under 64 KiB")
    lengths = [memoryview(b).nbytes for b in buffers]
    head = _PAYLOAD_HEADER.pack(_FORMAT_VERSION, 0, len(schema_raw), len(buffers))
    head += schema_raw + struct.pack(f"<{len(lengths)}I", *lengths)
    parts: list[Any] = [head, _ZEROS[: _pad(len(head))]]
    for buffer, length in zip(buffers, lengths, strict=True):
        parts += [buffer, _ZEROS[: _pad(length)]]
    payload = b"".join(parts)
    if len(payload) > _MAX_PAYLOAD:
        raise EventLogError(
            f"the batch encodes to {len(payload)} bytes, over 4 GiB; append it in smaller parts"
        )
    return payload


@dataclass(frozen=True)
class _Layout:
    """Where a payload's columns are: its schema and the byte span of each buffer (shared by equal heads)."""

    schema: tuple[tuple[str, str], ...]
    spans: tuple[tuple[int, int], ...]
    end: int


_LAYOUTS: dict[bytes, _Layout] = {}
_MAX_LAYOUTS = 4096  # records of fixed-width columns and equal counts share one entry; text varies more


def _layout(payload: memoryview) -> _Layout:
    """The layout of a payload, checked against its length. Raises ValueError for a malformed one."""
    if len(payload) < _PAYLOAD_HEADER.size:
        raise ValueError(f"payload of {len(payload)} bytes is shorter than its header")
    version, _, schema_len, n_buffers = _PAYLOAD_HEADER.unpack_from(payload)
    if version != _FORMAT_VERSION:
        raise ValueError(
            f"record format version {version}; this freshrec reads version {_FORMAT_VERSION}: upgrade it"
        )
    head_end = _PAYLOAD_HEADER.size + schema_len + 4 * n_buffers
    head = payload[:head_end]  # a read-only memoryview hashes and compares like the bytes it shows
    layout = _LAYOUTS.get(head)  # type: ignore[call-overload]
    if layout is None:
        schema = _parse_schema(bytes(payload[_PAYLOAD_HEADER.size : _PAYLOAD_HEADER.size + schema_len]))
        if sum(_BUFFERS_PER_KIND[kind] for _, kind in schema) != n_buffers:
            raise ValueError(f"the schema needs a different number of buffers than the {n_buffers} listed")
        lengths = struct.unpack_from(f"<{n_buffers}I", payload, _PAYLOAD_HEADER.size + schema_len)
        position = head_end + _pad(head_end)
        spans = []
        for length in lengths:
            spans.append((position, position + length))
            position += length + _pad(length)
        layout = _Layout(schema, tuple(spans), position)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[bytes(head)] = layout
    if layout.end > len(payload):
        raise ValueError(f"the buffers need {layout.end} bytes, the payload has {len(payload)}")
    return layout


_FIXED_DTYPES = {"i64": np.dtype("<i8"), "f64": np.dtype("<f8"), "i8": np.dtype(np.int8)}
_NUMERIC_COLUMNS = {"timestamp": "f64", "value": "f64", "kind": "i8"}


def decode_records(records: list[tuple[memoryview, int]]) -> dict[str, np.ndarray]:
    """The events of consecutive records (payload, count) as one set of `RawBatch` columns.

    Records are decoded by runs that share a schema, each column once per run: fixed-width buffers are
    joined (or, when every payload of the run has the same layout, cut out of one 2-D byte block) and
    text buffers merged with their offsets rebased, so a run of one-event records costs about a
    microsecond each. Raises ValueError (or a pyarrow error) for a payload that does not decode.
    """
    runs: list[list[tuple[memoryview, int, _Layout]]] = []
    for payload, count in records:
        layout = _layout(payload)
        if runs and runs[-1][0][2].schema == layout.schema:
            runs[-1].append((payload, count, layout))
        else:
            runs.append([(payload, count, layout)])
    return _combine([_decode_run(run) for run in runs])


def _decode_run(run: list[tuple[memoryview, int, _Layout]]) -> dict[str, np.ndarray]:
    """Columns of consecutive records that share one schema."""
    layout = run[0][2]
    for name, kind in _NUMERIC_COLUMNS.items():
        if (name, kind) not in layout.schema:
            raise ValueError(f"column {name!r} is missing or not {kind}")
    counts = [count for _, count, _ in run]
    if all(kind in _FIXED_DTYPES for _, kind in layout.schema) and all(
        r[2] is layout and len(r[0]) == len(run[0][0]) for r in run
    ):
        # Same layout, same length: the payloads are rows of one byte matrix, a column is a band of it.
        block = np.frombuffer(b"".join(r[0] for r in run), dtype=np.uint8).reshape(len(run), -1)
        columns = {}
        for (name, kind), (start, stop) in zip(layout.schema, layout.spans, strict=True):
            column = np.array(block[:, start:stop]).view(_FIXED_DTYPES[kind]).reshape(-1)  # a writable copy
            columns[name] = _as_role(name, column)
        if len(columns["timestamp"]) != sum(counts):
            raise ValueError(f"the columns hold {len(columns['timestamp'])} values for {sum(counts)} events")
        return columns
    parts: dict[str, list[list[memoryview]]] = {name: [] for name, _ in layout.schema}
    widths = [(name, _BUFFERS_PER_KIND[kind]) for name, kind in layout.schema]
    for payload, _, record_layout in run:
        buffers = [payload[start:stop] for start, stop in record_layout.spans]
        first = 0
        for name, width in widths:
            parts[name].append(buffers[first : first + width])
            first += width
    return {name: _decode_column(name, kind, parts[name], counts) for name, kind in layout.schema}


def _as_role(name: str, column: np.ndarray) -> np.ndarray:
    """Numbers stay typed for the event fields and int ids; context columns are always objects."""
    if name in _NUMERIC_COLUMNS or (name in _ID_COLUMNS and column.dtype == np.int64):
        return column
    return column.astype(object, copy=False)


def _decode_column(name: str, kind: str, parts: list[list[memoryview]], counts: list[int]) -> np.ndarray:
    total = sum(counts)
    if kind in _FIXED_DTYPES:
        # bytearray: the column is a writable copy, not a view pinning the read buffer
        column = np.frombuffer(bytearray().join(b[0] for b in parts), dtype=_FIXED_DTYPES[kind])
        if len(column) != total:
            raise ValueError(f"column {name!r} has {len(column)} values for {total} events")
    elif kind == "str":
        column = _join_strings(list(zip(parts, counts, strict=True)))
    else:
        column = np.concatenate([_decode_mixed(n, buffers) for buffers, n in zip(parts, counts, strict=True)])
    return _as_role(name, column)


def _join_strings(parts: list[tuple[list[memoryview], int]]) -> np.ndarray:
    """Object array of the strings (None where null) of consecutive Arrow string buffers (validity, offsets,
    data), rebasing each part's offsets onto the joined data; validated once, so bad bytes raise."""
    counts = np.array([n for _, n in parts], dtype=np.int64)
    total = int(counts.sum())
    offsets = np.frombuffer(b"".join(b[1] for b, _ in parts), dtype="<i4").astype(np.int64)
    if len(offsets) != total + len(parts):
        raise ValueError(f"text offsets: {len(offsets)} values for {total} strings in {len(parts)} records")
    ends = np.cumsum(counts + 1) - 1
    sizes = offsets[ends]
    if offsets[ends - counts].any() or not np.array_equal(sizes, [len(b[2]) for b, _ in parts]):
        raise ValueError("text offsets do not match the text they index")
    offsets += np.repeat(np.cumsum(sizes) - sizes, counts + 1)
    keep = np.ones(len(offsets), dtype=bool)
    keep[ends[:-1]] = False  # a part's last offset is the next part's first
    validity = None
    if any(len(b[0]) for b, _ in parts):
        bits = np.concatenate(
            [
                np.unpackbits(np.frombuffer(b[0], dtype=np.uint8), bitorder="little")[:n]
                if len(b[0])
                else np.ones(n, dtype=np.uint8)
                for b, n in parts
            ]
        )
        if len(bits) != total:
            raise ValueError("text validity bitmap is shorter than its column")
        validity = pa.py_buffer(np.packbits(bits, bitorder="little"))
    data = b"".join(b[2] for b, _ in parts)
    array = pa.Array.from_buffers(
        pa.large_string(), total, [validity, pa.py_buffer(offsets[keep]), pa.py_buffer(data)]
    )
    array.validate(full=True)  # a CRC-valid record from a buggy writer must raise, not crash the reader
    return array.to_numpy(zero_copy_only=False)


def _decode_mixed(n: int, buffers: list[memoryview]) -> np.ndarray:
    tags = np.frombuffer(buffers[0], dtype=np.int8)
    integers = np.frombuffer(buffers[1], dtype="<i8")
    floats = np.frombuffer(buffers[2], dtype="<f8")
    int_rows, bool_rows = tags == _INT, tags == _BOOL
    float_rows, str_rows = tags == _FLOAT, tags == _STR
    if (
        len(tags) != n
        or int((int_rows | bool_rows).sum()) != len(integers)
        or int(float_rows.sum()) != len(floats)
    ):
        raise ValueError("mixed column: the tags do not match the value buffers")
    out = np.full(n, None, dtype=object)
    is_bool = bool_rows[int_rows | bool_rows]
    out[int_rows] = integers[~is_bool].astype(object)
    out[bool_rows] = integers[is_bool].astype(bool).astype(object)
    out[float_rows] = floats.astype(object)
    out[str_rows] = _join_strings([(buffers[3:], int(str_rows.sum()))])
    return out


def _combine(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate decoded column sets; ids stay int64 only when every chunk's are."""
    if len(chunks) == 1:
        return chunks[0]
    names = list(dict.fromkeys(name for chunk in chunks for name in chunk))
    columns = {}
    for name in names:
        parts = [chunk.get(name) for chunk in chunks]
        if name in _NUMERIC_COLUMNS or all(p is not None and p.dtype == np.int64 for p in parts):
            columns[name] = np.concatenate(parts)
        else:
            columns[name] = np.concatenate(
                [
                    np.full(len(chunk["timestamp"]), None, dtype=object)
                    if p is None
                    else p.astype(object, copy=False)
                    for p, chunk in zip(parts, chunks, strict=True)
                ]
            )
    return columns


# -- record checking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    """What is at a position of a segment: a good record, a torn tail, or corruption."""

    status: Literal["ok", "torn", "corrupt", "end"]
    reason: str = ""
    payload_len: int = 0
    count: int = 0


def _only_zeros(data: memoryview, start: int) -> bool:
    tail = data[start:]
    return len(tail) == 0 or bytes(tail).count(0) == len(tail)


def _check_record(data: memoryview, position: int, expected_offset: int) -> _Verdict:
    """Judge the record at `position` of `data`, which must run to the end of the file."""
    size = len(data)
    if position == size:
        return _Verdict("end")
    if size - position < _HEADER.size:
        if _only_zeros(data, position):
            return _Verdict("torn", "zero-filled tail")
        return _Verdict("torn", f"incomplete header ({size - position} of {_HEADER.size} bytes)")
    header_crc, payload_crc, payload_len, base, count = _HEADER.unpack_from(data, position)
    end = position + _HEADER.size + payload_len
    if zlib.crc32(data[position + 4 : position + _HEADER.size]) != header_crc:
        if _only_zeros(data, position):
            return _Verdict("torn", "zero-filled tail")
        # A damaged length would point anywhere; only a claimed end at the end of the file (or followed
        # by zeros) says that this was the last record rather than one in the middle.
        if position < end <= size and _only_zeros(data, end):
            return _Verdict("torn", "damaged header of the last record")
        return _Verdict("corrupt", "record header checksum mismatch")
    if base != expected_offset or count == 0 or payload_len % 8:
        return _Verdict(
            "corrupt",
            f"record header says offset {base}, {count} events, {payload_len} bytes; "
            f"expected offset {expected_offset}",
        )
    if end > size:
        return _Verdict("torn", f"incomplete record ({size - position} of {end - position} bytes)")
    if zlib.crc32(data[position + _HEADER.size : end]) != payload_crc:
        if _only_zeros(data, end):
            return _Verdict("torn", "payload checksum mismatch in the last record")
        return _Verdict("corrupt", "payload checksum mismatch")
    return _Verdict("ok", payload_len=payload_len, count=count)


def _scan_segment(path: Path, base_offset: int) -> tuple[int, int, _Verdict]:
    """Walk every record of a segment, checking its CRCs: (end of the good records, next offset, stop)."""
    with open(path, "rb") as file:
        data = memoryview(file.read())
    position, offset = 0, base_offset
    while True:
        verdict = _check_record(data, position, offset)
        if verdict.status != "ok":
            if verdict.status == "corrupt":
                raise CorruptLogError(path, position, offset, verdict.reason)
            return position, offset, verdict
        position += _HEADER.size + verdict.payload_len
        offset += verdict.count


# -- writer -----------------------------------------------------------------------------------------------


class EventLog(AbstractContextManager["EventLog"]):
    """The single writer of an event log directory: appends `EventBatch` es, rotates and ages out segments.

    Open with `EventLog.open`; thread-safe (the HTTP ingest appends from a thread pool). A second writer,
    in this or any other process, gets `LogLockedError` until this one is closed.

    Attributes
    ----------
    config
        The configuration it was opened with.
    torn_tail
        What opening cut from the end of the active segment after a crash, or None.

    >>> import tempfile
    >>> from freshrec.events import Event
    >>> directory = tempfile.mkdtemp()
    >>> with EventLog.open(EventLogConfig(directory)) as log:
    ...     log.append(EventBatch.from_events([Event("a", 1.0, "u1", 7), Event("b", 2.0, "u2", 8)]))
    ...     log.append(EventBatch.from_events([Event("c", 3.0, "u1", 8, "click")]))
    (0, 1)
    (2, 2)
    >>> reader = EventLogReader(directory)
    >>> [b.columns["item_id"].tolist() for b in reader.batches(10)]
    [[7, 8, 8]]
    """

    def __init__(self, config: EventLogConfig, _token: object = None) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("create an EventLog with EventLog.open(config)")
        self.config = config
        self.directory = Path(config.directory)
        self.torn_tail: TornTail | None = None
        self._lock = threading.Lock()  # write state: fd, size, next offset, segment list
        self._sync_lock = threading.Lock()  # one fdatasync at a time; taken before _lock, never inside it
        self._durable = threading.Condition()  # leaf lock guarding _durable_offset and _failure
        self._durable_offset = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._next_offset = 0
        self._segments: list[int] = []
        self._last_retention_check = 0.0
        self._retention_lock = threading.Lock()  # one deleter at a time: appends from many threads trigger it
        self._flusher: threading.Thread | None = None
        self._stop_flusher = threading.Event()

    @classmethod
    def open(cls, config: EventLogConfig) -> EventLog:
        """Open (or create) the log in ``config.directory`` for writing, recovering a torn tail."""
        log = cls(config, _OPEN_TOKEN)
        try:
            log._open()
        except BaseException:
            log._release()
            raise
        return log

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_path = self.directory / _LOCK_FILE
        self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogLockedError(
                f"event log {str(self.directory)!r} already has a writer (pid {holder}, lock "
                f"{str(lock_path)!r}); one EventLog per directory: append through that process, "
                f"or stop it first"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)

        self._segments = _list_segments(self.directory)
        if not self._segments:
            self._create_segment(0)
        else:
            base = self._segments[-1]
            path = _segment_path(self.directory, base)
            end, next_offset, verdict = _scan_segment(path, base)
            size = path.stat().st_size
            if verdict.status == "torn":
                self.torn_tail = TornTail(path, end, size - end, verdict.reason)
                _log.warning(
                    "event log %s: cut a torn tail of %d bytes at byte %d (%s); offsets continue at %d",
                    path,
                    size - end,
                    end,
                    verdict.reason,
                    next_offset,
                )
                with open(path, "r+b") as file:
                    file.truncate(end)
                    os.fsync(file.fileno())
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._size, self._next_offset = end, next_offset
        # Whatever survived the previous writer is on disk now as far as this process can tell.
        os.fdatasync(self._fd)
        self._durable_offset = self._next_offset
        self.enforce_retention()
        if self.config.fsync == "interval":
            self._flusher = threading.Thread(
                target=self._flush_periodically, name="eventlog-flusher", daemon=True
            )
            self._flusher.start()

    def _create_segment(self, base_offset: int) -> None:
        path = _segment_path(self.directory, base_offset)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        _fsync_directory(self.directory)
        self._segments.append(base_offset)
        self._size, self._next_offset = 0, base_offset

    # -- properties ---------------------------------------------------------------------------------------

    @property
    def next_offset(self) -> int:
        """The offset the next appended event will get."""
        return self._next_offset

    @property
    def durable_offset(self) -> int:
        """Every event before this offset is known to be fdatasync'ed."""
        return self._durable_offset

    @property
    def first_offset(self) -> int:
        """The oldest offset still in the log (retention deletes whole segments before it)."""
        with self._lock:
            return self._segments[0]

    # -- appending ----------------------------------------------------------------------------------------

    def append(self, batch: EventBatch) -> tuple[int, int]:
        """Append `batch` as one record; return the offsets of its first and last events.

        In ``"every-batch"`` mode the events are durable on return; in ``"interval"`` mode they are written
        (visible to readers, safe from a crash of this process) and durable within ``fsync_interval_ms``:
        see `EventLogConfig.fsync` and `wait_durable`. An empty batch writes nothing and returns
        ``(next_offset, next_offset - 1)``. If the process dies during an append, recovery keeps the
        record only if it was written completely; no acknowledgement was given either way.
        """
        self._check_usable()
        n = len(batch)
        if n == 0:
            return self._next_offset, self._next_offset - 1
        payload = encode_payload(batch)  # outside the lock: encoding is the CPU-heavy part
        payload_crc = zlib.crc32(payload)
        with self._lock:
            self._check_usable()
            first = self._next_offset
            fields = struct.pack("<IIQI", payload_crc, len(payload), first, n)  # _HEADER after its CRC
            record = b"".join((struct.pack("<I", zlib.crc32(fields)), fields, payload))
            if self._size and self._size + len(record) > self.config.segment_bytes:
                self._rotate()
            self._write(record)
            self._next_offset = first + n
            retention_due = time.monotonic() - self._last_retention_check > _RETENTION_CHECK_SECONDS
        if self.config.fsync == "every-batch":
            self._sync(first + n)
        if retention_due and (self.config.retention_seconds or self.config.retention_bytes):
            self.enforce_retention()
        return first, first + n - 1

    def _write(self, record: bytes) -> None:
        """Write a whole record; on failure cut the partial record so the log stays appendable."""
        view = memoryview(record)
        written = 0
        try:
            while written < len(view):
                written += os.write(self._fd, view[written:])
        except OSError as error:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as truncate_error:
                self._fail(truncate_error)
                raise EventLogError(
                    f"writing to event log {str(self.directory)!r} failed ({error}) and the partial record "
                    f"could not be removed ({truncate_error}); close the log and open it again"
                ) from error
            raise EventLogError(
                f"writing to event log {str(self.directory)!r} failed: {error}; nothing was appended "
                f"(free disk space if it is full, then retry)"
            ) from error
        self._size += len(record)

    def _rotate(self) -> None:
        """Seal the active segment (durable before it is closed) and start a new one. Holds `_lock`."""
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._set_durable(self._next_offset)
        self._create_segment(self._next_offset)
        self._last_retention_check = 0.0  # a segment was sealed: retention may have work now

    def _sync(self, upto: int) -> None:
        """fdatasync until `upto` is durable; concurrent callers share one fdatasync (group commit)."""
        with self._sync_lock:
            if self._durable_offset >= upto:
                return
            with self._lock:
                target = self._next_offset
                fd = os.dup(self._fd)  # rotation may close self._fd meanwhile; the dup keeps the file
            try:
                os.fdatasync(fd)
            except OSError as error:
                # After a failed fsync the kernel may have dropped the dirty pages: no later fsync can
                # vouch for them, so the log refuses to go on rather than report durability it lacks.
                self._fail(error)
                raise EventLogError(
                    f"fdatasync of event log {str(self.directory)!r} failed: {error}; events from offset "
                    f"{self._durable_offset} on may be lost; close the log and open it again"
                ) from error
            finally:
                os.close(fd)
            self._set_durable(target)

    def _set_durable(self, offset: int) -> None:
        with self._durable:
            if offset > self._durable_offset:
                self._durable_offset = offset
                self._durable.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._durable:
            self._failure = error
            self._durable.notify_all()

    def _check_usable(self) -> None:
        if self._closed:
            raise EventLogError(f"event log {str(self.directory)!r} is closed; open it again to append")
        if self._failure is not None:
            raise EventLogError(
                f"event log {str(self.directory)!r} stopped after an I/O error ({self._failure}); "
                f"close it and open it again"
            )

    def _flush_periodically(self) -> None:
        interval = self.config.fsync_interval_ms / 1000
        while not self._stop_flusher.wait(interval):
            if self._durable_offset < self._next_offset:
                try:
                    self._sync(self._next_offset)
                except EventLogError:
                    return  # _fail recorded it: appends and waiters raise it

    def flush(self) -> None:
        """fdatasync now: every event appended so far is durable on return."""
        self._check_usable()
        self._sync(self._next_offset)

    def wait_durable(self, offset: int, timeout: float | None = None) -> bool:
        """Block until the event at `offset` is durable; False if `timeout` seconds passed first.

        In ``"every-batch"`` mode this returns at once for any appended offset. Raises `EventLogError`
        if the offset was never appended or the log failed or closed before it became durable.
        """
        if offset >= self._next_offset:
            raise EventLogError(
                f"wait_durable(offset={offset}): that offset has not been appended (next offset "
                f"{self._next_offset}); pass the last offset returned by append"
            )
        with self._durable:
            done = self._durable.wait_for(
                lambda: self._durable_offset > offset or self._failure is not None or self._closed, timeout
            )
            if self._durable_offset > offset:
                return True
        if not done:
            return False
        self._check_usable()
        raise EventLogError(f"event log {str(self.directory)!r} closed before offset {offset} was durable")

    # -- retention and consumers --------------------------------------------------------------------------

    def consumers(self) -> dict[str, int]:
        """Registered consumers and their committed offsets."""
        return _read_consumers(self.directory)

    def forget_consumer(self, name: str) -> None:
        """Unregister consumer `name`: time retention stops waiting for it."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _CONSUMERS_DIR / f"{_check_consumer_name(name)}.offset").unlink()

    def enforce_retention(self) -> list[int]:
        """Delete the sealed segments that retention allows, oldest first; return their base offsets.

        Runs on open, when a segment is sealed, and at most every 30 s from `append`; call it from a timer
        for a log that may go quiet. Never deletes the active segment; time retention keeps segments a
        registered consumer still needs, size retention does not (see `EventLogConfig`).
        """
        config = self.config
        self._last_retention_check = time.monotonic()
        if config.retention_seconds is None and config.retention_bytes is None:
            return []
        with self._retention_lock:
            return self._delete_expired_segments()

    def _delete_expired_segments(self) -> list[int]:
        config = self.config
        with self._lock:
            segments = list(self._segments)
        sealed = segments[:-1]
        stats = {}
        for base in segments:
            with contextlib.suppress(FileNotFoundError):
                stats[base] = _segment_path(self.directory, base).stat()
        total = sum(s.st_size for s in stats.values())
        oldest_needed = min(self.consumers().values(), default=None)
        cutoff = time.time() - config.retention_seconds if config.retention_seconds is not None else None
        deleted = []
        for i, base in enumerate(sealed):
            end = segments[i + 1]
            stat = stats.get(base)
            size = stat.st_size if stat else 0
            over_size = config.retention_bytes is not None and total > config.retention_bytes
            expired = (
                cutoff is not None
                and stat is not None
                and stat.st_mtime < cutoff
                and (oldest_needed is None or oldest_needed >= end)
            )
            if not (over_size or expired):
                break  # deletion stays contiguous from the oldest: the log never has a hole
            with contextlib.suppress(FileNotFoundError):
                _segment_path(self.directory, base).unlink()
            total -= size
            deleted.append(base)
        if deleted:
            with self._lock:
                del self._segments[: len(deleted)]
            _log.info("event log %s: retention deleted segments %s", self.directory, deleted)
        return deleted

    # -- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the flusher, make everything durable and release the writer lock. Idempotent."""
        if self._closed:
            return
        try:
            if self._flusher is not None:
                self._stop_flusher.set()
                self._flusher.join()
            if self._failure is None and self._fd >= 0:
                self._sync(self._next_offset)
        finally:
            self._release()

    def _release(self) -> None:
        with self._durable:
            self._closed = True
            self._durable.notify_all()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EventLog({str(self.directory)!r}, next_offset={self._next_offset}, fsync={self.config.fsync!r})"
        )


_OPEN_TOKEN = object()


# -- reader -----------------------------------------------------------------------------------------------


class _RawRecord(NamedTuple):
    """A complete, CRC-valid record not decoded yet, and where it is."""

    payload: memoryview
    count: int
    path: Path
    position: int
    base_offset: int


class EventLogReader(AbstractContextManager["EventLogReader"]):
    """Read an event log from an offset, once to its current end or tailing it: a `Source`.

    Batches are `RawBatch` es whose ``positions`` are the events' offsets and whose ``end_offset`` is the
    next offset to read. Id columns are int64 when every id in the batch is an integer, object arrays
    otherwise; timestamp and value are float64, kind int8 codes, context columns object arrays (None where
    absent). A reader only ever returns complete, CRC-valid records; it holds one file open and never
    writes to the log, except its consumer's offset file.

    Parameters
    ----------
    directory
        The log's directory.
    start_offset
        The first offset to read: an int, ``"earliest"``, ``"latest"`` (only events appended from now on),
        or None: the consumer's committed offset if it has one, else the earliest.
    consumer
        Name under which `commit` stores offsets (``consumers/<name>.offset``). A named reader registers
        itself on open at its start offset, so time retention keeps what it has not read yet.
    out_of_range
        What to do when the start offset was deleted by retention: ``"raise"`` (`OffsetOutOfRangeError`)
        or ``"earliest"`` (skip to the oldest offset left; the events in between are lost to it).
    """

    def __init__(
        self,
        directory: str | Path,
        start_offset: int | Literal["earliest", "latest"] | None = None,
        consumer: str | None = None,
        out_of_range: Literal["raise", "earliest"] = "raise",
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise EventLogError(
                f"no event log at {str(self.directory)!r} (not a directory); open it once with EventLog.open"
            )
        if out_of_range not in ("raise", "earliest"):
            raise ConfigError(f"out_of_range={out_of_range!r}; use 'raise' or 'earliest'")
        self.consumer = None if consumer is None else _check_consumer_name(consumer)
        self.name = consumer or "eventlog"
        self.out_of_range = out_of_range
        self._offset_path = (
            None if consumer is None else self.directory / _CONSUMERS_DIR / f"{self.consumer}.offset"
        )
        self._fd = -1
        self._segment_base = -1
        self._path = self.directory
        self._pos = 0  # byte position, in the open segment, of the next record to read
        self._record_offset = 0  # offset of the first event of that record
        self._skip = 0  # events of that record before the reader's position
        self._pending: tuple[dict[str, np.ndarray], int, int] | None = None  # decoded, next row, rows
        self._broken: CorruptLogError | None = None
        self._committed: int | None = None
        self._buffer = memoryview(b"")
        self._buffer_start = 0
        committed = (
            _read_offset_file(self._offset_path)
            if self._offset_path is not None and self._offset_path.exists()
            else None
        )
        if start_offset is None:
            start_offset = committed if committed is not None else "earliest"
        self.position = self._seek(start_offset)
        if self._offset_path is not None and committed is None:
            _write_offset_file(self._offset_path, self.position)

    # -- positioning --------------------------------------------------------------------------------------

    def _seek(self, start: int | str) -> int:
        """Open the segment holding `start` and walk its headers to it; return the resolved offset."""
        for _ in range(3):  # retention may delete the segment between listing and opening it
            segments = _list_segments(self.directory)
            if start == "earliest":
                target = segments[0] if segments else 0
            elif start == "latest":
                target = -1
            elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
                target = start
            else:
                raise ConfigError(f"start_offset={start!r}; use an offset >= 0, 'earliest', 'latest' or None")
            if not segments:
                if target > 0:
                    raise OffsetOutOfRangeError(
                        f"start_offset {target} is past the end of the empty event log "
                        f"{str(self.directory)!r}; use 'earliest' or 'latest'"
                    )
                self._record_offset = 0
                return 0
            if 0 <= target < segments[0]:
                if self.out_of_range == "raise":
                    raise OffsetOutOfRangeError(
                        f"offset {target} of event log {str(self.directory)!r} was deleted by retention; the "
                        f"oldest offset left is {segments[0]}: pass out_of_range='earliest' or "
                        f"start_offset='earliest' to continue from there (the events between are lost)"
                    )
                target = segments[0]
            base = segments[-1] if target < 0 else segments[bisect.bisect_right(segments, target) - 1]
            try:
                self._open_segment(base)
            except FileNotFoundError:
                continue
            return self._walk_to(target, is_last=base == segments[-1])
        raise EventLogError(f"event log {str(self.directory)!r}: segments keep disappearing under the reader")

    def _open_segment(self, base: int) -> None:
        fd = os.open(_segment_path(self.directory, base), os.O_RDONLY)
        self._close_segment()
        self._fd, self._segment_base = fd, base
        self._path = _segment_path(self.directory, base)
        self._pos, self._record_offset, self._skip = 0, base, 0
        self._buffer, self._buffer_start = memoryview(b""), 0

    def _walk_to(self, target: int, is_last: bool) -> int:
        """Skip the records before `target` (-1: the end) by their headers; payloads are checked on read."""
        while True:
            header = self._bytes(self._pos, _HEADER.size)
            if header is not None:
                header_crc, _, payload_len, base, count = _HEADER.unpack(header)
                valid = zlib.crc32(header[4:]) == header_crc and base == self._record_offset and count > 0
                complete = self._bytes(self._pos + _HEADER.size + payload_len, 0) is not None
                if valid and complete and (target < 0 or base + count <= target):
                    self._pos += _HEADER.size + payload_len
                    self._record_offset += count
                    continue
            if target < 0:
                return self._record_offset
            if target > self._record_offset and header is not None and valid and complete:
                self._skip = target - self._record_offset  # target is inside this record
            elif target > self._record_offset:
                where = "past the end of" if is_last else "missing from"
                raise OffsetOutOfRangeError(
                    f"start_offset {target} is {where} event log {str(self.directory)!r} (next offset there: "
                    f"{self._record_offset}); resume from a committed offset or 'latest'"
                )
            return target

    # -- reading ------------------------------------------------------------------------------------------

    def _bytes(self, position: int, n: int) -> memoryview | None:
        """`n` bytes at `position` of the open segment, or None if the file is not that long yet."""
        start = position - self._buffer_start
        if start >= 0 and start + n <= len(self._buffer):
            return self._buffer[start : start + n]
        size = os.fstat(self._fd).st_size
        if position + n > size:
            return None
        data = os.pread(self._fd, max(n, min(_READ_CHUNK, size - position)), position)
        if len(data) < n:  # truncated since the fstat (a torn tail being cut)
            return None
        self._buffer, self._buffer_start = memoryview(data), position
        return self._buffer[:n]

    def _next_record(self) -> _RawRecord | None:
        """The next complete, CRC-valid record, or None if none is there yet."""
        if self._broken is not None:
            raise self._broken
        while True:
            if self._fd < 0:
                try:
                    self._open_segment(self._record_offset)
                except FileNotFoundError:
                    return None  # the log's first segment does not exist yet
            header = self._bytes(self._pos, _HEADER.size)
            if header is not None:
                header_crc, payload_crc, payload_len, base, count = _HEADER.unpack(header)
                if zlib.crc32(header[4:]) == header_crc and base == self._record_offset and count > 0:
                    payload = self._bytes(self._pos + _HEADER.size, payload_len)
                    if payload is not None and zlib.crc32(payload) == payload_crc:
                        try:
                            _layout(payload)  # a record from a newer format stops the reader before it
                        except (ValueError, KeyError, TypeError, struct.error) as error:
                            raise CorruptLogError(
                                self._path, self._pos, base, f"undecodable payload ({error})"
                            ) from error
                        record = _RawRecord(payload, count, self._path, self._pos, base)
                        self._pos += _HEADER.size + payload_len
                        self._record_offset += count
                        return record
            if not self._at_tail():
                return None

    def _at_tail(self) -> bool:
        """No good record at the read position: move to the next segment (True: try again) or wait (False).

        Raises `CorruptLogError` for damage that is not a torn tail of the active segment.
        """
        self._buffer = memoryview(b"")  # a torn tail may be cut and rewritten: never trust cached bytes
        # The writer never seals an empty segment, so a segment at its own base offset is this one.
        sealed = (
            self._record_offset > self._segment_base
            and _segment_path(self.directory, self._record_offset).exists()
        )
        # The writer finishes a segment before it creates the next: a size taken after seeing the next
        # segment is final.
        size = os.fstat(self._fd).st_size
        data = memoryview(os.pread(self._fd, max(size - self._pos, 0), self._pos))
        verdict = _check_record(data, 0, self._record_offset)
        if verdict.status == "ok":
            return True
        if verdict.status == "corrupt" or (verdict.status == "torn" and sealed):
            reason = verdict.reason + (" (in a sealed segment)" if verdict.status == "torn" else "")
            raise CorruptLogError(self._path, self._pos, self._record_offset, reason)
        if verdict.status == "end" and sealed:
            try:
                self._open_segment(self._record_offset)
            except FileNotFoundError:
                # Retention deleted the next segment before this reader got to it.
                if self.out_of_range == "raise":
                    raise OffsetOutOfRangeError(
                        f"event log {str(self.directory)!r}: retention deleted offset {self._record_offset} "
                        f"before this reader read it; reopen with out_of_range='earliest' to skip ahead"
                    ) from None
                self.position = self._seek("earliest")
            return True
        return False  # clean end or torn tail of the active segment: the writer may still add to it

    def _read(self, max_records: int) -> RawBatch | None:
        """Up to `max_records` events available now, or None when there are none."""
        chunks: list[dict[str, np.ndarray]] = []
        n = 0
        if self._pending is not None:
            columns, row, count = self._pending
            take = min(count - row, max_records)
            chunks.append({name: c[row : row + take] for name, c in columns.items()})
            n = take
            self._pending = None if row + take == count else (columns, row + take, count)
        records: list[_RawRecord] = []
        available = -self._skip  # events in `records` at or after the reader's position
        while n + available < max_records:
            try:
                record = self._next_record()
            except CorruptLogError:
                if not (n or records):
                    raise
                break  # hand out the good events first; the next read stops at the damage again
            if record is None:
                break
            records.append(record)
            available += record.count
        if records:
            columns = self._decode(records)
            row, count = self._skip, available + self._skip
            self._skip = 0
            take = min(count - row, max_records - n)
            chunks.append({name: c[row : row + take] for name, c in columns.items()})
            n += take
            self._pending = None if row + take == count else (columns, row + take, count)
        if not n:
            return None
        positions = np.arange(self.position, self.position + n, dtype=np.int64)
        self.position += n
        # Only validated events are ever appended (`EventLog.append` takes an `EventBatch`), and a record's
        # CRC proves it is what was appended: a reader's events need no second validation.
        return RawBatch(
            _combine(chunks), positions, end_offset=self.position, offsets=positions, validated=True
        )

    def _decode(self, records: list[_RawRecord]) -> dict[str, np.ndarray]:
        try:
            return decode_records([(r.payload, r.count) for r in records])
        except (ValueError, KeyError, TypeError, struct.error, pa.ArrowException):
            pass
        # Find the culprit to name it. The read position is already past these records, so the reader
        # cannot resume in order: it stays broken (a CRC-valid record that does not decode is a writer bug).
        for record in records:
            try:
                decode_records([(record.payload, record.count)])
            except (ValueError, KeyError, TypeError, struct.error, pa.ArrowException) as error:
                self._broken = CorruptLogError(
                    record.path, record.position, record.base_offset, f"undecodable payload ({error})"
                )
                raise self._broken from error
        raise AssertionError("a group of records failed to decode but each record decodes alone")

    def batches(
        self,
        max_records: int,
        follow: bool = False,
        poll_interval: float = 0.001,
        stop: threading.Event | None = None,
    ) -> Iterator[RawBatch]:
        """Batches of at most `max_records` events, in offset order.

        Without `follow`, stops at the end of what is in the log now. With `follow`, waits for new events
        (checking the file size every `poll_interval` seconds: a few cheap syscalls) and yields as soon as
        some arrive, until `stop` is set. A batch holds what is available, never waiting to fill up.
        """
        if max_records < 1:
            raise ConfigError(f"max_records={max_records} must be at least 1")
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval={poll_interval} must be > 0 seconds (e.g. 0.001)")
        while stop is None or not stop.is_set():
            batch = self._read(max_records)
            if batch is not None:
                yield batch
            elif not follow:
                return
            elif stop is not None:
                stop.wait(poll_interval)
            else:
                time.sleep(poll_interval)

    # -- committing ---------------------------------------------------------------------------------------

    @property
    def committed_offset(self) -> int | None:
        """The last committed offset: the consumer's file, or this reader's last `commit` without one."""
        if self._offset_path is None or not self._offset_path.exists():
            return self._committed
        return _read_offset_file(self._offset_path)

    def commit(self, offset: int) -> None:
        """Record that everything before `offset` is processed: a reader for this consumer resumes there.

        With a consumer name the offset is persisted atomically (temporary file, fsync, rename, directory
        fsync: a crash leaves the previous offset or this one); without one it is only remembered by this
        reader (`committed_offset`), as a pipeline commits after every batch whatever its source. `offset`
        may go back (to reprocess) but not past what this reader has returned.
        """
        if type(offset) is not int and not isinstance(offset, np.integer) or not 0 <= offset <= self.position:
            raise ConfigError(
                f"commit(offset={offset!r}): commit an end_offset of a batch this reader returned "
                f"(0 to {self.position})"
            )
        self._committed = int(offset)
        if self._offset_path is not None:
            _write_offset_file(self._offset_path, self._committed)

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._buffer = memoryview(b"")

    def close(self) -> None:
        """Close the open segment file. Idempotent."""
        self._close_segment()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
