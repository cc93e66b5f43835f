"""Item-to-item co-occurrence learned incrementally: "users who just did h next did i", in bounded memory.

When a user acts on item i right after recent items h (the query history), the pair weights w(h, i) and
w(i, h) grow by ``recency_decay ** age(h)``. A user's score for a candidate c is the recency-weighted sum of
w(h, c) over their recent items, divided by ``(count(c) + 1) ** popularity_exponent``, plus a tiny
popularity tie-breaker (which also gives cold users the popular items). Weights and counts decay in event
time.

Every item keeps at most `max_neighbors` neighbours in fixed arrays; the update and the scoring are
vectorised per micro-batch (numpy), never a Python loop per event or per pair. This module must never grow
memory with the number of distinct pairs seen: the bound is fixed at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec.embeddings.config import DEFAULT_CAPACITY
from freshrec.errors import ConfigError
from freshrec.interactions import NO_KEY, Interactions, Query
from freshrec.keyindex import KeyIndex, as_keys
from freshrec.model_state import State, apply_rows, array_like, under_prefix, with_prefix
from freshrec.models.base import LearnStats, Model, StateChanges
from freshrec.models.popularity import DecayClock, weighted

_SECONDS_PER_DAY = 86_400.0


@dataclass
class CooccurrenceConfig:
    """Settings of `CooccurrenceModel`.

    The defaults were tuned once on MovieLens-100K (prequential, B = 256, live feature state) and are used
    unchanged on every data set; see the class docstring for the figures behind them.

    Parameters
    ----------
    capacity
        Items with a neighbour row at once; beyond it the item chosen by `eviction` loses its row.
    max_neighbors
        Neighbours kept per item (M). When a row is full, a new neighbour takes the place of the weakest
        one only if its weight is larger.
    history_length
        Recent items of the user read for learning and scoring.
    recency_decay
        A history item ``age`` steps back (0 = the most recent) weighs ``recency_decay ** age``, both in the
        pair increments and in the score.
    popularity_exponent
        alpha in ``score(c) / (count(c) + 1) ** alpha``: damps items that co-occur with everything.
    half_life_days
        Half-life of pair weights and item counts in event time; None keeps them forever. Besides
        following drift, decay is what lets a full row take in newly strong neighbours: without it, the
        first `max_neighbors` neighbours of a popular item would hold their places for good.
    symmetric
        Also grow w(i, h) when i follows h, so a row holds the items seen before as well as after it.
    tie_breaker
        Share of a row's largest score given to the most popular candidate (and proportionally to the
        others): it orders equal scores by popularity and never outweighs a real co-occurrence.
    eviction
        ``"lru"``: forget the item acted on least recently; ``"lfu"``: the one acted on least often.
    """

    capacity: int = DEFAULT_CAPACITY
    max_neighbors: int = 128
    history_length: int = 20
    recency_decay: float = 0.85
    popularity_exponent: float = 0.5
    half_life_days: float | None = 30.0
    symmetric: bool = True
    tie_breaker: float = 1e-6
    eviction: Literal["lru", "lfu"] = "lru"

    def __post_init__(self) -> None:
        for name in ("capacity", "max_neighbors", "history_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"CooccurrenceConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ConfigError(
                f"CooccurrenceConfig.recency_decay must be in (0, 1], got {self.recency_decay!r}"
            )
        if not self.popularity_exponent >= 0.0:
            raise ConfigError(
                f"CooccurrenceConfig.popularity_exponent must be >= 0, got {self.popularity_exponent!r}"
            )
        if not self.tie_breaker >= 0.0:
            raise ConfigError(f"CooccurrenceConfig.tie_breaker must be >= 0, got {self.tie_breaker!r}")


class CooccurrenceModel(Model):
    """Incremental item-to-item co-occurrence recommender with a fixed number of neighbours per item.

    Kinds and values: an event's kind weight scales its count and the pairs it forms with the user's
    history; `value` is ignored.

    Memory is fixed at construction: per item slot, `max_neighbors` cells of 12 bytes (the neighbour's
    uint64 key and a float32 weight), an 8-byte count and the item index's 65-90 bytes, i.e.
    ``12 * M + ~100`` bytes per item: 1.6 kB at the default M = 128, 1.6 GB for a million items. The
    arrays are zero-filled lazily by the OS, so slots never used cost no resident memory.

    Neighbours are stored by key, not by slot: when an item is evicted and its slot reused, rows that name
    it keep naming the old item (which is simply no candidate any more) instead of silently pointing at the
    slot's new owner.

    Quality (prequential HR@10 / NDCG@10 on MovieLens-100K, B = 256, live feature state; the dense tuned
    reference of PROTOCOL.md gets 0.1949 / 0.1010 at B = 1): defaults (M = 128) 0.1976 / 0.1030;
    M = 100: 0.1957 / 0.1023; M = 64: 0.1913; without time decay (M = 100): 0.1888. M = 128 over 100
    also lifts the `freshrec.models.blend` default that includes co-occurrence (HR@10 0.2196 -> 0.2203).

    >>> model = CooccurrenceModel(CooccurrenceConfig(capacity=16, max_neighbors=4, history_length=2))
    >>> history = np.array([[0, 0], [0, 0], [0, 1]], dtype=np.uint64)  # user 7 did item 1, then 2
    >>> query = Query(np.array([7, 8, 7], np.uint64), np.zeros(3), history, np.full((3, 2), np.nan))
    >>> items = np.array([1, 3, 2], dtype=np.uint64)
    >>> _ = model.learn(Interactions(query, items, np.full(3, np.nan), np.zeros(3, np.int8), items[:, None]))
    >>> model.neighbors(1)  # item 2 followed item 1 once, at age 0
    {2: 1.0}
    >>> asker = Query(np.array([9], np.uint64), np.zeros(1), np.array([[0, 1]], np.uint64), np.zeros((1, 2)))
    >>> scores = model.score(asker, np.array([2, 3], dtype=np.uint64))
    >>> bool(scores[0, 0] > scores[0, 1])  # after item 1, item 2 beats item 3
    True
    """

    name = "cooccurrence"

    def __init__(self, config: CooccurrenceConfig | None = None) -> None:
        self.config = config or CooccurrenceConfig()
        capacity, width = self.config.capacity, self.config.max_neighbors
        self.history_length = self.config.history_length
        half_life = self.config.half_life_days
        self.clock = DecayClock(None if half_life is None else half_life * _SECONDS_PER_DAY)
        self._items = KeyIndex(capacity, eviction=self.config.eviction)
        # NO_KEY (0) marks an empty neighbour cell; its weight is 0.
        self._neighbor_keys = np.zeros((capacity, width), dtype=np.uint64)
        self._weights = np.zeros((capacity, width), dtype=np.float32)  # stored scale, see DecayClock
        self._counts = np.zeros(capacity, dtype=np.float64)  # stored scale
        self._recency = self.config.recency_decay ** np.arange(self.history_length, dtype=np.float64)
        # Slots whose item, count or neighbour row changed since the last `drain_changes`.
        self._dirty = np.zeros(capacity, dtype=bool)

    # ------------------------------------------------------------------ inspection
    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the fixed arrays (neighbours, weights, counts, item index); constant once constructed."""
        arrays = (self._neighbor_keys, self._weights, self._counts)
        return int(sum(a.nbytes for a in arrays)) + self._items.nbytes

    def neighbors(self, item_key: int, timestamp: float | None = None) -> dict[int, float]:
        """The neighbours of one item with their weights (as of `timestamp` when decaying), strongest first.

        Without `timestamp` the weights are on the stored scale (true weights at the decay clock's origin).
        """
        slot = int(self._items.lookup(np.array([item_key], dtype=np.uint64))[0])
        if slot < 0:
            return {}
        keys, weights = self._neighbor_keys[slot], self._weights[slot].astype(np.float64)
        if timestamp is not None:
            weights = weights * self.clock.shrink(np.array([timestamp], dtype=np.float64))[0]
        order = np.argsort(-weights, kind="stable")
        return {int(keys[j]): float(weights[j]) for j in order if keys[j] != NO_KEY}

    # ------------------------------------------------------------------ scoring
    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: recency-weighted co-occurrence with the row's history, popularity-normalised.

        Unknown candidates and users without history get the popularity tie-breaker only (finite, >= 0).
        Nothing is written to the model.
        """
        candidates = as_keys(candidate_keys, "candidate_keys")
        n_rows, n_candidates = len(query), len(candidates)
        if n_rows == 0 or n_candidates == 0:
            return np.zeros((n_rows, n_candidates), dtype=np.float32)
        history = self._recent(query.history_keys)
        scores = self._cooccurrence_scores(history, candidates)

        slots = self._items.lookup(candidates)
        stored_counts = np.where(slots >= 0, self._counts[np.maximum(slots, 0)], 0.0)
        # The dense [B, C] arithmetic runs in float32: the result is float32 anyway, and it halves traffic.
        scores = scores.astype(np.float32)
        exponent = self.config.popularity_exponent
        if self.clock.decays:
            # Stored -> true values at each row's own event time.
            shrink = self.clock.shrink(np.asarray(query.timestamps, dtype=np.float64)).astype(np.float32)
            scores *= shrink[:, None]
            if exponent:
                scores /= _damping(np.multiply.outer(shrink, stored_counts.astype(np.float32)), exponent)
        elif exponent:
            scores /= _damping(stored_counts.astype(np.float32)[None, :], exponent)
        # Tie-breaker: a tiny share of each row's own top score, in proportion to the candidate's count
        # (relative to the most popular candidate, so the decay factor cancels out).
        most = stored_counts.max()
        share = (stored_counts / most if most > 0.0 else stored_counts).astype(np.float32)
        top = scores.max(axis=1)
        scale = np.where(top > 0.0, top, np.float32(1.0)) * np.float32(self.config.tie_breaker)
        scores += np.multiply.outer(scale, share)
        return scores

    def _recent(self, history_keys: np.ndarray) -> np.ndarray:
        """The last `history_length` columns of a right-aligned history (fewer if the query has fewer)."""
        history = np.asarray(history_keys)
        if history.ndim != 2:
            raise ConfigError(f"query.history_keys must be 2-d [B, N], got shape {history.shape}")
        return as_keys(history, "history_keys").reshape(history.shape)[:, -self.history_length :]

    def _cooccurrence_scores(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """float64 [B, C]: for each row b and candidate c, the sum over b's history items h of
        ``recency(age of h) * stored w(h, c)``."""
        n_rows, length = history.shape
        n_candidates = len(candidates)
        if length == 0:
            return np.zeros((n_rows, n_candidates), dtype=np.float64)
        # The neighbour-to-column mapping below finds one column per key, so a repeated candidate key
        # would be scored only in its first copy: score the distinct keys and spread them to every copy.
        distinct_candidates, candidate_columns = np.unique(candidates, return_inverse=True)
        if len(distinct_candidates) < n_candidates:
            return self._cooccurrence_scores(history, distinct_candidates)[:, candidate_columns]
        # Consecutive events of a user share most of their history: map each distinct item's row to
        # candidate columns once, then expand to the history cells.
        distinct, inverse = np.unique(history.reshape(-1), return_inverse=True)
        distinct_slots = self._items.lookup(distinct)
        cells = np.flatnonzero(distinct_slots[inverse] >= 0)  # history cells whose item has a row
        if len(cells) == 0:
            return np.zeros((n_rows, n_candidates), dtype=np.float64)
        used, cell_row = np.unique(inverse[cells], return_inverse=True)
        rows = distinct_slots[used]  # [U] item slots

        order = np.argsort(candidates, kind="stable")
        sorted_candidates = candidates[order]
        neighbor_keys = self._neighbor_keys[rows]  # [U, M]
        at = np.minimum(np.searchsorted(sorted_candidates, neighbor_keys), n_candidates - 1)
        is_candidate = (sorted_candidates[at] == neighbor_keys) & (neighbor_keys != NO_KEY)
        # Candidate column of each neighbour cell; cells naming no candidate go to a spare last column.
        column = np.where(is_candidate, order[at], n_candidates)  # [U, M]

        query_row, position = np.divmod(cells, length)
        recency = self._recency[length - 1 - position]  # [V]
        width = n_candidates + 1
        flat = column[cell_row] + (query_row * width)[:, None]  # [V, M]
        amounts = self._weights[rows][cell_row] * recency[:, None]
        scores = np.bincount(flat.reshape(-1), amounts.reshape(-1), n_rows * width)
        return scores.reshape(n_rows, width)[:, :n_candidates]

    # ------------------------------------------------------------------ learning
    def learn(self, batch: Interactions) -> LearnStats:
        """Count the batch's items and grow the pair weights of each event's item with its history.

        Events come in event order with their pre-event histories, so the result does not depend on how
        the stream was cut into batches (up to float rounding and which newcomers win a full row).
        """
        if len(batch) == 0:
            return LearnStats()
        items = as_keys(batch.item_keys, "item_keys")
        times = np.asarray(batch.timestamps, dtype=np.float64)
        self.clock.advance(times, self._items, [self._weights, self._counts], self._dirty)
        # An event counts, and grows its pairs, by its weight (its kind's: a purchase more than a view).
        growth = weighted(self.clock.growth(times), batch.weights)

        assignment = self._items.assign(items, times)
        fresh = assignment.slots[assignment.new]
        # A slot handed to a new item (possibly taken from a forgotten one) starts empty.
        self._neighbor_keys[fresh] = NO_KEY
        self._weights[fresh] = 0.0
        self._counts[fresh] = 0.0
        np.add.at(self._counts, assignment.slots, growth)
        # Evicted items' slots are among the new items' slots: marking the batch's slots covers them.
        self._dirty[assignment.slots] = True

        history = self._recent(batch.query.history_keys)
        length = history.shape[1]
        event, column = np.nonzero((history != NO_KEY) & (history != items[:, None]))
        stats = {"items": float(len(self._items)), "pairs": 0.0}
        if len(event) == 0:
            return LearnStats(extra=stats)
        earlier = history[event, column]
        amount = self._recency[length - 1 - column] * growth[event]
        # w(h, i) lives in h's row; h may have no row (evicted, or forgotten since): then only w(i, h) grows.
        earlier_slots = self._items.lookup(earlier)
        known = earlier_slots >= 0
        rows, neighbors, amounts = [earlier_slots[known]], [items[event][known]], [amount[known]]
        if self.config.symmetric:
            rows.append(assignment.slots[event])
            neighbors.append(earlier)
            amounts.append(amount)
        stats["pairs"] = float(
            self._add_pairs(np.concatenate(rows), np.concatenate(neighbors), np.concatenate(amounts))
        )
        return LearnStats(extra=stats)

    def _add_pairs(self, rows: np.ndarray, neighbors: np.ndarray, amounts: np.ndarray) -> int:
        """Add `amounts` to w(row, neighbor) for every triple (duplicates summed); returns distinct pairs.

        Pairs already in their row grow in place ([P, M] comparison); the others are merged by `_insert`.
        """
        order = np.lexsort((neighbors, rows))
        rows, neighbors, amounts = rows[order], neighbors[order], amounts[order]
        start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (neighbors[1:] != neighbors[:-1])])
        rows, neighbors, amounts = rows[start], neighbors[start], np.add.reduceat(amounts, start)
        self._dirty[rows] = True

        # [P, M] comparison; a key sits at most once in a row, and argmax finds it if it is there.
        position = (self._neighbor_keys[rows] == neighbors[:, None]).argmax(axis=1)
        found = self._neighbor_keys[rows, position] == neighbors
        self._weights[rows[found], position[found]] += amounts[found].astype(np.float32)
        if not found.all():
            new = ~found
            self._insert(rows[new], neighbors[new], amounts[new])
        return len(rows)

    def _insert(self, rows: np.ndarray, neighbors: np.ndarray, amounts: np.ndarray) -> None:
        """Merge neighbours new to their rows (grouped by row, one entry per pair): each affected row keeps
        the `max_neighbors` strongest of its current cells and its newcomers; empty cells count as
        weakest, and a current cell keeps its place against a newcomer of equal weight."""
        width = self.config.max_neighbors
        order = np.lexsort((-amounts, rows))  # by row, strongest newcomer first
        rows, neighbors, amounts = rows[order], neighbors[order], amounts[order]
        start = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        group = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(rows)]))
        rank = np.arange(len(rows)) - start[group]
        target_rows = rows[start]
        # Beyond its `width` strongest newcomers a row cannot take any more: drop them before the merge.
        keep = rank < width
        neighbors, amounts, group, rank = neighbors[keep], amounts[keep], group[keep], rank[keep]
        extra = int(rank.max()) + 1

        # [R, M + extra] candidates per row: its current cells, then its newcomers; -inf pads and marks empty.
        merged_keys = np.zeros((len(target_rows), width + extra), dtype=np.uint64)
        merged_weights = np.full((len(target_rows), width + extra), -np.inf, dtype=np.float64)
        current = self._neighbor_keys[target_rows]
        merged_keys[:, :width] = current
        merged_weights[:, :width] = np.where(current != NO_KEY, self._weights[target_rows], -np.inf)
        merged_keys[group, width + rank] = neighbors
        merged_weights[group, width + rank] = amounts
        # Stable: on equal weight the current cell (earlier column) stays ahead of the newcomer.
        best = np.argsort(-merged_weights, axis=1, kind="stable")[:, :width]
        kept_weights = np.take_along_axis(merged_weights, best, axis=1)
        empty = np.isneginf(kept_weights)
        self._neighbor_keys[target_rows] = np.where(
            empty, NO_KEY, np.take_along_axis(merged_keys, best, axis=1)
        )
        self._weights[target_rows] = np.where(empty, 0.0, kept_weights)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """Item index, neighbour rows, stored weights and counts, decay origin: finite arrays (copies).

        Slot-addressed: ``items.slot_keys``, ``items.last_seen``, ``items.counts``, ``neighbor_keys``,
        ``weights``, ``counts``; replaced whole: ``clock.origin``.
        """
        state = with_prefix(self._items.state_dict(finite=True), "items.")
        state["neighbor_keys"] = self._neighbor_keys.copy()
        state["weights"] = self._weights.copy()
        state["counts"] = self._counts.copy()
        state.update(with_prefix(self.clock.state_dict(), "clock."))
        return state

    def load_state_dict(self, state: State) -> None:
        """Replace the whole state with `state_dict` output of a model with the same capacity and width."""
        hint = "build the model with the capacity and max_neighbors it was saved with"
        neighbor_keys = array_like(state, "neighbor_keys", self._neighbor_keys, hint)
        self._items.load_state_dict(under_prefix(state, "items."))
        self._neighbor_keys = neighbor_keys
        self._weights = np.asarray(state["weights"], dtype=np.float32).copy()
        self._counts = np.asarray(state["counts"], dtype=np.float64).copy()
        self.clock.load_state_dict(under_prefix(state, "clock."))
        self._dirty[:] = False

    def table_sizes(self) -> dict[str, dict[str, int]]:
        return {"items": self._items.sizes()}

    def drain_changes(self) -> StateChanges:
        """The slots changed since the previous drain (rows of every slot-addressed array) and the clock."""
        slots = np.flatnonzero(self._dirty)
        self._dirty[slots] = False
        changes = StateChanges(
            rows={
                "neighbor_keys": (slots, self._neighbor_keys[slots]),
                "weights": (slots, self._weights[slots]),
                "counts": (slots, self._counts[slots]),
            }
        )
        changes.add(self._items.slot_changes(slots, finite=True), "items.")
        changes.replaced.update(with_prefix(self.clock.state_dict(), "clock."))
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, in O(changed slots x max_neighbors)."""
        self._items.apply_changes(changes.under("items."))
        apply_rows(
            {"neighbor_keys": self._neighbor_keys, "weights": self._weights, "counts": self._counts}, changes
        )
        if "clock.origin" in changes.replaced:
            self.clock.load_state_dict(under_prefix(changes.replaced, "clock."))


def _damping(counts: np.ndarray, exponent: float) -> np.ndarray:
    """``(counts + 1) ** exponent``, with the default exponent 0.5 as a square root (several times faster)."""
    counts = counts + np.float32(1.0)
    return np.sqrt(counts, out=counts) if exponent == 0.5 else np.power(counts, exponent, out=counts)
