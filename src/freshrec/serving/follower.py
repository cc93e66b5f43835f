"""The live feature state of a serving process, following the event log (or a broker stream) event by event.

Events reach the log through this process's own door (`POST /events`, validated there), so the follower
takes them through the ingest pipeline without validating them again (a stream's messages, which any
producer may write, are validated like a file's): deduplicated with the same window as
the trainer's (both see the same events in the same order, so both drop the same repeats), encoded, and
remembered by raw item id (what answers name). The feature state is advanced under the lock requests take.
Never writes to the log, and never commits a stream position: every replica reads the whole stream, as it
reads the whole log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from freshrec.errors import SourceError
from freshrec.features.state import FeatureConfig, LiveFeatures
from freshrec.preprocess.pipeline import IngestPipeline, PipelineConfig
from freshrec.sources.base import RawBatch
from freshrec.sources.eventlog import EventLogReader
from freshrec.sources.streams import ConsumerSpec, StreamSource, open_stream

__all__ = ["EventFollower"]

_log = logging.getLogger(__name__)

#: The group replicas name when they read a stream (they never commit to it: each reads all of it).
SERVING_GROUP = "freshrec-serving"
_RETRY_SECONDS = 1.0  # after a broker read fails: the feature state waits, requests go on


class EventFollower:
    """Tails an event log into a `LiveFeatures` (histories, seen items, catalogue) and the raw-id map.

    Parameters
    ----------
    log_dir
        The event log.
    lock
        Held while the feature state changes; requests take it to read the state and the model together.
    features
        What to keep (no negative sampler: a server does not train).
    pipeline
        Deduplication window and raw item ids remembered (`PipelineConfig.item_ids`).
    stream
        A broker stream to follow instead of the log (opened here, so that an unreachable broker stops
        the server at its start with the reason).
    """

    def __init__(
        self,
        log_dir: Path,
        lock: threading.Lock,
        features: FeatureConfig,
        pipeline: PipelineConfig,
        stream: str | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self._stream: StreamSource | None = (
            open_stream(stream, ConsumerSpec(SERVING_GROUP)) if stream is not None else None
        )
        self.features = LiveFeatures(features)
        self.pipeline = IngestPipeline(pipeline)
        self._lock = lock
        #: Events (after deduplication) the feature state has taken in.
        self.events_applied = 0
        #: The newest event time taken in (epoch seconds; None before the first event): the time requests
        #: are ranked at, so that a replayed stream is ranked as it was live, never at the wall clock.
        self.newest_time: float | None = None

    def follow(self, stop: threading.Event, poll_interval: float = 0.002) -> None:
        """Take in every event of the log (or stream), from the first, until `stop` is set (the follower
        thread)."""
        if self._stream is not None:
            batches = self._stream_batches(self._stream, stop, poll_interval)
        else:
            reader = EventLogReader(self.log_dir, start_offset="earliest")
            batches = reader.batches(4096, follow=True, poll_interval=poll_interval, stop=stop)
        for raw in batches:
            ingested = self.pipeline.process(raw)
            if not len(ingested.events):
                continue
            newest = float(np.max(ingested.events.timestamps))
            with self._lock:
                self.features.observe(ingested.events)
                self.events_applied += len(ingested.events)
                if self.newest_time is None or newest > self.newest_time:
                    self.newest_time = newest

    @staticmethod
    def _stream_batches(
        source: StreamSource, stop: threading.Event, poll_interval: float
    ) -> Iterator[RawBatch]:
        """The stream's batches until `stop`; a failed read is logged and retried, the consumer closed."""
        try:
            while not stop.is_set():
                fed = False
                try:
                    for raw in source.batches(4096):
                        fed = True
                        yield raw
                except SourceError as error:
                    _log.warning("following %s: %s; retrying in %g s", source.address, error, _RETRY_SECONDS)
                    stop.wait(_RETRY_SECONDS)
                    continue
                if not fed:
                    stop.wait(poll_interval)
        finally:
            source.close()
