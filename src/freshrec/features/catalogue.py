"""The items seen so far in a stream, as candidate columns for ranking (the protocol ranks "all items seen
so far", in the order they first appeared), and what ranking one micro-batch against them needs.

Training, evaluation and serving all rank against the catalogue; it is part of the live feature state
(`freshrec.features.state`), advanced by the same call that advances histories and seen items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from freshrec.features.seen import SeenItems
    from freshrec.interactions import Query

__all__ = ["CandidateSet", "Catalogue"]


class Catalogue:
    """Item keys in first-seen order, with a vectorised key -> column lookup.

    >>> catalogue = Catalogue()
    >>> catalogue.add(np.array([7, 3, 7, 9], dtype=np.uint64)).tolist()  # first-seen position of new ones
    [0, 1, 3]
    >>> catalogue.columns_of(np.array([9, 5, 7], dtype=np.uint64)).tolist()
    [2, -1, 0]
    """

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.uint64)  # column -> key
        self._sorted_keys = np.empty(0, dtype=np.uint64)
        self._sorted_columns = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def columns_of(self, keys: np.ndarray) -> np.ndarray:
        """Column of each key, -1 for keys not in the catalogue."""
        if len(self._sorted_keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
        return np.where(self._sorted_keys[at] == keys, self._sorted_columns[at], -1)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Append the keys not yet present (in order of first appearance); returns, for each new key, the
        index in `keys` where it first appeared."""
        unique, first = np.unique(keys, return_index=True)
        is_new = self.columns_of(unique) < 0
        first = np.sort(first[is_new])
        if len(first) == 0:
            return first
        new_keys = keys[first]
        start = len(self.keys)
        self.keys = np.concatenate([self.keys, new_keys])
        merged_keys = np.concatenate([self._sorted_keys, new_keys])
        merged_columns = np.concatenate([self._sorted_columns, np.arange(start, start + len(new_keys))])
        order = np.argsort(merged_keys, kind="stable")
        self._sorted_keys, self._sorted_columns = merged_keys[order], merged_columns[order]
        return first

    def state_dict(self) -> dict[str, np.ndarray]:
        """``keys``: uint64, column order."""
        return {"keys": self.keys.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        keys = np.asarray(state["keys"], dtype=np.uint64).copy()
        order = np.argsort(keys, kind="stable")
        self.keys, self._sorted_keys, self._sorted_columns = keys, keys[order], order.astype(np.int64)


@dataclass
class CandidateSet:
    """What ranking one micro-batch needs besides the model: the candidates (all items seen so far), each
    event's target column (-1: not rankable) and the cells to exclude. The trainer's evaluation, the
    publish gate's second opinion and the cadence study's four models all rank through one.

    Attributes
    ----------
    candidates
        uint64 [C], the catalogue's keys in column order.
    targets
        int64 [B], each event's item column, -1 for the event that introduces an item.
    excluded_rows, excluded_columns
        Cells never ranked: each user's seen items, and items first seen later in the batch.
    """

    candidates: np.ndarray
    targets: np.ndarray
    excluded_rows: np.ndarray
    excluded_columns: np.ndarray

    @classmethod
    def prepare(
        cls, catalogue: Catalogue, seen: SeenItems, query: Query, item_keys: np.ndarray
    ) -> CandidateSet:
        """Add the batch's items to `catalogue` and build the set for `query` (seen items as they were
        before each event; `seen` is not changed)."""
        n = len(item_keys)
        before = len(catalogue)
        first_seen_at = catalogue.add(item_keys)  # batch positions where new items first appear
        seen_rows, seen_keys = seen.pairs_before_each_event(query.user_keys, item_keys)
        rows, columns = [seen_rows], [catalogue.columns_of(seen_keys)]
        targets = catalogue.columns_of(item_keys)
        if len(first_seen_at):
            # Items first seen inside this batch are not candidates yet for the events before them, and
            # the event that introduces an item cannot rank it: it was not "seen so far".
            new_rows, new = np.nonzero(np.arange(n)[:, None] < first_seen_at[None, :])
            rows.append(new_rows)
            columns.append(before + new)
            targets[first_seen_at] = -1
        return cls(catalogue.keys, targets, np.concatenate(rows), np.concatenate(columns))

    @classmethod
    def for_keys(cls, candidate_keys: np.ndarray, item_keys: np.ndarray) -> CandidateSet:
        """Rank each of `item_keys` among `candidate_keys`, nothing excluded (a key not among the
        candidates is not rankable)."""
        order = np.argsort(candidate_keys, kind="stable")
        if len(order) == 0:
            targets = np.full(len(item_keys), -1, dtype=np.int64)
        else:
            at = np.minimum(np.searchsorted(candidate_keys[order], item_keys), len(order) - 1)
            targets = np.where(candidate_keys[order][at] == item_keys, order[at], -1)
        empty = np.zeros(0, dtype=np.int64)
        return cls(candidate_keys, targets, empty, empty)

    def take(self, rows: np.ndarray) -> CandidateSet:
        """The set of the given batch rows only (ascending integer positions), renumbered 0..len(rows)-1.

        >>> task = CandidateSet(np.arange(1, 4, dtype=np.uint64), np.array([0, 2, 1]), np.array([0, 2]),
        ...                     np.array([1, 0]))
        >>> sub = task.take(np.array([1, 2]))
        >>> sub.targets.tolist(), sub.excluded_rows.tolist(), sub.excluded_columns.tolist()
        ([2, 1], [1], [0])
        """
        position = np.full(len(self.targets), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        kept = position[self.excluded_rows] >= 0
        return CandidateSet(
            self.candidates,
            self.targets[rows],
            position[self.excluded_rows[kept]],
            self.excluded_columns[kept],
        )
