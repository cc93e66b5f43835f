"""What a serving process holds and does: the published model, following the store version by version, and
the live feature state, following the event log event by event.

Two background threads keep it fresh: one applies each new version's delta in place (a full load for a
snapshot or after a gap), the other tails the event log into user histories, seen items, the candidate
catalogue and the key -> raw id map. A request reads the model under the same lock that updates take, so it
is always computed with exactly one version, never a half-applied one. Never imports the trainer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freshrec.evaluation.catalogue import Catalogue
from freshrec.features.history import HistoryConfig, UserHistory
from freshrec.features.seen import SeenConfig, SeenItems
from freshrec.model_state import StateChanges
from freshrec.models.base import Recommender
from freshrec.models.registry import create_model
from freshrec.preprocess.encode import IdEncoder, encode_ids
from freshrec.preprocess.validate import EventValidator, Rejection
from freshrec.publishing.store import ModelStore
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader


@dataclass
class ServingConfig:
    """Where the server reads its model and writes and reads events.

    Parameters
    ----------
    store_dir
        The model store the trainer publishes to.
    log_dir
        The event log: `POST /events` appends here (this process is its writer), and the feature state
        follows it.
    user_capacity
        Users whose history and seen items are kept.
    id_capacity
        Raw ids remembered to answer with the ids clients sent.
    fsync
        The event log's fsync policy: an ingest is answered only once its events are durable under it.
    """

    store_dir: Path
    log_dir: Path
    user_capacity: int = 1_000_000
    id_capacity: int = 2_000_000
    fsync: str = "every-batch"
    history_length: int = 50


@dataclass
class Recommendation:
    item_ids: list[object]
    scores: list[float]
    model_version: int


@dataclass
class IngestResult:
    accepted: int
    rejections: list[Rejection]
    first_offset: int | None
    last_offset: int | None


class ServingRuntime:
    """The model and feature state of one serving process."""

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.store = ModelStore.open(config.store_dir)
        self.log = EventLog.open(EventLogConfig(directory=Path(config.log_dir), fsync=config.fsync))
        self.validator = EventValidator()
        self._lock = threading.Lock()  # guards the model and the feature state
        self._stop = threading.Event()
        self.model: Recommender | None = None
        self.version = 0
        self.version_created = float("nan")
        self.catalogue = Catalogue()
        self.ids = IdEncoder(config.id_capacity)
        self.seen = SeenItems(SeenConfig(capacity=config.user_capacity))
        # Kept as long as any model reads; a model reading fewer items gets the most recent ones.
        self.history = UserHistory(HistoryConfig(config.history_length, config.user_capacity))
        self.events_applied = 0
        self._threads = [
            threading.Thread(target=self._follow_store, name="freshrec-store", daemon=True),
            threading.Thread(target=self._follow_log, name="freshrec-log", daemon=True),
        ]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.store.current_version() > 0:
            self._load_full()
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        self.log.close()
        self.store.close()

    @property
    def ready(self) -> bool:
        return self.model is not None

    # ------------------------------------------------------------------ requests
    def recommend(self, user_id: str | int, k: int, exclude_seen: bool = True) -> Recommendation:
        """Top-k items for a user, from the current version and the user's live history."""
        user_key = encode_ids(np.array([user_id], dtype=object))
        with self._lock:
            if self.model is None:
                raise RuntimeError("no model version is loaded yet")
            candidates = self.catalogue.keys
            if len(candidates) == 0:
                return Recommendation([], [], self.version)
            query = self.history.query(user_key, np.array([time.time()]))
            length = min(self.model.history_length, query.history_length)
            query.history_keys = query.history_keys[:, query.history_length - length :]
            query.history_times = query.history_times[:, query.history_times.shape[1] - length :]
            scores = self.model.score(query, candidates)[0].astype(np.float64)
            if exclude_seen:
                seen = self.catalogue.columns_of(self.seen.items_of(int(user_key[0])))
                scores[seen[seen >= 0]] = -np.inf
            version = self.version
        eligible = int(np.isfinite(scores).sum())
        top = np.argsort(-scores, kind="stable")[: min(k, eligible)]
        keys = candidates[top]
        return Recommendation(self.ids.raw_ids(keys).tolist(), scores[top].tolist(), version)

    def ingest(self, records: list[object]) -> IngestResult:
        """Validate, append the accepted events durably, answer per rejected event."""
        result = self.validator.validate_records(records)
        first = last = None
        if len(result.events):
            first, last = self.log.append(result.events)
            self.log.wait_durable(last)
        return IngestResult(len(result.events), list(result.rejections), first, last)

    # ------------------------------------------------------------------ followers
    def _load_full(self) -> None:
        state, loaded = self.store.load()
        model = create_model(str(loaded.metadata.get("model", "cooccurrence")))
        model.load_state_dict(state)
        with self._lock:
            self.model = model
            self.version = loaded.version
            self.version_created = loaded.info.created

    def _follow_store(self) -> None:
        while not self._stop.is_set():
            current = self.store.wait_for_change(self.version, timeout=0.25, poll_interval=0.01)
            if current is None or current == self.version:
                continue
            try:
                self._advance_to(current)
            except Exception:  # a corrupt or vanished version: stay on what we have, retry next change
                time.sleep(0.1)

    def _advance_to(self, target: int) -> None:
        kinds = {info.version: info for info in self.store.versions()}
        if self.model is None or target < self.version:
            self._load_full()  # first version, or a rollback
            return
        for version in range(self.version + 1, target + 1):
            info = kinds.get(version)
            if info is None or info.kind != "delta" or info.base != self.version:
                self._load_full()
                return
            delta = self.store.read_delta(version)
            changes = StateChanges(rows=delta.rows, replaced=delta.replaced)
            with self._lock:
                self.model.apply_changes(changes)
                self.version = version
                self.version_created = info.created

    def _follow_log(self) -> None:
        reader = EventLogReader(self.config.log_dir, start_offset="earliest")
        for raw in reader.batches(4096, follow=True, poll_interval=0.002, stop=self._stop):
            events = self.validator.validate(raw).events
            if not len(events):
                continue
            users, items = encode_ids(events.user_id), encode_ids(events.item_id)
            with self._lock:
                self.ids.remember(events.item_id, items)
                self.catalogue.add(items)
                self.history.query_and_record(users, items, events.timestamp)
                self.seen.record(users, items, events.timestamp)
                self.events_applied += len(events)
