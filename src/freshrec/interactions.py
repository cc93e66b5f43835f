"""What models see: encoded events with each user's recent history as it was just before the event.

Raw ids are turned into 64-bit keys by `freshrec.preprocess.encode`; key 0 is reserved for "no item"
(history padding). The ingest pipeline (`freshrec.preprocess.pipeline`) turns raw records into an
`EncodedBatch`, the one batch type every later stage takes; the live feature state
(`freshrec.features.state`) builds a `Query` per batch, updated event by event (the protocol's "live
feature state"), and adds sampled negatives to make `Interactions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The key that never names an id: it pads history rows and marks empty slots.
NO_KEY = np.uint64(0)


@dataclass
class EncodedBatch:
    """Events after validation, deduplication and id encoding, in the order they happened.

    Attributes
    ----------
    user_keys, item_keys
        uint64 [n] keys of the raw ids (see `freshrec.preprocess.encode`).
    timestamps
        float64 [n] event times, epoch seconds.
    values
        float64 [n] event values (a rating), ``NaN`` where absent.
    kinds
        int8 [n] codes into `freshrec.events.EVENT_KINDS`.

    >>> batch = EncodedBatch.of([1, 2], [10, 11], [5.0, 6.0])
    >>> len(batch), batch.take(slice(1, 2)).item_keys.tolist()
    (2, [11])
    """

    user_keys: np.ndarray
    item_keys: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)

    @classmethod
    def of(
        cls,
        user_keys: np.ndarray | list[int],
        item_keys: np.ndarray | list[int],
        timestamps: np.ndarray | list[float],
        *,
        values: np.ndarray | None = None,
        kinds: np.ndarray | None = None,
    ) -> EncodedBatch:
        """A batch of encoded keys (tests, notebooks); values absent and kind ``view`` unless given."""
        n = len(timestamps)
        return cls(
            np.asarray(user_keys, dtype=np.uint64),
            np.asarray(item_keys, dtype=np.uint64),
            np.asarray(timestamps, dtype=np.float64),
            np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64),
            np.zeros(n, dtype=np.int8) if kinds is None else np.asarray(kinds, dtype=np.int8),
        )

    @classmethod
    def empty(cls) -> EncodedBatch:
        return cls.of(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0))

    def take(self, rows: np.ndarray | slice) -> EncodedBatch:
        """The events at `rows` (positions, a boolean mask or a slice), as a new batch."""
        return EncodedBatch(
            self.user_keys[rows],
            self.item_keys[rows],
            self.timestamps[rows],
            self.values[rows],
            self.kinds[rows],
        )

    @classmethod
    def concat(cls, batches: list[EncodedBatch]) -> EncodedBatch:
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(
            np.concatenate([b.user_keys for b in batches]),
            np.concatenate([b.item_keys for b in batches]),
            np.concatenate([b.timestamps for b in batches]),
            np.concatenate([b.values for b in batches]),
            np.concatenate([b.kinds for b in batches]),
        )

    def in_time_order(self) -> EncodedBatch:
        """The same events sorted by time, ties in their order here (the protocol's replay order).

        >>> EncodedBatch.of([1, 2, 3], [4, 5, 6], [3.0, 1.0, 1.0]).in_time_order().user_keys.tolist()
        [2, 3, 1]
        """
        if len(self) < 2 or not np.any(np.diff(self.timestamps) < 0):
            return self
        return self.take(np.argsort(self.timestamps, kind="stable"))


@dataclass
class Query:
    """Who asks, when, and what they did just before: one row per event (or per request at serving).

    Attributes
    ----------
    user_keys
        uint64 [B], the user of each row.
    timestamps
        float64 [B], event time of each row (epoch seconds).
    history_keys
        uint64 [B, N], the user's last N item keys before this row, oldest first, right-aligned:
        the most recent item is in the last column; ``NO_KEY`` pads users with fewer than N items.
    history_times
        float64 [B, N], when each history item happened (``NaN`` for padding).
    history_values
        float64 [B, N], each history event's value (a rating; ``NaN`` where absent), or None when the
        feature state does not keep values (only models that ask for them get them).
    """

    user_keys: np.ndarray
    timestamps: np.ndarray
    history_keys: np.ndarray
    history_times: np.ndarray
    history_values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user_keys)

    @property
    def history_length(self) -> int:
        return self.history_keys.shape[1]

    def take(self, rows: np.ndarray) -> Query:
        """The query of the given rows only (integer positions), in that order."""
        return Query(
            self.user_keys[rows],
            self.timestamps[rows],
            self.history_keys[rows],
            self.history_times[rows],
            None if self.history_values is None else self.history_values[rows],
        )

    @classmethod
    def without_history(cls, user_keys: np.ndarray, timestamps: np.ndarray) -> Query:
        n = len(user_keys)
        return cls(
            user_keys=user_keys,
            timestamps=timestamps,
            history_keys=np.zeros((n, 0), dtype=np.uint64),
            history_times=np.zeros((n, 0), dtype=np.float64),
        )


@dataclass
class Interactions:
    """A micro-batch to learn from: the queries, the item each user acted on, and sampled negatives.

    Attributes
    ----------
    query
        The context of each event (history as it was before the event).
    item_keys
        uint64 [B], the positive item of each event.
    values
        float64 [B], the event's value (a rating), ``NaN`` where absent.
    kinds
        int8 [B], codes into `freshrec.events.EVENT_KINDS`.
    negative_keys
        uint64 [B, M], items sampled from the recent item distribution (may by chance contain the positive).
    weights
        float32 [B], how much each event counts (from its kind: `freshrec.events.KindWeights`), or None
        when every event counts 1. Implicit models multiply their per-event loss or count increment by it;
        None takes exactly the unweighted path.
    share
        The events whose loss this process computes, when ranks of a distributed trainer split one batch
        (`freshrec.training.distributed`): every rank sees the whole batch (its sightings, in-batch
        candidates and normalisation are the batch's) and learns from its share; the ranks' shares cover
        the batch once, and the loss a share reports is its part of the batch's (the parts sum to it).
        None: all of them. Only models with ``learns_shares`` accept one.
    """

    query: Query
    item_keys: np.ndarray
    values: np.ndarray
    kinds: np.ndarray
    negative_keys: np.ndarray
    weights: np.ndarray | None = None
    share: slice | None = None

    def __len__(self) -> int:
        return len(self.item_keys)

    @property
    def user_keys(self) -> np.ndarray:
        return self.query.user_keys

    @property
    def timestamps(self) -> np.ndarray:
        return self.query.timestamps
