"""What an ingest run's counts say: freshrec.preprocess.diagnose, on counts the real pipeline produced."""

import pytest

from freshrec.preprocess.diagnose import FAILED, diagnose, fix_for
from freshrec.preprocess.pipeline import IngestCounts, IngestPipeline
from freshrec.sources.base import Rejection


def _counts(records: list[dict]) -> IngestCounts:
    pipeline = IngestPipeline()
    pipeline.process_records(records)
    return pipeline.counts


def _record(n: int, **changes) -> dict:
    return {
        "event_id": f"e{n}",
        "timestamp": 1_700_000_000 + n,
        "user_id": n % 7,
        "item_id": n % 11,
    } | changes


def test_a_clean_run_says_nothing() -> None:
    result = diagnose(_counts([_record(n) for n in range(100)]))
    assert result.warnings == [] and result.failure is None and result.exit_code == 0


def test_nothing_accepted_fails_with_the_most_frequent_reasons_and_their_fixes() -> None:
    records = [_record(n, timestamp=(1_700_000_000 + n) * 1000) for n in range(30)]
    records += [_record(n, item_id=None) for n in range(30, 40)]
    result = diagnose(_counts(records))
    assert result.exit_code == FAILED and result.warnings == []
    assert result.failure.startswith("nothing was accepted: 40 of 40 records rejected (100.0%); ")
    ms = "timestamp: timestamp out of range: after 2200-01-01 (milliseconds?) x 30"
    assert result.failure.index(ms) < result.failure.index("item_id: missing field x 10")
    assert result.failure.endswith(
        'fix: timestamps look like epoch milliseconds: pass --time-unit ms (source.time_unit = "ms")'
    )


def test_an_empty_source_fails() -> None:
    assert diagnose(IngestCounts()).failure == "nothing was accepted: the source holds no records"


@pytest.mark.parametrize(("bad", "code", "warned"), [(4, 0, False), (6, 0, True), (30, FAILED, False)])
def test_shares_warn_past_warn_share_and_fail_past_max_rejected_share(
    bad: int, code: int, warned: bool
) -> None:
    records = [_record(n, user_id=None) if n < bad else _record(n) for n in range(100)]
    result = diagnose(_counts(records), warn_share=0.05, max_rejected_share=0.25)
    assert result.exit_code == code and bool(result.warnings) == warned
    if warned:
        assert result.warnings[0].startswith(
            f"{bad} of 100 records rejected ({bad}.0%), more than --warn-share 5.0% (pipeline.warn_share); "
            f"user_id: missing field x {bad}"
        )
    if code:
        assert "more than --max-rejected-share 25.0% (pipeline.max_rejected_share)" in result.failure


def test_duplicates_warn_and_a_mapped_event_id_column_is_named() -> None:
    records = [_record(n, event_id=f"s{n // 10}") for n in range(100)]
    counts = _counts(records)
    assert counts.duplicates == 90 and counts.duplicate_share == 0.9
    [line] = diagnose(counts, event_id_column="session").warnings
    assert line.startswith("90 of 100 accepted events (90.0%) dropped as repeats of an earlier event_id")
    assert "event_id must identify one event, and column 'session' repeats across events" in line
    [line] = diagnose(counts).warnings
    assert line.endswith("the source delivers the same events more than once")
    assert diagnose(counts, warn_share=0.95).warnings == []


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("05/31/2024 14:00", "pass --time-format '%m/%d/%Y %H:%M' (source.time_format)"),
        ("05/01/2024 14:00:05", "pass --time-format '%m/%d/%Y %H:%M:%S', or '%d/%m/%Y %H:%M:%S' if the day"),
        ("31.05.24", "day/month/year (e.g. '31.05.24'): pass --time-format '%d.%m.%y'"),
        ("5/1/2024 2:30 PM", "pass --time-format '%m/%d/%Y %I:%M %p'"),
        ("yesterday", "neither epoch numbers nor ISO 8601 (e.g. 'yesterday'): pass their strptime format"),
    ],
)
def test_the_time_format_to_pass_is_guessed_from_the_first_bad_time(value: str, fix: str) -> None:
    [rejection] = _counts([_record(0, timestamp=value)]).examples.values()
    assert rejection.field == "timestamp"
    assert fix in fix_for("timestamp: unparseable timestamp: expected ...", rejection)


def test_the_guessed_time_format_reads_the_time() -> None:
    """The format the fix names is one the reader accepts: the mistake and its fix close the loop."""
    from freshrec.timeparse import parse_times

    for value, expected in (("05/31/2024 14:00", 1_717_164_000.0), ("31.05.24", 1_717_113_600.0)):
        fix = fix_for("timestamp: unparseable timestamp", Rejection(0, "timestamp", "", {"timestamp": value}))
        time_format = fix.split("--time-format '")[1].split("'")[0]
        assert parse_times([value], "s", time_format).seconds.tolist() == [expected]


def test_delimiter_mistakes_point_at_the_delimiter() -> None:
    assert "--delimiter" in fix_for("_record: wrong number of fields: expected 3, got 1", None)
    assert fix_for("user_id: missing field", None) is None
