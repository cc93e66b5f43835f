"""Reading request bodies: whatever the bytes, records or a `BodyError` with its 4xx status, nothing else."""

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.serving.body import BodyError, BodyLimits, body_format, parse_records, read_body

LIMITS = BodyLimits(max_bytes=1 << 16, max_depth=8, max_records=50)


def refusal(body: bytes, form: str = "json", limits: BodyLimits = LIMITS) -> BodyError:
    with pytest.raises(BodyError) as caught:
        parse_records(body, form, limits)
    return caught.value


def test_one_object_an_array_or_json_lines() -> None:
    assert parse_records(b'{"a": 1}', "json") == [{"a": 1}]
    assert parse_records(b'[{"a": 1}, 2]', "json") == [{"a": 1}, 2]
    assert parse_records(b'{"a": 1}\n{"a": 2}', "json") == [{"a": 1}, {"a": 2}]  # lines sent as JSON
    assert parse_records(b'\n{"a": 1}\r\n\n[1]\n', "lines") == [{"a": 1}, [1]]
    assert parse_records(b'\xef\xbb\xbf{"a": 1}', "json") == [{"a": 1}]  # a UTF-8 byte order mark


def test_faults_of_the_whole_body_name_where() -> None:
    error = refusal(b'{"id": "caf\xe9"}')
    assert error.status == 400 and "not valid UTF-8: byte 0xe9 at offset 11" in error.detail
    assert refusal(b" \n\t").detail.startswith("empty body")
    error = refusal(b'[{"a": 1},\n {"a": ]')
    assert error.status == 400 and "line 2 column 8 (character 18)" in error.detail
    error = refusal(b'{"a": 1}\n{"a": 2}\n{"a": ', "lines")
    assert "malformed JSON at line 3 column 7" in error.detail
    # Not JSON lines either (its first line is no JSON value): the document's own error is reported.
    assert "line 3 column 1" in refusal(b'[\n{"a": 1},\n').detail
    error = refusal(b"[" + b"1," * 50 + b"1]")
    assert error.status == 413 and "51 records in one request exceed the limit of 50" in error.detail


def test_nesting_is_bounded_before_parsing_outside_strings_only() -> None:
    assert refusal(b"[" * 100_000 + b"]" * 100_000).detail.startswith("the body nests arrays and objects")
    assert "9 deep" in refusal(b'{"a":' * 9 + b"1" + b"}" * 9).detail
    assert parse_records(b'{"a":' * 8 + b"1" + b"}" * 8, "json")  # at the limit
    brackets_in_text = json.dumps([{"id": "[[[[[[[[[[[[{{{{{{{{{{", "q": '\\"[[[[[[[[[[[["'}]).encode()
    assert parse_records(brackets_in_text, "json", LIMITS)[0]["id"].startswith("[[[[")
    escaped_quote = b'["\\"", [[[[[[[[[[1]]]]]]]]]]]'  # the escaped quote does not end the string
    assert "11 deep" in refusal(escaped_quote).detail


def test_integer_literals_beyond_pythons_text_limit_are_read_by_size() -> None:
    [record] = parse_records(b'{"user_id": -' + b"9" * 5000 + b', "t": 1}', "json")
    assert record["t"] == 1 and record["user_id"] < 0
    assert 4999 * 3.32 < record["user_id"].bit_length() < 5001 * 3.33  # about 5,000 digits
    [line] = parse_records(b'{"v": ' + b"1" * 10_000 + b"}", "lines")
    assert line["v"].bit_length() > 33_000


def test_nan_and_infinity_are_read_as_python_reads_them() -> None:
    [record] = parse_records(b'{"value": NaN, "timestamp": -Infinity}', "json")
    assert record["value"] != record["value"] and record["timestamp"] == float("-inf")


@pytest.mark.parametrize(
    ("header", "form"),
    [
        (None, "json"),
        ("", "json"),
        ("application/json", "json"),
        ("Application/JSON; charset=utf-8", "json"),
        ('application/json; charset="UTF8"', "json"),
        ("application/x-ndjson", "lines"),
        ("application/jsonl", "lines"),
        ("application/x-jsonlines; charset=utf-8", "lines"),
    ],
)
def test_accepted_media_types(header, form) -> None:
    assert body_format(header) == form


@pytest.mark.parametrize(
    "header",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
     "application/json; charset=latin-1", "json", "*/*"],
)  # fmt: skip
def test_other_media_types_are_415(header) -> None:
    with pytest.raises(BodyError) as caught:
        body_format(header)
    assert caught.value.status == 415


async def chunks_of(*parts: bytes):
    for part in parts:
        yield part


def test_the_size_limit_is_applied_to_the_declared_length_and_while_streaming() -> None:
    read = asyncio.run
    assert read(read_body(chunks_of(b"ab", b"cd"), "4", 4)) == b"abcd"
    with pytest.raises(BodyError, match="a body of 50,000,000 bytes exceeds the limit of 4 bytes") as caught:
        read(read_body(chunks_of(), "50000000", 4))  # refused before a byte is read
    assert caught.value.status == 413

    taken: list[bytes] = []

    async def endless():
        while True:
            taken.append(b"x" * 3)
            yield taken[-1]

    with pytest.raises(BodyError, match="refused while reading"):
        read(read_body(endless(), None, 10))
    assert len(taken) == 4  # stopped at the chunk that passed the limit
    with pytest.raises(BodyError, match="Content-Length 'ten' is not a number"):
        read(read_body(chunks_of(), "ten", 10))


# -- properties -----------------------------------------------------------------------------------------

json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)
#: Bytes that look like JSON often enough to reach every stage: structure, strings, escapes, digits, junk.
jsonish = st.lists(
    st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b":", b",", b"1", b"-", b"e9", b"9" * 4400, b"NaN",
                     b"\n", b" ", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"true", b"\x00"]),
    max_size=60,
).map(b"".join)  # fmt: skip


def nesting(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=200), jsonish), st.sampled_from(["json", "lines"]))
def test_any_bytes_give_records_or_a_4xx_body_error(body: bytes, form: str) -> None:
    try:
        records = parse_records(body, form, LIMITS)
    except BodyError as error:
        assert error.status in (400, 413) and error.detail
    else:
        assert isinstance(records, list) and len(records) <= LIMITS.max_records


@settings(max_examples=300, deadline=None)
@given(json_text, st.integers(min_value=0, max_value=6))
def test_valid_json_is_refused_exactly_when_it_nests_beyond_the_limit(value: object, extra: int) -> None:
    for _ in range(extra):
        value = [value]
    body = json.dumps(value).encode()
    depth = nesting(value)
    try:
        records = parse_records(body, "json", LIMITS)
    except BodyError as error:
        assert depth > LIMITS.max_depth and error.status == 400 and f"{depth} deep" in error.detail
    else:
        assert depth <= LIMITS.max_depth
        assert records == (value if isinstance(value, list) else [value])
