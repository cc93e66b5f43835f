"""What a serving process holds and does: the published model, following the store version by version, and
the live feature state, following the event log event by event.

Two background threads keep it fresh: one applies each new version's delta (a full load for a snapshot, a
rollback or after a gap), the other tails the event log into user histories, seen items, the candidate
catalogue and the key -> raw id map. A request reads the model under the same lock that updates take, so it
is always computed with exactly one version, never a half-applied one. Never imports the trainer.

Two ways to answer
------------------
- Models with item vectors (`retrieval_dim` is not None: bpr-mf, SASRec) answer from an `ItemIndex` of their
  item vectors: exact search under `RetrievalConfig.exact_below` items, IVF above. The index holds the items
  that have a row of their own in the model's item table, so a new item becomes recommendable once the trainer
  admits it and an evicted one disappears. Such models are double-buffered: a delta is applied to a standby
  copy, the index update is prepared from it, and then, under the lock, the index update is committed and the
  copies are swapped (a few ms at most, instead of the delta's whole apply); the previous copy then catches
  up outside the lock. Memory: two copies of the model.
- Other models (popularity, co-occurrence) score the whole catalogue with `score`, and deltas are applied in
  place under the lock.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from freshrec.embeddings import COLD_ROW, DynamicEmbeddingTable
from freshrec.evaluation.catalogue import Catalogue
from freshrec.features.history import HistoryConfig, UserHistory
from freshrec.features.seen import SeenConfig, SeenItems
from freshrec.interactions import Query
from freshrec.model_state import StateChanges
from freshrec.models.base import Recommender
from freshrec.models.registry import create_model
from freshrec.preprocess.encode import IdEncoder, encode_ids, encode_int
from freshrec.preprocess.validate import EventValidator, Rejection
from freshrec.publishing.store import ModelStore, VersionInfo
from freshrec.serving.retrieval import ItemIndex, RetrievalConfig
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader

_log = logging.getLogger(__name__)


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
    history_length
        Recent items kept per user, for models that read a history.
    retrieval
        Settings of the item index that vector models answer from.
    model_factory
        Builds an empty model from the registry name and config the publisher wrote in the version's
        metadata (`freshrec.models.registry.model_spec`), called as ``factory(name, config)``, or
        ``factory(name)`` for versions without a config.
    compute_threads
        Threads torch and faiss may use in this process (set at `ServingRuntime.start`). One request is a
        single small matrix product or one IVF probe, which gain nothing from a thread pool, while an idle
        pool's spinning and an index rebuild on every core take CPU from the requests.
    follower_nice
        CPU priority (Linux nice increment) of the thread that applies new versions and maintains the item
        index: when the cores are busy, requests go first and a delta waits a little, instead of an index
        rebuild (seconds of a core) queueing every request behind it. 0 keeps the process's priority.
    """

    store_dir: Path
    log_dir: Path
    user_capacity: int = 1_000_000
    id_capacity: int = 2_000_000
    fsync: str = "every-batch"
    history_length: int = 50
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    model_factory: Callable[..., Recommender] = create_model
    compute_threads: int = 1
    follower_nice: int = 5


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
    """The model and feature state of one serving process.

    Attributes
    ----------
    model
        The served version's model (None until the first version is loaded).
    index
        The item index vector models answer from (None for models that score the catalogue).
    version, version_created
        Number and publication time of the served version.
    """

    def __init__(self, config: ServingConfig) -> None:
        self.config = config
        self.store = ModelStore.open(config.store_dir)
        self.log = EventLog.open(EventLogConfig(directory=Path(config.log_dir), fsync=config.fsync))
        self.validator = EventValidator()
        # Guards the served model, the index's contents, the version and the feature state together.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.model: Recommender | None = None
        self.index: ItemIndex | None = None
        # The double buffer of a vector model: the previous version's copy, brought up to the served one
        # after each swap, so that the next delta can be applied to it while requests read `model`.
        self._standby: Recommender | None = None
        self._standby_behind = False  # True from a failed double-buffered apply until the next full load
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
        torch.set_num_threads(self.config.compute_threads)
        self._limit_faiss_threads()
        if self.store.current_version() > 0:
            self._load_full()
        for thread in self._threads:
            thread.start()

    def _limit_faiss_threads(self) -> None:
        """Cap faiss' OpenMP threads for the calling thread. OpenMP keeps the setting per thread, and a
        thread started by Python gets the default (every core): without this call in the store follower, an
        IVF rebuild (k-means, seconds at 100,000 items) takes both cores away from the requests."""
        try:
            import faiss
        except ImportError:  # only catalogues beyond RetrievalConfig.exact_below need faiss
            return
        faiss.omp_set_num_threads(self.config.compute_threads)

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
        user_key = user_key_of(user_id)
        with self._lock:
            if self.model is None:
                raise RuntimeError("no model version is loaded yet")
            query = self._query(user_key)
            seen = self.seen.items_of(int(user_key[0])) if exclude_seen else np.zeros(0, np.uint64)
            if self.index is not None:
                return self._retrieve(query, seen, k)
            candidates = self.catalogue.keys
            if len(candidates) == 0:
                return Recommendation([], [], self.version)
            scores = self.model.score(query, candidates)[0].astype(np.float64)
            columns = self.catalogue.columns_of(seen)
            scores[columns[columns >= 0]] = -np.inf
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

    def _query(self, user_key: np.ndarray) -> Query:
        """The user's query now, with as much history as the model reads. Call under the lock."""
        if self.model.history_length == 0:  # skips a history lookup: a tenth of a vector model's request
            return Query.without_history(user_key, np.array([time.time()]))
        query = self.history.query(user_key, np.array([time.time()]))
        length = min(self.model.history_length, query.history_length)
        query.history_keys = query.history_keys[:, query.history_length - length :]
        query.history_times = query.history_times[:, query.history_times.shape[1] - length :]
        return query

    def _retrieve(self, query: Query, seen: np.ndarray, k: int) -> Recommendation:
        """Top-k from the item index. Call under the lock, so the user vector, the index and the version
        belong to one version.

        The index can name an item this process cannot name back yet (the trainer admitted it from events
        the log follower has not reached) or no longer (the raw-id map forgot it): such items are excluded
        and the search repeated, at most twice, rather than answered with a null id.
        """
        user = self.model.user_vectors(query)
        exclude = seen
        for attempt in range(3):
            keys, scores = self.index.search(user, k, exclude=[exclude])
            found = keys[0] != 0
            keys, scores = keys[0][found], scores[0][found]
            raw = self.ids.raw_ids(keys)
            named = np.fromiter((r is not None for r in raw), dtype=bool, count=len(raw))
            if named.all() or attempt == 2:
                break
            exclude = np.concatenate([exclude, keys[~named]])
        return Recommendation(raw[named].tolist(), scores[named].astype(np.float64).tolist(), self.version)

    # ------------------------------------------------------------------ followers
    def _load_full(self) -> None:
        """Load the current version whole and swap it in; the model copies and the index are built first,
        while requests go on with the previous version."""
        state, loaded = self.store.load()
        # The model as the trainer built it: its registry name and config (older versions: defaults).
        name, config = str(loaded.metadata.get("model", "cooccurrence")), loaded.metadata.get("model_config")
        model = self.config.model_factory(name, config) if config else self.config.model_factory(name)
        model.load_state_dict(state)
        index, standby = None, None
        dim = retrieval_dim(model)
        if dim is not None:
            standby = copy.deepcopy(model)
            index = ItemIndex(dim, self.config.retrieval)
            keys = item_keys(model)
            index.upsert(keys, model.item_vectors(keys))  # builds the IVF structure for large catalogues
        with self._lock:
            self.model, self._standby, self.index = model, standby, index
            self.version = loaded.version
            self.version_created = loaded.info.created
            self._standby_behind = False
        _freeze_long_lived_objects()

    def _follow_store(self) -> None:
        self._limit_faiss_threads()
        if self.config.follower_nice and hasattr(os, "setpriority"):
            try:  # on Linux a thread id names the thread alone; elsewhere this may not apply
                thread = threading.get_native_id()
                nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + self.config.follower_nice)
                os.setpriority(os.PRIO_PROCESS, thread, nice)
            except OSError:
                _log.warning("could not lower the store follower's CPU priority; it runs at the process's")
        while not self._stop.is_set():
            current = self.store.wait_for_change(self.version, timeout=0.25, poll_interval=0.01)
            if current is None or current == self.version:
                continue
            try:
                self._advance_to(current)
            except Exception:  # a corrupt or vanished version: stay on what we have, retry next change
                _log.exception("could not advance from version %d to %d; retrying", self.version, current)
                time.sleep(0.1)

    def _advance_to(self, target: int) -> None:
        kinds = {info.version: info for info in self.store.versions()}
        if self.model is None or target < self.version or self._standby_behind:
            self._load_full()  # first version, a rollback, or a standby copy left half-updated
            return
        for version in range(self.version + 1, target + 1):
            info = kinds.get(version)
            if info is None or info.kind != "delta" or info.base != self.version:
                self._load_full()
                return
            delta = self.store.read_delta(version)
            changes = StateChanges(rows=delta.rows, replaced=delta.replaced)
            if self._standby is None:
                with self._lock:
                    self.model.apply_changes(changes)
                    self.version = version
                    self.version_created = info.created
            else:
                self._advance_double_buffered(changes, info)

    def _advance_double_buffered(self, changes: StateChanges, info: VersionInfo) -> None:
        """Apply a delta to the standby copy and its index update, then swap both in at once."""
        standby, index = self._standby, self.index
        self._standby_behind = True  # until both copies hold this version
        changed = apply_with_item_changes(standby, changes)
        removed = changed.removed if changed.removed is not None else np.setdiff1d(index.keys(), changed.keys)
        update = index.prepare(changed.keys, standby.item_vectors(changed.keys), remove=removed)
        with self._lock:
            index.commit(update)
            self.model, self._standby = standby, self.model
            self.version = info.version
            self.version_created = info.created
        self._standby.apply_changes(changes)
        self._standby_behind = False
        index.maintain()  # a rebuild, when due, runs here while requests use the current ANN structure

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


def _freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (`gc.freeze`).

    A serving process holds a few hundred thousand long-lived objects (the model, torch, FastAPI); every
    full collection walks them all with the GIL held: 150-180 ms measured with 100,000 items, every request
    in flight delayed by as much (once in a 3-minute run of bench/serving.py). Frozen, they are still freed by
    reference counting when dropped; only reference cycles among them would outlive a replaced model, so
    each full load first lets one collection see everything (a one-off pause at startup or a rollback).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def user_key_of(user_id: str | int) -> np.ndarray:
    """uint64 [1]: the key of one raw id, as `encode_ids` gives it, without its column machinery.

    `encode_ids` classifies a column with Arrow regular expressions, ~1 ms for a column of one on a loaded
    core: a third of a request's time. A decimal string that round-trips through int is that integer
    (`encode_ids`'s documented rule), so it takes the integer path; anything else goes through `encode_ids`.

    >>> ids = ["42", "-7", "042", " 42", "-0", "²", "alice", 42, str(2**63)]
    >>> [int(user_key_of(i)[0]) for i in ids] == encode_ids(np.array(ids, dtype=object)).tolist()
    True
    """
    if (
        isinstance(user_id, str)
        and len(user_id) <= 18
        and user_id.isascii()
        and user_id.lstrip("-").isdigit()
    ):
        number = int(user_id)
        if str(number) == user_id:
            return np.array([encode_int(number)], dtype=np.uint64)
    return encode_ids(np.array([user_id], dtype=object))


# ---------------------------------------------------------------------- vector models
# What the server needs of a model to answer from an item index, beyond `Recommender`: `user_vectors(query)`
# (float32 [B, D]) and `item_vectors(keys)` (float32 [C, D], not None) whose dot products are the scores, and
# an item table `items` (a `DynamicEmbeddingTable`) whose published state is named ``items.*``: its key
# index says which items have vectors of their own and which item a changed row belongs to. A model whose
# item vectors also depend on dense weights (a two-tower item tower) sets the class attribute
# ``item_vectors_use_dense_weights = True``; any published change outside ``items.*`` then re-embeds every
# item: O(items x tower) to embed plus O(items x nlist x D) to assign them to IVF lists (~1.5 s for 100,000
# items of dimension 64 on one core), so such a model should publish less often than every second at that
# size, or keep its catalogue under `RetrievalConfig.exact_below` (exact search: no list assignment).


@dataclass
class ItemVectorChanges:
    """Items whose vectors a version changed.

    Attributes
    ----------
    keys
        uint64, distinct: items with a vector now that may differ from the previous version's (new items
        included).
    removed
        uint64, distinct: items that had a vector and no longer have one (evicted, expired); None when every
        item was re-embedded, so that every indexed item not in `keys` is gone.
    """

    keys: np.ndarray
    removed: np.ndarray | None


def retrieval_dim(model: Recommender) -> int | None:
    """Dimension of the model's item vectors when the server can answer from an item index, else None.

    >>> from freshrec.models.registry import create_model
    >>> retrieval_dim(create_model("bpr-mf")), retrieval_dim(create_model("popularity"))
    (64, None)
    """
    if not callable(getattr(model, "user_vectors", None)):
        return None
    if not isinstance(getattr(model, "items", None), DynamicEmbeddingTable):
        return None
    probe = model.item_vectors(np.zeros(0, dtype=np.uint64))
    return None if probe is None else int(probe.shape[1])


def item_keys(model: Recommender) -> np.ndarray:
    """uint64 keys of the items that have a row (so a vector) of their own in the model's item table."""
    index = model.items.index
    return index.keys_of(index.live_slots())


def apply_with_item_changes(model: Recommender, changes: StateChanges) -> ItemVectorChanges:
    """Apply a version's changes to `model` and say which item vectors they changed.

    Rows of ``items.weights`` name the rows trained or re-initialised; rows of ``items.index.slot_keys``
    name the slots that changed owner, and the key each held before the change is read from the model's own
    key index before applying. Cost O(changed rows).
    """
    index = model.items.index
    slots, _ = changes.rows.get("items.index.slot_keys", (np.zeros(0, np.int64), None))
    slots = np.asarray(slots, dtype=np.int64)
    before = index.keys_of(slots)
    model.apply_changes(changes)
    replaced_whole = any(name in changes.replaced for name in ("items.weights", "items.index.slot_keys"))
    dense_changed = getattr(model, "item_vectors_use_dense_weights", False) and any(
        not name.startswith("items.") for name in (*changes.rows, *changes.replaced)
    )
    if replaced_whole or dense_changed:
        return ItemVectorChanges(item_keys(model), None)
    rows, _ = changes.rows.get("items.weights", (np.zeros(0, np.int64), None))
    rows = np.asarray(rows, dtype=np.int64)
    owners = index.keys_of(rows[rows != COLD_ROW] - 1)
    keys = np.unique(np.concatenate([owners, index.keys_of(slots)]))
    before = before[before != 0]
    return ItemVectorChanges(keys[keys != 0], np.unique(before[index.lookup(before) < 0]))
