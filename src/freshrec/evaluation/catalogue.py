"""The items seen so far in a stream, as candidate columns for ranking: the protocol ranks "all items seen so
far", in the order they first appeared."""

from __future__ import annotations

import numpy as np


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
