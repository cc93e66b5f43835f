"""A collisionless map from uint64 keys to dense slots ``[0, capacity)``, with bookkeeping and eviction.

This is what makes embedding tables collisionless: every live key owns one slot (one embedding row), no two
live keys share a slot, and a slot is handed to another key only after its key was removed, expired or
evicted. All work is vectorised per batch of keys (numpy only); Python loops run over probe rounds, never
over keys. It must never hand out a slot that a live key still owns, and `lookup` must never change state.

Layout
------
* An open-addressing hash array of ``H = next_power_of_two(2 * capacity)`` cells with linear probing; each
  cell holds a key and the slot it maps to (or EMPTY / TOMBSTONE). Load from live keys stays <= 1/2.
* Per-slot arrays of length ``capacity``: the key in the slot (0 = free), `last_seen` (event time) and
  `counts` (sightings), plus a stack of free slots.

Deletion
--------
Deleted cells become tombstones rather than being repaired by backward-shift deletion: backward shift moves
entries one cluster at a time and does not vectorise over a batch of deletions (two deletions in one cluster
interact), whereas tombstones are a single scatter. Inserts only fill EMPTY cells, so the number of used
cells (live + tombstones) only grows; once it would pass `MAX_USED_FRACTION` of the hash array, the array is
rebuilt from the live slots (one vectorised insert of all live keys, O(H)). With live load <= 1/2 the rebuild
happens at most once per ``H / 8 >= capacity / 4`` deletions, so it is amortised O(1) per deletion, and
every probe sequence runs over a table at most 5/8 full: lookup cost stays bounded no matter how many
insert/delete cycles came before.

Eviction
--------
Choosing the k least-recently (or least-frequently) seen of a million live keys is an O(capacity) selection;
doing it per batch would dominate the hot path once the index is full. Instead a *victim pool* holds the
M = max(capacity / 16, 4096) smallest live keys under the total order (primary, secondary, slot), sorted,
with a snapshot of their bookkeeping and the threshold tuple of its largest entry. Invariant: every live key
whose tuple is <= the threshold is in the pool. Touches and inserts only raise a key's tuple (counts grow,
last_seen never goes back), so an entry whose snapshot no longer matches is stale and skipped; an update
that lands at or below the threshold (a late event, a new key in "lfu") is merged into the pool. Victims are
popped from its front; it is rebuilt (one `np.partition` pass) only when it runs dry, i.e. at most once per
M evictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from freshrec.errors import CapacityError, ConfigError
from freshrec.hashing import mix64, mix64_int
from freshrec.model_state import StateChanges

Eviction = Literal["lru", "lfu", "none"]

_EMPTY = -1  # cell never used: a probe for a missing key stops here
_TOMBSTONE = -2  # cell whose key was deleted: probes continue past it, inserts do not reuse it
_WINDOW = 8  # cells read per probe round after the first (one 64-byte cache line of keys)
_OFFSETS = np.arange(_WINDOW, dtype=np.int64)
#: Lookups of at most this many keys probe with Python ints (`KeyIndex._find_few`): cheaper below ~8.
_FEW_KEYS = 4
#: Rebuild the hash array when live + tombstone cells would exceed this fraction of it.
MAX_USED_FRACTION = 0.625
#: `last_seen` of a free slot in finite state arrays (``state_dict(finite=True)``): the model store refuses
#: non-finite floats, and a free slot's ``-inf`` must survive a round trip. Loaded back as ``-inf``.
NEVER_SEEN = float(np.finfo(np.float64).min)


@dataclass
class Assignment:
    """The outcome of `KeyIndex.assign`.

    Attributes
    ----------
    slots
        int64 [n], the slot of each input key, in input order.
    new
        bool [n], True where the key got its slot in this call (every occurrence of such a key).
    evicted_keys
        uint64 [e], keys evicted to make room in this call.
    evicted_slots
        int64 [e], the slots they held; every one of them now belongs to a new key of this call.
    """

    slots: np.ndarray
    new: np.ndarray
    evicted_keys: np.ndarray
    evicted_slots: np.ndarray


def as_keys(keys: np.ndarray | list[int], field: str = "keys") -> np.ndarray:
    """Keys as a 1-d uint64 array; signed int64 hashes are reinterpreted bit for bit, not converted.

    >>> as_keys(np.array([-1, 5])).tolist()
    [18446744073709551615, 5]
    """
    array = np.asarray(keys)
    if array.dtype == np.uint64:
        return array.reshape(-1)
    if array.dtype == np.int64:
        return array.reshape(-1).view(np.uint64)
    if array.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if array.dtype.kind in "iu":
        return array.reshape(-1).astype(np.int64).view(np.uint64)
    raise ConfigError(
        f"{field} must be an integer array of uint64 keys, got dtype {array.dtype}; encode raw ids "
        "with freshrec.preprocess.encode first"
    )


def per_key_times(times: float | np.ndarray, n: int, field: str = "timestamps") -> np.ndarray:
    """float64 [n]: one time for every key, or each key's own time (a shape mismatch names `field`).

    >>> per_key_times(5.0, 3).tolist()
    [5.0, 5.0, 5.0]
    """
    array = np.asarray(times, dtype=np.float64)
    if array.ndim and array.shape != (n,):
        raise ConfigError(
            f"{field} has shape {array.shape} but keys has {n} entries; pass one time or one per key"
        )
    return np.broadcast_to(array, (n,))


class KeyIndex:
    """Vectorised open-addressing hash map from uint64 keys (0 is reserved) to slots ``[0, capacity)``.

    Parameters
    ----------
    capacity
        Number of slots: the most keys that can be live at once.
    eviction
        What `assign` does when it needs more slots than are free: ``"lru"`` evicts the live keys with the
        oldest `last_seen` (ties: lower count, then lower slot), ``"lfu"`` those with the lowest count
        (ties: older last_seen, then lower slot), ``"none"`` raises `CapacityError`.

    Attributes
    ----------
    last_seen
        float64 [capacity], latest event time each slot's key was seen (``-inf`` for free slots). Read only.
    counts
        int64 [capacity], how many times each slot's key was seen since it got the slot (0 for free slots).

    Examples
    --------
    >>> index = KeyIndex(capacity=2)
    >>> index.assign(np.array([10, 20, 10], dtype=np.uint64), now=1.0).slots.tolist()
    [0, 1, 0]
    >>> a = index.assign(np.array([30], dtype=np.uint64), now=2.0)   # full: evicts key 20 (seen once)
    >>> a.slots.tolist(), a.evicted_keys.tolist()
    ([1], [20])
    >>> index.lookup(np.array([10, 20, 30], dtype=np.uint64)).tolist()
    [0, -1, 1]
    """

    def __init__(self, capacity: int, eviction: Eviction = "lru") -> None:
        if not isinstance(capacity, int | np.integer) or capacity < 1:
            raise ConfigError(f"capacity must be a positive integer, got {capacity!r}")
        if eviction not in ("lru", "lfu", "none"):
            raise ConfigError(f"eviction must be 'lru', 'lfu' or 'none', got {eviction!r}")
        self.capacity = int(capacity)
        self.eviction: Eviction = eviction
        self._bits = max(3, int(2 * self.capacity - 1).bit_length())
        self._mask_int = (1 << self._bits) - 1
        self._shift = np.uint64(64 - self._bits)
        size = 1 << self._bits
        self._cell_keys = np.zeros(size, dtype=np.uint64)
        self._cell_slots = np.full(size, _EMPTY, dtype=np.int64)
        self._used_cells = 0  # live + tombstones
        self._max_used = int(MAX_USED_FRACTION * size)
        self._slot_keys = np.zeros(self.capacity, dtype=np.uint64)
        self.last_seen = np.full(self.capacity, -np.inf, dtype=np.float64)
        self.counts = np.zeros(self.capacity, dtype=np.int64)
        # Free slots as a stack; popping from the end hands out 0, 1, 2, ... first on a fresh index.
        self._free = np.arange(self.capacity - 1, -1, -1, dtype=np.int64)
        self._n_free = self.capacity
        # Position of each slot in `_free` (-1: not free), so `set_slots` can take arbitrary slots off the
        # stack in O(changed slots) instead of searching a stack of up to `capacity` entries.
        self._free_pos = np.arange(self.capacity - 1, -1, -1, dtype=np.int64)
        self._pool: _VictimPool | None = None
        #: Smallest victim pool; a pool also holds at least capacity / 16 keys so that rebuilds (O(capacity))
        #: happen at most once per capacity / 16 evictions.
        self.min_pool = 4096
        self._protected = np.zeros(self.capacity, dtype=bool)
        self.rehashes = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self.capacity - self._n_free

    def sizes(self) -> dict[str, int]:
        """Live ids and capacity, as plain numbers (`Model.table_sizes` of models keyed by this index)."""
        return {"live_rows": len(self), "capacity": self.capacity}

    @property
    def hash_cells(self) -> int:
        """Number of cells of the hash array (a power of two, at least 2 x capacity)."""
        return len(self._cell_keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays."""
        arrays = (self._cell_keys, self._cell_slots, self._slot_keys, self.last_seen, self.counts, self._free)
        return int(sum(a.nbytes for a in arrays))

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """int64 slot of each key, -1 where the key is not live (key 0 included). Changes nothing."""
        return self._find(as_keys(keys))[1]

    def keys_of(self, slots: np.ndarray) -> np.ndarray:
        """uint64 key held by each slot (0 for free slots and for -1)."""
        slots = np.asarray(slots, dtype=np.int64)
        keys = self._slot_keys[np.maximum(slots, 0)]
        return np.where(slots >= 0, keys, np.uint64(0))

    def live_slots(self) -> np.ndarray:
        """int64 slots that hold a live key, ascending."""
        return np.flatnonzero(self._slot_keys)

    # ------------------------------------------------------------------ updates
    def assign(self, keys: np.ndarray, now: float | np.ndarray) -> Assignment:
        """Give every key a slot, admitting missing keys and evicting if the index is full.

        Parameters
        ----------
        keys
            uint64 [n] keys, duplicates allowed, never 0.
        now
            Event time of the call (a float) or of each key (float64 [n]). A key's `last_seen` becomes the
            latest of its previous value and its times in this call; its count grows by its occurrences.

        Raises
        ------
        CapacityError
            More distinct keys than `capacity` in one call, or a full index with ``eviction="none"``.
            Nothing is changed when it is raised.
        """
        keys = as_keys(keys)
        n = len(keys)
        times = per_key_times(now, n, "now")
        if n == 0:
            return Assignment(
                np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.uint64), np.zeros(0, np.int64)
            )
        if not keys.all():
            raise ConfigError(
                "keys contains key 0, which is reserved for 'no key'; drop padding before assign"
            )
        unique, inverse, occurrences, latest = _group(keys, times)
        if len(unique) > self.capacity:
            raise CapacityError(
                f"assign got {len(unique)} distinct keys, more than capacity={self.capacity}; "
                "raise the capacity or split the batch"
            )
        _, slots = self._find(unique)
        missing = slots < 0
        n_new = int(missing.sum())
        need = n_new - self._n_free
        if need > 0 and self.eviction == "none":
            raise CapacityError(
                f"KeyIndex is full (capacity={self.capacity}, eviction='none') and {n_new} new keys arrived; "
                "raise the capacity or choose eviction='lru' or 'lfu'"
            )
        # Touch existing keys first: their tuples rise, so the victim pool will not offer them (keys of
        # one call never evict one another).
        present = slots[~missing]
        self.last_seen[present] = np.maximum(self.last_seen[present], latest[~missing])
        self.counts[present] += occurrences[~missing]
        self._note_updates(present)

        evicted_keys = np.zeros(0, dtype=np.uint64)
        evicted_slots = np.zeros(0, dtype=np.int64)
        if need > 0:
            # Scratch flags (kept between calls, reset after use) so eviction costs O(batch), not O(capacity).
            self._protected[present] = True
            try:
                evicted_slots = self._pick_victims(need, len(present))
            finally:
                self._protected[present] = False
            evicted_keys = self._slot_keys[evicted_slots].copy()
            self._delete(evicted_keys, evicted_slots)

        if n_new:
            new_keys = unique[missing]
            new_slots = self._pop_free(n_new)
            if self._used_cells + n_new > self._max_used:
                self._rehash()
            self._insert(new_keys, new_slots)
            self._slot_keys[new_slots] = new_keys
            self.last_seen[new_slots] = latest[missing]
            self.counts[new_slots] = occurrences[missing]
            slots[missing] = new_slots
            self._note_updates(new_slots)
        return Assignment(
            slots=slots[inverse], new=missing[inverse], evicted_keys=evicted_keys, evicted_slots=evicted_slots
        )

    def remove(self, keys: np.ndarray) -> np.ndarray:
        """Remove keys; returns the slot each key freed (-1 where it was not live). Duplicates are fine."""
        keys = as_keys(keys)
        _, slots = self._find(keys)
        hit = slots >= 0
        if hit.any():
            unique_slots = np.unique(slots[hit])
            self._delete(self._slot_keys[unique_slots].copy(), unique_slots)
        return slots

    def expire(self, older_than: float) -> tuple[np.ndarray, np.ndarray]:
        """Remove every live key with ``last_seen < older_than``; returns their (keys, slots). O(capacity)."""
        slots = np.flatnonzero((self.last_seen < older_than) & (self._slot_keys != 0))
        keys = self._slot_keys[slots].copy()
        if len(slots):
            self._delete(keys, slots)
        return keys, slots

    # ------------------------------------------------------------------ state
    def state_dict(self, finite: bool = False) -> dict[str, np.ndarray]:
        """The index as plain arrays (slot -> key, last_seen, counts): enough to rebuild it exactly.

        With ``finite=True`` the ``-inf`` of free slots' `last_seen` is written as `NEVER_SEEN`, so every
        value is finite (what the model store accepts); `load_state_dict` and `set_slots` read it back.
        The private ``_free`` is the order in which free slots will be handed out, when it is not the
        order a loaded index would use anyway (lowest slot first): empty on an index that never freed a
        slot (see `freshrec.model_state` on private arrays).
        """
        last_seen = self.last_seen.copy()
        if finite:
            last_seen[np.isneginf(last_seen)] = NEVER_SEEN
        free = self._free[: self._n_free]
        canonical = np.flatnonzero(self._slot_keys == 0)[::-1]
        order = np.zeros(0, dtype=np.int64) if np.array_equal(free, canonical) else free.copy()
        return {
            "slot_keys": self._slot_keys.copy(),
            "last_seen": last_seen,
            "counts": self.counts.copy(),
            "_free": order,
        }

    def slot_changes(self, slots: np.ndarray, finite: bool = False) -> StateChanges:
        """Rows `slots` of every public `state_dict` array, as changes, in O(len(slots));
        `apply_changes` applies them to another index."""
        slots = np.asarray(slots, dtype=np.int64)
        last_seen = self.last_seen[slots]
        if finite:
            last_seen[np.isneginf(last_seen)] = NEVER_SEEN
        return StateChanges(
            rows={
                "slot_keys": (slots, self._slot_keys[slots]),
                "last_seen": (slots, last_seen),
                "counts": (slots, self.counts[slots]),
            }
        )

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply `slot_changes` output of another index (all three arrays, same slots) with `set_slots`."""
        rows = changes.rows
        if not rows:
            return
        names = ("slot_keys", "last_seen", "counts")
        missing = [name for name in names if name not in rows]
        if missing:
            raise ConfigError(
                f"index rows lack {missing}; slot_keys, last_seen and counts travel together: pass "
                "slot_changes (or a model's drain_changes) output unmodified"
            )
        slots = np.asarray(rows["slot_keys"][0])
        for name in names[1:]:
            if not np.array_equal(rows[name][0], slots):
                raise ConfigError(f"index rows of {name!r} name other slots than those of 'slot_keys'")
        self.set_slots(slots, rows["slot_keys"][1], rows["last_seen"][1], rows["counts"][1])

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace the contents with `state_dict` output of an index of the same capacity."""
        slot_keys = as_keys(state["slot_keys"], "slot_keys")
        if len(slot_keys) != self.capacity:
            raise ConfigError(
                f"slot_keys has {len(slot_keys)} entries but this KeyIndex has capacity={self.capacity}; "
                "load into an index of the same capacity"
            )
        live = np.flatnonzero(slot_keys)
        if len(np.unique(slot_keys[live])) != len(live):
            raise ConfigError("slot_keys holds the same key in two slots; the state is corrupt")
        self._slot_keys = slot_keys.copy()
        self.last_seen = _from_finite(np.asarray(state["last_seen"], dtype=np.float64).copy())
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        free = np.flatnonzero(slot_keys == 0)[::-1]
        order = np.asarray(state.get("_free", np.zeros(0)), dtype=np.int64)
        # A saved order is used only if it names exactly the free slots: a state assembled from a snapshot
        # and later deltas (which never carry private arrays) may hold the order of an earlier moment.
        if len(order) == len(free) and np.array_equal(np.sort(order), free[::-1]):
            free = order
        self._free[: len(free)] = free
        self._n_free = len(free)
        self._free_pos.fill(-1)
        self._free_pos[free] = np.arange(len(free))
        self._pool = None
        self._rehash()

    def set_slots(
        self, slots: np.ndarray, keys: np.ndarray, last_seen: np.ndarray, counts: np.ndarray
    ) -> None:
        """Make each slot hold the given key with the given bookkeeping (key 0: the slot becomes free).

        The in-place counterpart of `load_state_dict` for a few slots: it applies rows of another
        index's `state_dict` (an incremental update) in O(len(slots)), however large the index. A key
        that held another slot not in `slots` leaves it (that slot is freed), so no key is ever live
        twice; the free stack and the eviction pool stay consistent, and slots whose key does not change
        only get their bookkeeping rewritten (no hash-array churn).

        Parameters
        ----------
        slots
            int64 [n] distinct slots in ``[0, capacity)``.
        keys
            uint64 [n] the key each slot holds afterwards; the non-zero ones distinct.
        last_seen, counts
            float64 / int64 [n] their bookkeeping (ignored for key 0: a free slot has ``-inf`` and 0);
            `NEVER_SEEN` reads as ``-inf``.

        >>> index = KeyIndex(capacity=3)
        >>> _ = index.assign(np.array([10, 20], dtype=np.uint64), now=1.0)   # slots 0 and 1
        >>> index.set_slots(np.array([1, 2]), np.array([10, 30], dtype=np.uint64), np.array([5.0, 6.0]),
        ...                 np.array([2, 1]))   # 20 leaves, 10 moves to slot 1 (freeing 0), 30 arrives
        >>> index.lookup(np.array([10, 20, 30], dtype=np.uint64)).tolist(), len(index)
        ([1, -1, 2], 2)
        """
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        keys = as_keys(keys)
        last_seen = _from_finite(np.array(last_seen, dtype=np.float64).reshape(-1))
        counts = np.array(counts, dtype=np.int64).reshape(-1)
        n = len(slots)
        if not len(keys) == len(last_seen) == len(counts) == n:
            raise ConfigError(
                f"set_slots got {n} slots, {len(keys)} keys, {len(last_seen)} last_seen and "
                f"{len(counts)} counts; pass one of each per slot"
            )
        if n == 0:
            return
        if slots.min() < 0 or slots.max() >= self.capacity:
            raise ConfigError(
                f"slots must lie in [0, {self.capacity}), got values in [{slots.min()}, {slots.max()}]; "
                "apply changes of an index with the same capacity"
            )
        if len(np.unique(slots)) != n:
            raise ConfigError("slots holds a slot twice; pass each slot once")
        live = keys != 0
        if len(np.unique(keys[live])) != int(live.sum()):
            raise ConfigError("keys holds the same non-zero key for two slots; a key owns one slot")
        last_seen[~live] = -np.inf
        counts[~live] = 0

        old = self._slot_keys[slots]
        changed = old != keys
        incoming_slots, incoming = slots[changed & live], keys[changed & live]
        # Where the incoming keys live now, read before anything moves: a holder outside `slots` loses it.
        _, holders = self._find(incoming)
        holders = holders[holders >= 0]
        outside = holders[~np.isin(holders, slots)]
        leaving = np.concatenate([old[changed & (old != 0)], self._slot_keys[outside]])
        if len(leaving):
            self._bury(leaving)
        self._empty_slots(outside)

        was_free = self._free_pos[slots] >= 0
        self._slot_keys[slots] = keys
        self.last_seen[slots] = last_seen
        self.counts[slots] = counts
        if len(incoming):
            if self._used_cells + len(incoming) > self._max_used:
                self._rehash()  # inserts every live key, the incoming ones included
            else:
                self._insert(incoming, incoming_slots)
        self._take_off_free_stack(slots[was_free & live])
        pushed = np.concatenate([slots[~was_free & ~live], outside])
        self._free[self._n_free : self._n_free + len(pushed)] = pushed
        self._free_pos[pushed] = np.arange(self._n_free, self._n_free + len(pushed))
        self._n_free += len(pushed)
        # Bookkeeping may have moved down (a late event, a new key): keep the victim pool's invariant.
        self._note_updates(slots[live])

    # ------------------------------------------------------------------ internals
    def _home(self, keys: np.ndarray) -> np.ndarray:
        """Home cell of each key: the top bits (the best-mixed ones) of `mix64`, which spreads sequential
        integer keys (tests, pre-encoded ids) as well as xxhash digests."""
        return (mix64(keys) >> self._shift).astype(np.int64)

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cell, slot) of each key, (-1, -1) where absent.

        The first round reads each key's home cell (most keys stop there); the keys still unresolved then
        read `_WINDOW` consecutive cells per round, so the few long probe sequences of a linear-probing table
        cost a handful of vectorised rounds instead of one round per cell.
        """
        n = len(keys)
        if n <= _FEW_KEYS:
            return self._find_few(keys)
        cells = np.full(n, -1, dtype=np.int64)
        slots = np.full(n, -1, dtype=np.int64)
        if keys.all():
            pending, pending_keys = np.arange(n), keys
        else:  # key 0 is never live
            pending = np.flatnonzero(keys)
            pending_keys = keys[pending]
        pos = self._home(pending_keys)
        cell_slot = self._cell_slots[pos]
        hit = self._cell_keys[pos] == pending_keys
        cells[pending[hit]] = pos[hit]
        slots[pending[hit]] = cell_slot[hit]
        go_on = ~hit & (cell_slot != _EMPTY)
        pending, pending_keys, pos = pending[go_on], pending_keys[go_on], (pos[go_on] + 1) & self._mask_int
        while len(pending):
            window = (pos[:, None] + _OFFSETS) & self._mask_int
            window_slots = self._cell_slots[window]
            hit = self._cell_keys[window] == pending_keys[:, None]
            stop = hit | (window_slots == _EMPTY)
            first = stop.argmax(axis=1)
            rows = np.arange(len(pending))
            found = hit[rows, first]
            cells[pending[found]] = window[rows[found], first[found]]
            slots[pending[found]] = window_slots[rows[found], first[found]]
            go_on = ~stop[rows, first]  # no hit and no EMPTY cell in the window: read the next one
            pending, pending_keys = pending[go_on], pending_keys[go_on]
            pos = (pos[go_on] + _WINDOW) & self._mask_int
        return cells, slots

    def _find_few(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_find` for a handful of keys, probing cell by cell with Python ints: a request looks up one
        user or a few items, where the vectorised rounds' dozen numpy calls (~70 µs) would be most of it."""
        cells, slots = [-1] * len(keys), [-1] * len(keys)
        cell_keys, cell_slots = self._cell_keys, self._cell_slots
        shift, mask = int(self._shift), self._mask_int
        for i, key in enumerate(keys.tolist()):
            if key == 0:  # key 0 is never live
                continue
            pos = mix64_int(key) >> shift
            while True:
                if int(cell_keys[pos]) == key:
                    cells[i], slots[i] = pos, int(cell_slots[pos])
                    break
                if int(cell_slots[pos]) == _EMPTY:
                    break
                pos = (pos + 1) & mask
        return np.array(cells, dtype=np.int64), np.array(slots, dtype=np.int64)

    def _insert(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Insert distinct keys known to be absent into EMPTY cells.

        Each round every pending key picks the first EMPTY cell from its probe position (home cell first,
        then windows of `_WINDOW` cells); keys racing for one cell are resolved by scatter-then-read-back:
        the key that reads itself back won, the others continue after that cell.
        """
        pending = np.arange(len(keys))
        pos = self._home(keys)
        width = 1
        while len(pending):
            window = (pos[:, None] + _OFFSETS[:width]) & self._mask_int
            empty = self._cell_slots[window] == _EMPTY
            first = empty.argmax(axis=1)
            rows = np.arange(len(pending))
            has_empty = empty[rows, first]
            target = window[rows, first]
            cand, cand_cells = pending[has_empty], target[has_empty]
            self._cell_keys[cand_cells] = keys[cand]
            won = self._cell_keys[cand_cells] == keys[cand]
            self._cell_slots[cand_cells[won]] = slots[cand[won]]
            placed = np.zeros(len(pending), dtype=bool)
            placed[np.flatnonzero(has_empty)[won]] = True
            # Losers resume right after the cell they lost; keys without an EMPTY cell, after the window.
            pos = np.where(has_empty, target + 1, pos + width) & self._mask_int
            pending, pos = pending[~placed], pos[~placed]
            width = _WINDOW
        self._used_cells += len(keys)

    def _delete(self, keys: np.ndarray, slots: np.ndarray) -> None:
        """Turn the cells of live `keys` (held in `slots`) into tombstones and free the slots."""
        self._bury(keys)
        self._empty_slots(slots)
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._free_pos[slots] = np.arange(self._n_free, self._n_free + len(slots))
        self._n_free += len(slots)

    def _bury(self, keys: np.ndarray) -> None:
        """Turn the hash cells of live `keys` into tombstones (probes go on past them)."""
        cells, _ = self._find(keys)
        self._cell_keys[cells] = 0
        self._cell_slots[cells] = _TOMBSTONE

    def _empty_slots(self, slots: np.ndarray) -> None:
        """Reset the bookkeeping of `slots` to that of a free slot (no key, never seen, no count)."""
        self._slot_keys[slots] = 0
        self.last_seen[slots] = -np.inf
        self.counts[slots] = 0

    def _pop_free(self, k: int) -> np.ndarray:
        slots = self._free[self._n_free - k : self._n_free][::-1].copy()
        self._free_pos[slots] = -1
        self._n_free -= k
        return slots

    def _take_off_free_stack(self, slots: np.ndarray) -> None:
        """Remove distinct free `slots` from the free stack in O(len(slots)): the stack shrinks by that
        many, and the survivors among its top entries move into the holes the others leave below."""
        k = len(slots)
        if k == 0:
            return
        positions = self._free_pos[slots]
        top = self._n_free - k
        holes = positions[positions < top]
        leaves_top = np.zeros(k, dtype=bool)
        leaves_top[positions[positions >= top] - top] = True
        movers = self._free[top : self._n_free][~leaves_top]
        self._free[holes] = movers
        self._free_pos[movers] = holes
        self._free_pos[slots] = -1
        self._n_free = top

    def _rehash(self) -> None:
        """Rebuild the hash array from the live slots, dropping every tombstone."""
        self._cell_keys.fill(0)
        self._cell_slots.fill(_EMPTY)
        self._used_cells = 0
        live = np.flatnonzero(self._slot_keys)
        self._insert(self._slot_keys[live], live)
        self.rehashes += 1

    def _order(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(primary, secondary) eviction order values of slots; smaller goes first."""
        if self.eviction == "lfu":
            return self.counts[slots].astype(np.float64), self.last_seen[slots]
        return self.last_seen[slots], self.counts[slots].astype(np.float64)

    def _note_updates(self, slots: np.ndarray) -> None:
        """Keep the victim pool's invariant after `slots` changed bookkeeping (see module docstring)."""
        pool = self._pool
        if pool is None or not len(slots):
            return
        primary, secondary = self._order(slots)
        below = _tuple_le(primary, secondary, slots, pool.threshold)
        if below.any():
            pool.merge(slots[below], self._slot_keys[slots[below]], primary[below], secondary[below])

    def _pick_victims(self, need: int, n_protected: int) -> np.ndarray:
        """The `need` smallest live slots not flagged in `_protected`, under the eviction order."""
        protected = self._protected
        if self._pool is not None:
            victims = self._pool.pop(need, protected, self)
            if victims is not None:
                return victims
        live = np.flatnonzero(self._slot_keys)
        size = min(len(live), max(need + n_protected, self.min_pool, self.capacity // 16))
        primary, secondary = self._order(live)
        chosen = _smallest(primary, secondary, size)
        self._pool = _VictimPool(
            live[chosen], self._slot_keys[live[chosen]], primary[chosen], secondary[chosen]
        )
        victims = self._pool.pop(need, protected, self)
        assert victims is not None, "victim pool rebuilt from all live keys cannot run dry"
        return victims


class _VictimPool:
    """Sorted eviction candidates with a snapshot of their order values (see the module docstring).

    Entries before `start` are consumed; `pop` reads a window at the front that grows only until it holds
    enough victims, so an eviction costs O(victims + stale entries skipped), not O(pool).
    """

    def __init__(
        self, slots: np.ndarray, keys: np.ndarray, primary: np.ndarray, secondary: np.ndarray
    ) -> None:
        order = np.lexsort((slots, secondary, primary))
        self.slots, self.keys = slots[order], keys[order]
        self.primary, self.secondary = primary[order], secondary[order]
        self.threshold = (self.primary[-1], self.secondary[-1], self.slots[-1]) if len(order) else None
        self.start = 0

    def _valid(self, index: KeyIndex, lo: int, hi: int) -> np.ndarray:
        slots = self.slots[lo:hi]
        primary, secondary = index._order(slots)
        return (
            (index._slot_keys[slots] == self.keys[lo:hi])
            & (primary == self.primary[lo:hi])
            & (secondary == self.secondary[lo:hi])
        )

    def merge(self, slots: np.ndarray, keys: np.ndarray, primary: np.ndarray, secondary: np.ndarray) -> None:
        """Add entries whose tuples are <= the threshold, keeping the pool sorted."""
        lo = self.start
        all_slots = np.concatenate([self.slots[lo:], slots])
        all_keys = np.concatenate([self.keys[lo:], keys])
        all_primary = np.concatenate([self.primary[lo:], primary])
        all_secondary = np.concatenate([self.secondary[lo:], secondary])
        order = np.lexsort((all_slots, all_secondary, all_primary))
        s, p, q = all_slots[order], all_primary[order], all_secondary[order]
        # A slot can appear twice with one snapshot (removed and re-added with identical values): keep one.
        keep = np.ones(len(s), dtype=bool)
        keep[1:] = ~((s[1:] == s[:-1]) & (p[1:] == p[:-1]) & (q[1:] == q[:-1]))
        self.slots, self.keys, self.primary, self.secondary = s[keep], all_keys[order][keep], p[keep], q[keep]
        self.start = 0

    def pop(self, need: int, protected: np.ndarray, index: KeyIndex) -> np.ndarray | None:
        """Remove and return the first `need` valid unprotected slots, or None (pool unchanged) if fewer."""
        lo, end = self.start, len(self.slots)
        width = 2 * need + 64
        while True:
            hi = min(end, lo + width)
            valid = self._valid(index, lo, hi)
            usable = np.flatnonzero(valid & ~protected[self.slots[lo:hi]])
            if len(usable) >= need:
                break
            if hi == end:
                return None
            width *= 4
        taken = usable[:need]
        last = int(taken[-1]) + 1
        victims = self.slots[lo + taken]
        # Valid entries skipped in front of the last victim (protected in this call) stay, in order, right
        # before the untouched rest; stale ones are dropped.
        keep = valid[:last]
        keep[taken] = False
        kept = np.flatnonzero(keep) + lo
        new_start = lo + last - len(kept)
        for column in (self.slots, self.keys, self.primary, self.secondary):
            column[new_start : lo + last] = column[kept]
        self.start = new_start
        return victims


def _from_finite(last_seen: np.ndarray) -> np.ndarray:
    """`last_seen` with the `NEVER_SEEN` stand-in turned back into ``-inf`` (in place)."""
    last_seen[last_seen == NEVER_SEEN] = -np.inf
    return last_seen


def _tuple_le(
    primary: np.ndarray, secondary: np.ndarray, slots: np.ndarray, threshold: tuple | None
) -> np.ndarray:
    if threshold is None:
        return np.zeros(len(slots), dtype=bool)
    p, s, k = threshold
    return (primary < p) | ((primary == p) & ((secondary < s) | ((secondary == s) & (slots <= k))))


def _smallest(primary: np.ndarray, secondary: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m smallest entries under (primary, secondary, index) in O(n): argpartition on the
    primary, then on the secondary among the primary's ties at the boundary, then lowest index."""
    n = len(primary)
    if m >= n:
        return np.arange(n)
    bound = np.partition(primary, m - 1)[m - 1]
    chosen = np.flatnonzero(primary < bound)
    ties = np.flatnonzero(primary == bound)
    rest = m - len(chosen)
    if rest < len(ties):
        tie_secondary = secondary[ties]
        bound2 = np.partition(tie_secondary, rest - 1)[rest - 1]
        first = ties[tie_secondary < bound2]
        last = ties[tie_secondary == bound2][: rest - len(first)]  # ties are ascending: lowest index first
        ties = np.concatenate([first, last])
    return np.concatenate([chosen, ties])


def _group(keys: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, inverse, occurrences, latest time) of a key batch, by one sort."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts_mask = np.empty(len(keys), dtype=bool)
    starts_mask[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_mask[1:])
    starts = np.flatnonzero(starts_mask)
    unique = ordered[starts]
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(starts_mask) - 1
    occurrences = np.diff(np.append(starts, len(keys)))
    latest = np.maximum.reduceat(times[order], starts)
    return unique, inverse, occurrences, latest
