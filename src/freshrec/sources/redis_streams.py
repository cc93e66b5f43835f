"""Redis Streams through redis-py: a consumer of a stream's partitions and a producer of events.

A partitioned stream of N partitions is N Redis streams, ``name:0`` ... ``name:N-1`` (one partition:
``name`` itself); a user's events go to the partition of the user id's xxh64. Each entry holds one event
as JSON in its field ``event`` (`freshrec.sources.streams`).

The consumer reads with ``XREAD`` from the entry ids it is given (its checkpoint's) rather than with
``XREADGROUP``: a group's pending-entries list redelivers what was read but not acknowledged, which a
consumer whose checkpoint holds its exact position does not need and could not tell from new entries.
The group is kept as the durable position's record: ``commit`` moves its last-delivered id
(``XGROUP SETID``), so ``XINFO GROUPS`` shows the trainer's lag as it does for any Redis consumer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import xxhash

from freshrec.errors import SourceError
from freshrec.events import EventBatch
from freshrec.sources.streams import (
    ConsumerSpec,
    LedgerConsumer,
    PositionLedger,
    StreamAddress,
    assigned_partitions,
    encode_events,
)

__all__ = ["RedisStreamSink", "RedisStreamSource", "stream_keys"]

_log = logging.getLogger(__name__)

_FIELD = b"event"
_RETRY_SECONDS = 1.0
_BLOCK_MS = 10  # how long a read waits for new entries: the bound on the latency it adds
_TIMEOUT = 10.0
_PIPELINE = 2_000  # XADDs per round trip
_BEGINNING = "0-0"  # read a stream from its first entry


def stream_keys(address: StreamAddress) -> list[str]:
    """The Redis keys of the stream's partitions.

    >>> stream_keys(StreamAddress.parse("redis://h/clicks?partitions=2"))
    ['clicks:0', 'clicks:1']
    """
    count = address.partitions or 1
    return [address.name] if count == 1 else [f"{address.name}:{p}" for p in range(count)]


def _connect(address: StreamAddress) -> Any:
    import redis

    client = redis.Redis(
        host=address.host, port=address.port, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
    )
    try:
        client.ping()
    except redis.RedisError as error:
        where = f"{address.host}:{address.port}"
        raise SourceError(f"{address}: cannot reach Redis at {where}: {error}") from None
    return client


class RedisStreamSource(LedgerConsumer):
    """Reads events from the partitions of a Redis stream (``redis://host:port/stream?partitions=N``)
    that `spec` assigns to its rank (a `StreamSource`)."""

    def __init__(self, address: StreamAddress, spec: ConsumerSpec) -> None:
        import redis

        self.address = address
        self.name = f"redis:{address.name}"
        self.group = spec.group
        self._redis = _connect(address)
        keys = stream_keys(address)
        self.partitions = assigned_partitions(len(keys), spec.rank, spec.world_size)
        self._keys = {partition: keys[partition] for partition in self.partitions}
        for key in self._keys.values():
            try:
                self._redis.xgroup_create(key, spec.group, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    why = f"cannot create consumer group {spec.group!r}: {error}"
                    raise SourceError(f"{address}: {why}") from None
        self._cursor: dict[int, str] = spec.start(self.partitions, _BEGINNING, str)  # type: ignore[assignment]
        self._ledger = PositionLedger(spec.start_sequence, dict(self._cursor))

    def _read(self, n: int) -> list[tuple[int, str, bytes | None]]:
        import redis

        # At most n in all: n // k from each of k partitions (a read of fewer than k asks the first n).
        partitions = self.partitions[:n]
        streams = {self._keys[p]: self._cursor[p] for p in partitions}
        try:
            answer = self._redis.xread(streams, count=max(1, n // len(partitions)), block=_BLOCK_MS)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            # As librdkafka does for Kafka: a broker away is waited for (the loop idles), said once a second.
            _log.warning("%s: reading: %s; retrying", self.address, error)
            time.sleep(_RETRY_SECONDS)
            return []
        except redis.RedisError as error:
            raise SourceError(f"{self.address}: reading: {error}") from None
        partition_of = {key.encode(): p for p, key in self._keys.items()}
        messages = []
        for key, entries in answer or []:
            partition = partition_of[key if isinstance(key, bytes) else key.encode()]
            for entry_id, fields in entries:
                entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                messages.append((partition, entry, fields.get(_FIELD)))
            if entries:
                self._cursor[partition] = messages[-1][1]
        return messages

    def commit(self, offset: int) -> None:
        """Move the group's last-delivered id of each partition to the position after every record
        numbered below `offset`."""
        import redis

        positions = self._ledger.positions_at(offset)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for partition, entry in positions.items():
                    if entry != _BEGINNING:
                        pipe.xgroup_setid(self._keys[partition], self.group, str(entry))
                pipe.execute()
        except redis.RedisError as error:
            raise SourceError(f"{self.address}: committing to group {self.group!r}: {error}") from None
        self._ledger.release(offset)

    def close(self) -> None:
        self._redis.close()


class RedisStreamSink:
    """Writes events to a (partitioned) Redis stream, each to its user's partition."""

    def __init__(self, address: StreamAddress) -> None:
        self.address = address
        self._redis = _connect(address)
        self._keys = stream_keys(address)

    def partition_of(self, user_ids: np.ndarray) -> np.ndarray:
        """Each user id's partition: its text's xxh64 modulo the partitions (ints and their text agree)."""
        count = len(self._keys)
        return np.fromiter(
            (xxhash.xxh64_intdigest(str(user).encode()) % count for user in user_ids.tolist()),
            dtype=np.int64,
            count=len(user_ids),
        )

    def send(self, events: EventBatch) -> None:
        """Append `events` (``XADD``), in order, each to its user's partition."""
        import redis

        partitions = self.partition_of(events.user_id)
        messages = encode_events(events)
        try:
            for start in range(0, len(messages), _PIPELINE):
                with self._redis.pipeline(transaction=False) as pipe:
                    for (_, value), partition in zip(
                        messages[start : start + _PIPELINE],
                        partitions[start : start + _PIPELINE].tolist(),
                        strict=True,
                    ):
                        pipe.xadd(self._keys[partition], {_FIELD: value})
                    pipe.execute()
        except redis.RedisError as error:
            raise SourceError(f"{self.address}: writing: {error}") from None

    def close(self) -> None:
        self._redis.close()
