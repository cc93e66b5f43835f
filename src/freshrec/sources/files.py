"""Replay a file of events (CSV, TSV, Parquet, JSON lines, a JSON array) in event-time order, as raw batches.

The file is read whole and columnar (pyarrow), sorted by event time (stable: ties keep file order) and
handed out in batches, each with the offset to resume after it. Text cells stay text: judging values is
the validator's job, so a bad cell becomes a rejection downstream, never a crash here. A line that cannot
even be split into the right number of fields, or a JSON line that is not a JSON object, is returned as
a malformed record with its line number. What the file is can be said (format, delimiter, header or not,
the unit of numeric times, a strptime format for text times) or left to be found: the format from the
suffix, the delimiter sniffed from the first lines. This module never drops a record silently and never
writes to the file it reads.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from freshrec.errors import ConfigError, SourceError
from freshrec.events import EVENT_KINDS, KIND_CODES
from freshrec.sources.base import EVENT_COLUMNS, RawBatch, Rejection, check_batch_size
from freshrec.timeparse import check_time_options, parse_times

__all__ = [
    "ColumnMapping",
    "FileReplaySource",
    "detect_format",
    "parse_column_mapping",
    "parse_delimiter",
    "sniff_delimiter",
]

#: File suffix -> format name (``.gz`` after any text suffix is decompressed first).
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
#: Every format name `FileReplaySource` takes; ``json`` is another name of ``jsonl``: both read JSON lines
#: or one JSON array of objects.
FORMAT_NAMES = ("csv", "tsv", "parquet", "jsonl", "json")
_DELIMITED = ("csv", "tsv")
# Delimiters the sniffer may choose between: what spreadsheet and database exports use.
_SNIFFED_DELIMITERS = ",;\t|"
_SNIFF_BYTES = 1 << 16

# Keys of the mapping text -> ColumnMapping attribute.
_MAPPING_KEYS = {
    "user": "user",
    "item": "item",
    "time": "time",
    "value": "value",
    "kind": "kind",
    "id": "event_id",
    "ctx": "context",
}
_REQUIRED = ("user", "item", "time")
_MAPPING_EXAMPLE = (
    "user=userId,item=movieId,time=timestamp[,value=rating,kind=action,id=eventId,ctx=col1|col2]"
)
_UTF8_BOM = b"\xef\xbb\xbf"
_SCAN_CHUNK = 1 << 26  # bytes per step of the newline scan: bounds its temporary memory
# Text that is exactly the decimal form of an int64 (at most 18 digits: always in range).
_DECIMAL_ID = r"^(?:0|-?[1-9][0-9]{0,17})$"


@dataclass(frozen=True)
class ColumnMapping:
    """Which file column holds each event field.

    Attributes
    ----------
    user, item, time
        Required: the columns of the user id, the item id and the event time (epoch seconds or ISO 8601).
    value, kind, event_id
        Optional columns; without ``event_id`` the source names each event ``"{name}:{line}"``.
    context
        Columns kept as context fields (under their own names). Every other column is dropped.

    >>> ColumnMapping("userId", "movieId", "ts").file_columns()
    {'user_id': 'userId', 'item_id': 'movieId', 'timestamp': 'ts'}
    """

    user: str
    item: str
    time: str
    value: str | None = None
    kind: str | None = None
    event_id: str | None = None
    context: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in self.context:
            if name in EVENT_COLUMNS:
                raise ConfigError(
                    f"context column {name!r} has the name of an event field; map it as that field "
                    f"(e.g. {name.split('_')[0]}={name}) instead of listing it under ctx"
                )

    def file_columns(self) -> dict[str, str]:
        """Canonical field name (or context name) -> file column, for every mapped column."""
        columns = {"user_id": self.user, "item_id": self.item, "timestamp": self.time}
        optional = {"value": self.value, "kind": self.kind, "event_id": self.event_id}
        columns.update({name: column for name, column in optional.items() if column is not None})
        columns.update({name: name for name in self.context})
        return columns

    @classmethod
    def infer(cls, names: list[str]) -> ColumnMapping:
        """The mapping of a file whose columns already carry the canonical names (``user_id``, ...)."""
        missing = [name for name in ("user_id", "item_id", "timestamp") if name not in names]
        if missing:
            raise SourceError(
                f"no column mapping given and the file lacks the canonical column(s) {', '.join(missing)}; "
                f"its columns are {', '.join(names) or '(none)'}; pass a mapping such as {_MAPPING_EXAMPLE!r}"
            )
        return cls(
            user="user_id",
            item="item_id",
            time="timestamp",
            value="value" if "value" in names else None,
            kind="kind" if "kind" in names else None,
            event_id="event_id" if "event_id" in names else None,
        )


def parse_column_mapping(text: str) -> ColumnMapping:
    """Parse a mapping such as ``"user=userId,item=movieId,time=ts,value=rating,ctx=device|page"``.

    Keys: ``user``, ``item``, ``time`` (required), ``value``, ``kind``, ``id`` and ``ctx`` (a ``|``-separated
    list of columns kept as context fields).

    >>> parse_column_mapping("user=userId, item=movieId, time=ts, ctx=device|page")
    ColumnMapping(user='userId', item='movieId', time='ts', value=None, kind=None, event_id=None, \
context=('device', 'page'))
    >>> parse_column_mapping("user=u,item=i")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: column mapping 'user=u,item=i' lacks time=<column>: ...
    """
    values: dict[str, Any] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, column = (piece.strip() for piece in part.partition("="))
        if not sep or not key or not column:
            raise ConfigError(
                f"column mapping {text!r}: {part!r} is not key=column; expected e.g. {_MAPPING_EXAMPLE!r}"
            )
        if key not in _MAPPING_KEYS:
            raise ConfigError(
                f"column mapping {text!r}: unknown key {key!r}; expected one of {', '.join(_MAPPING_KEYS)}"
            )
        attribute = _MAPPING_KEYS[key]
        if attribute in values:
            raise ConfigError(f"column mapping {text!r}: key {key!r} is given twice")
        if attribute == "context":
            names = tuple(name.strip() for name in column.split("|"))
            if not all(names):
                raise ConfigError(f"column mapping {text!r}: ctx={column!r} has an empty column name")
            values[attribute] = names
        else:
            values[attribute] = column
    for key in _REQUIRED:
        if key not in values:
            raise ConfigError(
                f"column mapping {text!r} lacks {key}=<column>: which file column holds the "
                f"{ {'user': 'user id', 'item': 'item id', 'time': 'event time'}[key] }? "
                f"e.g. {_MAPPING_EXAMPLE!r}"
            )
    return ColumnMapping(**values)


def _stem(path: Path) -> str:
    """The file name without its format and compression suffixes: ``ratings.v2.csv.gz`` -> ``ratings.v2``."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem


def detect_format(path: str | Path) -> str:
    """The format of a file from its suffix (``data.csv.gz`` is ``csv``).

    >>> detect_format("ratings.ndjson")
    'jsonl'
    """
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in FORMATS:
        return FORMATS[suffixes[-1]]
    raise ConfigError(
        f"cannot tell the format of {str(path)!r} from its suffix; name it .csv, .tsv, .parquet, .jsonl or "
        f".json, or pass --format (source.format) one of {', '.join(FORMAT_NAMES)}"
    )


def parse_delimiter(text: str) -> str:
    r"""The one-character delimiter a person wrote: ``","``, ``";"``, ``"|"``, or a tab as ``"\t"`` (the
    two characters) or ``"tab"``.

    >>> parse_delimiter("tab") == parse_delimiter(r"\t") == "\t"
    True
    >>> parse_delimiter(";;")
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: delimiter ';;' must be one character (e.g. ',', ';', '|' or 'tab')
    """
    named = {"tab": "\t", r"\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
    delimiter = named.get(text.lower(), text)
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ConfigError(f"delimiter {text!r} must be one character (e.g. ',', ';', '|' or 'tab')")
    return delimiter


def sniff_delimiter(data: bytes, default: str) -> str:
    r"""The delimiter of a delimited text, judged by `csv.Sniffer` on its first lines; `default` when the
    sniffer cannot tell (one column, too few lines), and first choice when several fit.

    >>> sniff_delimiter(b"user;item;ts\n1;2;3\n4;5;6\n", ",")
    ';'
    >>> sniff_delimiter(b"user,item,ts\n1,2,3\n", "\t")
    ','
    """
    sample = data[:_SNIFF_BYTES]
    if len(data) > _SNIFF_BYTES and b"\n" in sample:
        sample = sample[: sample.rindex(b"\n")]  # whole lines only: a cut line would look inconsistent
    sniffer = csv.Sniffer()
    sniffer.preferred = [default, *(d for d in _SNIFFED_DELIMITERS if d != default)]
    try:
        return sniffer.sniff(sample.decode("utf-8", "replace"), delimiters=_SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        return default


@dataclass
class _Loaded:
    """A file's records, sorted by event time: canonical columns, input positions, malformed records."""

    columns: dict[str, np.ndarray]
    positions: np.ndarray
    malformed: list[Rejection]
    typed_time: bool = False  # a Parquet date/timestamp column: already seconds, whatever the time unit


class FileReplaySource:
    """Replay the events of one file in event-time order.

    Parameters
    ----------
    path
        The file. Text formats may be gzip-compressed (``.csv.gz``).
    mapping
        A `ColumnMapping`, its text form (see `parse_column_mapping`), or None for files whose columns
        carry the canonical names (``user_id``, ``item_id``, ``timestamp``, optional ``event_id``,
        ``kind``, ``value``). Columns not mapped are dropped, unless listed as ``ctx=col1|col2``, which
        keeps them as context fields.
    format
        ``csv``, ``tsv``, ``parquet``, ``jsonl`` or ``json`` (the same as ``jsonl``); by default from the
        suffix. JSON is read in either shape: one object per line, or one array of objects.
    default_kind
        The kind of every event when the mapping has no kind column.
    name
        The source's name, used in synthesised event ids (``"{name}:{line}"``); the file's stem by default.
    delimiter
        The field separator of CSV/TSV (one character); None sniffs it from the first lines (`csv.Sniffer`
        over ``, ; tab |``), falling back to ``,`` for CSV and a tab for TSV.
    header
        Whether the first line of a CSV/TSV names the columns; without one, columns are named by
        position from 0 (``user=0,item=1,time=2``).
    time_unit
        What a numeric time counts since the epoch: ``s``, ``ms``, ``us`` or ``ns``. ISO text and
        Parquet timestamp columns carry their own unit and are not scaled.
    time_format
        A strptime format for text times (``%m/%d/%Y %H:%M``), tried before epoch numbers and ISO 8601.

    Positions are 1-based physical line numbers for CSV/TSV (the header, if any, is line 1) and JSON
    lines, 0-based indices for a JSON array and 0-based row indices for Parquet. Malformed records (wrong
    number of fields, invalid JSON) come first in the replay, then the rows in event-time order; rows
    whose time does not parse come last (and are rejected by the validator). Offsets count records in
    that replay order; each call to `batches` resumes after the last committed offset.

    >>> import tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(folder.name) / "ratings.csv"
    >>> _ = path.write_text("u,i,t\\n1,10,200\\n2,11,100\\n3,12\\n")
    >>> source = FileReplaySource(path, "user=u,item=i,time=t")
    >>> [(b.positions.tolist(), len(b.malformed), b.end_offset) for b in source.batches(2)]
    [([3], 1, 2), ([2], 0, 3)]
    >>> folder.cleanup()
    """

    def __init__(
        self,
        path: str | Path,
        mapping: ColumnMapping | str | None = None,
        format: str | None = None,
        default_kind: str = "view",
        name: str | None = None,
        start_offset: int = 0,
        *,
        delimiter: str | None = None,
        header: bool = True,
        time_unit: str = "s",
        time_format: str | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"event file {str(self.path)!r} does not exist or is not a file")
        self.format = format if format is not None else detect_format(self.path)
        if self.format not in FORMAT_NAMES:
            raise ConfigError(f"format {self.format!r} is not one of {', '.join(FORMAT_NAMES)}")
        if self.format == "json":
            self.format = "jsonl"
        if self.format not in _DELIMITED and (delimiter is not None or not header):
            option = "delimiter" if delimiter is not None else "no header"
            raise ConfigError(
                f"{option} applies to csv and tsv files only; {str(self.path)!r} is {self.format}"
            )
        check_time_options(time_unit, time_format)
        self.delimiter = None if delimiter is None else parse_delimiter(delimiter)
        self.header = header
        self.time_unit = time_unit
        self.time_format = time_format
        if default_kind not in KIND_CODES:
            raise ConfigError(f"default_kind {default_kind!r} is not one of {', '.join(EVENT_KINDS)}")
        self.mapping = parse_column_mapping(mapping) if isinstance(mapping, str) else mapping
        self.name = name if name is not None else _stem(self.path)
        self.default_kind = default_kind
        loaded = self._load()
        self._columns = loaded.columns
        self._positions = loaded.positions
        self._malformed = loaded.malformed
        if not 0 <= start_offset <= self.total_records:
            raise ConfigError(f"start_offset {start_offset} is outside 0..{self.total_records}")
        self._committed = start_offset

    @property
    def total_records(self) -> int:
        """Every record of the file: rows plus malformed records."""
        return len(self._positions) + len(self._malformed)

    @property
    def committed_offset(self) -> int:
        return self._committed

    @property
    def event_id_column(self) -> str | None:
        """The file column read as ``event_id`` (None: each record is named by its line)."""
        return self._event_id_column

    def batches(self, max_records: int) -> Iterator[RawBatch]:
        """Batches of at most `max_records` records, from the last committed offset to the end."""
        check_batch_size(max_records)
        n_malformed = len(self._malformed)
        offset = self._committed
        while offset < self.total_records:
            stop = min(offset + max_records, self.total_records)
            malformed = self._malformed[offset : min(stop, n_malformed)]
            lo, hi = max(offset - n_malformed, 0), max(stop - n_malformed, 0)
            positions = self._positions[lo:hi]
            columns = {name: column[lo:hi] for name, column in self._columns.items()}
            if "event_id" not in columns:
                columns["event_id"] = np.array([f"{self.name}:{p}" for p in positions.tolist()], dtype=object)
            if "kind" not in columns:
                columns["kind"] = np.full(hi - lo, KIND_CODES[self.default_kind], dtype=np.int8)
            yield RawBatch(columns, positions, malformed, end_offset=stop)
            offset = stop

    def commit(self, offset: int) -> None:
        """Remember `offset` as processed: the next `batches` call resumes there."""
        if not 0 <= offset <= self.total_records:
            raise ConfigError(f"offset {offset} is outside 0..{self.total_records}")
        self._committed = offset

    # -- loading ------------------------------------------------------------------------------------------

    def _load(self) -> _Loaded:
        self._event_id_column: str | None = None
        if self.format == "parquet":
            loaded = self._load_parquet()
        else:
            data = self.path.read_bytes()
            if self.path.suffix.lower() == ".gz":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError) as error:
                    raise SourceError(f"{str(self.path)!r} is not a readable gzip file: {error}") from error
            if data.startswith(_UTF8_BOM):
                data = data[len(_UTF8_BOM) :]
            if self.format == "jsonl":
                loaded = self._load_json(data)
            else:
                default = "," if self.format == "csv" else "\t"
                if self.delimiter is None:
                    self.delimiter = sniff_delimiter(data, default)
                loaded = self._load_delimited(data, self.delimiter)
        return _sort_by_time(loaded, "s" if loaded.typed_time else self.time_unit, self.time_format)

    def _resolve_mapping(self, names: list[str]) -> dict[str, str]:
        how = ""
        if self.format in _DELIMITED:
            how = f" (read with delimiter {self.delimiter!r}; pass --delimiter if that is wrong)"
            if not self.header:
                how = f" (no header: columns are named by position, e.g. --columns user=0,item=1,time=2){how}"
            elif any(parse_times(np.array([name], dtype=object)).ok[0] for name in names):
                how = (
                    " (its first line looks like data, not column names: pass --no-header and name columns "
                    f"by position, e.g. --columns user=0,item=1,time=2){how}"
                )
        try:
            mapping = self.mapping if self.mapping is not None else ColumnMapping.infer(names)
        except SourceError as error:
            raise SourceError(f"{error}{how}") from None
        wanted = mapping.file_columns()
        for canonical, column in wanted.items():
            if column not in names:
                role = canonical if canonical in EVENT_COLUMNS else "context"
                raise SourceError(
                    f"column {column!r} (mapped to {role}) not found in {str(self.path)!r}; "
                    f"its columns are {', '.join(names) or '(none)'}{how}"
                )
        self._event_id_column = wanted.get("event_id")
        return wanted

    def _load_delimited(self, data: bytes, delimiter: str) -> _Loaded:
        # TSV has no quoting convention; a quote there is an ordinary character.
        quoting = self.format == "csv" and delimiter != "\t"
        rows = _row_lines(data, quoting)
        first_line = data[: rows.stops[0]] if len(rows.lines) else b""
        parse_options = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False)
        try:
            names = pcsv.read_csv(
                pa.py_buffer(first_line + b"\n"),
                read_options=pcsv.ReadOptions(autogenerate_column_names=not self.header),
                parse_options=parse_options,
            ).column_names
        except (pa.ArrowInvalid, UnicodeDecodeError) as error:
            what = "header line" if self.header else "first line"
            raise SourceError(f"cannot read the {what} of {str(self.path)!r}: {error}") from error
        if not self.header:
            names = [str(number) for number in range(len(names))]
        wanted = self._resolve_mapping(names)
        bad_rows: list[Any] = []

        def keep_malformed(row: Any) -> str:
            bad_rows.append((row.number, row.text, row.expected_columns, row.actual_columns))
            return "skip"

        needed = list(dict.fromkeys(wanted.values()))
        try:
            table = pcsv.read_csv(
                pa.py_buffer(data),
                # One thread: pyarrow reports the row number of a malformed row only when single-threaded.
                read_options=pcsv.ReadOptions(
                    use_threads=False, block_size=1 << 24, column_names=None if self.header else names
                ),
                parse_options=pcsv.ParseOptions(
                    delimiter=delimiter,
                    quote_char='"' if quoting else False,
                    invalid_row_handler=keep_malformed,
                ),
                convert_options=pcsv.ConvertOptions(
                    # Bytes, not text: one cell that is not UTF-8 must not make the whole file unreadable.
                    column_types={name: pa.binary() for name in needed},
                    include_columns=needed,
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as error:
            raise SourceError(f"cannot parse {str(self.path)!r} as {self.format.upper()}: {error}") from error
        # pyarrow numbers rows (the header, if any, is 1; blank lines skipped); map them to physical lines.
        first = 2 if self.header else 1
        row_numbers = np.array([number or 0 for number, *_ in bad_rows], dtype=np.int64)
        exact = len(rows.lines) == first - 1 + table.num_rows + len(bad_rows) and bool(
            np.all(row_numbers >= first)
        )
        data_rows = np.arange(first, first + table.num_rows + len(bad_rows), dtype=np.int64)
        data_rows = data_rows[~np.isin(data_rows, row_numbers)]
        if exact:
            positions, bad_lines = rows.lines[data_rows - 1], rows.lines[row_numbers - 1]
        else:  # stray quotes or CR-only line ends: fall back to pyarrow's row numbers
            positions, bad_lines = data_rows, row_numbers
        malformed = [
            Rejection(
                int(line),
                "_record",
                f"wrong number of fields: expected {expected}, got {actual}",
                text,
            )
            for line, (_, text, expected, actual) in zip(bad_lines.tolist(), bad_rows, strict=True)
        ]
        columns = {
            canonical: _csv_column(canonical, table.column(column)) for canonical, column in wanted.items()
        }
        return _Loaded(columns, positions, malformed)

    def _load_json(self, data: bytes) -> _Loaded:
        """JSON lines, or one JSON array of objects (what many exporters write to a ``.json`` file)."""
        stripped = data.lstrip()
        if not stripped.startswith(b"["):
            return self._load_json_lines(data)
        try:
            whole = json.loads(stripped)
        except ValueError as error:
            first_line = stripped.split(b"\n", 1)[0]
            try:
                json.loads(first_line)
            except ValueError:
                where = (
                    f" at line {error.lineno} column {error.colno}"
                    if isinstance(error, json.JSONDecodeError)
                    else ""
                )
                raise SourceError(
                    f"{str(self.path)!r} starts like one JSON array but is not valid JSON{where}: "
                    f"{getattr(error, 'msg', error)}"
                ) from None
            return self._load_json_lines(data)  # JSON lines whose first line is an array
        if not isinstance(whole, list):
            return self._load_json_lines(data)
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        malformed: list[Rejection] = []
        for index, record in enumerate(whole):
            if isinstance(record, dict):
                records.append(record)
                positions.append(index)
            else:
                reason = f"expected a JSON object, got {_json_type(record)}"
                malformed.append(Rejection(index, "_record", reason, json.dumps(record)[:1000]))
        return self._json_columns(records, positions, malformed)

    def _load_json_lines(self, data: bytes) -> _Loaded:
        records: list[dict[str, Any]] = []
        positions: list[int] = []
        malformed: list[Rejection] = []
        for number, line in enumerate(data.split(b"\n"), start=1):
            line = line.strip()
            if not line:
                continue
            record, reason = json_object(line)
            if record is None:
                malformed.append(Rejection(number, "_record", reason, line.decode("utf-8", "replace")))
                continue
            records.append(record)
            positions.append(number)
        return self._json_columns(records, positions, malformed)

    def _json_columns(
        self, records: list[dict[str, Any]], positions: list[int], malformed: list[Rejection]
    ) -> _Loaded:
        names = list(dict.fromkeys(key for record in records for key in record))
        wanted = self._resolve_mapping(names) if records else {}
        n = len(records)
        columns = {
            canonical: np.fromiter((record.get(key) for record in records), dtype=object, count=n)
            for canonical, key in wanted.items()
        }
        return _Loaded(columns, np.asarray(positions, dtype=np.int64), malformed)

    def _load_parquet(self) -> _Loaded:
        try:
            names = pq.read_schema(self.path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise SourceError(f"{str(self.path)!r} is not a readable Parquet file: {error}") from error
        wanted = self._resolve_mapping(names)
        table = pq.read_table(self.path, columns=list(dict.fromkeys(wanted.values())))
        columns = {canonical: arrow_to_numpy(table.column(column)) for canonical, column in wanted.items()}
        time_type = table.column(wanted["timestamp"]).type
        typed_time = pa.types.is_timestamp(time_type) or pa.types.is_date(time_type)
        return _Loaded(columns, np.arange(table.num_rows, dtype=np.int64), [], typed_time)


def arrow_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A pyarrow column as the numpy column a `RawBatch` expects.

    Integers and floats without nulls stay typed (the validator's fast path); dates and timestamps become
    float64 epoch seconds; anything with nulls, and text, becomes an object array with None for null.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        micros = column.cast(pa.timestamp("us", tz=getattr(kind, "tz", None))).cast(pa.int64())
        seconds = micros.to_numpy(zero_copy_only=False) / 1e6
        if column.null_count:
            return np.array([None if v is None else v / 1e6 for v in micros.to_pylist()], dtype=object)
        return seconds
    if column.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        return column.to_numpy()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.to_numpy(zero_copy_only=False).astype(object, copy=False)
    values = column.to_pylist()
    return np.fromiter(iter(values), dtype=object, count=len(values))


def _csv_column(canonical: str, column: pa.ChunkedArray) -> np.ndarray:
    """A column of raw CSV cells as the numpy column the validator reads fastest, without changing meaning.

    Text stays text unless every cell of the column is clean (times are parsed later, once, in their
    unit: see `_sort_by_time`): ids that are all canonical decimal integers become int64 (``"42"`` and
    ``42`` are the same id), a value column that is all numbers or blanks becomes float64 (NaN for
    blank). One odd cell keeps the whole column as text, so the validator sees it as written and can say
    what is wrong with it (a dead letter then shows the clean columns in their parsed form). A cell that
    is not UTF-8 stays bytes, which the validator rejects as undecodable.
    """
    try:
        text = column.cast(pa.string())
    except pa.ArrowInvalid:
        values = column.to_pylist()
        return np.fromiter((_decoded(v) for v in values), dtype=object, count=len(values))
    if canonical in ("user_id", "item_id", "event_id") and len(text):
        if pc.all(pc.match_substring_regex(text, _DECIMAL_ID)).as_py():
            return text.cast(pa.int64()).to_numpy()
    elif canonical == "value" and len(text):
        blank_as_null = pc.if_else(
            pc.equal(pc.utf8_trim_whitespace(text), ""), pa.scalar(None, pa.string()), text
        )
        try:
            return blank_as_null.cast(pa.float64()).fill_null(np.nan).to_numpy()
        except pa.ArrowInvalid:
            pass
    return text.to_numpy(zero_copy_only=False)


def json_object(text: bytes) -> tuple[dict[str, Any] | None, str]:
    """One JSON object (a JSON line, a stream's message), or None with why it is not one.

    >>> json_object(b'{"user_id": 1}'), json_object(b"[1]")
    (({'user_id': 1}, ''), (None, 'expected a JSON object, got array'))
    """
    try:
        record = json.loads(text)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        where = f" at column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        return None, f"invalid JSON{where}: {getattr(error, 'msg', error)}"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {_json_type(record)}"
    return record, ""


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _decoded(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


@dataclass
class _RowLines:
    """Non-empty rows of a delimited file: physical line number (1-based) and byte end of each row."""

    lines: np.ndarray
    stops: np.ndarray


def _row_lines(data: bytes, quoting: bool) -> _RowLines:
    """Where each non-empty row of a delimited text is, as pyarrow's parser will split it.

    A newline inside a quoted field does not end a row: with RFC 4180 quoting (``""`` escapes a quote)
    a newline ends a row exactly when an even number of quote characters precede it.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = _positions_of(buf, ord("\n"))
    ends = newlines
    if quoting:
        quotes = _positions_of(buf, ord('"'))
        if len(quotes):
            ends = newlines[np.searchsorted(quotes, newlines) % 2 == 0]
    starts = np.concatenate([[0], ends + 1]).astype(np.int64)
    stops = np.concatenate([ends, [len(buf)]]).astype(np.int64)
    length = stops - starts
    first = buf[np.minimum(starts, max(len(buf) - 1, 0))] if len(buf) else np.zeros(len(starts), np.uint8)
    blank = (length == 0) | ((length == 1) & (first == ord("\r")))
    lines = np.searchsorted(newlines, starts) + 1
    return _RowLines(lines[~blank].astype(np.int64), stops[~blank])


def _positions_of(buf: np.ndarray, byte: int) -> np.ndarray:
    """Indices of `byte` in `buf`, scanned in chunks so the temporary mask stays small."""
    parts = [
        np.flatnonzero(buf[lo : lo + _SCAN_CHUNK] == byte) + lo for lo in range(0, len(buf), _SCAN_CHUNK)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, dtype=np.int64)


def _sort_by_time(loaded: _Loaded, unit: str, time_format: str | None) -> _Loaded:
    """Rows in event-time order (stable: ties keep file order); unparseable times go last.

    Times are parsed here, in the file's unit and format. When every time parses, the column handed on
    is the parsed seconds (float64): the validator then only checks the range. Otherwise, in seconds
    without a format, the column stays as written (the validator parses it the same way and quotes the
    bad cells); with a unit or a format the validator does not know, the times that parse are handed on
    as seconds and the others as written, so that no unit is ever applied twice.
    """
    if not len(loaded.positions):
        return loaded
    raw = loaded.columns["timestamp"]
    parsed = parse_times(raw, unit, time_format)
    columns = dict(loaded.columns)
    if parsed.ok.all():
        columns["timestamp"] = parsed.seconds
    elif unit != "s" or time_format is not None:
        mixed = np.array(raw, dtype=object)
        ok = parsed.ok
        mixed[ok] = parsed.seconds[ok].tolist()
        columns["timestamp"] = mixed
    seconds = parsed.seconds
    if not np.isnan(seconds).any() and bool(np.all(seconds[1:] >= seconds[:-1])):
        return _Loaded(columns, loaded.positions, loaded.malformed)
    order = np.argsort(seconds, kind="stable")  # NaN sorts last
    return _Loaded(
        {name: column[order] for name, column in columns.items()}, loaded.positions[order], loaded.malformed
    )
