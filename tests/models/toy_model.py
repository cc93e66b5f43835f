"""A model added the way the README says: this one file and one `register` line (in test_toy_model.py),
nothing else. It recommends the items acted on most recently, in event time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshrec.embeddings.config import DEFAULT_CAPACITY
from freshrec.interactions import Interactions, Query
from freshrec.keyindex import KeyIndex
from freshrec.model_state import State, StateChanges, under_prefix, with_prefix
from freshrec.models.base import LearnStats, Model


@dataclass
class RecentItemsConfig:
    """Settings of `RecentItems`: how many items it remembers."""

    capacity: int = DEFAULT_CAPACITY


class RecentItems(Model):
    """Scores each item by when it was last acted on: the newest first, for everyone."""

    name = "toy-recent"

    def __init__(self, config: RecentItemsConfig | None = None) -> None:
        self.config = config or RecentItemsConfig()
        self._items = KeyIndex(self.config.capacity)
        self._dirty = np.zeros(self.config.capacity, dtype=bool)

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        slots = self._items.lookup(candidate_keys)
        last = np.where(slots >= 0, self._items.last_seen[np.maximum(slots, 0)], -np.inf)
        newest = last.max(initial=0.0)
        # Seconds before the newest candidate (float32 cannot tell epoch seconds apart); unknown: far back.
        age = np.where(np.isfinite(last), last - newest, -1e12)
        return np.broadcast_to(age.astype(np.float32), (len(query), len(candidate_keys))).copy()

    def learn(self, batch: Interactions) -> LearnStats:
        assignment = self._items.assign(batch.item_keys, batch.timestamps)
        self._dirty[assignment.slots] = True
        return LearnStats()

    def state_dict(self) -> State:
        return with_prefix(self._items.state_dict(finite=True), "items.")

    def load_state_dict(self, state: State) -> None:
        self._items.load_state_dict(under_prefix(state, "items."))
        self._dirty[:] = False

    def drain_changes(self) -> StateChanges:
        slots = np.flatnonzero(self._dirty)
        self._dirty[slots] = False
        changes = StateChanges()
        changes.add(self._items.slot_changes(slots, finite=True), "items.")
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        self._items.apply_changes(changes.under("items."))
