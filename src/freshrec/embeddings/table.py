"""The dynamic embedding table: one row per admitted id, on fbgemm's CPU table-batched embedding with a fused
row-wise Adagrad update.

freshrec's part is the edge in front of fbgemm: the id -> row remapping (`freshrec.keyindex.KeyIndex`,
collisionless), admission after N sightings (count-min sketch), expiry by event time, eviction at capacity,
re-initialisation of reused rows and tracking of the rows that changed (for incremental publishing). fbgemm
owns the rows and the optimizer state and applies the update inside ``backward()``; there is no separate
optimizer step. This module must never hand one row to two live ids, never let a reused row keep its previous
owner's weights or optimizer state, and never loop in Python per id.

Row 0 is the shared cold-start row: ids not (yet) admitted train and are served with it, so a model can
always answer. Ids live in rows ``1..capacity`` (KeyIndex slot + 1).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from freshrec.embeddings.config import EmbeddingTableConfig
from freshrec.embeddings.sharded import RowSharding, ShardedLookup, exchange_rows
from freshrec.embeddings.sketch import CountMinSketch
from freshrec.errors import ConfigError
from freshrec.keyindex import NEVER_SEEN, KeyIndex, as_keys, per_key_times
from freshrec.model_state import StateChanges, array_like, under_prefix, with_prefix

with warnings.catch_warnings():
    # fbgemm_gpu warns at import time about optional CUDA/triton pieces a CPU build does not have.
    warnings.simplefilter("ignore")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        BoundsCheckMode,
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

#: The shared row of every id without a row of its own.
COLD_ROW = 0
_OPTIMIZERS = {"rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "sgd": EmbOptimType.EXACT_SGD}


@dataclass
class RowChanges:
    """Which ids a version of a table changed (`DynamicEmbeddingTable.changed_ids`).

    Attributes
    ----------
    keys
        uint64, distinct: ids with a row now whose values may differ from before (new ids included).
    removed
        uint64, distinct: ids that had a row and no longer have one.
    """

    keys: np.ndarray
    removed: np.ndarray


@dataclass
class TableStats:
    """Counters of a table. ``admitted - evicted - expired == live_rows`` always holds."""

    live_rows: int
    capacity: int
    admitted: int
    evicted: int
    expired: int
    memory_bytes: int


class DynamicEmbeddingTable:
    """Collisionless embedding table with admission, expiry, eviction and a fused row-wise Adagrad update.

    Parameters
    ----------
    config
        Size, admission, expiry, eviction and optimizer settings.

    Examples
    --------
    >>> table = DynamicEmbeddingTable(EmbeddingTableConfig(dim=4, capacity=8))
    >>> rows = table.rows_for_training(np.array([11, 12, 11], dtype=np.uint64), 100.0)
    >>> rows.tolist()
    [1, 2, 1]
    >>> before = table.weights(rows).clone()
    >>> table.embed(rows).sum().backward()   # fused Adagrad step on rows 1 and 2
    >>> bool((table.weights(rows) != before).all())
    True
    >>> table.rows_for_serving(np.array([12, 99], dtype=np.uint64)).tolist()  # unknown id: cold row
    [2, 0]
    """

    def __init__(self, config: EmbeddingTableConfig | None = None) -> None:
        self.config = config = config or EmbeddingTableConfig()
        self.num_rows = config.capacity + 1
        self._index = KeyIndex(config.capacity, config.eviction)
        self._sketch = (
            CountMinSketch(config.sketch_width, config.sketch_depth, seed=config.seed)
            if config.admit_after > 1
            else None
        )
        #: Where the rows live when they are spread over trainer ranks (`shard`); None: all here.
        self.sharding: RowSharding | None = None
        self._allocate(self.num_rows)
        self._generator = torch.Generator().manual_seed(config.seed)
        # Rows whose weights, optimizer state or index entry changed since the last `drain_changes`.
        self._dirty = np.zeros(self.num_rows, dtype=bool)
        self._sketch_changed = False
        self._offsets = torch.arange(1025, dtype=torch.int64)
        self.admitted = 0
        self.evicted = 0
        self.expired = 0
        self._clock = -np.inf  # latest event time seen
        self._next_expiry = -np.inf
        # Rows are zero until assigned (fbgemm allocates zeros): initialising lazily keeps start-up O(1) in
        # capacity. The cold row starts like any other row.
        self._reinit(np.array([COLD_ROW], dtype=np.int64))

    def _allocate(self, rows: int) -> None:
        """fbgemm's storage for `rows` rows (all of them, or this rank's share)."""
        # One table, rows on the host, computed on CPU. SUM pooling over bags of exactly one row is the
        # fbgemm CPU kernel's fast path: measured 1.05-1.3M rows/s against 0.5-0.63M for PoolingMode.NONE
        # (100k x 64 table, batches of 1-4k rows, one thread, fbgemm-gpu-cpu 1.8.0).
        config = self.config
        self._tbe = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(rows, config.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
            optimizer=_OPTIMIZERS[config.optimizer],
            learning_rate=config.learning_rate,
            eps=config.eps,
            pooling_mode=PoolingMode.SUM,
            # Rows come from our own index and `embed` checks their range, so fbgemm's check is redundant.
            bounds_check_mode=BoundsCheckMode.NONE,
        )
        self._weights = self._tbe.split_embedding_weights()[0]  # [rows, dim] view of fbgemm's storage
        # [rows] row-wise Adagrad accumulator; SGD has no state (an empty tensor keeps the code uniform).
        states = self._tbe.split_optimizer_states()
        self._momentum = states[0][0] if states and states[0] else torch.zeros(0)
        self.__dict__.pop("_weights_numpy", None)

    def shard(self, sharding: RowSharding) -> None:
        """Keep only this rank's rows from now on (`freshrec.embeddings.sharded`): call on a table that has
        not admitted an id yet, on every rank of the group, before the first step.

        Raises
        ------
        ConfigError
            The table already holds ids, or this rank's share of ``capacity + 1`` rows exceeds the
            configured ``rank_capacity``.
        """
        if len(self._index):
            raise ConfigError("shard a table before it admits ids: its rows would have to move")
        held = sharding.local_rows(self.num_rows)
        limit = self.config.rank_capacity
        if limit is not None and held > limit:
            needed = -(-self.num_rows // limit)
            raise ConfigError(
                f"a table of capacity {self.config.capacity:,} over {sharding.world_size} rank(s) holds "
                f"{held:,} rows per rank, above rank_capacity {limit:,}: train with at least {needed} ranks "
                "or raise rank_capacity"
            )
        self.sharding = sharding if sharding.world_size > 1 else None
        self._allocate(held)
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._anchor = torch.zeros(1, requires_grad=True)
        self._reinit(np.array([COLD_ROW], dtype=np.int64))

    def held_rows(self) -> int:
        """Live rows whose weights this process stores (all of them unless sharded)."""
        if self.sharding is None:
            return len(self._index)
        slots = self._index.live_slots()
        return int(np.count_nonzero(self.sharding.owned(slots + 1)))

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def index(self) -> KeyIndex:
        """The id -> slot map (row = slot + 1). Read only: changing it bypasses re-initialisation."""
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    # ------------------------------------------------------------------ id -> row
    def rows_for_training(self, keys: np.ndarray, timestamps: np.ndarray | float) -> np.ndarray:
        """int64 row of each key for a training step, counting the sighting.

        Counts sightings of ids not yet admitted, admits those that reach `admit_after` (a row reused from
        an evicted or expired id is re-initialised: fresh random weights, zero optimizer state), refreshes
        last_seen and counts of the ids seen, runs the expiry scan when due, and maps ids that are not
        admitted to the cold row 0. Within one call, every occurrence of an id admitted in that call gets
        its new row.

        Raises
        ------
        CapacityError
            The call holds more distinct admitted ids than `capacity`, or the table is full with
            ``eviction="none"``.
        """
        keys = as_keys(keys)
        n = len(keys)
        times = per_key_times(timestamps, n)
        rows = np.zeros(n, dtype=np.int64)
        if n == 0:
            return rows
        self._clock = max(self._clock, float(times.max()))
        self._expire_if_due()
        take: np.ndarray | slice = slice(None)
        if self._sketch is not None:
            absent = self._index.lookup(keys) < 0
            if absent.any():
                unique, inverse, occurrences = np.unique(
                    keys[absent], return_inverse=True, return_counts=True
                )
                admit = self._sketch.add(unique, occurrences) >= self.config.admit_after
                self._sketch_changed = True
                eligible = ~absent
                eligible[absent] = admit[inverse]
                take = np.flatnonzero(eligible)
        taken_keys = keys[take]
        if len(taken_keys):
            assignment = self._index.assign(taken_keys, times[take])
            rows[take] = assignment.slots + 1
            self._dirty[rows[take]] = True  # last_seen and counts of every key seen
            self.evicted += len(assignment.evicted_keys)
            if assignment.new.any():
                fresh = np.unique(assignment.slots[assignment.new]) + 1
                self.admitted += len(fresh)
                self._reinit(fresh)
        return rows

    def rows_for_serving(self, keys: np.ndarray) -> np.ndarray:
        """int64 row of each key, the cold row 0 for ids without a row. Changes nothing."""
        return self._index.lookup(as_keys(keys)) + 1

    # ------------------------------------------------------------------ rows -> vectors
    def embed(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 [n, dim] rows that take part in autograd.

        ``backward()`` through the result applies fbgemm's fused row-wise Adagrad update to exactly these
        rows (gradients of duplicate rows are summed first); no optimizer step follows. Under grad mode the
        rows are recorded as touched for `drain_changes`.
        """
        index = self._row_tensor(rows)
        if self.sharding is not None:  # the owners mark the rows they update (apply_local_gradients)
            return ShardedLookup.apply(self._anchor, self, index.numpy(), self.sharding)
        if torch.is_grad_enabled():
            self._dirty[index.numpy()] = True
        return self._lookup(index)

    def _lookup(self, index: torch.Tensor) -> torch.Tensor:
        """fbgemm's forward over local rows `index` (in autograd when grad is enabled)."""
        n = len(index)
        if len(self._offsets) <= n:
            self._offsets = torch.arange(2 * (n + 1), dtype=torch.int64)
        return self._tbe(index, self._offsets[: n + 1])

    def local_weights(self, local_rows: np.ndarray) -> torch.Tensor:
        """float32 copies of rows of this process's storage (a sharded table's local row numbers)."""
        return torch.from_numpy(self._weights_array()[local_rows])

    def apply_local_gradients(self, local_rows: np.ndarray, gradients: torch.Tensor) -> None:
        """The fused update of this rank's `local_rows` from `gradients` (every rank's gradients of its
        rows in one call: duplicates are summed first, as in a single table's backward)."""
        if self.sharding is None:
            raise ConfigError("apply_local_gradients is for sharded tables; use embed(...).backward()")
        rows = np.ascontiguousarray(local_rows, dtype=np.int64)
        self._dirty[rows * self.sharding.world_size + self.sharding.rank] = True
        with torch.enable_grad():
            self._lookup(torch.from_numpy(rows)).backward(gradients)

    def weights(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 [n, dim] copy of the rows, outside autograd (the fast path for scoring).

        Gathered by numpy, which keeps the GIL: a torch op releases it, and in a server a request that lets
        go of the GIL for a one-row lookup may then wait for a background thread's whole switch interval.
        A sharded table asks the rows' owners (a collective: every rank calls it).
        """
        if self.sharding is not None:
            return exchange_rows(self, self._row_array(rows), self.sharding)
        return torch.from_numpy(self._weights_array()[self._row_array(rows)])

    def _weights_array(self) -> np.ndarray:
        """The weights as a numpy array over the same memory; re-made when the storage is another one (a
        deep copy of the table gets its own storage and must not read the original's)."""
        cached = self.__dict__.get("_weights_numpy")
        if cached is None or cached.ctypes.data != self._weights.data_ptr():
            cached = self._weights_numpy = self._weights.detach().numpy()
        return cached

    def _row_tensor(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows as a flat int64 tensor (sharing memory where it can), range-checked: fbgemm runs without
        its own bounds check, so an out-of-range row must never reach it."""
        return torch.from_numpy(self._row_array(rows))

    def _row_array(self, rows: torch.Tensor | np.ndarray) -> np.ndarray:
        """Rows as a flat int64 array, range-checked (see `_row_tensor`)."""
        if isinstance(rows, torch.Tensor):
            array = rows.detach().reshape(-1).to(torch.int64).numpy()
        else:
            array = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
        if len(array):
            low, high = int(array.min()), int(array.max())
            if low < 0 or high >= self.num_rows:
                raise ConfigError(
                    f"rows must lie in [0, {self.num_rows}), got values in [{low}, {high}]; "
                    "get rows from rows_for_training or rows_for_serving"
                )
        return array

    # ------------------------------------------------------------------ changes and state
    def stats(self) -> TableStats:
        return TableStats(
            live_rows=len(self._index),
            capacity=self.config.capacity,
            admitted=self.admitted,
            evicted=self.evicted,
            expired=self.expired,
            memory_bytes=self.memory_bytes,
        )

    def sizes(self) -> dict[str, int]:
        """`stats` as plain JSON numbers (`Model.table_sizes`)."""
        return asdict(self.stats())

    @property
    def memory_bytes(self) -> int:
        """Bytes of weights, optimizer state, index, sketch and change tracking."""
        tensors = self._weights.numel() * 4 + self._momentum.numel() * 4
        sketch = self._sketch.nbytes if self._sketch is not None else 0
        return int(tensors + self._index.nbytes + sketch + self._dirty.nbytes)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights, optimizer state, the id -> row map and the counters as plain numpy arrays (copies).

        Every value is a finite numeric array (``-inf`` times are written as `freshrec.keyindex.NEVER_SEEN`),
        so the dict can be written with ``safetensors.numpy.save_file`` and published to the model store.
        Row r of ``weights`` and ``momentum`` belongs to ``index.slot_keys[r - 1]`` (row 0: the cold row).
        The private ``_rng`` (the row initialiser's position) and ``index._free`` make a loaded table
        initialise and place the next new ids exactly as this one would.
        """
        state = {
            "weights": self._weights.detach().numpy().copy(),
            "momentum": self._momentum.detach().numpy().copy(),
            "counters": self._counters(),
            "clock": self._clock_array(),
            "_rng": self._generator.get_state().numpy().copy(),
        }
        if self.sharding is not None:  # weights and momentum hold this rank's rows only
            state["sharding"] = np.array([self.sharding.rank, self.sharding.world_size], dtype=np.int64)
        state.update(with_prefix(self._index.state_dict(finite=True), "index."))
        if self._sketch is not None:
            state.update(with_prefix(self._sketch.state_dict(), "sketch."))
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output of a table with the same capacity, dim and admission setting."""
        weights = array_like(
            state,
            "weights",
            self._weights.numpy(),
            "build the table with the capacity and dim it was saved with",
        )
        optimizer = (
            f"build the table with the optimizer it was saved with (this one: {self.config.optimizer!r})"
        )
        momentum = array_like(state, "momentum", self._momentum.numpy(), optimizer)
        saved = np.asarray(state.get("sharding", [0, 1]), dtype=np.int64).reshape(-1).tolist()
        here = [self.sharding.rank, self.sharding.world_size] if self.sharding is not None else [0, 1]
        if saved != here:
            raise ConfigError(
                f"state holds the rows of rank {saved[0]} of {saved[1]}, this table is rank {here[0]} of "
                f"{here[1]}; load each rank's own state with the same number of ranks"
            )
        if (self._sketch is None) != ("sketch.counters" not in state):
            raise ConfigError(
                f"state was saved with a different admit_after setting than this table's "
                f"admit_after={self.config.admit_after}; use the saved configuration"
            )
        self._index.load_state_dict(under_prefix(state, "index."))
        if self._sketch is not None:
            self._sketch.load_state_dict(under_prefix(state, "sketch."))
        with torch.no_grad():
            self._weights.copy_(torch.from_numpy(weights))
            self._momentum.copy_(torch.from_numpy(momentum))
        self.admitted, self.evicted, self.expired = (int(v) for v in state["counters"])
        self._load_clock(state["clock"])
        if "_rng" in state:
            self._generator.set_state(torch.from_numpy(np.asarray(state["_rng"], dtype=np.uint8).copy()))
        self._dirty[:] = False
        self._sketch_changed = False

    def drain_changes(self) -> StateChanges:
        """Rows of `state_dict` changed since the previous call, as `freshrec.model_state.StateChanges`.

        Row-addressed: ``weights`` and ``momentum`` by row, ``index.slot_keys`` / ``index.last_seen`` /
        ``index.counts`` by slot (row - 1) — every row trained, re-initialised, seen, evicted or expired
        (a freed row has slot key 0). Replaced whole: ``counters``, ``clock``, and the admission sketch
        when it changed (``sketch.*``, ``sketch_depth x sketch_width`` bytes: with ``admit_after > 1`` it
        changes with nearly every batch). Never incomplete: the tracking is one flag per row. Cost
        O(changed rows) plus one scan of the flags.
        """
        rows = np.flatnonzero(self._dirty)
        self._dirty[rows] = False
        held = rows if self.sharding is None else rows[self.sharding.owned(rows)]
        index = torch.from_numpy(held if self.sharding is None else self.sharding.local(held))
        changes: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "weights": (held, self._weights.index_select(0, index).numpy())
        }
        if len(self._momentum):
            changes["momentum"] = (held, self._momentum.index_select(0, index).numpy())
        slots = rows[rows != COLD_ROW] - 1
        changes.update(with_prefix(self._index.slot_changes(slots, finite=True).rows, "index."))
        replaced = {"counters": self._counters(), "clock": self._clock_array()}
        if self._sketch is not None and self._sketch_changed:
            replaced.update(with_prefix(self._sketch.state_dict(), "sketch."))
            self._sketch_changed = False
        return StateChanges(rows=changes, replaced=replaced)

    def apply_changes(self, changes: StateChanges) -> None:
        """Apply another table's `drain_changes` in place: weight and optimizer rows are written under
        ``torch.no_grad`` and the index entries with `KeyIndex.set_slots`, in O(changed rows). Applied
        changes are not reported by this table's own drains."""
        self._index.apply_changes(changes.under("index."))
        with torch.no_grad():
            for name, tensor in (("weights", self._weights), ("momentum", self._momentum)):
                if name in changes.rows:
                    rows, values = changes.rows[name]
                    index = self._row_tensor(rows)
                    values = torch.from_numpy(np.asarray(values, dtype=np.float32))
                    if self.sharding is not None:  # this rank's rows of another rank-R table's changes
                        owned = torch.from_numpy(self.sharding.owned(index.numpy()))
                        index, values = index[owned] // self.sharding.world_size, values[owned]
                    tensor.index_copy_(0, index, values)
        replaced = changes.replaced
        if "counters" in replaced:
            self.admitted, self.evicted, self.expired = (int(v) for v in replaced["counters"])
        if "clock" in replaced:
            self._load_clock(replaced["clock"])
        if self._sketch is not None and "sketch.counters" in replaced:
            self._sketch.load_state_dict(under_prefix(replaced, "sketch."))

    def owners_before(self, changes: StateChanges) -> np.ndarray:
        """uint64 ids that hold, now, the slots `changes` (this table's, not yet applied) rewrite: read
        before `apply_changes`, they tell `changed_ids` which ids lost their rows."""
        slots, _ = changes.rows.get("index.slot_keys", (np.zeros(0, np.int64), None))
        return self._index.keys_of(np.asarray(slots, dtype=np.int64))

    def changed_ids(self, changes: StateChanges, owners_before: np.ndarray) -> RowChanges | None:
        """After `apply_changes(changes)`: the ids whose row may now hold other values (trained,
        re-initialised or newly admitted) and the ids that lost their row (evicted, expired), from the
        changes and `owners_before`; None when the changes replaced the table whole. O(changed rows)."""
        if "weights" in changes.replaced or "index.slot_keys" in changes.replaced:
            return None
        rows, _ = changes.rows.get("weights", (np.zeros(0, np.int64), None))
        rows = np.asarray(rows, dtype=np.int64)
        slots, _ = changes.rows.get("index.slot_keys", (np.zeros(0, np.int64), None))
        owners = self._index.keys_of(rows[rows != COLD_ROW] - 1)
        keys = np.unique(np.concatenate([owners, self._index.keys_of(np.asarray(slots, dtype=np.int64))]))
        before = owners_before[owners_before != 0]
        return RowChanges(keys[keys != 0], np.unique(before[self._index.lookup(before) < 0]))

    # ------------------------------------------------------------------ internals
    def _counters(self) -> np.ndarray:
        return np.array([self.admitted, self.evicted, self.expired], dtype=np.int64)

    def _clock_array(self) -> np.ndarray:
        """[clock, next expiry scan], ``-inf`` (not yet) written as `NEVER_SEEN` to stay finite."""
        clock = np.array([self._clock, self._next_expiry], dtype=np.float64)
        clock[np.isneginf(clock)] = NEVER_SEEN
        return clock

    def _load_clock(self, array: np.ndarray) -> None:
        clock = np.array(array, dtype=np.float64).reshape(-1)
        clock[clock == NEVER_SEEN] = -np.inf
        self._clock, self._next_expiry = (float(v) for v in clock)

    def _expire_if_due(self) -> None:
        ttl = self.config.ttl_seconds
        if ttl is None or self._clock < self._next_expiry:
            return
        keys, slots = self._index.expire(self._clock - ttl)
        if len(keys):
            self.expired += len(keys)
            self._dirty[slots + 1] = True  # freed rows change too: the receiver frees them
        self._next_expiry = self._clock + ttl / 16

    def _reinit(self, rows: np.ndarray) -> None:
        """Fresh N(0, init_std) weights and zero Adagrad state for rows that get a new owner."""
        fresh = torch.randn(len(rows), self.config.dim, generator=self._generator)
        fresh.mul_(self.config.init_std)
        if self.sharding is not None:  # every rank draws every new row: the same draws as one table
            owned = self.sharding.owned(rows)
            fresh = fresh[torch.from_numpy(owned)]
            index = torch.from_numpy(self.sharding.local(rows[owned]))
        else:
            index = torch.from_numpy(rows)
        with torch.no_grad():
            self._weights.index_copy_(0, index, fresh)
            if len(self._momentum):
                self._momentum.index_fill_(0, index, 0.0)
        self._dirty[rows] = True
