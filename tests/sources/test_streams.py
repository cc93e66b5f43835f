"""Stream sources and sinks against real brokers (tansu for Kafka, redis-server), and their pure parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError, SourceError
from freshrec.events import Event, EventBatch
from freshrec.live import free_port
from freshrec.preprocess.pipeline import IngestPipeline
from freshrec.sources.streams import (
    ConsumerSpec,
    PositionLedger,
    StreamAddress,
    decode_messages,
    encode_events,
    open_sink,
    open_stream,
)


def events(n: int, users: int = 37, start: int = 0) -> EventBatch:
    return EventBatch.from_events(
        Event(f"e{i}", 1.7e9 + i, f"u{i % users}", i % 101, "click" if i % 3 else "view")
        for i in range(start, start + n)
    )


def read_all(source, expected: int, max_records: int = 500, tries: int = 400) -> list:
    """Raw batches until `expected` records came (a broker may hand them over in several reads)."""
    batches, got = [], 0
    for _ in range(tries):
        for batch in source.batches(max_records):
            batches.append(batch)
            got += batch.records_read
        if got >= expected:
            break
    assert got == expected, f"read {got} of {expected}"
    return batches


def ids_of(batches) -> list[str]:
    return [str(e) for batch in batches for e in batch.columns["event_id"].tolist()]


# ---------------------------------------------------------------------------------------- addresses
def test_addresses_parse_and_refuse_with_the_reason():
    assert StreamAddress.parse("kafka://broker/events").port == 9092
    assert StreamAddress.parse("redis://cache:7000/s?partitions=3").partitions == 3
    for url, reason in [
        ("events", "expected a URL"),
        ("http://h/x", "unknown scheme"),
        ("kafka://h:99999/x", "port"),
        ("kafka://h:9092/", "name"),
        ("kafka://h:9092/a b", "name"),
        ("redis://h/x?partitions=0", "partitions must be 1 to"),
        ("kafka://h/x?partitions=2", "unknown option 'partitions'"),
    ]:
        with pytest.raises(ConfigError, match=reason):
            StreamAddress.parse(url)


@given(st.text(max_size=80))
def test_any_text_is_an_address_or_a_config_error(text):
    try:
        address = StreamAddress.parse(text)
    except ConfigError:
        return
    assert StreamAddress.parse(str(address)) == address


# ---------------------------------------------------------------------------------------- messages
def test_encoded_events_decode_to_the_same_accepted_events():
    batch = EventBatch.from_events(
        [Event("a", 1.7e9, "u1", 7, "purchase", 12.5, {"device": "ios"}), Event("b", 1.7e9 + 1, 3, "x")]
    )
    messages = encode_events(batch)
    assert [key for key, _ in messages] == [b"u1", b"3"]
    raw = decode_messages([value for _, value in messages], np.array([10, 11]))
    assert raw.end_offset == 12 and raw.offsets.tolist() == [10, 11]
    result = IngestPipeline().validator.validate(raw)
    assert not result.rejections
    assert result.events.to_events() == batch.to_events()


def test_messages_that_are_not_events_are_rejected_with_their_sequence():
    values = [b'{"user_id": 1}', b"not json", b"[1, 2]", None, b"x" * 70_000]
    raw = decode_messages(values, np.arange(5, 10))
    assert raw.records_read == 5 and raw.num_rows == 1
    reasons = {r.position: r.reason for r in raw.malformed}
    assert reasons[6].startswith("invalid JSON at column 1")
    assert reasons[7] == "expected a JSON object, got array"
    assert reasons[8].startswith("empty message")
    assert reasons[9].startswith("message too big")


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=60),
            st.dictionaries(
                st.sampled_from(["user_id", "item_id", "timestamp", "kind", "value", "context", "x"]),
                st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5), st.booleans()),
            ).map(lambda record: json.dumps(record).encode()),
        ),
        max_size=30,
    )
)
def test_any_bytes_decode_without_error_and_every_message_is_counted(values):
    raw = decode_messages(values, np.arange(len(values)))
    assert raw.records_read == len(values)
    pipeline = IngestPipeline()
    pipeline.process(raw)
    counts = pipeline.counts
    assert counts.read == len(values) == counts.accepted + counts.rejected


# ---------------------------------------------------------------------------------------- positions
@given(st.lists(st.lists(st.integers(0, 3), max_size=8), max_size=6), st.data())
def test_ledger_positions_match_a_replay_of_the_rows(batches, data):
    ledger = PositionLedger(100, {p: -2 for p in range(4)})
    rows: list[tuple[int, int]] = []
    counters = dict.fromkeys(range(4), 0)
    for partitions in batches:
        after = []
        for p in partitions:
            counters[p] += 1
            after.append(counters[p])
            rows.append((p, counters[p]))
        ledger.record(np.array(partitions, dtype=np.int64), after)
    released = data.draw(st.integers(100, 100 + len(rows)))
    ledger.release(released)
    sequence = data.draw(st.integers(100, 100 + len(rows)))
    if sequence < ledger._base_sequence:
        with pytest.raises(SourceError):
            ledger.positions_at(sequence)
        return
    expected = {p: -2 for p in range(4)}
    for p, after in rows[: sequence - 100]:
        expected[p] = after
    assert ledger.positions_at(sequence) == expected


# ---------------------------------------------------------------------------------------- brokers
@pytest.fixture(params=["kafka", "redis"])
def stream_url(request, kafka_topic, redis_server) -> str:
    """A new two-partition stream on each broker."""
    if request.param == "kafka":
        return kafka_topic(2)
    return f"{redis_server}/s{free_port()}?partitions=2"


def test_a_stream_round_trip_keeps_every_user_on_one_partition_in_order(stream_url):
    sink = open_sink(stream_url)
    sink.send(events(3_000))
    sink.close()
    source = open_stream(stream_url, ConsumerSpec("g1"))
    batches = read_all(source, 3_000)
    source.close()
    assert sorted(ids_of(batches)) == sorted(f"e{i}" for i in range(3_000))
    sequences = np.concatenate([batch.offsets for batch in batches])
    assert sequences.tolist() == list(range(3_000))
    per_user: dict[str, list[int]] = {}
    users = [user for batch in batches for user in batch.columns["user_id"]]
    for event_id, user in zip(ids_of(batches), users, strict=True):
        per_user.setdefault(user, []).append(int(event_id[1:]))
    assert all(order == sorted(order) for order in per_user.values())  # each user's events in order
    partitions = source.positions_at(3_000)
    assert set(partitions) == {0, 1}


def test_a_consumer_restarted_at_its_positions_reads_each_later_event_once(stream_url):
    sink = open_sink(stream_url)
    sink.send(events(2_000))
    first = open_stream(stream_url, ConsumerSpec("g2"))
    head = read_all(first, 2_000, max_records=300)
    cut = 1_234
    positions = json.loads(json.dumps(first.positions_at(cut)))  # through a checkpoint's JSON
    first.commit(cut)
    first.close()
    sink.send(events(500, start=2_000))  # more arrive while the consumer is down
    sink.close()
    again = open_stream(stream_url, ConsumerSpec("g2", start_sequence=cut, positions=positions))
    tail = read_all(again, 2_500 - cut)
    again.close()
    before = ids_of(head)[:cut]
    after = ids_of(tail)
    assert len(set(before) | set(after)) == 2_500 and not set(before) & set(after)
    assert np.concatenate([b.offsets for b in tail]).tolist() == list(range(cut, 2_500))


def test_two_ranks_read_disjoint_partitions_that_cover_the_stream(stream_url):
    sink = open_sink(stream_url)
    sink.send(events(1_000))
    sink.close()
    ranks = [open_stream(stream_url, ConsumerSpec("g3", rank=r, world_size=2)) for r in range(2)]
    assert [rank.partitions for rank in ranks] == [[0], [1]]
    seen: list[set[str]] = [set(), set()]
    for _ in range(400):
        for index, rank in enumerate(ranks):
            for batch in rank.batches(500):
                seen[index].update(ids_of([batch]))
        if sum(map(len, seen)) >= 1_000:
            break
    for rank in ranks:
        rank.close()
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 1_000
    assert min(map(len, seen)) > 100  # 37 users hashed over 2 partitions: both hold some


def test_kafka_commits_reach_the_group(kafka_topic):
    from confluent_kafka import Consumer, TopicPartition

    url = kafka_topic(2)
    sink = open_sink(url)
    sink.send(events(400))
    source = open_stream(url, ConsumerSpec("g-commit"))
    read_all(source, 400)
    source.commit(400)
    positions = source.positions_at(400)
    source.close()
    address = StreamAddress.parse(url)
    probe = Consumer({"bootstrap.servers": f"{address.host}:{address.port}", "group.id": "g-commit"})
    committed = probe.committed([TopicPartition(address.name, p) for p in (0, 1)], timeout=10)
    probe.close()
    assert {tp.partition: tp.offset for tp in committed} == positions
    assert sum(positions.values()) == 400


def test_redis_commits_move_the_group(redis_server):
    import redis

    url = f"{redis_server}/c{free_port()}"
    sink = open_sink(url)
    sink.send(events(300))
    source = open_stream(url, ConsumerSpec("g-commit"))
    read_all(source, 300)
    source.commit(300)
    source.close()
    address = StreamAddress.parse(url)
    group = redis.Redis(port=address.port).xinfo_groups(address.name)[0]
    assert group["last-delivered-id"].decode() == str(source.positions_at(300)[0])
    assert group["lag"] == 0


def test_unreachable_brokers_and_missing_topics_are_named():
    port = free_port()
    with pytest.raises(SourceError, match=f"cannot reach Redis at 127.0.0.1:{port}"):
        open_stream(f"redis://127.0.0.1:{port}/s")
    with pytest.raises(SourceError, match="cannot reach the Kafka broker"):
        open_sink(f"kafka://127.0.0.1:{port}/t")


def test_a_missing_topic_says_how_to_create_it(kafka_broker):
    with pytest.raises(SourceError, match="does not exist on the broker; create it"):
        open_stream(f"kafka://{kafka_broker}/nope{free_port()}")


def test_more_ranks_than_partitions_is_refused(kafka_topic):
    with pytest.raises(ConfigError, match="fewer than the 3 ranks"):
        open_stream(kafka_topic(2), ConsumerSpec(rank=2, world_size=3))
