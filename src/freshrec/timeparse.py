"""Turn raw timestamp columns (epoch seconds as numbers or text, ISO 8601 text) into epoch seconds.

Shared by the file sources (which sort a file by event time before replay) and the validator (which
rejects what does not parse). Parsing is lenient in what it accepts and strict in what it reports: every
row gets a status code, never an exception, so one bad cell can never stop a replay. This module never
decides whether a timestamp is *plausible* (range limits are the validator's job) and never guesses
units: a 13-digit number is parsed in the unit it is told (seconds unless ``unit="ms"`` says otherwise)
and left for the validator to reject as out of range.

Accepted forms: numbers (``1700000000``, ``1.7e9``, ``"1700000000.5"``), ISO 8601 dates and date-times
with ``T`` or a space between date and time, optional fractional seconds and an optional ``Z`` or
``+hh:mm`` / ``+hhmm`` offset (``2024-05-01``, ``2024-05-01T12:00:00.250Z``,
``2024-05-01 14:00:00+02:00``). A date-time without an offset is read as UTC. A ``time_format``
(strptime codes, e.g. ``%m/%d/%Y %H:%M`` for US dates) is tried first on text; what it does not match
is read as above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshrec.errors import ConfigError

# Row status codes of `ParsedTimes.status`.
OK = 0
MISSING = 1  # None, or an empty / blank string
WRONG_TYPE = 2  # neither a number nor a string (bool, list, dict, ...)
UNPARSEABLE = 3  # a string that is neither a number nor ISO 8601
NON_FINITE = 4  # nan or +-inf, given as a number or as text

# Value type codes of `value_types`: what the validator and the parsers dispatch on.
T_NONE, T_STR, T_INT, T_FLOAT, T_BOOL, T_OTHER = range(6)
_TYPE_CODES: dict[type, int] = {type(None): T_NONE, str: T_STR, int: T_INT, float: T_FLOAT, bool: T_BOOL}

# The number syntax pyarrow's string -> float64 cast accepts; the fallback path must accept exactly the
# same strings as the fast path (the whole-column cast), or a value's fate would depend on its neighbours.
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_NON_FINITE_WORD = r"(?i)^[+-]?(?:nan|inf|infinity)$"
# ISO 8601 restricted to what both pyarrow's cast and `datetime.fromisoformat` read identically.
_DATE = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
_OFFSET = r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])"
_ISO_NAIVE = rf"^{_DATE}(?:[T ]{_TIME})?$"
_ISO_AWARE = rf"^{_DATE}[T ]{_TIME}{_OFFSET}$"

_MICROS = 1_000_000.0

#: Units of numeric epochs -> how many of them make a second.
TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


@dataclass(frozen=True)
class ParsedTimes:
    """Epoch seconds per row and a status code per row (`OK`, `MISSING`, `WRONG_TYPE`, ...).

    ``seconds`` is ``NaN`` wherever ``status`` is not `OK`, so ``np.argsort(seconds, kind="stable")``
    sorts unparseable rows to the end while keeping the file order of ties.
    """

    seconds: np.ndarray
    status: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        return self.status == OK


def value_types(values: Sequence[Any]) -> np.ndarray:
    """The type code (`T_STR`, `T_INT`, ...) of each value of a plain Python list, as int8.

    Exact type dispatch, so ``True`` is `T_BOOL`, not an integer. numpy scalars must have been turned
    into Python scalars first (see `classify_column`).

    >>> value_types(["a", 1, 2.5, None, True, [1]]).tolist()
    [1, 2, 3, 0, 4, 5]
    """
    return _type_codes(values, set(map(type, values)))


def _type_codes(values: Sequence[Any], present: set[type]) -> np.ndarray:
    n = len(values)
    if len(present) == 1:  # the usual case (a CSV column is all text): no per-value lookup
        return np.full(n, _TYPE_CODES.get(next(iter(present)), T_OTHER), dtype=np.int8)
    codes = map(_TYPE_CODES.get, map(type, values), repeat(T_OTHER))
    return np.fromiter(codes, dtype=np.int8, count=n)


def classify_column(column: np.ndarray) -> tuple[list[Any], np.ndarray]:
    """The values of an object (or text) column as plain Python values, and their type codes.

    numpy scalars become Python scalars, so an ``np.int64`` id is an int like any other.

    >>> values, types = classify_column(np.array([np.int64(3), "a", None], dtype=object))
    >>> values, types.tolist()
    ([3, 'a', None], [2, 1, 0])
    """
    values = column.astype(object).tolist() if column.dtype.kind in "US" else column.tolist()
    present = set(map(type, values))
    if any(issubclass(t, np.generic) for t in present):
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        present = set(map(type, values))
    return values, _type_codes(values, present)


def text_array(strings: Sequence[str]) -> pa.Array:
    """Python strings as a pyarrow string array, for vectorised text checks.

    A lone surrogate (``"\\ud800"``, legal in JSON escapes, not in UTF-8) becomes ``"?"``, so one odd string
    cannot make a whole column unreadable; the string keeps its length.

    >>> text_array(["a", "\\ud800b"]).to_pylist()
    ['a', '?b']
    """
    try:
        return pa.array(strings, pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        return pa.array([s.encode("utf-8", "replace").decode("utf-8") for s in strings], pa.string())


def check_time_options(unit: str, time_format: str | None) -> None:
    """Raise a `ConfigError` naming the option when `unit` or `time_format` cannot be used.

    >>> check_time_options("ms", "%m/%d/%Y")
    >>> check_time_options("min", None)
    Traceback (most recent call last):
    ...
    freshrec.errors.ConfigError: time_unit 'min' is not one of s, ms, us, ns
    """
    if unit not in TIME_UNITS:
        raise ConfigError(f"time_unit {unit!r} is not one of {', '.join(TIME_UNITS)}")
    if time_format is not None and "%" not in time_format:
        raise ConfigError(
            f"time_format {time_format!r} has no strptime code; write it with codes such as "
            "'%m/%d/%Y %H:%M' (month/day/year hour:minute)"
        )


def parse_times(
    values: np.ndarray | pa.Array | pa.ChunkedArray | Sequence[Any],
    unit: str = "s",
    time_format: str | None = None,
) -> ParsedTimes:
    """Parse a column of timestamps (numbers, numeric text or ISO 8601 text) into epoch seconds.

    Typed numeric columns take a pure array path; text (an object column, or a pyarrow string array as
    read from a file) goes through pyarrow casts over the whole column (per-element Python only for ISO
    strings that pyarrow cannot read, e.g. with nanosecond digits).

    Parameters
    ----------
    unit
        What a number counts since the epoch: ``s``, ``ms``, ``us`` or ``ns`` (ISO text is unaffected).
    time_format
        A strptime format tried first on text (``%m/%d/%Y %H:%M``); naive times are read as UTC.

    >>> parsed = parse_times(np.array([1.5, "1970-01-01T00:01:00Z", "soon", None], dtype=object))
    >>> parsed.seconds[:2].tolist(), parsed.status.tolist()
    ([1.5, 60.0], [0, 0, 3, 1])
    >>> mixed = np.array([1500, "01/02/1970 00:00"], dtype=object)
    >>> parse_times(mixed, unit="ms", time_format="%m/%d/%Y %H:%M").seconds.tolist()
    [1.5, 86400.0]
    """
    check_time_options(unit, time_format)
    scale = TIME_UNITS[unit]
    if isinstance(values, pa.ChunkedArray | pa.Array) and pa.types.is_string(values.type):
        return _parse_strings(values, scale, time_format)
    column = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    n = len(column)
    kind = column.dtype.kind
    if kind == "f":
        seconds = column.astype(np.float64, copy=True)
        if scale != 1.0:
            seconds /= scale
        return _finite_status(seconds, np.zeros(n, dtype=np.int8))
    if kind in "iu":
        return ParsedTimes(column.astype(np.float64) / scale, np.zeros(n, dtype=np.int8))
    if kind == "M":
        ns = column.astype("datetime64[ns]")
        missing = np.isnat(ns)
        seconds = np.where(missing, np.nan, ns.astype(np.int64) / 1e9)
        return ParsedTimes(seconds, np.where(missing, MISSING, OK).astype(np.int8))
    if kind == "b":
        return ParsedTimes(np.full(n, np.nan), np.full(n, WRONG_TYPE, dtype=np.int8))
    if kind in "US":
        return _parse_strings(text_array(column.astype(str).tolist()), scale, time_format)
    return _parse_objects(*classify_column(column), scale, time_format)


def parse_time(value: str | int | float) -> float:
    """Parse one timestamp (epoch seconds or ISO 8601) given by a person, e.g. on the command line.

    >>> parse_time("2024-01-01T00:00:00Z")
    1704067200.0
    >>> parse_time("1704067200")
    1704067200.0
    """
    parsed = parse_times(np.array([value], dtype=object))
    if parsed.status[0] != OK:
        raise ConfigError(f"timestamp {value!r}: {describe_problem(int(parsed.status[0]), value)}")
    return float(parsed.seconds[0])


def describe_problem(status: int, value: Any, time_format: str | None = None) -> str:
    """A person-readable reason for a non-OK status code of `parse_times` (given the format it tried)."""
    if status == MISSING:
        return "missing field"
    if status == WRONG_TYPE:
        name = "undecodable text (not UTF-8)" if isinstance(value, bytes) else type(value).__name__
        return f"wrong type: expected epoch seconds or an ISO 8601 string, got {name} {value!r}"
    if status == NON_FINITE:
        return f"non-finite value: {value}"
    if status == UNPARSEABLE:
        text = value if len(value) <= 40 else value[:40] + "..."
        expected = "epoch seconds or ISO 8601 (e.g. 1714564800 or 2024-05-01T12:00:00Z)"
        if time_format is not None:
            expected = f"the time format {time_format!r}, {expected}"
        return f"unparseable timestamp {text!r}: expected {expected}"
    raise ValueError(f"status {status} is not a problem code")


def _finite_status(seconds: np.ndarray, status: np.ndarray) -> ParsedTimes:
    bad = ~np.isfinite(seconds)
    if bad.any():
        status = np.where(bad & (status == OK), NON_FINITE, status).astype(np.int8)
        seconds[status != OK] = np.nan
    return ParsedTimes(seconds, status)


def _parse_objects(
    values: list[Any], types: np.ndarray, scale: float, time_format: str | None
) -> ParsedTimes:
    n = len(values)
    if (types == T_STR).all():
        return _parse_strings(text_array(values), scale, time_format)
    seconds = np.full(n, np.nan)
    status = np.full(n, WRONG_TYPE, dtype=np.int8)
    status[types == T_NONE] = MISSING
    numbers = np.flatnonzero((types == T_INT) | (types == T_FLOAT))
    if len(numbers):
        seconds[numbers] = [_as_float(values[i]) / scale for i in numbers.tolist()]
        status[numbers] = OK
    strings = np.flatnonzero(types == T_STR)
    if len(strings):
        parsed = _parse_strings(text_array([values[i] for i in strings.tolist()]), scale, time_format)
        seconds[strings] = parsed.seconds
        status[strings] = parsed.status
    return _finite_status(seconds, status)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: infinitely far in the future or past
        return float("inf") if value > 0 else float("-inf")


def parse_number_strings(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Numbers written as text: float64 values and status codes (`OK`, `MISSING` for blank text,
    `NON_FINITE` for nan/inf, `UNPARSEABLE` otherwise). Surrounding whitespace is ignored.

    >>> values, status = parse_number_strings(pa.array(["4.5", " 3 ", "", "four", "inf"]))
    >>> values[:2].tolist(), status.tolist()
    ([4.5, 3.0], [0, 0, 1, 3, 4])
    """
    values, status, _ = _parse_numbers(pc.utf8_trim_whitespace(strings))
    return values, status


def _parse_numbers(trimmed: pa.Array) -> tuple[np.ndarray, np.ndarray, bool]:
    """Parse trimmed text as numbers; the flag says whether every string was numeric text."""
    n = len(trimmed)
    # Fast path: the whole column is numeric text (epoch seconds in a CSV): one cast, no regex.
    try:
        values = trimmed.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
        parsed = _finite_status(values, np.zeros(n, dtype=np.int8))
        return parsed.seconds, parsed.status, True
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values = np.full(n, np.nan)
    status = np.full(n, UNPARSEABLE, dtype=np.int8)
    status[_mask(pc.equal(trimmed, ""))] = MISSING
    numeric = _mask(pc.match_substring_regex(trimmed, _NUMBER)) | _mask(
        pc.match_substring_regex(trimmed, _NON_FINITE_WORD)
    )
    if numeric.any():
        idx = np.flatnonzero(numeric)
        values[idx] = trimmed.take(pa.array(idx)).cast(pa.float64()).to_numpy(zero_copy_only=False)
        status[idx] = OK
    parsed = _finite_status(values, status)
    return parsed.seconds, parsed.status, False


def _parse_strings(strings: pa.Array, scale: float = 1.0, time_format: str | None = None) -> ParsedTimes:
    trimmed = pc.utf8_trim_whitespace(strings)
    seconds, status, all_numeric = _parse_numbers(trimmed)
    if scale != 1.0:
        seconds /= scale  # NaN where not a number: only numeric text changes
    if all_numeric and time_format is None:
        return ParsedTimes(seconds, status)
    if not all_numeric:
        for pattern, unit in ((_ISO_AWARE, pa.timestamp("us", tz="UTC")), (_ISO_NAIVE, pa.timestamp("us"))):
            idx = np.flatnonzero(_mask(pc.match_substring_regex(trimmed, pattern)))
            if len(idx):
                subset = trimmed.take(pa.array(idx))
                seconds[idx], status[idx] = _parse_iso(subset, unit)
    if time_format is not None:
        # The format the user named wins over the generic forms (``%Y%m%d`` text is also a number).
        try:
            formatted = pc.strptime(trimmed, format=time_format, unit="us", error_is_null=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise ConfigError(f"time_format {time_format!r} cannot be used: {error}") from None
        matched = _mask(pc.is_valid(formatted))
        if matched.any():
            micros = formatted.cast(pa.int64()).to_numpy(zero_copy_only=False)
            seconds[matched] = micros[matched] / _MICROS
            status[matched] = OK
    return _finite_status(seconds, status)


def _parse_iso(strings: pa.Array, unit: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    """ISO strings of one family (all with offsets, or all naive) as seconds and status codes."""
    try:
        micros = strings.cast(unit).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return micros / _MICROS, np.zeros(len(strings), dtype=np.int8)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Some string in the column is beyond pyarrow (nanosecond digits, an impossible day like
    # 2023-02-30): let Python judge each one, giving the same answer pyarrow would where both read it.
    seconds = np.full(len(strings), np.nan)
    status = np.full(len(strings), UNPARSEABLE, dtype=np.int8)
    for i, text in enumerate(strings.to_pylist()):
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        seconds[i] = ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) / _MICROS
        status[i] = OK
    return seconds, status


def _mask(boolean: pa.Array) -> np.ndarray:
    return boolean.fill_null(False).to_numpy(zero_copy_only=False)
