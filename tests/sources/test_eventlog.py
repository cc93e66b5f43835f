"""The embedded durable event log: freshrec.sources.eventlog."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError, FreshrecError
from freshrec.events import Event, EventBatch
from freshrec.sources.base import RawBatch, Source
from freshrec.sources.eventlog import (
    CorruptLogError,
    EventLog,
    EventLogConfig,
    EventLogError,
    EventLogReader,
    LogLockedError,
    OffsetOutOfRangeError,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _batch(n: int, start: int = 0, string_ids: bool = False) -> EventBatch:
    """`n` events whose event ids are start..start+n-1 (as ints, or as text with string ids)."""
    ids = np.arange(start, start + n, dtype=np.int64)
    return EventBatch(
        event_id=np.array([f"e{i}" for i in ids], dtype=object) if string_ids else ids,
        timestamp=1.7e9 + ids.astype(np.float64),
        user_id=np.array([f"u{i % 7}" for i in ids], dtype=object) if string_ids else ids % 7,
        item_id=ids % 11,
        kind=(ids % 5).astype(np.int8),
        value=np.where(ids % 2 == 0, np.nan, ids * 0.5),
    )


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def _read_all(directory: Path, max_records: int = 10_000, **options) -> RawBatch:
    """Everything a fresh reader returns now, as one batch."""
    with EventLogReader(directory, **options) as reader:
        batches = list(reader.batches(max_records))
    if not batches:
        return RawBatch({}, np.empty(0, dtype=np.int64))
    names = list(dict.fromkeys(name for b in batches for name in b.columns))
    columns = {
        name: np.concatenate([b.columns.get(name, np.full(b.num_rows, None, dtype=object)) for b in batches])
        for name in names
    }
    return RawBatch(
        columns, np.concatenate([b.positions for b in batches]), end_offset=batches[-1].end_offset
    )


def _as_events(batch: RawBatch) -> list[Event]:
    columns = batch.columns
    context = {k: v for k, v in columns.items() if k not in EventBatch.__dataclass_fields__}
    return EventBatch(
        columns["event_id"],
        columns["timestamp"],
        columns["user_id"],
        columns["item_id"],
        columns["kind"],
        columns["value"],
        context,
    ).to_events()


# -- roundtrip ----------------------------------------------------------------------------------------------


def test_int_ids_come_back_typed_with_offsets_as_positions(tmp_path: Path) -> None:
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        assert log.append(_batch(5)) == (0, 4)
        assert log.append(_batch(3, start=5)) == (5, 7)
        assert log.append(EventBatch.empty()) == (8, 7)
        assert log.next_offset == 8
    reader = EventLogReader(tmp_path)
    assert isinstance(reader, Source)
    [batch] = list(reader.batches(100))
    expected = _batch(8)
    assert batch.positions.tolist() == list(range(8)) and batch.end_offset == 8
    assert {name: column.dtype for name, column in batch.columns.items()} == {
        "event_id": np.int64,
        "timestamp": np.float64,
        "user_id": np.int64,
        "item_id": np.int64,
        "kind": np.int8,
        "value": np.float64,
    }
    for name in ("event_id", "timestamp", "user_id", "item_id", "kind", "value"):
        np.testing.assert_array_equal(batch.columns[name], getattr(expected, name))
    assert np.isnan(batch.columns["value"][0])
    assert list(reader.batches(100)) == []  # read to the end: nothing more without follow


def test_string_mixed_ids_and_context_columns_roundtrip_exactly(tmp_path: Path) -> None:
    first = EventBatch.from_events(
        [
            Event("a", 1.0, "alice", 7, "click", 4.5, {"device": "ios", "page": 3}),
            Event(5, 2.0, 42, "sku-9", "view", None, {"device": None, "page": 2.5, "promo": True}),
            Event("c", 3.0, "bob", 9, "rating", 1.0, {"device": "é✓", "page": None}),
        ]
    )
    second = _batch(4, start=10)  # int ids, no context: the reader fills context with None
    third = _batch(2, start=20, string_ids=True)
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        for batch in (first, second, third):
            log.append(batch)
    got = _read_all(tmp_path)
    assert got.columns["user_id"].dtype == object and got.columns["device"].dtype == object
    assert got.columns["device"].tolist() == ["ios", None, "é✓"] + [None] * 6
    assert got.columns["promo"].tolist()[1] is True
    assert [type(v) for v in got.columns["page"][:3]] == [int, float, type(None)]
    assert _as_events(got) == first.to_events() + second.to_events() + third.to_events()


@pytest.mark.parametrize("max_records", [1, 7, 1000])
def test_runs_of_small_records_decode_together_exactly(tmp_path: Path, max_records: int) -> None:
    """One-event appends (the HTTP ingest's case) are decoded a run at a time: same-layout int records as
    one byte block, text records with their offsets rebased; the result must not depend on the grouping."""
    batches = [_batch(1, start=i) for i in range(40)]  # identical layouts
    batches += [_batch(1 + i % 2, start=40 + 2 * i, string_ids=True) for i in range(20)]  # text
    batches += [_batch(2, start=100 + 2 * i) for i in range(10)]
    batches[-1].context["device"] = np.array(["ios", None], dtype=object)
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        for batch in batches:
            log.append(batch)
    got = _read_all(tmp_path, max_records=max_records)
    expected = [e for batch in batches for e in batch.to_events()]
    assert _as_events(got) == expected
    assert got.columns["device"].tolist() == [None] * (len(expected) - 2) + ["ios", None]
    with EventLogReader(tmp_path) as reader:
        first = next(reader.batches(40))
    assert first.columns["user_id"].dtype == np.int64 and first.columns["value"].flags.writeable


_ids = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=12))
_context_values = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
)
_events = st.builds(
    Event,
    event_id=_ids,
    timestamp=st.floats(0, 7e9),
    user_id=_ids,
    item_id=_ids,
    kind=st.sampled_from(["view", "click", "like", "purchase", "rating"]),
    value=st.one_of(st.none(), st.floats(allow_nan=False)),
    context=st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "ctx"]), _context_values)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_events, min_size=1, max_size=6), min_size=1, max_size=4), st.integers(1, 9))
def test_any_valid_events_roundtrip(batches: list[list[Event]], max_records: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        with EventLog.open(EventLogConfig(directory)) as log:
            for events in batches:
                log.append(EventBatch.from_events(events))
        got = _read_all(Path(directory), max_records=max_records)
    expected = [e for events in batches for e in EventBatch.from_events(events).to_events()]
    assert got.positions.tolist() == list(range(len(expected)))
    assert _as_events(got) == expected


def test_unstorable_values_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    batch = _batch(2)
    batch.context["tags"] = np.array([["a"], None], dtype=object)
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        with pytest.raises(EventLogError, match="column 'tags' holds values of type list"):
            log.append(batch)
        assert log.next_offset == 0
        assert log.append(_batch(1)) == (0, 0)


# -- offsets, segments, reopening ---------------------------------------------------------------------------


def test_offsets_are_contiguous_across_rotation_and_reopen(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    config = EventLogConfig(tmp_path, segment_bytes=2048)
    ranges, offset = [], 0
    for _ in range(2):  # two writer lifetimes
        with EventLog.open(config) as log:
            assert log.next_offset == offset
            for _ in range(30):
                n = int(rng.integers(1, 40))
                ranges.append(log.append(_batch(n, start=offset)))
                offset += n
    assert ranges[0][0] == 0
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    segments = _segments(tmp_path)
    assert len(segments) > 3
    record_starts = {first for first, _ in ranges}
    assert all(int(path.stem) in record_starts for path in segments)  # named by their first offset
    multi_record = [p for p in segments if p.stat().st_size > 2048]
    assert not multi_record  # no segment passes segment_bytes (every record here is smaller)
    got = _read_all(tmp_path, max_records=37)
    assert got.positions.tolist() == list(range(offset))
    np.testing.assert_array_equal(got.columns["event_id"], np.arange(offset))


def test_reader_splits_records_and_starts_anywhere(tmp_path: Path) -> None:
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        log.append(_batch(1000))
        reader = EventLogReader(tmp_path)
        assert [b.end_offset for b in reader.batches(300)] == [300, 600, 900, 1000]
        middle = EventLogReader(tmp_path, start_offset=450)
        first = next(middle.batches(100))
        assert first.positions[0] == 450 and first.columns["event_id"][0] == 450
        latest = EventLogReader(tmp_path, start_offset="latest")
        assert latest.position == 1000 and list(latest.batches(10)) == []
        log.append(_batch(5, start=1000))
        assert [b.positions.tolist() for b in latest.batches(10)] == [list(range(1000, 1005))]
        with pytest.raises(OffsetOutOfRangeError, match="past the end"):
            EventLogReader(tmp_path, start_offset=2000)


# -- retention ----------------------------------------------------------------------------------------------


def _fill(log: EventLog, appends: int, size: int = 20) -> None:
    for _ in range(appends):
        log.append(_batch(size, start=log.next_offset))


def test_size_retention_deletes_oldest_sealed_segments_only(tmp_path: Path) -> None:
    config = EventLogConfig(tmp_path, segment_bytes=2048, retention_bytes=6000)
    with EventLog.open(config) as log:
        _fill(log, 60)
        sizes = [p.stat().st_size for p in _segments(tmp_path)]
        assert sum(sizes[:-1]) <= 6000 < sum(sizes) + 2048 * 3  # over the cap only by the active segment
        first = log.first_offset
        assert first > 0 and _segments(tmp_path)[0].stem == f"{first:020d}"
        got = _read_all(tmp_path, start_offset="earliest")
        assert got.positions.tolist() == list(range(first, log.next_offset))  # no hole after deletion
        with pytest.raises(OffsetOutOfRangeError, match="deleted by retention"):
            EventLogReader(tmp_path, start_offset=0)
        assert EventLogReader(tmp_path, start_offset=0, out_of_range="earliest").position == first
    with EventLog.open(EventLogConfig(tmp_path, segment_bytes=2048, retention_bytes=1)) as log:
        assert [p.stem for p in _segments(tmp_path)] == [f"{log.first_offset:020d}"]  # the active one stays


def test_time_retention_waits_for_registered_consumers_size_retention_does_not(tmp_path: Path) -> None:
    config = EventLogConfig(tmp_path, segment_bytes=2048, retention_seconds=3600)
    with EventLog.open(config) as log:
        _fill(log, 30)
        reader = EventLogReader(tmp_path, consumer="trainer")  # registers at offset 0
        assert log.consumers() == {"trainer": 0}
        segments = _segments(tmp_path)
        old = time.time() - 7200
        for path in segments[:-1]:
            os.utime(path, (old, old))
        assert log.enforce_retention() == []  # expired, but the consumer has not read them
        second_base = int(segments[1].stem)
        for batch in reader.batches(second_base):
            reader.commit(batch.end_offset)
            break
        assert log.enforce_retention() == [0]  # the consumer needs nothing before second_base now
        os.utime(segments[-1], (old, old))  # the active segment is never deleted, however old
        log.forget_consumer("trainer")
        assert log.enforce_retention() == [int(p.stem) for p in segments[1:-1]]
        assert [p.name for p in _segments(tmp_path)] == [segments[-1].name]
    with EventLog.open(EventLogConfig(tmp_path, segment_bytes=2048, retention_bytes=2500)) as log:
        EventLogReader(tmp_path, start_offset="earliest", consumer="laggard")
        _fill(log, 30)
        assert len(_segments(tmp_path)) <= 3  # size retention ignores the consumer at the old offset
    with pytest.raises(OffsetOutOfRangeError):
        EventLogReader(tmp_path, consumer="laggard")


# -- torn tails and corruption ------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _reference_segment() -> tuple[bytes, tuple[int, ...], tuple[int, ...]]:
    """One segment of 12 records: its bytes, the byte end of each record and the offset after it."""
    with tempfile.TemporaryDirectory() as directory:
        ends, offsets = [], []
        with EventLog.open(EventLogConfig(directory)) as log:
            path = _segments(Path(directory))[0]
            for i in range(12):
                log.append(_batch(1 + i % 4, start=log.next_offset, string_ids=i % 3 == 0))
                ends.append(path.stat().st_size)
                offsets.append(log.next_offset)
        return path.read_bytes(), tuple(ends), tuple(offsets)


def _expected_after_cut(cut: int) -> tuple[int, int]:
    """(byte end, next offset) of the complete records before byte `cut`."""
    _, ends, offsets = _reference_segment()
    kept = [i for i, end in enumerate(ends) if end <= cut]
    return (ends[kept[-1]], offsets[kept[-1]]) if kept else (0, 0)


def _write_segment(directory: Path, data: bytes) -> Path:
    path = directory / f"{0:020d}.log"
    path.write_bytes(data)
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_tail_torn_anywhere_is_cut_to_the_last_complete_record(data: st.DataObject) -> None:
    segment, ends, _ = _reference_segment()
    cut = data.draw(st.one_of(st.integers(0, len(segment)), st.sampled_from((0, *ends))), label="cut")
    end, next_offset = _expected_after_cut(cut)
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        path = _write_segment(directory, segment[:cut])
        # A reader before recovery sees exactly the complete records and waits at the tear.
        assert _read_all(directory).positions.tolist() == list(range(next_offset))
        with EventLog.open(EventLogConfig(directory)) as log:
            assert log.next_offset == next_offset
            assert (log.torn_tail is None) == (cut == end)
            assert path.stat().st_size == end
            log.append(_batch(3, start=next_offset))
        got = _read_all(directory)
        assert got.positions.tolist() == list(range(next_offset + 3))
        assert got.columns["event_id"].tolist()[-3:] == list(range(next_offset, next_offset + 3))


@pytest.mark.parametrize(
    "damage",
    ["flip a payload byte of the last record", "flip a header byte of the last record", "zero-filled tail"],
)
def test_a_damaged_last_record_is_a_torn_tail(tmp_path: Path, damage: str) -> None:
    segment, ends, offsets = _reference_segment()
    data = bytearray(segment)
    if damage.startswith("flip a payload"):
        data[-9] ^= 0xFF
    elif damage.startswith("flip a header"):
        data[ends[-2] + 2] ^= 0x01
    else:
        data += bytes(4096)  # the file grew but the pages never made it to disk
    _write_segment(tmp_path, bytes(data))
    cut_at = len(segment) if damage == "zero-filled tail" else ends[-2]
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        assert log.next_offset == (offsets[-1] if damage == "zero-filled tail" else offsets[-2])
        assert log.torn_tail is not None and log.torn_tail.position == cut_at


@pytest.mark.parametrize("where", ["payload", "header"])
def test_damage_in_the_middle_is_an_error_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    segment, ends, offsets = _reference_segment()
    data = bytearray(segment)
    data[ends[3] + (40 if where == "payload" else 10)] ^= 0x10  # the 5th record
    path = _write_segment(tmp_path, bytes(data))
    with pytest.raises(CorruptLogError) as error:
        EventLog.open(EventLogConfig(tmp_path))
    assert error.value.path == path and error.value.position == ends[3] and error.value.offset == offsets[3]
    assert str(path) in str(error.value) and f"byte {ends[3]}" in str(error.value)
    assert path.read_bytes() == bytes(data)  # the writer repaired nothing
    reader = EventLogReader(tmp_path)
    with pytest.raises(CorruptLogError, match=f"offset {offsets[3]}"):
        list(reader.batches(1000))
    assert reader.position == offsets[3]  # everything before the damage was read


# -- writer lock, durability, config --------------------------------------------------------------------


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    log = EventLog.open(EventLogConfig(tmp_path))
    with pytest.raises(LogLockedError, match=f"already has a writer \\(pid {os.getpid()}"):
        EventLog.open(EventLogConfig(tmp_path))
    log.close()
    with pytest.raises(EventLogError, match="closed"):
        log.append(_batch(1))
    with EventLog.open(EventLogConfig(tmp_path)) as again:
        assert again.next_offset == 0


def test_every_batch_is_durable_on_return_interval_within_the_interval(tmp_path: Path) -> None:
    with EventLog.open(EventLogConfig(tmp_path / "a")) as log:
        _, last = log.append(_batch(10))
        assert log.durable_offset == log.next_offset == 10
        assert log.wait_durable(last, timeout=0)
    config = EventLogConfig(tmp_path / "b", fsync="interval", fsync_interval_ms=20)
    with EventLog.open(config) as log:
        _, last = log.append(_batch(10))
        assert _read_all(tmp_path / "b").num_rows == 10  # visible before it is durable
        started = time.monotonic()
        assert log.wait_durable(last, timeout=5)
        assert time.monotonic() - started < 2 and log.durable_offset == 10
        with pytest.raises(EventLogError, match="has not been appended"):
            log.wait_durable(10)
        _, last = log.append(_batch(5, start=10))
    assert log.durable_offset == 15  # close makes everything durable


def test_concurrent_appends_from_threads_get_disjoint_contiguous_offsets(tmp_path: Path) -> None:
    results: list[tuple[int, int]] = []
    with EventLog.open(EventLogConfig(tmp_path, segment_bytes=4096)) as log:

        def append_many(seed: int) -> None:
            for n in np.random.default_rng(seed).integers(1, 9, size=25):
                results.append(log.append(_batch(int(n))))

        threads = [threading.Thread(target=append_many, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.durable_offset == log.next_offset
    covered = sorted(o for first, last in results for o in range(first, last + 1))
    assert covered == list(range(len(covered)))
    assert _read_all(tmp_path).positions.tolist() == covered


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fsync": "always"}, "fsync='always' is not a policy"),
        ({"segment_bytes": 10}, "segment_bytes=10"),
        ({"fsync_interval_ms": 0}, "fsync_interval_ms=0"),
        ({"retention_seconds": -1}, "retention_seconds=-1"),
        ({"retention_bytes": 0}, "retention_bytes=0"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EventLogConfig(tmp_path, **options)


# -- consumers ----------------------------------------------------------------------------------------------


def test_consumer_commit_persists_and_a_restarted_reader_resumes(tmp_path: Path) -> None:
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        log.append(_batch(100))
    reader = EventLogReader(tmp_path, consumer="trainer")
    batches = reader.batches(30)
    next(batches)
    second = next(batches)
    reader.commit(second.end_offset)
    next(batches)  # read but not committed: it comes again after a restart
    with pytest.raises(ConfigError, match="commit an end_offset"):
        reader.commit(91)
    reader.close()
    assert sorted(p.name for p in (tmp_path / "consumers").iterdir()) == ["trainer.offset"]  # no temp files
    resumed = EventLogReader(tmp_path, consumer="trainer")
    assert resumed.committed_offset == 60 and resumed.position == 60
    assert next(resumed.batches(1000)).positions.tolist() == list(range(60, 100))
    assert EventLogReader(tmp_path, consumer="other").position == 0
    assert EventLogReader(tmp_path, start_offset=10, consumer="trainer").position == 10  # explicit wins
    anonymous = EventLogReader(tmp_path)
    next(anonymous.batches(10))
    anonymous.commit(10)  # a pipeline commits whatever its source: kept in memory, no file
    assert anonymous.committed_offset == 10
    assert sorted(p.name for p in (tmp_path / "consumers").iterdir()) == ["other.offset", "trainer.offset"]
    with pytest.raises(ConfigError, match="consumer name"):
        EventLogReader(tmp_path, consumer="../escape")


# -- tailing ------------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from freshrec.events import EventBatch
    from freshrec.sources.eventlog import EventLog, EventLogConfig

    directory, fsync = sys.argv[1], sys.argv[2]
    config = EventLogConfig(directory, segment_bytes=4096, fsync=fsync, fsync_interval_ms=5)
    with EventLog.open(config) as log:
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(60):
            n = 1 + i % 9
            ids = np.arange(log.next_offset, log.next_offset + n)
            users = np.array([f"u{j}" for j in ids], dtype=object)
            log.append(EventBatch(ids, ids * 1.0, users, ids % 5, np.zeros(n, np.int8), np.full(n, np.nan)))
            time.sleep(0.002)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("fsync", ["every-batch", "interval"])
def test_a_tailing_reader_sees_another_process_appends_in_order(tmp_path: Path, fsync: str) -> None:
    total = sum(1 + i % 9 for i in range(60))
    received: list[RawBatch] = []
    stop = threading.Event()
    tmp_path.mkdir(exist_ok=True)
    reader = EventLogReader(tmp_path, consumer="tail")  # opened before the log has a single segment

    def tail() -> None:
        for batch in reader.batches(1000, follow=True, poll_interval=0.001, stop=stop):
            received.append(batch)
            if sum(b.num_rows for b in received) >= total:
                stop.set()

    thread = threading.Thread(target=tail)
    thread.start()
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), fsync],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        with pytest.raises(LogLockedError, match=f"pid {writer.pid}"):
            EventLog.open(EventLogConfig(tmp_path))
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done"
        assert writer.wait(timeout=30) == 0
        thread.join(timeout=20)
    finally:
        stop.set()
        writer.kill()
        thread.join(timeout=5)
    assert not thread.is_alive()
    positions = np.concatenate([b.positions for b in received])
    assert positions.tolist() == list(range(total))
    assert np.concatenate([b.columns["event_id"] for b in received]).tolist() == list(range(total))
    users = np.concatenate([b.columns["user_id"] for b in received])
    assert users.tolist() == [f"u{i}" for i in range(total)]
    assert len(_segments(tmp_path)) > 1  # the reader followed the writer across rotations
    assert len(received) > 5  # it tailed as events arrived, not one read at the end


def test_a_tailing_reader_waits_at_a_torn_tail_and_continues_after_recovery(tmp_path: Path) -> None:
    segment, ends, offsets = _reference_segment()
    _write_segment(tmp_path, segment[: ends[5] + 30])  # a writer died in the middle of record 7
    stop = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        with EventLogReader(tmp_path) as reader:
            for batch in reader.batches(100, follow=True, stop=stop):
                seen.extend(batch.positions.tolist())
                if seen[-1] == offsets[5] + 1:
                    stop.set()

    thread = threading.Thread(target=tail)
    thread.start()
    deadline = time.monotonic() + 10
    while len(seen) < offsets[5] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert seen == list(range(offsets[5]))  # the torn record is never returned, and no error
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        log.append(_batch(2, start=offsets[5]))
    thread.join(timeout=10)
    stop.set()
    assert seen == list(range(offsets[5] + 2))


def test_stop_ends_a_follow_on_an_idle_log(tmp_path: Path) -> None:
    with EventLog.open(EventLogConfig(tmp_path)) as log:
        log.append(_batch(3))
        stop = threading.Event()
        reader = EventLogReader(tmp_path)
        got: list[int] = []
        thread = threading.Thread(
            target=lambda: got.extend(b.num_rows for b in reader.batches(10, follow=True, stop=stop))
        )
        thread.start()
        time.sleep(0.05)
        stop.set()
        thread.join(timeout=2)
        assert not thread.is_alive() and got == [3]


def test_errors_are_freshrec_errors() -> None:
    assert issubclass(CorruptLogError, FreshrecError) and issubclass(LogLockedError, FreshrecError)
