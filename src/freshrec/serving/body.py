"""Reading a request body into JSON records: its media type, its size, UTF-8, its nesting and its JSON (one
document, or JSON lines), each fault of the body as a whole a `BodyError` carrying its HTTP status.

A body is refused whole (400, 413, 415) only for what makes it unreadable; judging each record is the
validator's (`freshrec.preprocess.validate`), so that one bad event never costs the good ones around it.
Whatever the bytes, this module raises nothing but `BodyError`, never holds more than the size limit of a
body, and never lets the JSON parser recurse deeper than the nesting limit. It does not import the web
framework: the routes hand it the body's chunks and headers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec.errors import FreshrecError

__all__ = [
    "JSON_LINES_TYPES",
    "JSON_TYPES",
    "BodyError",
    "BodyFormat",
    "BodyLimits",
    "body_format",
    "parse_records",
    "read_body",
]

BodyFormat = Literal["json", "lines"]

#: Media types read as one JSON document (an object or an array of objects; JSON lines are accepted too,
#: as before media types were checked). A request without a Content-Type is read as this.
JSON_TYPES = ("application/json",)
#: Media types read as JSON lines: one JSON value per line, blank lines skipped.
JSON_LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")

_ACCEPTED = ", ".join((*JSON_TYPES, *JSON_LINES_TYPES))
_BOM = "\ufeff"
# The nesting check: an escape and the character it escapes, and each byte's step in depth.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


class BodyError(FreshrecError):
    """The body as a whole cannot be read: `status` is the HTTP status to answer, `detail` says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class BodyLimits:
    """Bounds on one body (`freshrec.serving.config.ServingConfig` says what each is for)."""

    max_bytes: int = 1 << 20
    max_depth: int = 32
    max_records: int = 10_000


def body_format(content_type: str | None) -> BodyFormat:
    """How to read a body of this ``Content-Type``: 415 for anything but JSON and JSON lines in UTF-8.

    A missing Content-Type is read as JSON: clients that send none mean the only thing this route takes,
    and the body is parsed strictly either way.

    >>> body_format("application/json; charset=UTF-8"), body_format("application/x-ndjson"), body_format(None)
    ('json', 'lines', 'json')
    >>> body_format("text/plain")
    Traceback (most recent call last):
    ...
    freshrec.serving.body.BodyError: Content-Type 'text/plain' is not accepted; send one of \
application/json, application/x-ndjson, application/jsonl, application/x-jsonlines
    """
    if content_type is None or not content_type.strip():
        return "json"
    media, *parameters = (part.strip() for part in content_type.split(";"))
    media = media.lower()
    if media in JSON_TYPES:
        form: BodyFormat = "json"
    elif media in JSON_LINES_TYPES:
        form = "lines"
    else:
        raise BodyError(415, f"Content-Type {_quote(content_type)} is not accepted; send one of {_ACCEPTED}")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BodyError(
                415, f"charset {_quote(value.strip())} is not accepted: JSON is read as UTF-8 (RFC 8259)"
            )
    return form


async def read_body(chunks: AsyncIterable[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The body, refused with 413 from its declared `content_length` before anything is read, or as soon as
    the chunks pass `max_bytes`: never more than `max_bytes` are held."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BodyError(400, f"Content-Length {_quote(content_length)} is not a number") from None
        if declared > max_bytes:
            raise BodyError(413, f"a body of {declared:,} bytes exceeds the limit of {max_bytes:,} bytes")
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > max_bytes:
            raise BodyError(413, f"the body exceeds the limit of {max_bytes:,} bytes (refused while reading)")
        body += chunk
    return bytes(body)


def parse_records(body: bytes, form: BodyFormat, limits: BodyLimits = BodyLimits()) -> list[object]:
    """The JSON records of a body: one object, an array, or JSON lines (`form` ``"lines"``, or a
    ``"json"`` body of several lines that is not one document).

    400 for a body that is empty, not UTF-8 (naming the byte offset), nested deeper than
    ``limits.max_depth`` or not JSON (naming line, column and character), 413 for more than
    ``limits.max_records`` records. ``NaN`` and ``Infinity`` are read as Python's json reads them (the
    validator then judges the field: a NaN value means absent). An integer literal too long for Python to
    convert (over 4,300 digits) is read as an integer of the same sign and number of digits: every field
    rejects it as out of range, and reasons quote only its size.

    >>> parse_records(b'[{"event_id": 1}, {"event_id": 2}]', "json")
    [{'event_id': 1}, {'event_id': 2}]
    >>> parse_records(b'{"a": 1}\\n\\n{"a": 2}\\n', "lines")
    [{'a': 1}, {'a': 2}]
    >>> parse_records(b'{"a": 1,', "json")
    Traceback (most recent call last):
    ...
    freshrec.serving.body.BodyError: malformed JSON at line 1 column 9 (character 8): Expecting property \
name enclosed in double quotes
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyError(
            400,
            f"the body is not valid UTF-8: byte 0x{body[error.start]:02x} at offset {error.start} "
            f"({error.reason}); send JSON encoded as UTF-8",
        ) from None
    text = text.removeprefix(_BOM)
    if not text.strip():
        raise BodyError(400, "empty body: send a JSON object, an array of objects, or JSON lines")
    depth = _deepest_nesting(body)
    if depth > limits.max_depth:
        raise BodyError(
            400,
            f"the body nests arrays and objects {depth} deep, deeper than the limit of {limits.max_depth} "
            "(an event is a flat object, its context one object)",
        )
    records = _lines(text) if form == "lines" else _document_or_lines(text)
    if len(records) > limits.max_records:
        raise BodyError(
            413,
            f"{len(records):,} records in one request exceed the limit of {limits.max_records:,}; "
            "split them into several requests",
        )
    return records


def _document_or_lines(text: str) -> list[object]:
    try:
        parsed = _loads(text)
    except json.JSONDecodeError as error:
        lines = text.strip().splitlines()
        if len(lines) < 2:
            raise _malformed(error) from None
        try:
            _loads(lines[0])
        except json.JSONDecodeError:
            raise _malformed(error) from None  # not JSON lines either: the document's error says most
        return _lines(text)
    return parsed if isinstance(parsed, list) else [parsed]


def _lines(text: str) -> list[object]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_loads(line))
        except json.JSONDecodeError as error:
            raise _malformed(error, line=number) from None
    return records


def _loads(text: str) -> object:
    """`json.loads`, with integer literals too long for `int` read by `_integer` (only then: the hook
    costs a Python call per integer)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        return json.loads(text, parse_int=_integer)
    except RecursionError:  # cannot happen below the nesting limit; a safety net, not a path
        raise json.JSONDecodeError("nested too deep", text, 0) from None


def _integer(literal: str) -> int:
    """An integer literal as `int`, or, beyond Python's limit on text-to-int conversion (which guards
    against its quadratic cost), an integer of the same sign and number of digits, made in linear time."""
    try:
        return int(literal)
    except ValueError:
        digits = len(literal.lstrip("-"))
        magnitude = 1 << math.ceil((digits - 1) * math.log2(10))
        return -magnitude if literal.startswith("-") else magnitude


def _deepest_nesting(body: bytes) -> int:
    """How deep arrays and objects nest in `body`, outside strings, with C-speed passes only (a regular
    expression, `bytes.translate`, numpy): exact for valid JSON, and never less than what the parser would
    descend before it stopped at an error. Escapes are dropped first, so that an escaped quote does not end
    a string; then only brackets and quotes are kept, and a bracket after an odd number of quotes is text."""
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    structure = np.frombuffer(body.translate(None, _NOT_STRUCTURE), dtype=np.uint8)
    if not len(structure):
        return 0
    steps = _STEP[structure]
    steps[np.cumsum(structure == ord('"')) % 2 == 1] = 0
    return max(0, int(np.cumsum(steps).max()))


def _malformed(error: json.JSONDecodeError, line: int | None = None) -> BodyError:
    where = f"line {error.lineno if line is None else line} column {error.colno}"
    if line is None:
        where += f" (character {error.pos})"
    return BodyError(400, f"malformed JSON at {where}: {error.msg}")


def _quote(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")
