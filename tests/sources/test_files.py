"""File replay in event-time order: freshrec.sources.files."""

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError, SourceError
from freshrec.events import KIND_CODES
from freshrec.preprocess.validate import DeadLetterWriter, EventValidator
from freshrec.sources.base import RawBatch, Source
from freshrec.sources.files import ColumnMapping, FileReplaySource, detect_format, parse_column_mapping

MAPPING = "user=userId,item=movieId,time=ts"


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _all_rows(source: FileReplaySource, max_records: int = 1000) -> tuple[dict[str, list], list, list]:
    columns: dict[str, list] = {}
    positions: list = []
    malformed: list = []
    for batch in source.batches(max_records):
        for name, column in batch.columns.items():
            columns.setdefault(name, []).extend(column.tolist())
        positions.extend(batch.positions.tolist())
        malformed.extend(batch.malformed)
    return columns, positions, malformed


# -- column mapping -------------------------------------------------------------------------------------


def test_parse_column_mapping_full() -> None:
    mapping = parse_column_mapping(
        " user=userId , item=movieId,time=ts,value=rating,kind=action,id=eid,ctx=dev|page "
    )
    assert mapping == ColumnMapping("userId", "movieId", "ts", "rating", "action", "eid", ("dev", "page"))
    assert mapping.file_columns() == {
        "user_id": "userId",
        "item_id": "movieId",
        "timestamp": "ts",
        "value": "rating",
        "kind": "action",
        "event_id": "eid",
        "dev": "dev",
        "page": "page",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user=u,item=i", "lacks time=<column>"),
        ("item=i,time=t", "lacks user=<column>"),
        ("user=u,item=i,time=t,usr=x", "unknown key 'usr'"),
        ("user=u,item=i,time=t,user=v", "key 'user' is given twice"),
        ("user=u,item=i,time", "'time' is not key=column"),
        ("user=u,item=i,time=", "'time=' is not key=column"),
        ("user=u,item=i,time=t,ctx=a||b", "empty column name"),
        ("user=u,item=i,time=t,ctx=value", "has the name of an event field"),
    ],
)
def test_parse_column_mapping_errors_say_what_to_do(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_column_mapping(text)


column_names = st.text(
    alphabet=st.characters(blacklist_characters=",=|", blacklist_categories=("Cs", "Zs", "Cc")),
    min_size=1,
    max_size=12,
)


@given(
    user=column_names,
    item=column_names,
    time=column_names,
    value=st.none() | column_names,
    context=st.lists(column_names, max_size=3),
)
def test_column_mapping_text_round_trips(user, item, time, value, context) -> None:
    context = [
        c for c in context if c not in ("event_id", "timestamp", "user_id", "item_id", "kind", "value")
    ]
    parts = [f"user={user}", f"item={item}", f"time={time}"]
    if value is not None:
        parts.append(f"value={value}")
    if context:
        parts.append("ctx=" + "|".join(context))
    mapping = parse_column_mapping(",".join(parts))
    assert (mapping.user, mapping.item, mapping.time, mapping.value) == (user, item, time, value)
    assert mapping.context == tuple(context)


def test_detect_format() -> None:
    assert [detect_format(p) for p in ("a.csv", "a.TSV", "a.parquet", "a.jsonl", "a.json", "a.csv.gz")] == [
        "csv",
        "tsv",
        "parquet",
        "jsonl",
        "jsonl",
        "csv",
    ]
    with pytest.raises(ConfigError, match="cannot tell the format"):
        detect_format("events.txt")


# -- CSV ------------------------------------------------------------------------------------------------


def test_csv_replays_in_time_order_with_stable_ties(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "ratings.csv", "userId,movieId,ts,extra\n1,10,300,x\n2,11,100,y\n3,12,300,z\n4,13,100,w\n"
    )
    source = FileReplaySource(path, MAPPING)
    assert isinstance(source, Source)
    columns, positions, malformed = _all_rows(source)
    assert columns["user_id"] == [2, 4, 1, 3]  # ties (100, 100) and (300, 300) keep file order
    assert positions == [3, 5, 2, 4]
    assert columns["event_id"] == ["ratings:3", "ratings:5", "ratings:2", "ratings:4"]
    assert columns["kind"] == [KIND_CODES["view"]] * 4
    assert "extra" not in columns and malformed == []


def test_csv_line_numbers_survive_blank_lines_quotes_and_crlf(tmp_path: Path) -> None:
    text = 'u,i,t,note\r\n\r\n1,10,5,"two\r\nlines"\r\n2,11\r\n\r\n3,12,6,"a ""quoted"" word"\r\n4,13,7,x\r\n'
    source = FileReplaySource(_write(tmp_path / "odd.csv", text), "user=u,item=i,time=t,ctx=note")
    columns, positions, malformed = _all_rows(source)
    assert positions == [3, 7, 8]  # header line 1, blank lines 2 and 6, a row spanning lines 3-4
    assert [m.position for m in malformed] == [5]
    assert malformed[0].reason == "wrong number of fields: expected 4, got 2"
    assert malformed[0].record == "2,11"
    assert columns["note"] == ["two\r\nlines", 'a "quoted" word', "x"]


def test_csv_unparseable_times_are_kept_last_for_the_validator(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "u,i,t\n1,1,soon\n2,2,2024-01-01T00:00:00Z\n3,3,100\n4,4,\n")
    columns, positions, _ = _all_rows(FileReplaySource(path, "user=u,item=i,time=t"))
    assert columns["user_id"] == [3, 2, 1, 4]
    assert positions == [4, 3, 2, 5]
    assert columns["timestamp"] == ["100", "2024-01-01T00:00:00Z", "soon", ""]  # text: not all parse


def test_clean_columns_become_typed_and_odd_ones_stay_text(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "u,i,t,v,w\n007,5,2024-01-01,4,4\n1,-6,1704067201,,x\n")
    batch = next(FileReplaySource(path, "user=u,item=i,time=t,value=v,ctx=w").batches(5))
    columns = batch.columns
    assert columns["user_id"].tolist() == ["007", "1"]  # "007" is not the integer 7: the column stays text
    assert columns["item_id"].dtype == np.int64 and columns["item_id"].tolist() == [5, -6]
    assert columns["timestamp"].dtype == np.float64 and columns["timestamp"].tolist() == [
        1704067200,
        1704067201,
    ]
    assert columns["value"][0] == 4.0 and np.isnan(columns["value"][1])
    assert columns["w"].tolist() == ["4", "x"]  # context stays as written
    odd = _write(tmp_path / "o.csv", "u,i,t,v\n1,2,3,4\n1,2,3,four\n")
    assert next(FileReplaySource(odd, "user=u,item=i,time=t,value=v").batches(5)).columns[
        "value"
    ].tolist() == [
        "4",
        "four",
    ]


def test_mapped_optional_columns_and_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", "eid,u,i,t,r,a,dev\nx1,1,1,5,4.5,click,ios\nx2,2,2,6,,,\n")
    source = FileReplaySource(path, "id=eid,user=u,item=i,time=t,value=r,kind=a,ctx=dev")
    result = EventValidator().validate(next(source.batches(10)))
    events = result.events
    assert events.event_id.tolist() == ["x1", "x2"]
    assert events.value[0] == 4.5 and np.isnan(events.value[1])
    assert events.kind.tolist() == [KIND_CODES["click"], KIND_CODES["view"]]
    assert events.context["dev"].tolist() == ["ios", None]


def test_default_kind_and_canonical_columns_without_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "user_id,item_id,timestamp,value\n1,2,3,4\n")
    batch = next(FileReplaySource(path, default_kind="rating").batches(5))
    assert batch.columns["kind"].tolist() == [KIND_CODES["rating"]]
    assert batch.columns["value"].tolist() == [4.0]
    with pytest.raises(ConfigError, match="default_kind"):
        FileReplaySource(path, default_kind="buy")


def test_missing_file_and_missing_columns_raise_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        FileReplaySource(tmp_path / "nope.csv", MAPPING)
    path = _write(tmp_path / "x.csv", "userId,movieId,time\n1,2,3\n")
    with pytest.raises(
        SourceError, match=r"column 'ts' \(mapped to timestamp\) not found .*userId, movieId, time"
    ):
        FileReplaySource(path, MAPPING)
    with pytest.raises(SourceError, match="lacks the canonical column"):
        FileReplaySource(path)


def test_batches_offsets_commit_and_resume(tmp_path: Path) -> None:
    lines = ["u,i,t", "1,1,1", "2,2", "3,3,3", "4,4,4", "5,5,5"]
    source = FileReplaySource(_write(tmp_path / "r.csv", "\n".join(lines) + "\n"), "user=u,item=i,time=t")
    batches = list(source.batches(2))
    assert [b.records_read for b in batches] == [2, 2, 1]
    assert [b.end_offset for b in batches] == [2, 4, 5]
    assert len(batches[0].malformed) == 1 and batches[0].num_rows == 1  # malformed records come first
    source.commit(3)
    assert [b.positions.tolist() for b in source.batches(10)] == [[5, 6]]
    resumed = FileReplaySource(source.path, "user=u,item=i,time=t", start_offset=4)
    assert [b.positions.tolist() for b in resumed.batches(10)] == [[6]]
    with pytest.raises(ConfigError):
        source.commit(99)
    with pytest.raises(ConfigError):
        list(source.batches(0))


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    source = FileReplaySource(_write(tmp_path / "h.csv", "u,i,t\n"), "user=u,item=i,time=t")
    assert source.total_records == 0 and list(source.batches(5)) == []


# -- other formats --------------------------------------------------------------------------------------


def test_tsv_has_no_quoting(tmp_path: Path) -> None:
    path = _write(tmp_path / "u.tsv", 'u\ti\tt\n"1\t2\t3\n4\t5\t1\n')
    columns, positions, _ = _all_rows(FileReplaySource(path, "user=u,item=i,time=t"))
    assert columns["user_id"] == ["4", '"1'] and positions == [3, 2]


def test_gzip_csv_and_the_source_name(tmp_path: Path) -> None:
    path = tmp_path / "g.v2.csv.gz"
    path.write_bytes(gzip.compress(b"u,i,t\n1,2,3\n"))
    columns = _all_rows(FileReplaySource(path, "user=u,item=i,time=t"))[0]
    assert columns["item_id"] == [2] and columns["event_id"] == ["g.v2:2"]


def test_cells_that_are_not_utf8_become_rejections_not_crashes(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("u,i,t\n1,caf\u00e9,3\n2,ok,4\n".encode("latin-1"))
    result = EventValidator().validate(next(FileReplaySource(path, "user=u,item=i,time=t").batches(10)))
    assert result.events.item_id.tolist() == ["ok"]
    [rejection] = result.rejections
    assert (rejection.position, rejection.field) == (2, "item_id")
    assert "undecodable text (not UTF-8)" in rejection.reason


def test_json_lines(tmp_path: Path) -> None:
    text = "\n".join(
        [
            json.dumps({"u": "a", "i": 1, "t": "2024-01-01T00:00:10Z", "dev": "ios"}),
            "",
            '{"u": "b", "i": 2, "t": 5',
            "[1, 2]",
            json.dumps({"u": "c", "i": 3.0, "t": 1_704_067_200}),
            json.dumps({"i": 4, "t": 1}),
        ]
    )
    source = FileReplaySource(_write(tmp_path / "e.jsonl", text), "user=u,item=i,time=t,ctx=dev")
    columns, positions, malformed = _all_rows(source)
    assert positions == [6, 5, 1]
    assert columns["user_id"] == [None, "c", "a"] and columns["dev"] == [None, None, "ios"]
    assert [(m.position, m.field) for m in malformed] == [(3, "_record"), (4, "_record")]
    assert malformed[0].reason == "invalid JSON at column 26: Expecting ',' delimiter"
    assert malformed[1].reason == "expected a JSON object, got array"
    result = EventValidator().validate(next(FileReplaySource(source.path, source.mapping).batches(10)))
    assert result.accepted == 2 and [r.position for r in result.rejections] == [3, 4, 6]


def test_parquet_keeps_types_and_turns_nulls_into_none(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    table = pa.table(
        {
            "user": pa.array([1, 2, None], pa.int64()),
            "item": pa.array([10, 11, 12], pa.int64()),
            "when": pa.array([3_000_000, 1_000_000, 2_000_000], pa.timestamp("ms", tz="UTC")),
            "device": pa.array(["a", None, "c"]).dictionary_encode(),
        }
    )
    pq.write_table(table, path)
    batch = next(FileReplaySource(path, "user=user,item=item,time=when,ctx=device").batches(10))
    assert batch.columns["item_id"].dtype == np.int64 and batch.columns["item_id"].tolist() == [11, 12, 10]
    assert batch.columns["timestamp"].tolist() == [1000.0, 2000.0, 3000.0]
    assert batch.columns["user_id"].tolist() == [2, None, 1]
    assert batch.columns["device"].tolist() == [None, "c", "a"]
    assert batch.positions.tolist() == [1, 2, 0]
    assert batch.columns["event_id"].tolist() == ["e:1", "e:2", "e:0"]


# -- the acceptance test: a dirty CSV replays to the end, every bad line accounted for --------------------


def test_dirty_csv_replays_to_the_end_with_every_bad_line_dead_lettered(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = ["eid,userId,movieId,rating,ts,action"]
    bad: dict[int, str] = {}  # line number -> field expected in the dead letter
    damages = [
        ("_record", lambda f: ",".join(f[:-2])),  # too few fields
        ("_record", lambda f: ",".join([*f, "surplus"])),  # too many fields
        ("timestamp", lambda f: ",".join([*f[:4], "yesterday", f[5]])),
        ("timestamp", lambda f: ",".join([*f[:4], "1700000000000", f[5]])),  # milliseconds
        ("user_id", lambda f: ",".join([f[0], "", *f[2:]])),
        ("value", lambda f: ",".join([*f[:3], "five", *f[4:]])),
        ("kind", lambda f: ",".join([*f[:5], "buy"])),
    ]
    for n in range(2, 2002):
        fields = [f"e{n}", str(rng.randint(1, 50)), str(rng.randint(1, 200)), str(rng.randint(1, 5))]
        fields += [str(1_700_000_000 + rng.randint(0, 10_000)), rng.choice(["view", "click", "Rating", ""])]
        if rng.random() < 0.05:
            field, damage = rng.choice(damages)
            lines.append(damage(fields))
            bad[n] = field
        else:
            lines.append(",".join(fields))
    path = _write(tmp_path / "dirty.csv", "\n".join(lines) + "\n")
    source = FileReplaySource(path, "id=eid,user=userId,item=movieId,value=rating,time=ts,kind=action")
    validator = EventValidator()
    read = accepted = 0
    times: list[float] = []
    with DeadLetterWriter(tmp_path / "dead.jsonl", source=source.name) as dead:
        for batch in source.batches(128):
            result = validator.validate(batch)
            dead.write(result.rejections)
            read += batch.records_read
            accepted += result.accepted
            times.extend(result.events.timestamp.tolist())
            source.commit(batch.end_offset)
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert 60 < len(bad) < 140
    assert read == 2000 and accepted + dead.count == read and dead.count == len(bad)
    assert {letter["position"]: letter["field"] for letter in letters} == bad
    assert all(letter["reason"] and letter["source"] == "dirty" for letter in letters)
    assert any("(milliseconds?)" in letter["reason"] for letter in letters)
    assert times == sorted(times)  # accepted events come out in event-time order
    assert source.committed_offset == source.total_records == 2000


def test_raw_batch_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="column 'user_id' has 1 rows"):
        RawBatch({"user_id": np.array([1])}, np.array([0, 1]))


# -- saying what the file is: format, delimiter, header, time unit and format -----------------------------


def test_delimiter_is_sniffed_or_given_and_named_in_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "export.csv", "userId;movieId;ts\n1;10;200\n2;11;100\n3;12;300\n")
    source = FileReplaySource(path, MAPPING)
    assert source.delimiter == ";"
    assert _all_rows(source)[0]["user_id"] == [2, 1, 3]
    assert _all_rows(FileReplaySource(path, MAPPING, delimiter="semicolon"))[0]["item_id"] == [11, 10, 12]
    with pytest.raises(SourceError, match=r"read with delimiter ','; pass --delimiter if that is wrong"):
        FileReplaySource(path, MAPPING, delimiter=",")
    with pytest.raises(ConfigError, match="must be one character"):
        FileReplaySource(path, MAPPING, delimiter=";;")
    with pytest.raises(ConfigError, match="csv and tsv files only"):
        FileReplaySource(_write(tmp_path / "e.jsonl", "{}\n"), delimiter=";")


def test_no_header_names_columns_by_position_and_keeps_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "raw.csv", "1,10,200\n\n2,11\n3,12,100\n")
    source = FileReplaySource(path, "user=0,item=1,time=2", header=False)
    columns, positions, malformed = _all_rows(source)
    assert columns["user_id"] == [3, 1] and positions == [4, 1]
    assert [(m.position, m.reason) for m in malformed] == [(3, "wrong number of fields: expected 3, got 2")]
    with pytest.raises(SourceError, match=r"columns are named by position, e\.g\. --columns user=0"):
        FileReplaySource(path, header=False)


def test_time_unit_scales_numbers_only_and_time_format_reads_text(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        "u,i,t\n1,1,1700000000500\n2,2,2023-11-14T22:13:20Z\n3,3,soon\n4,4,1700000001000\n",
    )
    columns, positions, _ = _all_rows(FileReplaySource(path, "user=u,item=i,time=t", time_unit="ms"))
    assert positions == [3, 2, 5, 4]
    assert columns["timestamp"] == [1_700_000_000.0, 1_700_000_000.5, 1_700_000_001.0, "soon"]
    us = _write(tmp_path / "us.csv", "u,i,t\n1,1,05/31/2024 14:00\n2,2,2024-05-01\n")
    columns, _, _ = _all_rows(FileReplaySource(us, "user=u,item=i,time=t", time_format="%m/%d/%Y %H:%M"))
    assert columns["timestamp"] == [1_714_521_600.0, 1_717_164_000.0]
    with pytest.raises(ConfigError, match="time_unit 'min' is not one of s, ms, us, ns"):
        FileReplaySource(path, "user=u,item=i,time=t", time_unit="min")


def test_parquet_timestamps_keep_their_unit_whatever_time_unit_says(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    stamps = pa.array([1_700_000_000_000_000], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "timestamp": stamps}), path)
    assert _all_rows(FileReplaySource(path, time_unit="ms"))[0]["timestamp"] == [1_700_000_000.0]
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "timestamp": [1_700_000_000_000]}), path)
    assert _all_rows(FileReplaySource(path, time_unit="ms"))[0]["timestamp"] == [1_700_000_000.0]


def test_a_json_array_file_is_read_and_its_non_objects_are_malformed(tmp_path: Path) -> None:
    records = [
        {"user_id": 1, "item_id": 2, "timestamp": 20},
        7,
        {"user_id": 3, "item_id": 4, "timestamp": 10},
    ]
    path = _write(tmp_path / "e.json", json.dumps(records, indent=2))
    columns, positions, malformed = _all_rows(FileReplaySource(path))
    assert columns["user_id"] == [3, 1] and positions == [2, 0]
    assert [(m.position, m.reason) for m in malformed] == [(1, "expected a JSON object, got int")]
    assert FileReplaySource(path, format="json").total_records == 3
    # JSON lines whose first line happens to be an array stay JSON lines; a broken array is one clear error.
    lines = _write(tmp_path / "l.jsonl", '[1, 2]\n{"user_id": 1, "item_id": 2, "timestamp": 5}\n')
    assert [m.reason for m in _all_rows(FileReplaySource(lines))[2]] == ["expected a JSON object, got array"]
    broken = _write(tmp_path / "b.json", '[\n  {"user_id": 1,\n  "item_id" 2}\n]')
    with pytest.raises(SourceError, match=r"starts like one JSON array but is not valid JSON at line 3"):
        FileReplaySource(broken)


def test_the_event_id_column_is_known(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.csv", "user_id,item_id,timestamp,event_id\n1,2,3,a\n")
    assert FileReplaySource(path).event_id_column == "event_id"
    assert FileReplaySource(path, "user=user_id,item=item_id,time=timestamp").event_id_column is None


_CELL = st.text("abcxyz0123456789", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(_CELL, _CELL, st.integers(0, 4_000_000_000), st.integers(0, 999)), min_size=2, max_size=25
    ),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    given_delimiter=st.booleans(),
    header=st.booleans(),
    unit=st.sampled_from(["s", "ms", "us"]),
)
def test_delimiter_header_and_time_unit_round_trip(
    tmp_path_factory, rows, delimiter, given_delimiter, header, unit
) -> None:
    """Whatever delimiter (said or sniffed), header or none, and unit a file is written with, reading it with
    the same options gives back every cell: ids as written, times in seconds."""
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000}[unit]
    times = [seconds * scale + (fraction % scale) for _, _, seconds, fraction in rows]
    lines = [
        delimiter.join((f"u{user}", f"i{item}", str(t)))
        for (user, item, _, _), t in zip(rows, times, strict=True)
    ]
    if header:
        lines.insert(0, delimiter.join(("user", "item", "when")))
    path = tmp_path_factory.mktemp("round") / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    mapping = "user=user,item=item,time=when" if header else "user=0,item=1,time=2"
    source = FileReplaySource(
        path, mapping, delimiter=delimiter if given_delimiter else None, header=header, time_unit=unit
    )
    assert source.delimiter == delimiter
    columns, positions, malformed = _all_rows(source)
    assert malformed == []
    by_line = {
        p: (u, i, t)
        for p, u, i, t in zip(
            positions, columns["user_id"], columns["item_id"], columns["timestamp"], strict=True
        )
    }
    first = 2 if header else 1
    for line, ((user, item, _, _), t) in enumerate(zip(rows, times, strict=True), start=first):
        assert by_line[line][:2] == (f"u{user}", f"i{item}")
        assert by_line[line][2] == pytest.approx(t / scale, rel=1e-12, abs=1e-9)


def test_a_first_line_of_data_is_named_as_such(tmp_path: Path) -> None:
    path = _write(tmp_path / "raw.csv", "u1,i1,1700000000\nu2,i2,1700000001\n")
    with pytest.raises(
        SourceError, match="its first line looks like data, not column names: pass --no-header"
    ):
        FileReplaySource(path)
