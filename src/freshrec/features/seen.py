"""The items each user has already acted on: what evaluation and serving exclude from recommendations.

Bounded: at most `capacity` users (least recently active forgotten first) and, per user, the most recent
`max_items_per_user` distinct items. Updates are per batch; the per-event view ("seen before this event",
including earlier events of the same batch) is produced as index pairs, never a loop per event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshrec.keyindex import KeyIndex
from freshrec.model_state import under_prefix, with_prefix

_EMPTY = np.empty(0, dtype=np.uint64)


@dataclass
class SeenConfig:
    capacity: int = 1_000_000
    max_items_per_user: int = 10_000


class SeenItems:
    """Per-user sets of item keys.

    >>> seen = SeenItems(SeenConfig(capacity=4))
    >>> users = np.array([1, 1, 2], dtype=np.uint64)
    >>> rows, items = seen.pairs_before_each_event(users, np.array([5, 6, 5], dtype=np.uint64))
    >>> list(zip(rows.tolist(), items.tolist()))  # event 1 excludes item 5, seen by user 1 at event 0
    [(1, 5)]
    >>> seen.record(users, np.array([5, 6, 5], dtype=np.uint64), np.zeros(3))
    >>> sorted(seen.items_of(1).tolist())
    [5, 6]
    """

    def __init__(self, config: SeenConfig | None = None) -> None:
        self.config = config or SeenConfig()
        self._users = KeyIndex(self.config.capacity, eviction="lru")
        self._items: list[np.ndarray] = [_EMPTY] * self.config.capacity

    def __len__(self) -> int:
        return len(self._users)

    def items_of(self, user_key: int) -> np.ndarray:
        slot = int(self._users.lookup(np.array([user_key], dtype=np.uint64))[0])
        return self._items[slot] if slot >= 0 else _EMPTY

    def state_dict(self) -> dict[str, np.ndarray]:
        """The user index (``users.*``) and each remembered user's items (``slots``, ``lengths``,
        ``items`` concatenated in slot order)."""
        live = self._users.live_slots()
        items = [self._items[slot] for slot in live.tolist()]
        state = with_prefix(self._users.state_dict(finite=True), "users.")
        state["slots"] = live
        state["lengths"] = np.fromiter((len(a) for a in items), dtype=np.int64, count=len(items))
        state["items"] = np.concatenate(items) if items else _EMPTY.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output of seen items with the same capacity."""
        self._users.load_state_dict(under_prefix(state, "users."))
        self._items = [_EMPTY] * self.config.capacity
        items = np.asarray(state["items"], dtype=np.uint64)
        ends = np.cumsum(np.asarray(state["lengths"], dtype=np.int64))
        for slot, start, end in zip(
            np.asarray(state["slots"]).tolist(),
            (ends - np.asarray(state["lengths"])).tolist(),
            ends.tolist(),
            strict=True,
        ):
            self._items[slot] = items[start:end].copy()

    def pairs_before_each_event(
        self, user_keys: np.ndarray, item_keys: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row, item key) pairs: row j's user had seen that item before event j of the batch.

        Covers items recorded before the batch and the user's earlier events within the batch.
        """
        n = len(user_keys)
        rows_parts, item_parts = [], []
        slots = self._users.lookup(user_keys)
        # Items recorded before the batch, for every row whose user is known.
        known = np.flatnonzero(slots >= 0)
        if len(known):
            stored = [self._items[s] for s in slots[known].tolist()]
            sizes = np.fromiter((len(a) for a in stored), dtype=np.int64, count=len(stored))
            if sizes.sum():
                rows_parts.append(np.repeat(known, sizes))
                item_parts.append(np.concatenate(stored))
        # Earlier events of the same user inside this batch: pairs (j, i) with i < j, same user.
        order = np.lexsort((np.arange(n), user_keys))
        sorted_users = user_keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        sizes = np.diff(np.r_[starts, n])
        for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
            members = order[start : start + size]  # event indices of one user, in event order
            later, earlier = np.tril_indices(size, k=-1)
            rows_parts.append(members[later])
            item_parts.append(item_keys[members[earlier]])
        if not rows_parts:
            return np.empty(0, dtype=np.int64), _EMPTY
        return np.concatenate(rows_parts), np.concatenate(item_parts).astype(np.uint64, copy=False)

    def record(self, user_keys: np.ndarray, item_keys: np.ndarray, timestamps: np.ndarray) -> None:
        """Add a batch of (user, item) interactions."""
        if len(user_keys) == 0:
            return
        assignment = self._users.assign(user_keys, timestamps)
        for slot in np.unique(assignment.slots[assignment.new]).tolist():
            self._items[slot] = _EMPTY
        order = np.argsort(assignment.slots, kind="stable")
        sorted_slots = assignment.slots[order]
        starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        limit = self.config.max_items_per_user
        for start, end in zip(starts.tolist(), np.r_[starts[1:], len(order)].tolist(), strict=True):
            slot = int(sorted_slots[start])
            merged = np.concatenate([self._items[slot], item_keys[order[start:end]]])
            # Keep distinct items, most recent occurrence last, then the most recent `limit` of them.
            _, last_index = np.unique(merged[::-1], return_index=True)
            keep = np.sort(len(merged) - 1 - last_index)
            self._items[slot] = merged[keep[-limit:]]
