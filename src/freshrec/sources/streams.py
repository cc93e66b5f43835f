"""Event streams on a broker that exists: Kafka topics (confluent-kafka) and Redis Streams (redis-py).

A stream is addressed by URL::

    kafka://host:port/topic             the topic's partitions, read through a consumer group
    redis://host:port/stream            one Redis stream
    redis://host:port/stream?partitions=4   four streams, ``stream:0`` ... ``stream:3``

Every message is one event as a JSON object with the canonical field names (``event_id``, ``timestamp``,
``user_id``, ``item_id``, ``kind``, ``value``; any other key, or the keys of a nested ``"context"`` object,
is a context field): what ``freshrec produce`` and ``freshrec serve --source URL`` write, and what any
other producer can write. A stream is partitioned by user (Kafka: the message key is the user id, hashed
by the Java client's murmur2 partitioner; Redis: the user id's xxh64 modulo the partitions), so one user's
events stay in order on one partition, and so on one trainer rank.

Positions. A consumer numbers the records it reads with its own sequence (0, 1, 2, ... from where it
started): that is the single ``int`` position the live loop, its checkpoints and the publisher already
speak. The consumer remembers which broker positions (a Kafka offset per partition, a Redis entry id per
stream) each sequence number stands for, `positions_at`, and the loop stores those beside its state in
every checkpoint and the publisher in every version. A restart reads from exactly those positions: the
checkpoint is the truth, as in Flink's Kafka connector. ``commit`` then reports the durable position to
the broker (Kafka: the group's committed offsets; Redis: the group's last delivered id, ``XGROUP SETID``),
which is what the broker's own tools show as the trainer's lag; a committed offset is never ahead of a
checkpoint on disk.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

import numpy as np

from freshrec.errors import ConfigError, SourceError
from freshrec.events import EventBatch
from freshrec.sources.base import EVENT_COLUMNS, RawBatch, Rejection, Source, check_batch_size
from freshrec.sources.files import json_object

__all__ = [
    "BrokerPositions",
    "ConsumerSpec",
    "EventSink",
    "LedgerConsumer",
    "PositionLedger",
    "StreamAddress",
    "StreamSource",
    "decode_messages",
    "encode_events",
    "open_sink",
    "open_stream",
]

#: What a consumer's broker positions look like: partition number -> the position to read from next (a
#: Kafka offset, or the id of the last Redis entry read, which the next read starts after).
BrokerPositions = dict[int, int | str]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_MAX_PARTITIONS = 1024
_SCHEMES = ("kafka", "redis")
_MAX_MESSAGE_BYTES = 64 * 1024  # one event; a bigger message is refused as a record, not read into memory


@dataclass(frozen=True)
class StreamAddress:
    """A parsed stream URL (see the module's docstring).

    >>> StreamAddress.parse("kafka://127.0.0.1:9092/events")
    StreamAddress(scheme='kafka', host='127.0.0.1', port=9092, name='events', partitions=None)
    >>> str(StreamAddress.parse("redis://localhost:6379/clicks?partitions=2"))
    'redis://localhost:6379/clicks?partitions=2'
    """

    scheme: Literal["kafka", "redis"]
    host: str
    port: int
    name: str
    #: Redis only: how many streams the events are spread over (Kafka reads the topic's own partitions).
    partitions: int | None = None

    @classmethod
    def parse(cls, url: str) -> StreamAddress:
        text = str(url).strip()
        if "://" not in text:
            raise ConfigError(
                f"stream {text!r}: expected a URL such as kafka://host:9092/topic or redis://host:6379/stream"
            )
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ConfigError(f"stream {text!r}: unknown scheme {parts.scheme!r}; use kafka:// or redis://")
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"stream {text!r}: the port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ConfigError(f"stream {text!r}: no host (kafka://host:port/topic)")
        name = parts.path.lstrip("/")
        if not _NAME.match(name):
            raise ConfigError(
                f"stream {text!r}: the {'topic' if scheme == 'kafka' else 'stream'} name {name!r} must be "
                "1-200 letters, digits, '.', '_' or '-'"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - ({"partitions"} if scheme == "redis" else set()))
        if unknown:
            raise ConfigError(f"stream {text!r}: unknown option {unknown[0]!r}")
        partitions = None
        if "partitions" in query:
            value = query["partitions"][-1]
            if not value.isdigit() or not 1 <= int(value) <= _MAX_PARTITIONS:
                limit = f"partitions must be 1 to {_MAX_PARTITIONS}"
                raise ConfigError(f"stream {text!r}: {limit}, got {value!r}")
            partitions = int(value)
        default_port = 9092 if scheme == "kafka" else 6379
        return cls(scheme, parts.hostname, port or default_port, name, partitions)  # type: ignore[arg-type]

    def __str__(self) -> str:
        query = f"?partitions={self.partitions}" if self.partitions is not None else ""
        return f"{self.scheme}://{self.host}:{self.port}/{self.name}{query}"


@runtime_checkable
class StreamSource(Source, Protocol):
    """A `Source` over a partitioned broker stream: its sequence numbers stand for broker positions."""

    address: StreamAddress

    def positions_at(self, sequence: int) -> BrokerPositions:
        """The broker positions after every record numbered below `sequence` (a `RawBatch.end_offset` or
        any row's offset + 1 of a batch not yet committed)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ConsumerSpec:
    """Who a stream consumer is and where it starts.

    Parameters
    ----------
    group
        The consumer group the durable position is committed to.
    rank, world_size
        The consumer reads the partitions ``p`` with ``p % world_size == rank``.
    start_sequence
        The number of the first record read (the live loop's position to resume at).
    positions
        Where to read each partition from (a checkpoint's or a version's, JSON keys allowed); the
        partitions it does not name are read from their first retained message.
    """

    group: str = "freshrec-trainer"
    rank: int = 0
    world_size: int = 1
    start_sequence: int = 0
    positions: dict[Any, Any] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if not _NAME.match(self.group):
            raise ConfigError(f"group {self.group!r} must be 1-200 letters, digits, '.', '_' or '-'")

    def start(self, partitions: list[int], beginning: int | str, kind: type) -> BrokerPositions:
        """The position to read each of `partitions` from: the given one, else `beginning`."""
        given = {int(partition): kind(at) for partition, at in (self.positions or {}).items()}
        return {partition: given.get(partition, beginning) for partition in partitions}


class LedgerConsumer:
    """What both consumers share: batches numbered through a `PositionLedger` from a broker read."""

    address: StreamAddress
    _ledger: PositionLedger

    def batches(self, max_records: int) -> Iterator[RawBatch]:
        """The messages the broker holds now, in batches of at most `max_records`; ends when a read
        waits a few milliseconds for nothing (the live loop then idles and asks again)."""
        check_batch_size(max_records)
        return read_batches(self._read, max_records, self._ledger)

    def _read(self, n: int) -> list[tuple[int, int | str, bytes | None]]:
        """Up to `n` messages as (partition, position after it, value)."""
        raise NotImplementedError

    def positions_at(self, sequence: int) -> BrokerPositions:
        return self._ledger.positions_at(sequence)


@runtime_checkable
class EventSink(Protocol):
    """Where validated events are written so that others read them: a stream's producer."""

    address: StreamAddress

    def send(self, events: EventBatch) -> None:
        """Write `events` and return once the broker holds them (acknowledged by every in-sync replica)."""
        ...

    def close(self) -> None: ...


def open_stream(url: str | StreamAddress, spec: ConsumerSpec | None = None) -> StreamSource:
    """A consumer of the stream at `url`, as `spec` says (default: the whole stream from its start)."""
    address = url if isinstance(url, StreamAddress) else StreamAddress.parse(url)
    spec = spec or ConsumerSpec()
    if address.scheme == "kafka":
        from freshrec.sources.kafka import KafkaSource

        return KafkaSource(address, spec)
    from freshrec.sources.redis_streams import RedisStreamSource

    return RedisStreamSource(address, spec)


def open_sink(url: str | StreamAddress) -> EventSink:
    """A producer of events into the stream at `url`."""
    address = url if isinstance(url, StreamAddress) else StreamAddress.parse(url)
    if address.scheme == "kafka":
        from freshrec.sources.kafka import KafkaSink

        return KafkaSink(address)
    from freshrec.sources.redis_streams import RedisStreamSink

    return RedisStreamSink(address)


def assigned_partitions(partitions: int, rank: int, world_size: int) -> list[int]:
    """The partitions rank `rank` of `world_size` reads: every `world_size`-th from `rank` (a rank with
    none is refused: it would learn nothing and hold the others back in synchronous training).

    >>> assigned_partitions(4, 1, 2)
    [1, 3]
    """
    mine = [p for p in range(partitions) if p % world_size == rank]
    if not mine:
        raise ConfigError(
            f"the stream has {partitions} partition(s), fewer than the {world_size} ranks: rank {rank} "
            "would read nothing; give the stream at least as many partitions as ranks"
        )
    return mine


# ---------------------------------------------------------------------------------------- messages
def encode_events(events: EventBatch) -> list[tuple[bytes, bytes]]:
    """Each event as (key, value): the user id as UTF-8 text (the partitioning key) and the event as a
    compact JSON object with the canonical names (`decode_messages` reads it back).

    >>> from freshrec.events import Event
    >>> key, value = encode_events(EventBatch.from_events([Event("e1", 1.5, "u", 7, "click")]))[0]
    >>> key, value
    (b'u', b'{"event_id":"e1","timestamp":1.5,"user_id":"u","item_id":7,"kind":"click"}')
    """
    messages = []
    for event in events.to_events():
        record: dict[str, Any] = {
            "event_id": event.event_id,
            "timestamp": event.timestamp,
            "user_id": event.user_id,
            "item_id": event.item_id,
            "kind": event.kind,
        }
        if event.value is not None:
            record["value"] = event.value
        if event.context:
            record["context"] = dict(event.context)
        value = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        messages.append((str(event.user_id).encode(), value))
    return messages


def decode_messages(
    values: Sequence[bytes | None], sequences: np.ndarray, max_context_fields: int = 32
) -> RawBatch:
    """Messages (one JSON event each) as a raw batch whose rows are numbered by `sequences`; a message
    that is not a JSON object, or too big, is a malformed record at its sequence number (read = accepted +
    rejected still holds). The batch's ``end_offset`` is one past the last sequence."""
    records: list[dict[str, Any]] = []
    positions: list[int] = []
    malformed: list[Rejection] = []
    names: dict[str, None] = {}
    max_names = len(EVENT_COLUMNS) + 4 * max_context_fields
    for sequence, value in zip(sequences.tolist(), values, strict=True):
        record, problem = _decode_one(value)
        if problem is None:
            new = [name for name in record if name not in names]
            if len(names) + len(new) > max_names:
                problem = f"too many distinct fields in one read: more than {max_names}"
        if problem is not None:
            text = value[:1000].decode("utf-8", "replace") if value is not None else ""
            malformed.append(Rejection(sequence, "_record", problem, text))
            continue
        names.update(dict.fromkeys(record))
        records.append(record)
        positions.append(sequence)
    n = len(records)
    columns = {
        name: np.fromiter((record.get(name) for record in records), dtype=object, count=n) for name in names
    }
    end = int(sequences[-1]) + 1 if len(sequences) else 0
    offsets = np.asarray(positions, dtype=np.int64)
    return RawBatch(columns, offsets, malformed, end_offset=end, offsets=offsets)


def _decode_one(value: bytes | None) -> tuple[dict[str, Any], str | None]:
    if value is None:
        return {}, "empty message (no value)"
    if len(value) > _MAX_MESSAGE_BYTES:
        return {}, f"message too big: {len(value)} bytes > {_MAX_MESSAGE_BYTES}"
    record, reason = json_object(value)
    if record is None:
        return {}, reason
    context = record.pop("context", None)
    if isinstance(context, dict):
        for name, item in context.items():
            record.setdefault(str(name), item)
    elif context is not None:
        record["context"] = context  # a context that is not an object: the validator says so
    return record, None


# ---------------------------------------------------------------------------------------- positions
class PositionLedger:
    """Which broker positions each sequence number of a consumer stands for, until they are committed.

    Batches are recorded in the order read; `positions_at` answers for any sequence from the last
    release on, `release` folds the batches below a committed sequence into the base positions.

    >>> ledger = PositionLedger(0, {0: 0, 1: 0})
    >>> ledger.record(np.array([0, 1, 0]), [5, 9, 6])
    array([0, 1, 2])
    >>> ledger.positions_at(2), ledger.positions_at(3)
    ({0: 5, 1: 9}, {0: 6, 1: 9})
    """

    def __init__(self, start_sequence: int, start_positions: BrokerPositions) -> None:
        self.next_sequence = int(start_sequence)
        self._base_sequence = int(start_sequence)
        self._base: BrokerPositions = dict(start_positions)
        # (first sequence, partition per row, position after each row)
        self._batches: deque[tuple[int, np.ndarray, list[int | str]]] = deque()

    def record(self, partitions: np.ndarray, after: list[int | str]) -> np.ndarray:
        """Number rows read, each from `partitions[i]` with `after[i]` the position to read on from."""
        first = self.next_sequence
        self._batches.append((first, np.asarray(partitions, dtype=np.int64), list(after)))
        self.next_sequence += len(after)
        return np.arange(first, self.next_sequence, dtype=np.int64)

    def positions_at(self, sequence: int) -> BrokerPositions:
        if sequence < self._base_sequence or sequence > self.next_sequence:
            raise SourceError(
                f"sequence {sequence} is outside the positions still known ({self._base_sequence} to "
                f"{self.next_sequence})"
            )
        positions = dict(self._base)
        for first, partitions, after in self._batches:
            if first >= sequence:
                break
            rows = min(sequence - first, len(after))
            head = partitions[:rows]
            # The last row of each partition below `sequence`: rows of a partition are in its order.
            unique, last_reversed = np.unique(head[::-1], return_index=True)
            for partition, index in zip(unique.tolist(), last_reversed.tolist(), strict=True):
                positions[partition] = after[rows - 1 - index]
        return positions

    def release(self, sequence: int) -> list[tuple[int, list[int | str]]]:
        """Forget the batches wholly below `sequence` (committed), folding them into the base; returns
        them as (first sequence, positions) for a broker that acknowledges each message (Redis)."""
        released = []
        while self._batches and self._batches[0][0] + len(self._batches[0][2]) <= sequence:
            first, partitions, after = self._batches.popleft()
            end = first + len(after)
            self._base = self._positions_through(partitions, after)
            self._base_sequence = end
            released.append((first, after))
        return released

    def _positions_through(self, partitions: np.ndarray, after: list[int | str]) -> BrokerPositions:
        positions = dict(self._base)
        unique, last_reversed = np.unique(partitions[::-1], return_index=True)
        for partition, index in zip(unique.tolist(), last_reversed.tolist(), strict=True):
            positions[partition] = after[len(after) - 1 - index]
        return positions


def read_batches(
    read: Any, max_records: int, ledger: PositionLedger, max_context_fields: int = 32
) -> Iterator[RawBatch]:
    """What both consumers' `batches` do: ask `read(n)` for up to n (partition, after, value) messages
    until it returns none, numbering them through `ledger`."""
    while True:
        messages = read(max_records)
        if not messages:
            return
        partitions = np.fromiter((m[0] for m in messages), dtype=np.int64, count=len(messages))
        sequences = ledger.record(partitions, [m[1] for m in messages])
        yield decode_messages([m[2] for m in messages], sequences, max_context_fields)
