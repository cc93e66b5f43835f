"""Timestamps as epoch seconds or ISO 8601, batch-wise: freshrec.timeparse (used by sources and validate)."""

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.timeparse import (
    MISSING,
    NON_FINITE,
    OK,
    UNPARSEABLE,
    WRONG_TYPE,
    classify_column,
    parse_number_strings,
    parse_time,
    parse_times,
    text_array,
)


def _objects(*values):
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        (" 1700000000.25 ", 1_700_000_000.25),
        ("1.7e9", 1.7e9),
        ("2024-01-01", 1_704_067_200.0),
        ("2024-01-01T00:00:00", 1_704_067_200.0),
        ("2024-01-01 00:00:00", 1_704_067_200.0),
        ("2024-01-01T00:00", 1_704_067_200.0),
        ("2024-01-01T00:00:00Z", 1_704_067_200.0),
        ("2024-01-01T02:00:00+02:00", 1_704_067_200.0),
        ("2024-01-01T02:00:00+0200", 1_704_067_200.0),
        ("2023-12-31T19:00:00-05:00", 1_704_067_200.0),
        ("2024-01-01T00:00:00.5Z", 1_704_067_200.5),
        ("2024-01-01T00:00:00.123456789", 1_704_067_200.123456),  # beyond microseconds: truncated
    ],
)
def test_parses_epoch_and_iso_text(text: str, expected: float) -> None:
    parsed = parse_times(_objects(text))
    assert parsed.status.tolist() == [OK]
    assert parsed.seconds[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (None, MISSING),
        ("", MISSING),
        ("   ", MISSING),
        ("yesterday", UNPARSEABLE),
        ("2024-13-01", UNPARSEABLE),
        ("2023-02-30", UNPARSEABLE),
        ("2024-01-01T25:00:00", UNPARSEABLE),
        ("1,5", UNPARSEABLE),
        ("nan", NON_FINITE),
        ("-Infinity", NON_FINITE),
        ("1e999", NON_FINITE),
        (float("nan"), NON_FINITE),
        (float("inf"), NON_FINITE),
        (10**400, NON_FINITE),
        (True, WRONG_TYPE),
        ([1], WRONG_TYPE),
        ({"t": 1}, WRONG_TYPE),
    ],
)
def test_problems_get_a_status_not_an_exception(value, status: int) -> None:
    parsed = parse_times(_objects(value))
    assert parsed.status.tolist() == [status]
    assert np.isnan(parsed.seconds[0])


def test_typed_columns_take_the_array_path() -> None:
    assert parse_times(np.array([1, 2], dtype=np.int64)).seconds.tolist() == [1.0, 2.0]
    floats = parse_times(np.array([1.5, np.nan, np.inf]))
    assert floats.status.tolist() == [OK, NON_FINITE, NON_FINITE]
    dates = parse_times(np.array(["2024-01-01T00:00:00", "NaT"], dtype="datetime64[s]"))
    assert dates.seconds[0] == 1_704_067_200.0 and dates.status.tolist() == [OK, MISSING]
    assert parse_times(np.array([True])).status.tolist() == [WRONG_TYPE]
    assert parse_times(np.array(["2024-01-01"])).seconds.tolist() == [1_704_067_200.0]


def test_numpy_scalars_in_object_columns_are_numbers() -> None:
    parsed = parse_times(_objects(np.int64(5), np.float32(1.5), "7"))
    assert parsed.seconds.tolist() == [5.0, 1.5, 7.0]


def test_mixed_column_keeps_each_row_apart() -> None:
    parsed = parse_times(_objects("2024-01-01T00:00:00Z", 5, "x", None, "10", "2024-01-01"))
    assert parsed.status.tolist() == [OK, OK, UNPARSEABLE, MISSING, OK, OK]
    assert parsed.seconds[[0, 1, 4, 5]].tolist() == [1_704_067_200.0, 5.0, 10.0, 1_704_067_200.0]


def test_parse_time_raises_config_error_with_reason() -> None:
    assert parse_time(1.5) == 1.5
    with pytest.raises(ConfigError, match="unparseable timestamp 'soon'"):
        parse_time("soon")


def test_number_strings() -> None:
    values, status = parse_number_strings(pa.array(["4", "x", " -2.5e1 ", "", "NaN"]))
    assert status.tolist() == [OK, UNPARSEABLE, OK, MISSING, NON_FINITE]
    assert values[[0, 2]].tolist() == [4.0, -25.0]


def test_text_array_survives_lone_surrogates() -> None:
    assert text_array(["ok", "\ud800x"]).to_pylist() == ["ok", "?x"]
    assert parse_times(_objects("\ud800")).status.tolist() == [UNPARSEABLE]


def test_classify_column_unwraps_numpy_scalars() -> None:
    values, types = classify_column(_objects(np.int64(1), "a", 2.0, None, False))
    assert values == [1, "a", 2.0, None, False]
    assert types.tolist() == [2, 1, 3, 0, 4]


# -- properties -----------------------------------------------------------------------------------------

aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2300, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
)


@given(moment=aware_datetimes, separator=st.sampled_from(["T", " "]))
def test_iso_text_of_any_moment_parses_to_its_epoch_seconds(moment: datetime, separator: str) -> None:
    parsed = parse_times(_objects(moment.isoformat(sep=separator)))
    assert parsed.status.tolist() == [OK]
    assert parsed.seconds[0] == pytest.approx(moment.timestamp(), abs=1e-5)


@given(moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1)))
def test_naive_iso_text_is_utc(moment: datetime) -> None:
    parsed = parse_times(_objects(moment.isoformat()))
    assert parsed.seconds[0] == pytest.approx(moment.replace(tzinfo=UTC).timestamp(), abs=1e-5)


@given(st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_epoch_text_round_trips(value: float) -> None:
    parsed = parse_times(_objects(repr(value), value))
    assert parsed.seconds.tolist() == [value, value]


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_a_value_parses_the_same_alone_or_next_to_garbage(text: str) -> None:
    """The whole-column fast path and the per-row fallback must agree on every string."""
    alone = parse_times(_objects(text))
    mixed = parse_times(_objects(text, "definitely not a time", "2024-01-01T00:00:00Z"))
    assert alone.status[0] == mixed.status[0]
    np.testing.assert_equal(alone.seconds[0], mixed.seconds[0])


@given(
    st.lists(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.lists(st.none())
        ),
        max_size=20,
    )
)
def test_arbitrary_values_never_raise_and_ok_means_finite(values: list) -> None:
    parsed = parse_times(_objects(*values))
    assert len(parsed.seconds) == len(values)
    ok = parsed.status == OK
    assert np.isfinite(parsed.seconds[ok]).all()
    assert np.isnan(parsed.seconds[~ok]).all()


@pytest.mark.parametrize(
    ("unit", "number", "seconds"),
    [
        ("s", 1_700_000_000, 1_700_000_000.0),
        ("ms", 1_700_000_000_250, 1_700_000_000.25),
        ("us", 1_700_000_000_000_001, 1_700_000_000.000001),
        ("ns", 1_700_000_000 * 10**9, 1_700_000_000.0),
    ],
)
def test_time_unit_scales_numbers_in_every_column_type_and_never_iso_text(unit, number, seconds) -> None:
    for column in (
        np.array([number], dtype=np.int64),
        np.array([float(number)]),
        _objects(number),
        _objects(str(number)),
        pa.array([str(number)]),
    ):
        parsed = parse_times(column, unit)
        assert parsed.status.tolist() == [OK]
        assert parsed.seconds[0] == pytest.approx(seconds, rel=1e-15)
    mixed = parse_times(_objects(str(number), "2024-01-01T00:00:00Z"), unit)
    assert mixed.seconds[1] == 1_704_067_200.0


def test_time_format_is_tried_first_and_the_usual_forms_still_read() -> None:
    parsed = parse_times(
        pa.array(["05/31/2024 14:00", "20240101", "2024-01-01", "31/05/2024 14:00"]), "s", "%m/%d/%Y %H:%M"
    )
    assert parsed.seconds[:3].tolist() == [1_717_164_000.0, 20_240_101.0, 1_704_067_200.0]
    assert parsed.status.tolist() == [OK, OK, OK, UNPARSEABLE]
    assert parse_times(pa.array(["20240101"]), "s", "%Y%m%d").seconds.tolist() == [1_704_067_200.0]
    offset = parse_times(pa.array(["05/31/2024 14:00+0200"]), "s", "%m/%d/%Y %H:%M%z")
    assert offset.seconds.tolist() == [1_717_164_000.0 - 7200]


def test_bad_time_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="time_unit 'sec' is not one of s, ms, us, ns"):
        parse_times(_objects(1), "sec")
    with pytest.raises(ConfigError, match="time_format 'mdy' has no strptime code"):
        parse_times(_objects("x"), "s", "mdy")
