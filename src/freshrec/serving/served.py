"""The published model a server answers with, following the model store version by version.

A new version's delta is applied in place (a full load for a snapshot, a rollback or after a gap), under
the lock requests take, so a request is always computed with exactly one version, never a half-applied
one. The model is rebuilt from the version's own `freshrec.models.registry.ModelSpec`: the trainer's exact
model, whatever its configuration.

Two ways to answer
------------------
- A `freshrec.models.base.VectorModel` (bpr-mf, two-tower, SASRec) answers from an `ItemIndex` of its item
  vectors: exact search under `RetrievalConfig.exact_below` items, IVF above. The index holds the items that
  have a vector of their own (`VectorModel.vector_items`), so a new item becomes recommendable once the
  trainer admits it and an evicted one disappears. Such models are double-buffered: a delta is applied to a
  standby copy, the index update is prepared from it (`VectorModel.apply_changes_for_retrieval` says which
  items changed), and then, under the lock, the update is committed and the copies are swapped (a few ms at
  most, instead of the delta's whole apply); the previous copy then catches up outside the lock. Memory:
  two copies of the model.
- Other models (popularity, co-occurrence, the blend) score the whole catalogue with `Model.score`, and
  deltas are applied in place under the lock.

A version that fails to load (a damaged or missing file) never replaces the served one: the server keeps
answering with what it has, says so once in the log and in `health` (``GET /versions``), and tries again
with a growing pause, at once when a newer version is published. A full load that intact files do not
lead all the way takes the newest version they lead to, if that is newer than the served one.

It never writes to the store and never imports the trainer.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from freshrec.features.catalogue import Catalogue
from freshrec.interactions import Query
from freshrec.model_state import StateChanges
from freshrec.models.base import Model, VectorModel
from freshrec.models.registry import ModelSpec
from freshrec.publishing.store import (
    LoadedVersion,
    ModelStore,
    State,
    StoreCorruptError,
    StoreError,
    VersionInfo,
)
from freshrec.serving.ranking import top_items
from freshrec.serving.retrieval import ItemIndex, RetrievalConfig

__all__ = ["ServedModel"]

_log = logging.getLogger(__name__)

#: Pause before trying a version that failed to load again, doubled after each failure up to the last.
RETRY_FIRST_SECONDS = 0.2
RETRY_MOST_SECONDS = 5.0


@dataclass
class _Trouble:
    """A version the store names that this server could not load yet."""

    version: int
    problem: str
    since: float  # unix time of the first failure
    attempts: int = 1
    pause: float = RETRY_FIRST_SECONDS
    next_attempt: float = 0.0  # monotonic


class ServedModel:
    """The served version's model (and item index), kept current by `follow`.

    Parameters
    ----------
    store
        The model store the trainer publishes to (opened read-only).
    lock
        Held while the model, the index and the version change; requests take it to read them together.
    retrieval
        Settings of the item index vector models answer from.
    build
        Builds an empty model from a version's spec (default: the registry's `ModelSpec.build`).
    compute_threads
        Threads faiss may use in the follower thread (see `ServingConfig.compute_threads`).
    follower_nice
        CPU priority increment of the follower thread (see `ServingConfig.follower_nice`).

    Attributes
    ----------
    model
        The served version's model (None until the first version is loaded).
    index
        The item index a vector model answers from (None for models that score the catalogue).
    version, version_created
        Number and publication time of the served version.
    """

    def __init__(
        self,
        store: ModelStore,
        lock: threading.Lock,
        retrieval: RetrievalConfig | None = None,
        build: Callable[[ModelSpec], Model] = ModelSpec.build,
        compute_threads: int = 1,
        follower_nice: int = 5,
    ) -> None:
        self.store = store
        self.retrieval = retrieval or RetrievalConfig()
        self._lock = lock
        self._build = build
        self._compute_threads = compute_threads
        self._follower_nice = follower_nice
        self.model: Model | None = None
        self.index: ItemIndex | None = None
        # The double buffer of a vector model: the previous version's copy, brought up to the served one
        # after each swap, so that the next delta can be applied to it while requests read `model`.
        self._standby: VectorModel | None = None
        self._standby_behind = False  # True from a failed double-buffered apply until the next full load
        self.version = 0
        self.version_created = float("nan")
        self._trouble: _Trouble | None = None
        #: Attempts at a version that failed, since the process started.
        self.load_failures = 0

    @property
    def ready(self) -> bool:
        return self.model is not None

    def health(self) -> dict[str, Any]:
        """Whether this server serves what the store names (``degraded`` False), else which version it
        could not load, why, since when and how often it tried."""
        trouble = self._trouble
        return {
            "degraded": trouble is not None,
            "failed_version": None if trouble is None else trouble.version,
            "problem": None if trouble is None else trouble.problem,
            "failing_since": None if trouble is None else trouble.since,
            "attempts": 0 if trouble is None else trouble.attempts,
            "load_failures": self.load_failures,
        }

    # ------------------------------------------------------------------ requests
    def answer(
        self,
        query: Query,
        seen: np.ndarray,
        catalogue: Catalogue,
        k: int,
        named: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (raw ids, scores) for one query row, `seen` excluded. Call under the lock, so the user's
        vector, the index and the version belong to one version.

        `catalogue` holds the items a scoring model ranks; `named` gives the raw id of each key (None where
        unknown). The index can name an item this process cannot name back yet (the trainer
        admitted it from events the log follower has not reached) or no longer (the raw-id map forgot it):
        such items are excluded and the search repeated, at most twice, rather than answered with a null id.
        """
        assert self.model is not None
        if self.index is None:
            keys, scores = top_items(self.model, query, catalogue, seen, k)
            return named(keys), scores
        user = self.model.user_vectors(query)  # type: ignore[attr-defined]
        exclude = seen
        for attempt in range(3):
            keys, scores = self.index.search(user, k, exclude=[exclude])
            found = keys[0] != 0
            keys, scores = keys[0][found], scores[0][found]
            raw = named(keys)
            known = np.fromiter((r is not None for r in raw), dtype=bool, count=len(raw))
            if known.all() or attempt == 2:
                break
            exclude = np.concatenate([exclude, keys[~known]])
        return raw[known], scores[known].astype(np.float64)

    # ------------------------------------------------------------------ following
    def load_current(self) -> LoadedVersion:
        """Load the current version whole (or, if files it needs are damaged, the newest version before it
        that intact files lead to) and swap it in; the model copies and the index are built first, while
        requests go on with the previous version."""
        state, loaded = self.store.load()
        self._swap_in(state, loaded)
        return loaded

    def load_initial(self) -> None:
        """Load what the store serves before requests come. If nothing loads, say why and leave it to
        `follow`, which retries (the server answers ``/readyz`` with 503 meanwhile)."""
        current = 0
        try:
            current = self.store.current_version()
            if current > 0:
                self.advance_to(current)
        except StoreError as error:
            self._failed(current, error)

    def follow(self, stop: threading.Event) -> None:
        """Apply every new version until `stop` is set (the body of the store follower thread)."""
        limit_faiss_threads(self._compute_threads)
        if self._follower_nice and hasattr(os, "setpriority"):
            try:  # on Linux a thread id names the thread alone; elsewhere this may not apply
                thread = threading.get_native_id()
                nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + self._follower_nice)
                os.setpriority(os.PRIO_PROCESS, thread, nice)
            except OSError:
                _log.warning("could not lower the store follower's CPU priority; it runs at the process's")
        while not stop.is_set():
            trouble = self._trouble
            # Healthy: wait for a version other than ours. In trouble: for one other than the one that
            # failed (a newer one is tried at once), or for the pause before trying it again.
            after, timeout = (self.version, 0.25) if trouble is None else (trouble.version, 0.0)
            if trouble is not None:
                timeout = max(0.0, trouble.next_attempt - time.monotonic())
            try:
                current = self.store.wait_for_change(after, timeout=timeout, poll_interval=0.01)
            except StoreError as error:  # the manifest and its backup are both damaged
                self._failed(after, error)
                stop.wait(self._trouble.pause if self._trouble else RETRY_FIRST_SECONDS)
                continue
            if current is None:
                if trouble is None:
                    continue
                current = trouble.version  # the pause is over: try it again
            if current == self.version and self.model is not None:
                self._recovered()  # e.g. rolled back to the version we serve
                continue
            try:
                self.advance_to(current)
            except Exception as error:  # noqa: BLE001 - a version that does not load never stops serving
                self._failed(current, error)
            else:
                self._recovered()

    def advance_to(self, target: int) -> None:
        """Bring the served model to version `target`: its deltas in order, or a full load.

        Raises `StoreError` if a file on the way is damaged or missing: the served model is then the newest
        version intact files led to, never older than before (unless `target` is older: a rollback)."""
        kinds = {info.version: info for info in self.store.versions()}
        if self.model is None or target < self.version or self._standby_behind:
            self._load(target)  # first version, a rollback, or a standby copy left half-updated
            return
        for version in range(self.version + 1, target + 1):
            info = kinds.get(version)
            if info is None or info.kind != "delta" or info.base != self.version:
                self._load(target)
                return
            try:
                delta = self.store.read_delta(version)
            except StoreCorruptError:
                if any(v.full is not None for n, v in kinds.items() if version <= n <= target):
                    self._load(target)  # a full state at or past the damaged delta may lead on
                    return
                raise
            changes = StateChanges(rows=delta.rows, replaced=delta.replaced)
            if self._standby is None:
                with self._lock:
                    self.model.apply_changes(changes)
                    self.version = version
                    self.version_created = info.created
            else:
                self._advance_double_buffered(changes, info)
            self._recovered(past_only=True)

    def _load(self, target: int) -> None:
        """A full load toward `target`: swapped in unless intact files lead only as far as the served
        version; raises `StoreCorruptError` if they do not lead to `target`."""
        state, loaded = self.store.load()
        short = loaded.version < target
        if not (short and self.model is not None and loaded.version <= self.version <= target):
            self._swap_in(state, loaded)
        if short:
            raise StoreCorruptError("; ".join(loaded.damaged) or f"version {target} did not load")

    def _swap_in(self, state: State, loaded: LoadedVersion) -> None:
        model = self._build(ModelSpec.from_metadata(loaded.metadata))
        model.load_state_dict(state)
        index, standby = None, None
        if isinstance(model, VectorModel):
            standby = copy.deepcopy(model)
            index = ItemIndex(model.vector_dim, self.retrieval)
            keys = model.vector_items()
            index.upsert(keys, model.item_vectors(keys))  # builds the IVF structure for large catalogues
        with self._lock:
            self.model, self._standby, self.index = model, standby, index
            self.version = loaded.version
            self.version_created = loaded.info.created
            self._standby_behind = False
        self._recovered(past_only=True)
        _freeze_long_lived_objects()

    def _failed(self, version: int, error: Exception) -> None:
        """Record a failed attempt at `version`: said once per problem (the versions after a damaged delta
        fail for the same reason), retried with a growing pause."""
        self.load_failures += 1
        trouble, problem = self._trouble, str(error) or type(error).__name__
        if trouble is not None and trouble.problem == problem:
            trouble.version = version
            trouble.attempts += 1
            trouble.pause = min(RETRY_MOST_SECONDS, trouble.pause * 2)
        else:
            trouble = self._trouble = _Trouble(version, problem, time.time())
            serving = f"serving version {self.version}" if self.model is not None else "no version served"
            _log.warning(
                "store follower: %s; version %d cannot be loaded: %s; trying again in %.1f s (the pause "
                "doubles up to %.0f s), at once when a newer version is published",
                serving,
                version,
                problem,
                trouble.pause,
                RETRY_MOST_SECONDS,
            )
        trouble.next_attempt = time.monotonic() + trouble.pause

    def _recovered(self, past_only: bool = False) -> None:
        """The version that failed is no longer in the way (`past_only`: only if the served version
        reached it)."""
        trouble = self._trouble
        if trouble is not None and (not past_only or self.version >= trouble.version):
            self._trouble = None
            _log.warning(
                "store follower: serving version %d, past version %d, which failed to load %d times",
                self.version,
                trouble.version,
                trouble.attempts,
            )

    def _advance_double_buffered(self, changes: StateChanges, info: VersionInfo) -> None:
        """Apply a delta to the standby copy and its index update, then swap both in at once."""
        standby, index = self._standby, self.index
        assert standby is not None and index is not None
        self._standby_behind = True  # until both copies hold this version
        changed = standby.apply_changes_for_retrieval(changes)
        removed = changed.removed if changed.removed is not None else np.setdiff1d(index.keys(), changed.keys)
        update = index.prepare(changed.keys, standby.item_vectors(changed.keys), remove=removed)
        with self._lock:
            index.commit(update)
            self.model, self._standby = standby, self.model  # type: ignore[assignment]
            self.version = info.version
            self.version_created = info.created
        self._standby.apply_changes(changes)  # type: ignore[union-attr]
        self._standby_behind = False
        index.maintain()  # a rebuild, when due, runs here while requests use the current ANN structure


def limit_faiss_threads(threads: int) -> None:
    """Cap faiss' OpenMP threads for the calling thread. OpenMP keeps the setting per thread, and a thread
    started by Python gets the default (every core): without this call in the store follower, an IVF
    rebuild (k-means, seconds at 100,000 items) takes both cores away from the requests."""
    try:
        import faiss
    except ImportError:  # only catalogues beyond RetrievalConfig.exact_below need faiss
        return
    faiss.omp_set_num_threads(threads)


def _freeze_long_lived_objects() -> None:
    """Move every object alive now out of the cyclic garbage collector's sight (`gc.freeze`).

    A serving process holds a few hundred thousand long-lived objects (the model, torch, FastAPI); every
    full collection walks them all with the GIL held: 150-180 ms measured with 100,000 items, every request
    in flight delayed by as much (once in a 3-minute run of bench/serving.py). Frozen, they are still freed
    by reference counting when dropped, which is how a replaced model goes: no registered model holds a
    reference cycle (tests/serving/test_runtime.py checks every one). So only the young generations are
    collected here, not everything: a full collection after each full load stalled every request for as
    long as it took (bench/full_load.py).
    """
    gc.collect(1)
    gc.freeze()
