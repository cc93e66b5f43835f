"""Popularity: every user is shown the items acted on most so far, counted plainly or decayed in event time.

The baseline every other model must beat, and the cold-start fallback of the co-occurrence model. Also home
of `DecayClock`, the O(batch) exponential decay shared by the counting models. A popularity model must never
read the user: its scores are the same for every query row at the same event time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec.embeddings.config import DEFAULT_CAPACITY
from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.keyindex import NEVER_SEEN, KeyIndex, as_keys
from freshrec.model_state import State, apply_rows, array_like, under_prefix, with_prefix
from freshrec.models.base import LearnStats, Model, StateChanges

_SECONDS_PER_DAY = 86_400.0


def weighted(amounts: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per-event increments times the events' sample weights (`Interactions.weights`; None: unchanged)."""
    return amounts if weights is None else amounts * weights.astype(np.float64)


class DecayClock:
    """Exponential decay in event time at O(batch) cost, by storing values on a growing scale.

    A value with true size ``v(t) = sum_e x_e * 2^(-(t - t_e) / half_life)`` is stored as
    ``s = sum_e x_e * 2^((t_e - origin) / half_life)``: an increment at time ``t_e`` is scaled up by
    `growth(t_e)` instead of decaying every stored value, and a reader multiplies by `shrink(t)`
    (``v(t) = s * shrink(t)``). Stored values grow by a factor of 2 per half-life, so once the newest event
    is `max_exponent` half-lives past the origin, `rebase` moves the origin forward and returns the factor
    every stored value must be multiplied by (rare: O(live items) once per `max_exponent` half-lives).
    With ``half_life_seconds=None`` nothing decays: growth and shrink are 1.

    >>> clock = DecayClock(half_life_seconds=10.0)
    >>> clock.rebase(latest=10.0)  # the first events fix the origin
    >>> stored = clock.growth(np.array([0.0, 10.0])).sum()  # one event at t=0, one at t=10
    >>> float(stored * clock.shrink(np.array([20.0]))[0])  # 2^-2 + 2^-1
    0.75
    """

    def __init__(self, half_life_seconds: float | None, max_exponent: float = 32.0) -> None:
        if half_life_seconds is not None and not half_life_seconds > 0:
            raise ConfigError(
                f"half_life must be a positive number of days or None (no decay), got {half_life_seconds!r}"
            )
        self.half_life_seconds = half_life_seconds
        self.max_exponent = max_exponent
        #: Event time at which stored values equal true values; set by the first event seen.
        self.origin: float | None = None

    @property
    def decays(self) -> bool:
        return self.half_life_seconds is not None

    def _exponent(self, timestamps: np.ndarray) -> np.ndarray:
        assert self.half_life_seconds is not None
        origin = self.origin if self.origin is not None else 0.0
        return (np.asarray(timestamps, dtype=np.float64) - origin) / self.half_life_seconds

    def rebase(self, latest: float) -> float | None:
        """Call before recording events up to time `latest`; returns the factor to multiply every stored
        value by when the origin moved (None when nothing needs rescaling)."""
        if not self.decays:
            return None
        if self.origin is None:
            self.origin = float(latest)
            return None
        exponent = float(self._exponent(np.array([latest]))[0])
        if exponent <= self.max_exponent:
            return None
        self.origin = float(latest)
        return float(np.exp2(-exponent))

    def advance(
        self, timestamps: np.ndarray, index: KeyIndex, stored: list[np.ndarray], dirty: np.ndarray
    ) -> None:
        """`rebase` to the batch's latest time and, when the origin moved, rescale the live slots of every
        array in `stored` (values kept on this clock's scale) and mark them `dirty` (rare: once per
        `max_exponent` half-lives)."""
        factor = self.rebase(float(np.max(timestamps)))
        if factor is None:
            return
        live = index.live_slots()
        for array in stored:
            array[live] *= array.dtype.type(factor)
        dirty[live] = True

    def growth(self, timestamps: np.ndarray) -> np.ndarray:
        """float64 factor an increment made at each timestamp is stored with."""
        if not self.decays or self.origin is None:
            return np.ones(np.shape(timestamps), dtype=np.float64)
        # Events far older than the origin underflow to 0: they have decayed away.
        return np.exp2(np.minimum(self._exponent(timestamps), 1000.0))

    def shrink(self, timestamps: np.ndarray) -> np.ndarray:
        """float64 factor that turns stored values into their true size at each timestamp."""
        if not self.decays or self.origin is None:
            return np.ones(np.shape(timestamps), dtype=np.float64)
        # A query earlier than the origin (by more than a few half-lives) would overflow: clip it.
        return np.exp2(-np.maximum(self._exponent(timestamps), -60.0))

    def state_dict(self) -> dict[str, np.ndarray]:
        """``origin``: float64 [1], `NEVER_SEEN` while there is none (state arrays stay finite). A clock
        changes with every batch, so a model publishes it whole in every delta."""
        return {"origin": np.array([NEVER_SEEN if self.origin is None else self.origin], dtype=np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore the origin from `state_dict` output."""
        origin = float(np.asarray(state["origin"]).reshape(-1)[0])
        self.origin = None if origin == NEVER_SEEN else origin


@dataclass
class PopularityConfig:
    """Settings of `PopularityModel`.

    Parameters
    ----------
    half_life_days
        Half-life of an event's weight in event time; None counts every event forever.
    capacity
        Items counted at once; beyond it the item chosen by `eviction` is forgotten (its count restarts).
    eviction
        ``"lru"``: forget the item acted on least recently; ``"lfu"``: the one acted on least often.
    """

    half_life_days: float | None = None
    capacity: int = DEFAULT_CAPACITY
    eviction: Literal["lru", "lfu"] = "lru"


class PopularityModel(Model):
    """Scores every candidate by how often it was acted on so far (decayed in event time if configured).

    Kinds and values: an event adds its kind weight (`Interactions.weights`) to its item's count; `value` is
    ignored (a price or a rating says nothing about how often an item is chosen).

    Memory, fixed at construction: per item slot, an 8-byte count plus the item index's 65-90 bytes.

    >>> model = PopularityModel(PopularityConfig(capacity=8))
    >>> users, items = np.array([1, 2, 3], dtype=np.uint64), np.array([5, 7, 5], dtype=np.uint64)
    >>> query = Query.without_history(users, np.zeros(3))
    >>> _ = model.learn(Interactions(query, items, np.full(3, np.nan), np.zeros(3, np.int8), items[:, None]))
    >>> asker = Query.without_history(np.array([9], dtype=np.uint64), np.ones(1))
    >>> model.score(asker, np.array([5, 7, 11], dtype=np.uint64)).tolist()
    [[2.0, 1.0, 0.0]]
    """

    history_length = 0
    scores_rows_alike = True  # the counts, decayed to each row's time by one factor

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        half_life = self.config.half_life_days
        self.name = "popularity" if half_life is None else "popularity-decayed"
        self.clock = DecayClock(None if half_life is None else half_life * _SECONDS_PER_DAY)
        self._items = KeyIndex(self.config.capacity, eviction=self.config.eviction)
        self._counts = np.zeros(self.config.capacity, dtype=np.float64)  # stored scale, see DecayClock
        # Slots whose item or count changed since the last `drain_changes` (one scatter per batch).
        self._dirty = np.zeros(self.config.capacity, dtype=bool)

    def __len__(self) -> int:
        return len(self._items)

    def counts(self, item_keys: np.ndarray, timestamp: float) -> np.ndarray:
        """float64 count of each item at event time `timestamp` (0 for items never seen or forgotten)."""
        slots = self._items.lookup(as_keys(item_keys, "item_keys"))
        stored = np.where(slots >= 0, self._counts[np.maximum(slots, 0)], 0.0)
        return stored * self.clock.shrink(np.array([timestamp]))[0]

    def score(self, query: Query, candidate_keys: np.ndarray) -> np.ndarray:
        """float32 [B, C]: each candidate's (decayed) count at each row's event time."""
        slots = self._items.lookup(as_keys(candidate_keys, "candidate_keys"))
        stored = np.where(slots >= 0, self._counts[np.maximum(slots, 0)], 0.0)
        shrink = self.clock.shrink(np.asarray(query.timestamps, dtype=np.float64))
        return (shrink[:, None] * stored[None, :]).astype(np.float32)

    def learn(self, batch: Interactions) -> LearnStats:
        """Count each event's item by its weight (`Interactions.weights`, 1 without), grown by its event
        time when decaying."""
        if len(batch) == 0:
            return LearnStats()
        keys = as_keys(batch.item_keys, "item_keys")
        times = np.asarray(batch.timestamps, dtype=np.float64)
        self.clock.advance(times, self._items, [self._counts], self._dirty)
        assignment = self._items.assign(keys, times)
        # A slot handed to a new item (possibly taken from a forgotten one) starts from zero.
        self._counts[assignment.slots[assignment.new]] = 0.0
        np.add.at(self._counts, assignment.slots, weighted(self.clock.growth(times), batch.weights))
        # Evicted items' slots are among the new items' slots: marking the batch's slots covers them.
        self._dirty[assignment.slots] = True
        return LearnStats(extra={"items": float(len(self._items))})

    # ------------------------------------------------------------------ state
    def state_dict(self) -> State:
        """Item index, stored counts and the decay clock's origin as finite numeric arrays (copies).

        Slot-addressed: ``items.slot_keys``, ``items.last_seen``, ``items.counts``, ``counts``; replaced
        whole: ``clock.origin`` (`NEVER_SEEN` before the first event).
        """
        state = with_prefix(self._items.state_dict(finite=True), "items.")
        state["counts"] = self._counts.copy()
        state.update(with_prefix(self.clock.state_dict(), "clock."))
        return state

    def load_state_dict(self, state: State) -> None:
        """Replace the whole state with `state_dict` output of a model with the same capacity."""
        counts = array_like(
            state, "counts", self._counts, "build the model with the capacity it was saved with"
        )
        self._items.load_state_dict(under_prefix(state, "items."))
        self._counts = counts
        self.clock.load_state_dict(under_prefix(state, "clock."))
        self._dirty[:] = False

    def table_sizes(self) -> dict[str, dict[str, int]]:
        return {"items": self._items.sizes()}

    def drain_changes(self) -> StateChanges:
        """The slots changed since the previous drain (rows of every slot-addressed array) and the clock."""
        slots = np.flatnonzero(self._dirty)
        self._dirty[slots] = False
        changes = StateChanges(rows={"counts": (slots, self._counts[slots])})
        changes.add(self._items.slot_changes(slots, finite=True), "items.")
        changes.replaced.update(with_prefix(self.clock.state_dict(), "clock."))
        return changes

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another instance's `drain_changes` in place, in O(changed slots)."""
        self._items.apply_changes(changes.under("items."))
        apply_rows({"counts": self._counts}, changes)
        if "clock.origin" in changes.replaced:
            self.clock.load_state_dict(under_prefix(changes.replaced, "clock."))
