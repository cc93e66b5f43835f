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

import numpy as np

from freshrec.features.catalogue import Catalogue
from freshrec.interactions import Query
from freshrec.model_state import StateChanges
from freshrec.models.base import Model, VectorModel
from freshrec.models.registry import ModelSpec
from freshrec.publishing.store import ModelStore, VersionInfo
from freshrec.serving.ranking import top_items
from freshrec.serving.retrieval import ItemIndex, RetrievalConfig

__all__ = ["ServedModel"]

_log = logging.getLogger(__name__)


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

    @property
    def ready(self) -> bool:
        return self.model is not None

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
    def load_current(self) -> None:
        """Load the current version whole and swap it in; the model copies and the index are built first,
        while requests go on with the previous version."""
        state, loaded = self.store.load()
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
        _freeze_long_lived_objects()

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
            current = self.store.wait_for_change(self.version, timeout=0.25, poll_interval=0.01)
            if current is None or current == self.version:
                continue
            try:
                self.advance_to(current)
            except Exception:  # a corrupt or vanished version: stay on what we have, retry next change
                _log.exception("could not advance from version %d to %d; retrying", self.version, current)
                time.sleep(0.1)

    def advance_to(self, target: int) -> None:
        """Bring the served model to version `target`: its deltas in order, or a full load."""
        kinds = {info.version: info for info in self.store.versions()}
        if self.model is None or target < self.version or self._standby_behind:
            self.load_current()  # first version, a rollback, or a standby copy left half-updated
            return
        for version in range(self.version + 1, target + 1):
            info = kinds.get(version)
            if info is None or info.kind != "delta" or info.base != self.version:
                self.load_current()
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
    in flight delayed by as much (once in a 3-minute run of bench/serving.py). Frozen, they are still freed by
    reference counting when dropped; only reference cycles among them would outlive a replaced model, so
    each full load first lets one collection see everything (a one-off pause at startup or a rollback).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
