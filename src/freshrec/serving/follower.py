"""The live feature state of a serving process, following the event log event by event.

Events reach the log through this process's own door (`POST /events`, validated there), so the follower
takes them through the ingest pipeline without validating them again: deduplicated with the same window as
the trainer's (both see the same events in the same order, so both drop the same repeats), encoded, and
remembered by raw item id (what answers name). The feature state is advanced under the lock requests take.
Never writes to the log.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from freshrec.features.state import FeatureConfig, LiveFeatures
from freshrec.preprocess.pipeline import IngestPipeline, PipelineConfig
from freshrec.sources.eventlog import EventLogReader

__all__ = ["EventFollower"]


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
    """

    def __init__(
        self, log_dir: Path, lock: threading.Lock, features: FeatureConfig, pipeline: PipelineConfig
    ) -> None:
        self.log_dir = Path(log_dir)
        self.features = LiveFeatures(features)
        self.pipeline = IngestPipeline(pipeline)
        self._lock = lock
        #: Events (after deduplication) the feature state has taken in.
        self.events_applied = 0
        #: The newest event time taken in (epoch seconds; None before the first event): the time requests
        #: are ranked at, so that a replayed stream is ranked as it was live, never at the wall clock.
        self.newest_time: float | None = None

    def follow(self, stop: threading.Event, poll_interval: float = 0.002) -> None:
        """Take in every event of the log, from the first, until `stop` is set (the follower thread)."""
        reader = EventLogReader(self.log_dir, start_offset="earliest")
        for raw in reader.batches(4096, follow=True, poll_interval=poll_interval, stop=stop):
            ingested = self.pipeline.process(raw)
            if not len(ingested.events):
                continue
            newest = float(np.max(ingested.events.timestamps))
            with self._lock:
                self.features.observe(ingested.events)
                self.events_applied += len(ingested.events)
                if self.newest_time is None or newest > self.newest_time:
                    self.newest_time = newest
