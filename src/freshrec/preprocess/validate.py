"""Validate raw records into events: every record is accepted or rejected with its first failing field and a
reason a person can act on, and rejections can be written to a dead-letter file.

Checks run column by column over a whole `RawBatch`: typed numpy columns (the synthetic stream, Parquet,
MovieLens) take pure array operations; object columns (CSV text, JSON values) are classified per value
once and then checked with arrays. The validator never raises on bad input and never drops a record
silently: accepted + rejected == records read, always.

Rules (fields are checked in this order; the first failure is reported):

- ``event_id``, ``user_id``, ``item_id``: required, a string (at most ``max_string_length`` characters, not
  blank, text UTF-8 can encode: no lone surrogate such as JSON's ``"\\ud800"``) or an integer that fits
  in 64 bits. A float that is an exact integer (``42.0``, as JSON encoders
  and Parquet columns with nulls produce) is accepted as that integer, because rejecting it would punish
  the producer's serializer, not the data; any other float, a bool, a list or a dict is rejected.
- ``timestamp``: required, epoch seconds (number or numeric text) or ISO 8601 text (naive means UTC; see
  `freshrec.timeparse`), finite and within the schema limits; a value that fits the limits once divided
  by 1e3, 1e6 or 1e9 is reported as probable milliseconds, microseconds or nanoseconds.
- ``kind``: optional (``default_kind`` when absent or blank); a name from `EVENT_KINDS`, or a name of the
  kind map (``[pipeline.kinds] add_to_cart = "click"``), any letter case; typed integer columns carry
  codes into `EVENT_KINDS`. An unknown name's reason says which configuration key would map it.
- ``value``: optional; a finite number or numeric text. ``NaN`` means absent (it is how `EventBatch`,
  Parquet and pandas write a missing number), ``inf`` is rejected.
- any other column is a context field: a string (bounded, encodable as UTF-8), an integer that fits in 64
  bits, a finite float or a bool (kept as 0/1); ``None``/blank means absent; at most
  ``max_context_fields`` present per event. Its name must be encodable as UTF-8 too.

Whatever is accepted can be stored: the event log writes text as UTF-8 and integers as int64. Reasons quote
a bad value shortened; an integer too long to write in decimal is quoted by its number of digits.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.errors import ConfigError
from freshrec.events import DEFAULT_LIMITS, EVENT_KINDS, KIND_CODES, EventBatch, SchemaLimits
from freshrec.sources.base import EVENT_COLUMNS, RawBatch, Rejection
from freshrec.timeparse import (
    MISSING,
    NON_FINITE,
    OK,
    T_BOOL,
    T_FLOAT,
    T_INT,
    T_NONE,
    T_STR,
    classify_column,
    describe_problem,
    parse_number_strings,
    parse_times,
    text_array,
)

__all__ = [
    "DeadLetterWriter",
    "EventValidator",
    "Rejection",
    "ValidationResult",
    "reason_group",
    "validate_records",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_FLOAT_INT = 2.0**53  # beyond this a float cannot say which integer it meant
_KIND_LIST = ", ".join(EVENT_KINDS)
_MAX_REPR = 60  # characters of a bad value quoted in a reason
_QUOTED_INT_BITS = 200  # an integer longer than this (~60 digits) is quoted by its number of digits
_DECIMAL_TEXT_BITS = 14_000  # below Python's default limit on int-to-text conversion (4,300 digits)

Reason = Callable[[int], str]


@dataclass
class ValidationResult:
    """Accepted events (in input order), the rejections, the input position of each accepted event and
    its row in the validated `RawBatch`."""

    events: EventBatch
    rejections: list[Rejection]
    positions: np.ndarray
    rows: np.ndarray

    @property
    def accepted(self) -> int:
        return len(self.events)

    @property
    def rejected(self) -> int:
        return len(self.rejections)


class EventValidator:
    """Check raw records against the event schema, batch-wise.

    Parameters
    ----------
    limits
        Bounds on timestamps, string lengths and context size.
    default_kind
        The kind of an event whose kind is absent or blank.
    kind_map
        Raw kind names (any letter case) -> one of `EVENT_KINDS`: ``{"add_to_cart": "click"}``.

    >>> validator = EventValidator()
    >>> result = validator.validate_records([
    ...     {"event_id": "e1", "timestamp": 1.7e9, "user_id": "u1", "item_id": 42, "kind": "Click"},
    ...     {"event_id": "e2", "timestamp": 1.7e12, "user_id": "u1", "item_id": 43},
    ... ])
    >>> result.accepted, result.events.kind.tolist()
    (1, [1])
    >>> result.rejections[0].field, result.rejections[0].reason
    ('timestamp', 'timestamp out of range: 1.7e+12 is after 2200-01-01 (milliseconds?)')
    """

    def __init__(
        self,
        limits: SchemaLimits = DEFAULT_LIMITS,
        default_kind: str = "view",
        kind_map: Mapping[str, str] | None = None,
    ) -> None:
        if default_kind not in KIND_CODES:
            raise ConfigError(f"default_kind {default_kind!r} is not a kind; use one of {_KIND_LIST}")
        self.limits = limits
        self.default_kind = default_kind
        self._default_code = KIND_CODES[default_kind]
        names = kind_lookup(kind_map or {})
        self._kind_names = pa.array(list(names), pa.string())
        self._kind_codes = np.array(list(names.values()), dtype=np.int8)

    # -- public API ---------------------------------------------------------------------------------------

    def validate(self, raw: RawBatch) -> ValidationResult:
        """Split a raw batch into accepted events and rejections (malformed records included)."""
        return self._validate(raw, originals=None)

    def validate_records(self, records: Sequence[Any], start_position: int = 0) -> ValidationResult:
        """Validate JSON-like records (the HTTP ingest: one event or an array of objects).

        Keys are the canonical field names; any other key, and the keys of a nested ``"context"`` object,
        become context fields. A record that is not an object is rejected as a whole (field ``_record``).
        Positions are ``start_position`` + index in `records`.
        """
        malformed: list[Rejection] = []
        rows: list[dict[str, Any]] = []
        originals: list[Any] = []
        positions: list[int] = []
        max_fields = len(EVENT_COLUMNS) + self.limits.max_context_fields
        # Every distinct context name becomes a column as long as the batch: bound their number, or a
        # request of many records with different keys would cost records x keys memory.
        max_names = 4 * self.limits.max_context_fields
        context_names: set[str] = set()
        for index, record in enumerate(records):
            position = start_position + index
            if not isinstance(record, dict):
                reason = f"expected a JSON object, got {_type_name(record)}"
                malformed.append(Rejection(position, "_record", reason, _short_json(record)))
                continue
            flat, problem = _flatten_record(record)
            if problem is None and len(flat) > max_fields:
                problem = ("_record", f"too many fields: {len(flat)} > {max_fields}")
            if problem is None:
                new_names = [name for name in flat if name not in EVENT_COLUMNS and name not in context_names]
                if len(context_names) + len(new_names) > max_names:
                    problem = (
                        "context",
                        f"too many distinct context fields in one batch (at most {max_names}); "
                        "send records with different fields in separate requests",
                    )
                else:
                    context_names.update(new_names)
            if problem is not None:
                malformed.append(Rejection(position, problem[0], problem[1], _jsonable(record)))
                continue
            rows.append(flat)
            originals.append(record)
            positions.append(position)
        names = list(dict.fromkeys(name for row in rows for name in row))
        columns = {
            name: np.fromiter((row.get(name) for row in rows), dtype=object, count=len(rows))
            for name in names
        }
        raw = RawBatch(columns, np.asarray(positions, dtype=np.int64), malformed)
        return self._validate(raw, originals=originals)

    # -- the checks ---------------------------------------------------------------------------------------

    def _validate(self, raw: RawBatch, originals: list[Any] | None) -> ValidationResult:
        n = raw.num_rows
        failures = _FirstFailure(n)
        columns = raw.columns
        event_id = self._ids(columns.get("event_id"), n, "event_id", failures)
        timestamp = self._timestamps(columns.get("timestamp"), n, failures)
        user_id = self._ids(columns.get("user_id"), n, "user_id", failures)
        item_id = self._ids(columns.get("item_id"), n, "item_id", failures)
        kind = self._kinds(columns.get("kind"), n, failures)
        value = self._values(columns.get("value"), n, failures)
        context = self._context(
            {name: col for name, col in columns.items() if name not in EVENT_COLUMNS}, n, failures
        )

        keep = ~failures.rejected
        rows = slice(None) if keep.all() else keep  # a slice keeps the columns as they are (no copy)
        events = EventBatch(
            event_id=_finish_ids(*event_id, rows),
            timestamp=timestamp[rows],
            user_id=_finish_ids(*user_id, rows),
            item_id=_finish_ids(*item_id, rows),
            kind=kind[rows],
            value=value[rows],
            context={name: column[rows] for name, column in context.items()},
        )
        positions = np.asarray(raw.positions, dtype=np.int64)[rows]
        rejections = list(raw.malformed)
        for row, (field, reason) in failures.items():
            record = _jsonable(originals[row]) if originals is not None else _row_record(columns, row)
            rejections.append(Rejection(int(raw.positions[row]), field, reason, record))
        rejections.sort(key=lambda r: r.position)
        return ValidationResult(events, rejections, positions, np.flatnonzero(keep))

    def _ids(
        self, column: np.ndarray | None, n: int, field: str, failures: _FirstFailure
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Checked id column (int64, or object holding str/int) and, for object columns, which are strings."""
        if column is None:
            failures.add(field, np.ones(n, dtype=bool), lambda i: "missing field")
            return np.zeros(n, dtype=np.int64), None
        kind = column.dtype.kind
        if kind == "u" and n and column.max() > _INT64_MAX:
            column, kind = column.astype(object), "O"
        if kind in "iu":
            return column.astype(np.int64, copy=False), None
        if kind == "f":
            exact = np.isfinite(column) & (np.floor(column) == column) & (np.abs(column) <= _EXACT_FLOAT_INT)
            failures.add(field, ~exact, lambda i: self._id_problem(float(column[i])))
            return np.where(exact, column, 0).astype(np.int64), None
        if kind == "b":
            failures.add(field, np.ones(n, dtype=bool), lambda i: self._id_problem(bool(column[i])))
            return np.zeros(n, dtype=np.int64), None
        values, types = classify_column(column)
        counts = np.bincount(types, minlength=6)
        if counts[T_INT] == n:  # JSON integer ids: one conversion, unless one is beyond 64 bits
            with contextlib.suppress(OverflowError):
                return np.array(values, dtype=np.int64), None
        if counts[T_STR] == n:
            strings = text_array(values)
            bad = _mask(pc.greater(pc.utf8_length(strings), self.limits.max_string_length))
            bad |= _mask(pc.equal(pc.utf8_trim_whitespace(strings), ""))
            bad |= _not_text(values)
            failures.add(field, bad, lambda i: self._id_problem(values[i]))
            strings_column = column if column.dtype == object else np.array(values, dtype=object)
            return strings_column, np.ones(n, dtype=bool)
        out = np.empty(n, dtype=object)
        bad = np.zeros(n, dtype=bool)
        for i, (v, t) in enumerate(zip(values, types.tolist(), strict=True)):
            if t == T_STR:
                out[i] = v
                bad[i] = len(v) > self.limits.max_string_length or not v.strip() or not _is_text(v)
            elif t == T_INT:
                out[i] = v
                bad[i] = not _INT64_MIN <= v <= _INT64_MAX
            elif t == T_FLOAT and math.isfinite(v) and v.is_integer() and abs(v) <= _EXACT_FLOAT_INT:
                out[i] = int(v)
            else:
                bad[i] = True
        failures.add(field, bad, lambda i: self._id_problem(values[i]))
        return out, types == T_STR

    def _id_problem(self, value: Any) -> str:
        if value is None:
            return "missing field"
        if isinstance(value, str):
            if not _is_text(value):
                return _not_text_reason(value)
            if len(value) > self.limits.max_string_length:
                return f"oversized string: {len(value)} chars > {self.limits.max_string_length}"
            return "missing field"  # blank text, e.g. an empty CSV cell
        if isinstance(value, float):
            if math.isnan(value):
                return "missing field"
            if math.isfinite(value) and value.is_integer():
                return f"wrong type: expected string or integer, got float {value!r} (too large to be exact)"
        if type(value) is int:
            return f"integer out of range: {_short(value)} does not fit in 64 bits"
        return f"wrong type: expected string or integer, got {_type_name(value)} {_short(value)}"

    def _timestamps(self, column: np.ndarray | None, n: int, failures: _FirstFailure) -> np.ndarray:
        if column is None:
            failures.add("timestamp", np.ones(n, dtype=bool), lambda i: "missing field")
            return np.zeros(n, dtype=np.float64)
        parsed = parse_times(column)
        seconds = parsed.seconds
        bad_parse = parsed.status != OK
        if bad_parse.any():
            failures.add(
                "timestamp", bad_parse, lambda i: _timestamp_problem(int(parsed.status[i]), _plain(column[i]))
            )
        limits = self.limits
        # NaN compares False both ways, so rows that failed to parse are not reported twice.
        out_of_range = (seconds < limits.min_timestamp) | (seconds > limits.max_timestamp)
        if out_of_range.any():
            failures.add("timestamp", out_of_range, lambda i: self._range_problem(float(seconds[i])))
        return seconds

    def _range_problem(self, seconds: float) -> str:
        limits = self.limits
        if seconds < limits.min_timestamp:
            return f"timestamp out of range: {seconds:.6g} is before {_date(limits.min_timestamp)}"
        reason = f"timestamp out of range: {seconds:.6g} is after {_date(limits.max_timestamp)}"
        for divisor, unit in ((1e3, "milliseconds"), (1e6, "microseconds"), (1e9, "nanoseconds")):
            if limits.min_timestamp <= seconds / divisor <= limits.max_timestamp:
                return f"{reason} ({unit}?)"
        return reason

    def _kinds(self, column: np.ndarray | None, n: int, failures: _FirstFailure) -> np.ndarray:
        if column is None:
            return np.full(n, self._default_code, dtype=np.int8)
        kind = column.dtype.kind
        if kind in "iu":
            bad = (column < 0) | (column >= len(EVENT_KINDS))
            failures.add(
                "kind",
                bad,
                lambda i: (
                    f"unknown kind code {int(column[i])} (expected 0..{len(EVENT_KINDS) - 1}: {_KIND_LIST})"
                ),
            )
            return np.where(bad, 0, column).astype(np.int8)
        if kind in "fb":
            failures.add(
                "kind",
                np.ones(n, dtype=bool),
                lambda i: f"wrong type: expected a kind name, got {column[i]!r}",
            )
            return np.zeros(n, dtype=np.int8)
        values, types = classify_column(column)
        codes = np.full(n, self._default_code, dtype=np.int8)
        strings = np.flatnonzero(types == T_STR)
        bad = ~np.isin(types, (T_STR, T_NONE))
        if len(strings):
            texts = text_array(values if len(strings) == n else [values[i] for i in strings])
            names = pc.utf8_lower(pc.utf8_trim_whitespace(texts))
            found = pc.index_in(names, value_set=self._kind_names).fill_null(-1)
            found = found.to_numpy(zero_copy_only=False)
            known = found >= 0
            codes[strings[known]] = self._kind_codes[found[known]]
            bad[strings[~known & ~_mask(pc.equal(names, ""))]] = True
        failures.add("kind", bad, lambda i: self._kind_problem(values[i]))
        return codes

    @staticmethod
    def _kind_problem(value: Any) -> str:
        if isinstance(value, str):
            # The key to add is named with the raw name as the map compares it (trimmed, lower case).
            key = value.strip().lower()
            return (
                f"unknown kind {_short(value)} (expected one of {_KIND_LIST}, or map it to one in the "
                f'configuration, e.g. [pipeline.kinds] {_toml_key(key)} = "click")'
            )
        return f"wrong type: expected a kind name, got {_type_name(value)} {_short(value)}"

    def _values(self, column: np.ndarray | None, n: int, failures: _FirstFailure) -> np.ndarray:
        if column is None:
            return np.full(n, np.nan)
        kind = column.dtype.kind
        if kind in "iuf":
            values = column.astype(np.float64, copy=False)
            failures.add("value", np.isinf(values), lambda i: f"non-finite value: {values[i]}")
            return values
        if kind == "b":
            failures.add(
                "value",
                np.ones(n, dtype=bool),
                lambda i: f"wrong type: expected a number, got bool {column[i]}",
            )
            return np.full(n, np.nan)
        raw_values, types = classify_column(column)
        out = np.full(n, np.nan)
        bad = ~np.isin(types, (T_NONE, T_INT, T_FLOAT, T_STR))
        numbers = np.flatnonzero((types == T_INT) | (types == T_FLOAT))
        if len(numbers):
            out[numbers] = [_finite_or_inf(raw_values[i]) for i in numbers.tolist()]
        strings = np.flatnonzero(types == T_STR)
        if len(strings):
            texts = text_array(raw_values if len(strings) == n else [raw_values[i] for i in strings])
            parsed, status = parse_number_strings(texts)
            out[strings] = parsed
            # "nan" text means absent, like a NaN number; "inf" and non-numbers are rejected.
            nan_text = _mask(pc.match_substring_regex(texts, r"(?i)^\s*[+-]?nan\s*$"))
            bad[strings] = (status != OK) & (status != MISSING) & ~nan_text
        bad |= np.isinf(out)
        failures.add("value", bad, lambda i: self._value_problem(raw_values[i]))
        return np.where(bad, np.nan, out)

    @staticmethod
    def _value_problem(value: Any) -> str:
        if type(value) is int:  # only an integer beyond float's range fails
            return f"number out of range: {_short(value)} does not fit in a float"
        if isinstance(value, float):
            return f"non-finite value: {value}"
        if isinstance(value, str):
            status = parse_number_strings(text_array([value]))[1][0]
            if status == NON_FINITE:
                return f"non-finite value: {_short(value)}"
            return f"not a number: {_short(value)}"
        return f"wrong type: expected a number, got {_type_name(value)} {_short(value)}"

    def _context(
        self, columns: dict[str, np.ndarray], n: int, failures: _FirstFailure
    ) -> dict[str, np.ndarray]:
        limits = self.limits
        present = np.zeros(n, dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for name, column in columns.items():
            values, absent, bad, problem = self._context_column(column, n)
            if not _is_text(name):  # before its values: a rejection must not name a field JSON cannot carry
                failures.add("context", ~absent, lambda i, name=name: f"field name {_not_text_reason(name)}")
            if len(name) > limits.max_string_length:
                failures.add(
                    "context",
                    ~absent,
                    lambda i, name=name: (
                        f"context field name too long: {len(name)} chars > {limits.max_string_length}"
                    ),
                )
            failures.add(name, bad, problem)
            present += ~absent
            out[name] = values
        failures.add(
            "context",
            present > limits.max_context_fields,
            lambda i: f"too many context fields: {int(present[i])} > {limits.max_context_fields}",
        )
        return out

    def _context_column(
        self, column: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Reason]:
        """Values (object, None where absent), absent mask, bad mask and the reason of a bad row."""
        kind = column.dtype.kind
        max_length = self.limits.max_string_length
        if kind in "iub":
            values = np.fromiter((int(v) for v in column.tolist()), dtype=object, count=n)
            return values, np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), lambda i: ""
        if kind == "f":
            absent = np.isnan(column)
            bad = np.isinf(column)
            values = np.fromiter(
                (None if a else v for v, a in zip(column.tolist(), absent.tolist(), strict=True)),
                dtype=object,
                count=n,
            )
            return values, absent, bad, lambda i: f"non-finite value: {column[i]}"
        raw_values, types = classify_column(column)
        values = np.empty(n, dtype=object)
        absent = np.zeros(n, dtype=bool)
        bad = np.zeros(n, dtype=bool)
        for i, (v, t) in enumerate(zip(raw_values, types.tolist(), strict=True)):
            if t == T_STR:
                if len(v) > max_length or not _is_text(v):
                    bad[i] = True
                elif v.strip():
                    values[i] = v
                else:
                    absent[i] = True
            elif t == T_INT:
                values[i] = v
                bad[i] = not _INT64_MIN <= v <= _INT64_MAX
            elif t == T_FLOAT:
                if math.isnan(v):
                    absent[i] = True
                elif math.isinf(v):
                    bad[i] = True
                else:
                    values[i] = v
            elif t == T_BOOL:
                values[i] = int(v)
            elif t == T_NONE:
                absent[i] = True
            else:
                bad[i] = True

        def problem(i: int) -> str:
            v = raw_values[i]
            if isinstance(v, str):
                if not _is_text(v):
                    return _not_text_reason(v)
                return f"oversized string: {len(v)} chars > {max_length}"
            if isinstance(v, float):
                return f"non-finite value: {v}"
            if type(v) is int:
                return f"integer out of range: {_short(v)} does not fit in 64 bits"
            return f"wrong type: expected string or number, got {_type_name(v)} {_short(v)}"

        return values, absent | bad, bad, problem


def _toml_key(name: str) -> str:
    """`name` as a TOML key: bare when it can be, else quoted (JSON's quoting is TOML's), cut if long."""
    if len(name) > _MAX_REPR:
        name = name[:_MAX_REPR]
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def kind_lookup(kind_map: Mapping[str, str]) -> dict[str, int]:
    """Every kind name the validator accepts (trimmed, lower case) -> its code: the canonical kinds, then
    the map's names (which may also re-map a canonical one: ``like = "click"``).

    >>> kind_lookup({"Add_To_Cart ": "click"})["add_to_cart"], len(kind_lookup({}))
    (1, 5)
    """
    names = {name: code for code, name in enumerate(EVENT_KINDS)}
    for raw, kind in kind_map.items():
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(f"kinds: a raw kind name must be non-blank text, got {raw!r}")
        if not isinstance(kind, str) or kind.strip().lower() not in KIND_CODES:
            raise ConfigError(f"kinds.{raw}: {kind!r} is not a kind; map it to one of {_KIND_LIST}")
        names[raw.strip().lower()] = KIND_CODES[kind.strip().lower()]
    return names


def validate_records(
    records: Sequence[Any],
    start_position: int = 0,
    *,
    limits: SchemaLimits = DEFAULT_LIMITS,
    default_kind: str = "view",
) -> ValidationResult:
    """Validate JSON-like records with a fresh `EventValidator` (see `EventValidator.validate_records`).

    >>> validate_records([{"event_id": 1, "timestamp": "2024-05-01T12:00:00Z", "user_id": 1}]).rejections
    [Rejection(position=0, field='item_id', reason='missing field', record={'event_id': 1, \
'timestamp': '2024-05-01T12:00:00Z', 'user_id': 1})]
    """
    return EventValidator(limits, default_kind).validate_records(records, start_position)


# What `reason_group` takes out of a reason: the value it quotes, leaving what is wrong with it. One
# pattern per reason above that quotes a value; tests/preprocess/test_validate.py checks each of them.
_GROUPS = [
    (re.compile(r"^(unparseable timestamp) .*?: (expected .*)$"), r"\1: \2"),
    (re.compile(r"^(timestamp out of range): \S+ is (before|after) (.*)$"), r"\1: \2 \3"),
    (re.compile(r"^(.*): \d+ chars > (\d+)$"), r"\1: more than \2 chars"),
    (re.compile(r"^(too many (?:context )?fields): \d+ > (\d+)$"), r"\1: more than \2"),
    (
        re.compile(r"^(wrong type: expected [^,]+), got (undecodable text \(not UTF-8\)|\w+).*$"),
        r"\1, got \2",
    ),
    (re.compile(r"^(unknown kind(?: code)?) .*? (\(expected .*\))$"), r"\1 \2"),
    (re.compile(r"^((?:integer|number) out of range): .* (does not fit in .*)$"), r"\1: \2"),
    (re.compile(r"^((?:field name )?not valid text): .* (holds a lone surrogate.*)$"), r"\1: \2"),
    (re.compile(r"^(not a number|non-finite value): .*$"), r"\1"),
    (re.compile(r"^(invalid JSON) at column \d+(: .*)$"), r"\1\2"),
]


def reason_group(reason: str) -> str:
    """A rejection reason without the value it quotes, so that rejections of one kind count together.

    >>> reason_group("timestamp out of range: 1.7e+12 is after 2200-01-01 (milliseconds?)")
    'timestamp out of range: after 2200-01-01 (milliseconds?)'
    >>> reason_group("unparseable timestamp '05/01/2024 14:00': expected epoch seconds or ISO 8601")
    'unparseable timestamp: expected epoch seconds or ISO 8601'
    >>> reason_group("missing field")
    'missing field'
    """
    for pattern, replacement in _GROUPS:
        grouped, found = pattern.subn(replacement, reason)
        if found:
            return grouped
    return reason


class DeadLetterWriter(AbstractContextManager["DeadLetterWriter"]):
    """Append rejections to a JSON-lines file, one object per rejected record.

    Each line is ``{"position", "field", "reason", "record", "source"}``. The file is opened (and its
    folder created) only when the first rejection arrives, so a clean run leaves no file behind; it is
    flushed after every `write`, so what a crash leaves is complete lines.

    Parameters
    ----------
    path
        The JSONL file; appended to if it exists. None counts rejections without writing them.
    source
        Default source name written with each rejection.

    >>> import tempfile, pathlib
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(folder.name) / "dead.jsonl"
    >>> with DeadLetterWriter(path, source="ratings.csv") as dead:
    ...     dead.write([Rejection(7, "user_id", "missing field", {"user_id": ""})])
    >>> dead.count, path.read_text().count("\\n")
    (1, 1)
    >>> folder.cleanup()
    """

    def __init__(self, path: str | Path | None, source: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.source = source
        self._file: IO[str] | None = None
        self._count = 0

    @property
    def count(self) -> int:
        """Rejections written so far by this writer."""
        return self._count

    def write(self, rejections: Iterable[Rejection], source: str | None = None) -> None:
        """Append a batch of rejections and flush."""
        rejections = list(rejections)
        if not rejections:
            return
        self._count += len(rejections)
        if self.path is None:
            return
        name = self.source if source is None else source
        lines = [
            json.dumps(
                {
                    "position": r.position,
                    "field": r.field,
                    "reason": r.reason,
                    "record": _jsonable(r.record),
                    "source": name,
                },
                ensure_ascii=False,
                allow_nan=False,
            )
            for r in rejections
        ]
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- internals ------------------------------------------------------------------------------------------


class _FirstFailure:
    """Remembers, per row, the first field that failed and why; reasons are formatted only for those rows."""

    def __init__(self, n: int) -> None:
        self.rejected = np.zeros(n, dtype=bool)
        self._failures: dict[int, tuple[str, str]] = {}

    def add(self, field: str, bad: np.ndarray, reason: Reason) -> None:
        if not bad.any():
            return
        new = bad & ~self.rejected
        for row in np.flatnonzero(new).tolist():
            self._failures[row] = (field, reason(row))
        self.rejected |= new

    def items(self) -> Iterable[tuple[int, tuple[str, str]]]:
        return self._failures.items()


def _flatten_record(record: dict[Any, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """A record with its nested ``context`` object merged into the top level, or the problem found."""
    flat = {str(key): value for key, value in record.items() if key != "context"}
    nested = record.get("context")
    if nested is None:
        return flat, None
    if not isinstance(nested, dict):
        return flat, (
            "context",
            f"wrong type: expected an object of context fields, got {_type_name(nested)}",
        )
    for key, value in nested.items():
        name = str(key)
        if name in EVENT_COLUMNS:
            return flat, ("context", f"context field {name!r} shadows the event field of that name")
        if name in flat:
            return flat, ("context", f"context field {name!r} is given twice (top level and in context)")
        flat[name] = value
    return flat, None


def _finish_ids(column: np.ndarray, is_str: np.ndarray | None, rows: slice | np.ndarray) -> np.ndarray:
    """The accepted ids: int64 when every one is an integer (the fast form downstream), else object."""
    kept = column[rows]
    if kept.dtype != object or (is_str is not None and is_str[rows].any()):
        return kept
    return kept.astype(np.int64) if len(kept) else np.empty(0, dtype=np.int64)


def _row_record(columns: dict[str, np.ndarray], row: int) -> dict[str, Any]:
    return {name: _jsonable(_plain(column[row])) for name, column in columns.items()}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _jsonable(value: Any) -> Any:
    """A value JSON can carry without loss of meaning: non-finite floats and odd types become text."""
    value = _plain(value)
    if type(value) is int and value.bit_length() > _DECIMAL_TEXT_BITS:
        return _short(value)  # json.dumps would fail: beyond Python's limit on int-to-text conversion
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def _short_json(value: Any) -> str:
    text = json.dumps(_jsonable(value), ensure_ascii=False)
    return text if len(text) <= 1000 else text[:1000] + "..."


def _short(value: Any) -> str:
    if type(value) is int and value.bit_length() > _QUOTED_INT_BITS:
        # Its decimal text would be cut to its first digits anyway, and beyond Python's int-to-text limit
        # (4,300 digits) repr raises: the size is what tells the sender what is wrong.
        return f"an integer of about {_decimal_digits(value):,} digits"
    try:
        text = repr(value)
    except ValueError:  # a list or object holding such an integer
        return "holding an integer too long to quote"
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "..."


def _decimal_digits(value: int) -> int:
    """Digits of `value` in decimal, from its bit length (exact but for the last one), without the text."""
    return int((abs(value).bit_length() - 1) * math.log10(2)) + 1


def _is_text(value: str) -> bool:
    """Whether UTF-8 can encode `value`: a lone surrogate (``"\\ud800"``, which JSON's escapes and Python
    strings allow) cannot, and the event log stores text as UTF-8."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(strings: list[str]) -> np.ndarray:
    """Which of `strings` UTF-8 cannot encode (one encode of them all when every one can)."""
    try:
        "".join(strings).encode("utf-8")  # a surrogate never pairs across strings: Python never joins them
    except UnicodeEncodeError:
        return np.fromiter((not _is_text(s) for s in strings), dtype=bool, count=len(strings))
    return np.zeros(len(strings), dtype=bool)


def _not_text_reason(value: str) -> str:
    return f"not valid text: {_short(value)} holds a lone surrogate, which UTF-8 cannot encode"


def _timestamp_problem(status: int, value: Any) -> str:
    if type(value) is int:  # only an integer beyond float's range fails to parse
        return f"number out of range: {_short(value)} does not fit in a float"
    if isinstance(value, list | dict):
        expected = "expected epoch seconds or an ISO 8601 string"
        return f"wrong type: {expected}, got {_type_name(value)} {_short(value)}"
    return describe_problem(status, value)


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", type(None): "null", bytes: "undecodable text (not UTF-8)"}
    return names.get(type(value), type(value).__name__)


def _finite_or_inf(value: Any) -> float:
    try:
        return float(value)
    except (OverflowError, TypeError, ValueError):
        return math.inf


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d")


def _mask(boolean: pa.Array) -> np.ndarray:
    return boolean.fill_null(False).to_numpy(zero_copy_only=False)
