"""The live loop, written once: source -> ingest pipeline -> feature state and trainer -> gate and publisher
-> commit the source position.

Every process that learns from a stream runs it: `freshrec train` over the event log (following it, with a
publisher), `freshrec replay` and `bench/quality.py` over a finite source (without one), the library API
one batch at a time. The trainer returns what it scored and learned; the publisher decides what reaches
users; the loop composes them and nothing else: neither calls the other.

Restarts: a publisher that adopted the served version knows the source position that version had learned
everything before (`ModelPublisher.resume_offset`). The loop feeds every event before that position to the
feature state only (histories, seen items and catalogue must hold the whole past) and learns from the
first event after it, split exactly at the position when the source numbers its events (the event log).
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
from freshrec.preprocess.pipeline import IngestedBatch, IngestPipeline
from freshrec.publishing.publisher import ModelPublisher
from freshrec.sources.base import RawBatch, Source
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
    ) -> None:
        if publisher is not None and not trainer.config.evaluate:
            raise ConfigError("a publisher needs evaluate=True: its gate judges the ranks of each batch")
        self.trainer = trainer
        self.pipeline = pipeline or IngestPipeline()
        self.publisher = publisher
        #: Events before this source position were learned by the version the publisher adopted.
        self.resume_offset = publisher.resume_offset if publisher is not None else 0

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
        while stop is None or not stop.is_set():
            fed = False
            for raw in batches if batches is not None else source.batches(read_size):
                if stop is not None and stop.is_set():
                    return  # a long backlog must not delay a stop
                self.feed(raw)
                source.commit(raw.end_offset)
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
            if self.publisher is not None:
                self.publisher.serve_rollback_request()
            step = self.trainer.step(events.take(slice(start, stop)))
            if self.publisher is not None and step.scored is not None:
                if offsets is not None:
                    position: int | None = int(offsets[stop - 1]) + 1
                else:
                    position = end if stop == len(events) else None
                self.publisher.consider(
                    step.scored, step.stats.loss, step.events, self.trainer.totals.events, position
                )

    def idle(self) -> None:
        """No new events: answer a rollback request and publish what was learned last, if due."""
        if self.publisher is None:
            return
        self.publisher.serve_rollback_request()
        self.publisher.try_publish_idle(self.trainer.last_stats.loss, self.trainer.totals.events)
