"""Per-user recent-item history: the feature state that sequence-aware models read.

The history is updated event by event inside a micro-batch (the protocol's "live feature state"): the query
of an event sees every earlier event of the same user, including those earlier in the same batch, and never
the event itself. This is done for a whole batch at once with index arithmetic, never a loop per event.

Memory is bounded: at most `capacity` users are remembered (least recently active users are forgotten first),
each with their last `length` items: ``capacity * length * 16`` bytes (key and time per item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freshrec.errors import ConfigError
from freshrec.interactions import Query
from freshrec.keyindex import KeyIndex
from freshrec.model_state import under_prefix, with_prefix


def age_buckets(query_times: np.ndarray, history_times: np.ndarray, buckets: int) -> np.ndarray:
    """int64 [B, N]: ``floor(log2(1 + seconds))`` from each history item to its row's query time, capped at
    ``buckets - 1``; one bucket per doubling separates seconds, minutes, hours, days and months. Padded
    positions (NaN times) and items timed after the query fall in bucket 0.

    >>> age_buckets(np.array([100.0]), np.array([[np.nan, 0.0, 99.0, 100.0]]), buckets=32).tolist()
    [[0, 6, 1, 0]]
    """
    gaps = np.asarray(query_times, dtype=np.float64)[:, None] - np.asarray(history_times, dtype=np.float64)
    gaps = np.nan_to_num(np.maximum(gaps, 0.0), nan=0.0)
    return np.minimum(np.log2(1.0 + gaps), buckets - 1).astype(np.int64)


@dataclass
class HistoryConfig:
    """How much of each user's past to keep.

    Parameters
    ----------
    length
        Items remembered per user (the longest history any model reads).
    capacity
        Users remembered at once; beyond it the least recently active user is forgotten.
    values
        Also keep each history event's value (a rating), for models that read `Query.history_values`
        (``capacity * length * 8`` bytes more).
    """

    length: int = 50
    capacity: int = 1_000_000
    values: bool = False


class UserHistory:
    """The last `length` items of each user, as right-aligned rows (most recent item last).

    >>> history = UserHistory(HistoryConfig(length=3, capacity=10))
    >>> users = np.array([1, 2, 1, 1], dtype=np.uint64)
    >>> items = np.array([10, 20, 11, 12], dtype=np.uint64)
    >>> query = history.query_and_record(users, items, np.arange(4.0))
    >>> query.history_keys.tolist()  # each row: what the user had done just before that event
    [[0, 0, 0], [0, 0, 0], [0, 0, 10], [0, 10, 11]]
    >>> history.query(np.array([1], dtype=np.uint64), np.array([9.0])).history_keys.tolist()
    [[10, 11, 12]]
    """

    def __init__(self, config: HistoryConfig | None = None) -> None:
        self.config = config or HistoryConfig()
        length, capacity = self.config.length, self.config.capacity
        self._users = KeyIndex(capacity, eviction="lru")
        self._keys = np.zeros((capacity, length), dtype=np.uint64)
        self._times = np.full((capacity, length), np.nan, dtype=np.float64)
        self._values = np.full((capacity, length), np.nan) if self.config.values else None

    @property
    def length(self) -> int:
        return self.config.length

    def __len__(self) -> int:
        return len(self._users)

    def query(self, user_keys: np.ndarray, timestamps: np.ndarray) -> Query:
        """Histories as they stand now, without recording anything (serving and evaluation of requests)."""
        if self.length == 0:
            return Query.without_history(user_keys, timestamps)
        slots = self._users.lookup(user_keys)
        known = slots >= 0
        keys = np.zeros((len(user_keys), self.length), dtype=np.uint64)
        times = np.full((len(user_keys), self.length), np.nan, dtype=np.float64)
        keys[known] = self._keys[slots[known]]
        times[known] = self._times[slots[known]]
        values = None
        if self._values is not None:
            values = np.full((len(user_keys), self.length), np.nan)
            values[known] = self._values[slots[known]]
        return Query(user_keys, timestamps, keys, times, values)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The user index (``users.*``) and the rows of the users it holds (``slots``, ``keys``, ``times``,
        ``values``): memory proportional to the users remembered, not to the capacity."""
        live = self._users.live_slots()
        state = with_prefix(self._users.state_dict(finite=True), "users.")
        state.update(
            {"slots": live, "keys": self._keys[live], "times": np.nan_to_num(self._times[live], nan=0.0)}
        )
        state["padding"] = np.isnan(self._times[live])
        if self._values is not None:
            state["values"] = np.nan_to_num(self._values[live], nan=0.0)
            state["absent"] = np.isnan(self._values[live])
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output of a history with the same config."""
        keys = np.asarray(state["keys"], dtype=np.uint64)
        if keys.ndim != 2 or keys.shape[1] != self.length:
            raise ConfigError(
                f"history state keeps {keys.shape[-1]} items per user, this history {self.length}; "
                "use the history length it was saved with"
            )
        self._users.load_state_dict(under_prefix(state, "users."))
        slots = np.asarray(state["slots"], dtype=np.int64)
        self._keys[:] = 0
        self._times[:] = np.nan
        self._keys[slots] = keys
        self._times[slots] = np.where(state["padding"], np.nan, state["times"])
        if self._values is not None:
            self._values[:] = np.nan
            if "values" in state:
                self._values[slots] = np.where(state["absent"], np.nan, state["values"])

    def query_and_record(
        self,
        user_keys: np.ndarray,
        item_keys: np.ndarray,
        timestamps: np.ndarray,
        values: np.ndarray | None = None,
    ) -> Query:
        """The pre-event history of every event of a batch (in event order), then record the batch.

        Row j of the result holds the user's last `length` items before event j: the stored history
        followed by the user's earlier events in this batch. `values` (the events' values, NaN where
        absent) are kept too when the config asks for them.
        """
        n, length = len(user_keys), self.length
        if n == 0 or length == 0:
            return self.query(user_keys, timestamps)
        assignment = self._users.assign(user_keys, timestamps)
        slots = assignment.slots
        # A slot given to a new user (or taken from a forgotten one) starts empty.
        fresh = np.unique(slots[assignment.new])
        self._keys[fresh] = 0
        self._times[fresh] = np.nan
        if self._values is not None:
            self._values[fresh] = np.nan

        # Group the batch by user, keeping event order inside each group: `rank` is how many earlier events
        # of the same user precede each event in this batch.
        order = np.argsort(slots, kind="stable")
        sorted_slots = slots[order]
        group_start = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        group_of_sorted = np.repeat(np.arange(len(group_start)), np.diff(np.r_[group_start, n]))
        rank_sorted = np.arange(n) - group_start[group_of_sorted]
        position = np.empty(n, dtype=np.int64)  # where each event sits in the sorted order
        position[order] = np.arange(n)
        rank = rank_sorted[position]

        # Column c of a right-aligned row is `back` = length-1-c steps into the past (0 = most recent).
        back = np.arange(length - 1, -1, -1)[None, :]
        from_batch = back < rank[:, None]
        batch_pos = np.clip(position[:, None] - 1 - back, 0, n - 1)
        stored_col = length - 1 - (back - rank[:, None])
        from_store = ~from_batch & (stored_col >= 0)
        stored_col = np.clip(stored_col, 0, length - 1)
        stored_keys = self._keys[slots[:, None], stored_col]
        stored_times = self._times[slots[:, None], stored_col]
        sorted_items, sorted_times = item_keys[order], timestamps[order]
        keys = np.where(from_batch, sorted_items[batch_pos], np.where(from_store, stored_keys, 0))
        times = np.where(from_batch, sorted_times[batch_pos], np.where(from_store, stored_times, np.nan))
        keys = keys.astype(np.uint64, copy=False)
        history_values = None
        if self._values is not None:
            event_values = np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)
            stored_values = self._values[slots[:, None], stored_col]
            history_values = np.where(
                from_batch, event_values[order][batch_pos], np.where(from_store, stored_values, np.nan)
            )

        # Each user's new stored row: the query row of their last event, shifted, plus that event.
        last = order[np.r_[group_start[1:] - 1, n - 1]]
        self._keys[slots[last]] = np.concatenate([keys[last, 1:], item_keys[last, None]], axis=1)
        self._times[slots[last]] = np.concatenate([times[last, 1:], timestamps[last, None]], axis=1)
        if history_values is not None:
            self._values[slots[last]] = np.concatenate(
                [history_values[last, 1:], event_values[last, None]], axis=1
            )
        return Query(user_keys, timestamps, keys, times, history_values)
