"""Kafka through confluent-kafka (librdkafka): a consumer of a topic's partitions and a producer of events.

The consumer is assigned its partitions (every ``world_size``-th from its rank) instead of joining the
group's rebalancing: a trainer rank must read the same partitions after every restart, from the positions
its checkpoint holds, and a rebalance would move partitions between ranks mid-step. The group still
receives the committed offsets, so the broker's tools show the trainer's lag (`freshrec.sources.streams`
says why the checkpoint, not the group, is the truth).
"""

from __future__ import annotations

import logging
from typing import Any

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

__all__ = ["KafkaSink", "KafkaSource", "create_topic"]

_log = logging.getLogger(__name__)

_METADATA_TIMEOUT = 10.0  # seconds to reach the broker when opening
_POLL_TIMEOUT = 0.01  # seconds a read waits for messages: the bound on the latency it adds
_FLUSH_TIMEOUT = 30.0
# librdkafka's OFFSET_BEGINNING: "the first retained message", stored in positions for a partition this
# consumer has not read from yet.
_BEGINNING = -2


def _client_config(address: StreamAddress) -> dict[str, Any]:
    def on_error(error: Any) -> None:
        # Connection trouble, which librdkafka retries by itself: what reaches the caller is a timeout
        # (opening) or a delivery failure (producing), each raised with its reason.
        _log.info("%s: %s", address, error)

    return {"bootstrap.servers": f"{address.host}:{address.port}", "error_cb": on_error, "log_level": 3}


def _partition_count(client: Any, address: StreamAddress) -> int:
    from confluent_kafka import KafkaException

    try:
        metadata = client.list_topics(address.name, timeout=_METADATA_TIMEOUT)
    except KafkaException as error:
        raise SourceError(
            f"{address}: cannot reach the Kafka broker at {address.host}:{address.port}: "
            f"{error.args[0] if error.args else error}"
        ) from None
    topic = metadata.topics.get(address.name)
    if topic is None or topic.error is not None or not topic.partitions:
        raise SourceError(
            f"{address}: the topic {address.name!r} does not exist on the broker; create it with as many "
            "partitions as trainer ranks (kafka-topics --create --topic NAME --partitions N)"
        )
    return len(topic.partitions)


class KafkaSource(LedgerConsumer):
    """Reads events from the partitions of a Kafka topic (``kafka://host:port/topic``) that `spec`
    assigns to its rank (a `StreamSource`)."""

    def __init__(self, address: StreamAddress, spec: ConsumerSpec) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.address = address
        self.name = f"kafka:{address.name}"
        self.group = spec.group
        config = _client_config(address) | {
            "group.id": spec.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,  # a trainer wants each event within milliseconds, not 500 ms
            "enable.partition.eof": False,
        }
        self._consumer = Consumer(config)
        try:
            count = _partition_count(self._consumer, address)
            self.partitions = assigned_partitions(count, spec.rank, spec.world_size)
        except Exception:
            self._consumer.close()
            raise
        start = spec.start(self.partitions, _BEGINNING, int)
        self._ledger = PositionLedger(spec.start_sequence, start)
        self._consumer.assign([TopicPartition(address.name, p, offset) for p, offset in start.items()])

    def _read(self, n: int) -> list[tuple[int, int, bytes | None]]:
        from confluent_kafka import KafkaError

        messages = []
        for message in self._consumer.consume(n, timeout=_POLL_TIMEOUT):
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF or error.retriable():
                    continue
                raise SourceError(f"{self.address}: reading partition {message.partition()}: {error.str()}")
            messages.append((message.partition(), message.offset() + 1, message.value()))
        return messages

    def commit(self, offset: int) -> None:
        """Commit the offsets after every record numbered below `offset` to the group (synchronously: it
        happens once per checkpoint). A failed commit is logged, not raised: the checkpoint holds them."""
        from confluent_kafka import KafkaException, TopicPartition

        positions = self._ledger.positions_at(offset)
        offsets = [TopicPartition(self.address.name, p, int(o)) for p, o in positions.items() if int(o) >= 0]
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as error:
                _log.warning("%s: committing offsets to group %r failed: %s", self.address, self.group, error)
        self._ledger.release(offset)

    def close(self) -> None:
        self._consumer.close()


class KafkaSink:
    """Writes events to a Kafka topic, keyed by user id (murmur2, the Java client's partitioner: a topic
    shared with Java producers keeps one user on one partition), acknowledged by all in-sync replicas."""

    def __init__(self, address: StreamAddress) -> None:
        from confluent_kafka import Producer

        self.address = address
        self._failures: list[str] = []
        self._producer = Producer(
            _client_config(address)
            | {
                "partitioner": "murmur2_random",
                "acks": "all",
                "linger.ms": 2,
                "message.timeout.ms": int(_FLUSH_TIMEOUT * 1000),
            }
        )
        self.partitions = _partition_count(self._producer, address)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def send(self, events: EventBatch) -> None:
        """Produce `events` and wait until the broker acknowledged every one (raises `SourceError` naming
        the first failure otherwise: the caller must not report them accepted)."""
        self._failures.clear()
        for key, value in encode_events(events):
            while True:
                try:
                    self._producer.produce(self.address.name, value, key, on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    self._producer.poll(0.05)
        left = self._producer.flush(_FLUSH_TIMEOUT)
        if left:
            raise SourceError(f"{self.address}: {left} events not acknowledged within {_FLUSH_TIMEOUT:g} s")
        if self._failures:
            failed, first = len(self._failures), self._failures[0]
            raise SourceError(f"{self.address}: {failed} of {len(events)} events not written: {first}")

    def close(self) -> None:
        self._producer.flush(_FLUSH_TIMEOUT)


def create_topic(url: str | StreamAddress, partitions: int, timeout: float = 10.0) -> None:
    """Create a topic of `partitions` partitions (an existing one is left as it is)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    address = url if isinstance(url, StreamAddress) else StreamAddress.parse(url)
    admin = AdminClient(_client_config(address))
    futures = admin.create_topics([NewTopic(address.name, partitions, 1)], operation_timeout=timeout)
    try:
        futures[address.name].result(timeout)
    except KafkaException as error:
        if error.args and getattr(error.args[0], "code", lambda: None)() == 36:  # TOPIC_ALREADY_EXISTS
            return
        raise SourceError(f"{address}: cannot create the topic: {error}") from None
