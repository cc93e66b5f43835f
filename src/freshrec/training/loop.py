"""The live loop, written once: source -> ingest pipeline -> feature state and trainer -> gate and publisher
-> commit the source position.

Every process that learns from a stream runs it: `freshrec train` over the event log (following it, with a
publisher), `freshrec replay` and `bench/quality.py` over a finite source (without one), the library API
one batch at a time. The trainer returns what it scored and learned; the publisher decides what reaches
users; the loop composes them and nothing else: neither calls the other.

Restarts, exactly once: with a `CheckpointStore`, the loop checkpoints its whole state (model and optimizer,
feature state, deduplication window, counters) at a source position every few seconds and when it stops;
a restarted trainer `restore`s the newest intact checkpoint, reads the source from that position on, and
learns every later event once. Versions published after that checkpoint hold effects the restart learns
again, but on the checkpoint's state, never on theirs: the publisher holds its first version back until
the trainer has passed the served version's position (`ModelPublisher.restore`), so the served model never
goes back in time and no version counts an event twice. A source position is committed only once the
checkpoint holding its effect is on disk.

Without a checkpoint (the first start, or every one damaged), a publisher that adopted the served version
knows the source position that version had learned everything before (`ModelPublisher.resume_offset`):
the loop feeds every event before it to the feature state only (histories, seen items and catalogue must
hold the whole past) and learns from the first event after it, split exactly at the position when the
source numbers its events (the event log). That also learns each event once, but re-reads the whole
source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from freshrec.errors import ConfigError
from freshrec.evaluation.prequential import RankingMetrics
from freshrec.events import EventBatch
from freshrec.model_state import State, under_prefix, with_prefix
from freshrec.preprocess.pipeline import IngestedBatch, IngestPipeline
from freshrec.publishing.publisher import ModelPublisher
from freshrec.sources.base import RawBatch, Source
from freshrec.sources.streams import StreamSource
from freshrec.training.checkpoint import Checkpoint, CheckpointStore, CheckpointWriter
from freshrec.training.online import OnlineTrainer

__all__ = ["LoopProgress", "TrainingLoop"]


@dataclass
class LoopProgress:
    """What a progress display needs after each source batch."""

    events_read: int
    events_trained: int
    elapsed_seconds: float
    running: RankingMetrics

    @property
    def events_per_second(self) -> float:
        return self.events_read / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class TrainingLoop:
    """Feed a source through the pipeline and the trainer, publishing through the gate when a publisher
    is given.

    Parameters
    ----------
    trainer
        Learns each micro-batch (test-then-train).
    pipeline
        Validates, deduplicates and encodes raw batches (a fresh default one if None).
    publisher
        Judges and publishes versions (None: learn only, as a replay does). A publisher needs the
        trainer to evaluate: its gate judges the candidate on the ranks of each batch.
    checkpoints
        Where to checkpoint the loop's state while `run` reads a source (None: never).
    checkpoint_interval
        Seconds between checkpoints while events arrive.
    checkpoint_metadata
        JSON values written into every checkpoint (what a restart checks before using it: the model).

    >>> from freshrec.models.popularity import PopularityModel
    >>> from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
    >>> trainer = OnlineTrainer(PopularityModel())
    >>> loop = TrainingLoop(trainer)
    >>> loop.run(SyntheticStream(SyntheticConfig(n_events=2000)))
    >>> counts = loop.pipeline.counts
    >>> counts.read, trainer.totals.events == counts.accepted - counts.duplicates
    (2000, True)
    """

    def __init__(
        self,
        trainer: OnlineTrainer,
        pipeline: IngestPipeline | None = None,
        publisher: ModelPublisher | None = None,
        checkpoints: CheckpointStore | None = None,
        checkpoint_interval: float = 10.0,
        checkpoint_metadata: dict[str, object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if publisher is not None and not trainer.config.evaluate:
            raise ConfigError("a publisher needs evaluate=True: its gate judges the ranks of each batch")
        self.trainer = trainer
        self.pipeline = pipeline or IngestPipeline()
        self.publisher = publisher
        #: Events before this source position were learned by the version the publisher adopted.
        self.resume_offset = publisher.resume_offset if publisher is not None else 0
        #: The source position after the last batch fed (None: nothing fed yet, or a source without one).
        self.position: int | None = None
        self.checkpoints = checkpoints
        self.checkpoint_interval = checkpoint_interval
        self.checkpoint_metadata = dict(checkpoint_metadata or {})
        self._writer = CheckpointWriter(checkpoints) if checkpoints is not None else None
        self._clock = clock
        # The first checkpoint comes after the first batch, not an interval later: a trainer killed in its
        # first seconds then restarts from it too, instead of re-reading the log from the start.
        self._last_checkpoint = -float("inf")
        self._checkpointed_position: int | None = None
        self._committed: int | None = None
        self._rolled_back = False
        self._stream: StreamSource | None = None  # the broker stream being read, whose positions to save

    def run(
        self,
        source: Source,
        *,
        follow: bool = False,
        stop: threading.Event | None = None,
        on_progress: Callable[[LoopProgress], None] | None = None,
        batches: Iterable[RawBatch] | None = None,
        idle_wait: float = 0.002,
    ) -> None:
        """Read `source` (to its end, or with `follow` until `stop` is set) and feed every batch.

        `batches` replaces ``source.batches(read_size)`` when the source must be read another way. When
        following, an empty read lets the publisher answer rollback requests and publish what was
        learned last, then waits `idle_wait` seconds.
        """
        started = time.perf_counter()
        read_size = self.pipeline.config.read_size
        # Over a broker stream a position is this consumer's sequence number: every checkpoint and version
        # also records the broker positions it stands for, which a restart reads from.
        self._stream = source if isinstance(source, StreamSource) else None
        if self.publisher is not None and self._stream is not None:
            self.publisher.position_details = self._stream.positions_at
        while stop is None or not stop.is_set():
            fed = False
            for raw in batches if batches is not None else source.batches(read_size):
                if stop is not None and stop.is_set():
                    return  # a long backlog must not delay a stop
                self.feed(raw)
                if raw.end_offset is not None:
                    self.position = raw.end_offset
                self._commit(source, raw.end_offset)
                fed = True
                if on_progress is not None:
                    on_progress(
                        LoopProgress(
                            self.pipeline.counts.read,
                            self.trainer.totals.events,
                            time.perf_counter() - started,
                            self.trainer.evaluator.running(),
                        )
                    )
            if not follow or batches is not None:
                return
            if not fed:
                self.idle()
                self._commit(source, None)
                if stop is not None:
                    stop.wait(idle_wait)
                else:
                    time.sleep(idle_wait)

    def feed(self, raw: RawBatch) -> IngestedBatch:
        """One raw batch: ingest, then the feature state only (before the resume position) or a trainer
        step per micro-batch, each followed by the publisher's decision."""
        ingested = self.pipeline.process(raw)
        self.learn(ingested)
        return ingested

    def feed_events(self, events: EventBatch) -> IngestedBatch:
        """Events already valid (built by code, or validated at a door): deduplicated, encoded and learned
        like a source's batch."""
        ingested = self.pipeline.accept(events)
        self.learn(ingested)
        return ingested

    def learn(self, ingested: IngestedBatch) -> None:
        """Learn an ingested batch: the feature state only before the resume position, then a trainer step
        per micro-batch, each followed by the publisher's decision."""
        events, offsets, end = ingested.events, ingested.offsets, ingested.end_offset
        if self.resume_offset > 0 and end is not None:
            if offsets is not None:
                learned = offsets < self.resume_offset
            else:  # a source without per-event offsets can only resume after whole batches
                learned = np.full(len(events), end <= self.resume_offset)
            if learned.any():
                self.trainer.observe(events.take(learned))
                events = events.take(~learned)
                offsets = None if offsets is None else offsets[~learned]
        size = self.trainer.config.batch_size
        for start in range(0, len(events), size):
            stop = min(start + size, len(events))
            self._serve_rollback_request()
            step = self.trainer.step(events.take(slice(start, stop)))
            if self.publisher is not None and step.scored is not None:
                self.publisher.progress.note_speed(self.trainer.totals.learning_events_per_second)
                if offsets is not None:
                    position: int | None = int(offsets[stop - 1]) + 1
                else:
                    position = end if stop == len(events) else None
                self.publisher.consider(
                    step.scored,
                    step.stats.loss,
                    step.events,
                    self.trainer.totals.events,
                    position,
                    self.trainer.evaluator.running(),
                )

    def idle(self) -> None:
        """No new events: answer a rollback request and publish what was learned last, if due."""
        if self.publisher is None:
            return
        self._serve_rollback_request()
        self.publisher.try_publish_idle(self.trainer.last_stats.loss, self.trainer.totals.events)

    def _serve_rollback_request(self) -> None:
        if self.publisher is not None and self.publisher.serve_rollback_request() is not None:
            # A restart must not bring back the parameters the operator rolled back: checkpoint at the
            # next batch boundary (only there does the state match a source position).
            self._rolled_back = True

    # ------------------------------------------------------------------ checkpoints
    def _commit(self, source: Source, end_offset: int | None) -> None:
        """Commit the source position whose effect is durable: without checkpoints, a batch once fed (a
        replay keeps nothing); with them, the position of the newest checkpoint on disk, taken when due."""
        if self._writer is None:
            if end_offset is not None:
                source.commit(end_offset)
            return
        if self._rolled_back or self._clock() - self._last_checkpoint >= self.checkpoint_interval:
            self.checkpoint()
        durable = self._writer.durable_position
        if durable is not None and durable != self._committed:
            source.commit(durable)
            self._committed = durable

    def checkpoint(self, wait: bool = False) -> bool:
        """Checkpoint the loop's state at `position` now (on the background writer; `wait` until it is on
        disk). False when there is nothing to checkpoint: no checkpoint store, no position yet, or nothing
        fed since the last checkpoint."""
        self._last_checkpoint = self._clock()
        if self._writer is None or self.position is None:
            return False
        if self.position != self._checkpointed_position or self._rolled_back:
            metadata = {**self.checkpoint_metadata, "publisher": self._publisher_state()}
            if self._stream is not None:
                positions = self._stream.positions_at(self.position)
                metadata["source_positions"] = {str(key): value for key, value in positions.items()}
            self._writer.submit(self.state_dict(), self.position, metadata)
            self._checkpointed_position = self.position
            self._rolled_back = False
        if wait:
            self._writer.flush()
        return True

    def close(self) -> None:
        """Write the last checkpoint and wait for it (what SIGTERM does before the trainer exits)."""
        if self._writer is not None:
            self.checkpoint(wait=True)
            self._writer.close()

    def state_dict(self) -> State:
        """Everything that changes the next step, as copies: the model's state (``model.*``), the
        trainer's (``trainer.*``: feature state, counters, evaluator) and the pipeline's (``pipeline.*``:
        deduplication window, counts)."""
        state = with_prefix(self.trainer.model.state_dict(), "model.")
        state.update(with_prefix(self.trainer.state_dict(), "trainer."))
        state.update(with_prefix(self.pipeline.state_dict(), "pipeline."))
        return state

    def _publisher_state(self) -> dict[str, object] | None:
        """What a checkpoint records of the publisher (the version it had published, the lineage's events
        before this trainer's start)."""
        return self.publisher.checkpoint_state() if self.publisher is not None else None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from `checkpoint`: the model, trainer and pipeline take its state, the source is to be
        read from its position, and the publisher holds its versions until the trainer has passed what
        is served (or, if the store was rolled back since, takes the served version's parameters)."""
        state = checkpoint.state
        self.trainer.model.load_state_dict(under_prefix(state, "model."))
        self.trainer.load_state_dict(under_prefix(state, "trainer."))
        self.pipeline.load_state_dict(under_prefix(state, "pipeline."))
        self.position = self._checkpointed_position = checkpoint.position
        self.resume_offset = checkpoint.position
        if self.publisher is not None:
            saved = checkpoint.metadata.get("publisher") or {}
            self.resume_offset = self.publisher.restore(
                saved,
                checkpoint.position,
                checkpoint.created,
                self.trainer.totals.events,
                self.trainer.evaluator.running(),
            )
