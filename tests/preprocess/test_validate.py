"""Validation of raw records into events: freshrec.preprocess.validate."""

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.events import EVENT_KINDS, KIND_CODES, SchemaLimits
from freshrec.preprocess.pipeline import IngestCounts, IngestPipeline
from freshrec.preprocess.validate import (
    DeadLetterWriter,
    EventValidator,
    Rejection,
    reason_group,
    validate_records,
)
from freshrec.sources.base import EVENT_COLUMNS, RawBatch

GOOD = {"event_id": "e1", "timestamp": 1_700_000_000, "user_id": "alice", "item_id": 42}


def _one(**changes):
    record = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            record.pop(key)
        else:
            record[key] = value
    return record


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"event_id": _DROP}, "event_id", "missing field"),
        ({"user_id": None}, "user_id", "missing field"),
        ({"user_id": "  "}, "user_id", "missing field"),
        ({"item_id": 3.5}, "item_id", "wrong type: expected string or integer, got float 3.5"),
        ({"item_id": True}, "item_id", "wrong type: expected string or integer, got bool True"),
        ({"item_id": [1]}, "item_id", "wrong type: expected string or integer, got array [1]"),
        ({"item_id": {"id": 1}}, "item_id", "wrong type: expected string or integer, got object"),
        ({"item_id": 2**64}, "item_id", "integer out of range"),
        ({"item_id": 1e300}, "item_id", "too large to be exact"),
        ({"user_id": "x" * 300}, "user_id", "oversized string: 300 chars > 256"),
        ({"timestamp": _DROP}, "timestamp", "missing field"),
        ({"timestamp": math.nan}, "timestamp", "non-finite value: nan"),
        ({"timestamp": "inf"}, "timestamp", "non-finite value"),
        ({"timestamp": "next tuesday"}, "timestamp", "unparseable timestamp 'next tuesday'"),
        ({"timestamp": True}, "timestamp", "wrong type"),
        ({"timestamp": 1.7e12}, "timestamp", "1.7e+12 is after 2200-01-01 (milliseconds?)"),
        ({"timestamp": 1.7e15}, "timestamp", "(microseconds?)"),
        ({"timestamp": 1.7e18}, "timestamp", "(nanoseconds?)"),
        ({"timestamp": -1}, "timestamp", "-1 is before 1970-01-01"),
        (
            {"kind": "buy"},
            "kind",
            "unknown kind 'buy' (expected one of view, click, like, purchase, rating, or map it to one "
            'in the configuration, e.g. [pipeline.kinds] buy = "click")',
        ),
        ({"kind": 3}, "kind", "wrong type: expected a kind name, got int 3"),
        ({"value": "abc"}, "value", "not a number: 'abc'"),
        ({"value": math.inf}, "value", "non-finite value: inf"),
        ({"value": "-inf"}, "value", "non-finite value"),
        ({"value": False}, "value", "wrong type: expected a number, got bool"),
        ({"device": [1, 2]}, "device", "wrong type: expected string or number, got array"),
        ({"device": "d" * 257}, "device", "oversized string: 257 chars > 256"),
        ({"device": math.inf}, "device", "non-finite value: inf"),
        ({"context": "mobile"}, "context", "expected an object of context fields, got str"),
        ({"context": {"user_id": 5}}, "context", "shadows the event field"),
        ({"device": "a", "context": {"device": "b"}}, "context", "given twice"),
        # What the event log cannot store is rejected here, per event, never by the log's encoder.
        ({"user_id": "\ud800"}, "user_id", "not valid text: '\\ud800' holds a lone surrogate"),
        ({"event_id": "a\udfffb"}, "event_id", "lone surrogate"),
        ({"device": "\udc00"}, "device", "lone surrogate"),
        ({"\udc00x": "mobile"}, "context", "field name not valid text"),
        ({"device": 2**63}, "device", "integer out of range: 9223372036854775808 does not fit in 64 bits"),
        ({"item_id": 10**5000}, "item_id", "integer out of range: an integer of about 5,000 digits"),
        ({"timestamp": -(10**5000)}, "timestamp", "number out of range: an integer of about 5,000 digits"),
        ({"value": 10**400}, "value", "number out of range: an integer of about 400 digits"),
        ({"device": [10**5000]}, "device", "got array holding an integer too long to quote"),
        ({"timestamp": [1, 2]}, "timestamp", "expected epoch seconds or an ISO 8601 string, got array"),
    ],
)
def test_each_rule_rejects_with_its_field_and_reason(changes, field: str, reason: str) -> None:
    result = validate_records([GOOD, _one(**changes)], start_position=10)
    assert result.accepted == 1
    [rejection] = result.rejections
    assert (rejection.position, rejection.field) == (11, field)
    assert reason in rejection.reason


def test_first_failing_field_is_reported() -> None:
    [rejection] = validate_records([_one(event_id=None, timestamp="x", user_id=None)]).rejections
    assert rejection.field == "event_id"
    [rejection] = validate_records([_one(timestamp="x", user_id=None, kind="nope")]).rejections
    assert rejection.field == "timestamp"


def test_accepted_events_keep_order_types_and_values() -> None:
    records = [
        {
            "event_id": 3,
            "timestamp": "2024-01-01T00:00:00Z",
            "user_id": 7,
            "item_id": 42.0,
            "kind": " Rating ",
        },
        {"event_id": 1, "timestamp": 5, "user_id": 8, "item_id": 43, "value": "4.5", "kind": ""},
        {"event_id": 2, "timestamp": 6.5, "user_id": 9, "item_id": 44, "value": math.nan, "kind": None},
    ]
    result = validate_records(records)
    events = result.events
    assert result.rejections == []
    assert events.event_id.tolist() == [3, 1, 2] and events.event_id.dtype == np.int64
    assert events.item_id.dtype == np.int64 and events.item_id.tolist() == [42, 43, 44]
    assert events.timestamp.tolist() == [1_704_067_200.0, 5.0, 6.5]
    assert [EVENT_KINDS[k] for k in events.kind] == ["rating", "view", "view"]
    assert events.value[1] == 4.5 and np.isnan(events.value[[0, 2]]).all()
    assert result.positions.tolist() == [0, 1, 2]


def test_string_ids_stay_strings_and_mixed_ids_are_objects() -> None:
    result = validate_records([_one(event_id="a", user_id="u1"), _one(event_id="b", user_id=5)])
    assert result.events.user_id.dtype == object
    assert result.events.user_id.tolist() == ["u1", 5]


def test_context_fields_from_extra_keys_and_nested_object() -> None:
    result = validate_records(
        [
            _one(device="ios", context={"page": 3, "mobile": True}),
            _one(event_id="e2", device=None, context={"price": 9.5}),
        ]
    )
    assert result.rejections == []
    context = result.events.context
    assert context["device"].tolist() == ["ios", None]
    assert context["page"].tolist() == [3, None]
    assert context["mobile"].tolist() == [1, None]
    assert context["price"].tolist() == [None, 9.5]


def test_context_field_count_is_bounded() -> None:
    limits = SchemaLimits(max_context_fields=2)
    validator = EventValidator(limits)
    ok = validator.validate_records([_one(a=1, b=2, c=None)])
    assert ok.accepted == 1
    too_many = validator.validate_records([_one(a=1, b=2, c=3)])
    assert too_many.rejections[0].field == "context"
    assert "too many context fields: 3 > 2" in too_many.rejections[0].reason
    flood = validator.validate_records([{**GOOD, **{f"k{i}": i for i in range(20)}}])
    assert flood.rejections[0].field == "_record" and "too many fields" in flood.rejections[0].reason


def test_distinct_context_names_per_batch_are_bounded() -> None:
    validator = EventValidator(SchemaLimits(max_context_fields=2))  # at most 8 distinct names per batch
    records = [_one(event_id=f"e{i}", **{f"k{i}a": 1, f"k{i}b": 2}) for i in range(6)]
    result = validator.validate_records(records)
    assert result.accepted == 4 and len(result.events.context) == 8
    assert [(r.position, r.field) for r in result.rejections] == [(4, "context"), (5, "context")]
    assert "too many distinct context fields in one batch (at most 8)" in result.rejections[0].reason


def test_an_integer_too_long_for_text_is_quoted_by_its_size_and_dead_letters_can_write_it(tmp_path) -> None:
    result = validate_records([GOOD, 10**5000, _one(user_id=10**5000)])
    assert [r.field for r in result.rejections] == ["_record", "user_id"]
    with DeadLetterWriter(tmp_path / "dead.jsonl") as dead:
        dead.write(result.rejections)
    lines = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert lines[1]["record"]["user_id"] == "an integer of about 5,000 digits"


def test_non_object_records_are_rejected_whole() -> None:
    result = validate_records([GOOD, [1, 2], "text", None], start_position=5)
    assert result.accepted == 1
    assert [(r.position, r.field) for r in result.rejections] == [
        (6, "_record"),
        (7, "_record"),
        (8, "_record"),
    ]
    assert result.rejections[0].reason == "expected a JSON object, got array"
    assert result.rejections[2].reason == "expected a JSON object, got null"


def test_default_kind_is_configurable_and_checked() -> None:
    result = EventValidator(default_kind="click").validate_records([GOOD])
    assert result.events.kind.tolist() == [KIND_CODES["click"]]
    with pytest.raises(ConfigError, match="default_kind 'buy'"):
        EventValidator(default_kind="buy")


def test_typed_batch_fast_path() -> None:
    n = 10_000
    rng = np.random.default_rng(0)
    timestamps = 1.6e9 + np.arange(n, dtype=np.float64)
    timestamps[[10, 20, 30]] = [np.nan, 1.6e12, -5.0]
    kinds = np.zeros(n, dtype=np.int8)
    kinds[40] = 9
    values = np.full(n, np.nan)
    values[50] = np.inf
    raw = RawBatch(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "timestamp": timestamps,
            "user_id": rng.integers(0, 100, n),
            "item_id": rng.integers(0, 1000, n),
            "kind": kinds,
            "value": values,
        },
        positions=np.arange(100, 100 + n, dtype=np.int64),
    )
    result = EventValidator().validate(raw)
    assert result.accepted == n - 5
    assert [(r.position, r.field) for r in result.rejections] == [
        (110, "timestamp"),
        (120, "timestamp"),
        (130, "timestamp"),
        (140, "kind"),
        (150, "value"),
    ]
    assert result.rejections[1].reason.endswith("(milliseconds?)")
    assert result.rejections[3].reason.startswith("unknown kind code 9")
    assert result.rejections[0].record["timestamp"] == "nan"  # JSON-able
    assert result.events.user_id.dtype == np.int64
    assert np.all(np.diff(result.positions) > 0)


def test_typed_float_ids_with_nulls() -> None:
    raw = RawBatch(
        {
            "event_id": np.array([1.0, 2.0, np.nan, 4.5]),
            "timestamp": np.full(4, 1e9),
            "user_id": np.array([1, 2, 3, 4]),
            "item_id": np.array([1, 2, 3, 4]),
        },
        positions=np.arange(4),
    )
    result = EventValidator().validate(raw)
    assert result.events.event_id.tolist() == [1, 2]
    assert [r.reason for r in result.rejections] == [
        "missing field",
        "wrong type: expected string or integer, got float 4.5",
    ]


def test_text_columns_like_a_csv() -> None:
    raw = RawBatch(
        {
            "event_id": np.array(["a", "b", "c", "d"], dtype=object),
            "timestamp": np.array(["10", "2024-01-01", "bad", "11"], dtype=object),
            "user_id": np.array(["u", "u", "u", ""], dtype=object),
            "item_id": np.array(["1", "2", "3", "4"], dtype=object),
            "kind": np.array(["view", "CLICK", "view", "view"], dtype=object),
            "value": np.array(["", "2.5", "", ""], dtype=object),
            "device": np.array(["ios", "", "web", "web"], dtype=object),
        },
        positions=np.array([2, 3, 4, 5]),
    )
    result = EventValidator().validate(raw)
    assert result.events.event_id.tolist() == ["a", "b"]
    assert result.events.item_id.tolist() == ["1", "2"]  # raw form kept; encode maps "1" like 1
    assert result.events.kind.tolist() == [0, 1]
    assert result.events.context["device"].tolist() == ["ios", None]
    assert [(r.position, r.field) for r in result.rejections] == [(4, "timestamp"), (5, "user_id")]
    assert result.rejections[1].record == {
        "event_id": "d",
        "timestamp": "11",
        "user_id": "",
        "item_id": "4",
        "kind": "view",
        "value": "",
        "device": "web",
    }


def test_malformed_records_pass_through_in_position_order() -> None:
    raw = RawBatch(
        {"event_id": np.array([1, 2]), "timestamp": np.array([1.0, 2.0]), "user_id": np.array([1, 1])},
        positions=np.array([2, 9]),
        malformed=[Rejection(5, "_record", "wrong number of fields: expected 3, got 2", "1,2")],
    )
    result = EventValidator().validate(raw)
    assert [(r.position, r.field) for r in result.rejections] == [
        (2, "item_id"),
        (5, "_record"),
        (9, "item_id"),
    ]


def test_empty_input() -> None:
    assert validate_records([]).accepted == 0
    result = EventValidator().validate(RawBatch({}, np.empty(0, dtype=np.int64)))
    assert (result.accepted, result.rejected) == (0, 0)


# -- dead letters ---------------------------------------------------------------------------------------


def test_dead_letter_writer_is_lazy_appends_and_flushes(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dead.jsonl"
    with DeadLetterWriter(path, source="ratings.csv") as dead:
        dead.write([])
        assert not path.exists()
        dead.write(
            [Rejection(3, "timestamp", "non-finite value: nan", {"timestamp": math.nan, "n": np.int64(2)})]
        )
        assert path.read_text().count("\n") == 1  # flushed, readable while open
        dead.write([Rejection(4, "_record", "wrong number of fields", "1,2")], source="other")
        assert dead.count == 2
    with DeadLetterWriter(path) as again:
        again.write([Rejection(9, "user_id", "missing field", {})])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "position": 3,
        "field": "timestamp",
        "reason": "non-finite value: nan",
        "record": {"timestamp": "nan", "n": 2},
        "source": "ratings.csv",
    }
    assert lines[1]["source"] == "other" and lines[1]["record"] == "1,2"
    assert len(lines) == 3


def test_dead_letter_writer_without_rejections_leaves_no_file(tmp_path: Path) -> None:
    with DeadLetterWriter(tmp_path / "dead.jsonl") as dead:
        result = validate_records([GOOD])
        dead.write(result.rejections)
    assert not (tmp_path / "dead.jsonl").exists()


# -- properties -----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["2024-01-01T00:00:00Z", "1700000000", "rating", "CLICK", "", " ", "nan", "1e999"]),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=5,
)
keys = st.sampled_from([*EVENT_COLUMNS, "context", "device", "page", "x" * 300]) | st.text(max_size=8)
records = st.one_of(st.dictionaries(keys, json_values, max_size=10), json_values)


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=15), st.integers(min_value=0, max_value=1000))
def test_arbitrary_records_reconcile_and_never_raise(batch: list, start: int) -> None:
    result = validate_records(batch, start_position=start)
    assert result.accepted + result.rejected == len(batch)
    positions = sorted([*result.positions.tolist(), *(r.position for r in result.rejections)])
    assert positions == list(range(start, start + len(batch)))
    for rejection in result.rejections:
        assert rejection.field and rejection.reason
        json.dumps(rejection.record, allow_nan=True)
    events = result.events
    assert len(events) == result.accepted
    assert np.all((events.timestamp >= 0) & (events.timestamp <= 7_258_118_400.0))
    assert np.all((events.kind >= 0) & (events.kind < len(EVENT_KINDS)))
    assert not np.isinf(events.value).any()
    for column in (events.event_id, events.user_id, events.item_id):
        assert all(type(v) in (int, str) for v in column.tolist())
    events.to_events()  # a valid batch converts back to Event objects


#: JSON values as a hostile client sends them: any code point (lone surrogates too), integers of any size.
hostile_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400]),
        st.integers(4400, 4500).map(lambda digits: -(10**digits)),  # beyond Python's int-to-text limit
        st.floats(),
        st.text(st.characters(codec=None, categories=None), max_size=8),
        st.sampled_from(["\ud800", "a\udfff", "1700000000", "rating"]),
    ),
    lambda children: (
        st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=3), children, max_size=2)
    ),
    max_leaves=4,
)
hostile_keys = st.sampled_from([*EVENT_COLUMNS, "context", "device"]) | st.text(
    st.characters(codec=None, categories=None), max_size=4
)
_VALID = {"event_id": "e", "timestamp": 1_700_000_000, "user_id": "u", "item_id": "i"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(hostile_keys, hostile_values, max_size=6), max_size=8))
def test_whatever_is_accepted_the_event_log_can_store(changes: list) -> None:
    from freshrec.sources.eventlog import encode_payload

    batch = [{**_VALID, **change} for change in changes]
    result = validate_records(batch)
    assert result.accepted + result.rejected == len(batch)
    encode_payload(result.events)  # raised on lone surrogates and 65-bit context integers before
    for rejection in result.rejections:
        json.dumps({"field": rejection.field, "reason": rejection.reason}, ensure_ascii=False).encode()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(width=64),
            st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.integers(min_value=-3, max_value=8),
            st.floats(width=64),
        ),
        max_size=50,
    )
)
def test_typed_columns_reconcile(rows: list) -> None:
    n = len(rows)
    raw = RawBatch(
        {
            "event_id": np.arange(n, dtype=np.int64),
            "timestamp": np.array([r[0] for r in rows], dtype=np.float64),
            "user_id": np.array([r[1] for r in rows], dtype=np.int64),
            "item_id": np.array([r[1] for r in rows], dtype=np.int64),
            "kind": np.array([r[2] for r in rows], dtype=np.int8),
            "value": np.array([r[3] for r in rows], dtype=np.float64),
        },
        positions=np.arange(n, dtype=np.int64),
    )
    result = EventValidator().validate(raw)
    expected = [
        math.isfinite(t) and 0 <= t <= 7_258_118_400.0 and 0 <= k < len(EVENT_KINDS) and not math.isinf(v)
        for t, _, k, v in rows
    ]
    assert result.positions.tolist() == [i for i, ok in enumerate(expected) if ok]
    assert result.accepted + result.rejected == n


def test_dead_letter_writer_without_a_path_only_counts() -> None:
    with DeadLetterWriter(None) as dead:
        dead.write([Rejection(1, "user_id", "missing field", {})])
    assert dead.count == 1 and dead.path is None


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("timestamp", 1.7e12, 1.8e12),
        ("timestamp", -1, -5),
        ("timestamp", "next tuesday", "05/01/2024 14:00"),
        ("timestamp", [1], [2, 3]),
        ("user_id", "x" * 300, "y" * 301),
        ("user_id", "\ud800", "a\udc00"),
        ("item_id", 3.5, 4.25),
        ("item_id", 2**64, 2**65),
        ("value", "abc", "xyz"),
        ("value", math.inf, "-inf"),
        ("device", [1], [2, 3]),
        ("device", "d" * 257, "e" * 300),
    ],
)
def test_reason_groups_count_rejections_of_one_kind_together(field: str, first, second) -> None:
    """Two different bad values of one kind: one group, which quotes neither value."""
    result = validate_records([_one(**{field: first}), _one(**{field: second})])
    assert result.rejected == 2
    groups = {reason_group(r.reason) for r in result.rejections}
    assert len(groups) == 1, [r.reason for r in result.rejections]
    [group] = groups
    for value in (first, second):
        quoted = (
            value[:10] if isinstance(value, str) else f"{value:.6g}" if isinstance(value, float) else None
        )
        assert quoted is None or quoted not in group, group


def test_unknown_kinds_count_per_name_since_each_needs_its_own_key_and_the_groups_stay_bounded() -> None:
    records = [_one(kind=kind) for kind in ["buy", "add_to_cart", "BUY "]]
    groups = Counter(reason_group(r.reason) for r in validate_records(records).rejections)
    assert sorted(groups.values()) == [1, 2]  # 'buy' and 'BUY ' are one key of the map
    assert all("'" not in group and "[pipeline.kinds] " in group for group in groups)

    pipeline = IngestPipeline()
    hostile = [_one(kind=f"k{n}") for n in range(IngestCounts.MAX_REASON_GROUPS + 50)]
    pipeline.process_records(hostile)
    counts = pipeline.counts
    assert len(counts.reasons) == IngestCounts.MAX_REASON_GROUPS + 1
    assert counts.reasons[IngestCounts.OTHER_REASONS] == 50 and counts.rejected == len(hostile)


def test_the_kind_map_turns_raw_kinds_into_canonical_ones_and_names_the_key_for_the_others() -> None:
    validator = EventValidator(kind_map={"Add_To_Cart": "click", "wishlist": "like", "like": "click"})
    records = [
        {"event_id": str(n), "timestamp": 1.7e9, "user_id": "u", "item_id": n, "kind": kind}
        for n, kind in enumerate(["add_to_cart", " ADD_TO_CART ", "wishlist", "like", "purchase", "refund"])
    ]
    result = validator.validate_records(records)
    kinds = [EVENT_KINDS[code] for code in result.events.kind]
    assert kinds == ["click", "click", "like", "click", "purchase"]
    [rejection] = result.rejections
    assert rejection.field == "kind" and "[pipeline.kinds] refund = " in rejection.reason
    # a name TOML cannot write bare is quoted in the hint
    odd = validator.validate_records([{**records[0], "kind": "add to cart"}]).rejections[0].reason
    assert '[pipeline.kinds] "add to cart" = ' in odd


@pytest.mark.parametrize(
    ("kind_map", "message"),
    [({"add_to_cart": "buy"}, "kinds.add_to_cart: 'buy' is not a kind"), ({" ": "click"}, "non-blank text")],
)
def test_a_kind_map_to_no_kind_is_a_configuration_error(kind_map: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        EventValidator(kind_map=kind_map)
