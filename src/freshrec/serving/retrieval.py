"""The item index of the serving stage: top-K items by inner product for a batch of user vectors, kept fresh
by upserts and removals as the trainer publishes deltas.

Small catalogues are searched exactly (one matrix product and a top-k); from `RetrievalConfig.exact_below`
items on, a faiss inverted-file index (IVF-Flat, inner product) answers instead, updated in place. Searches
may run on many threads while one thread applies updates; a search must never see a half-applied update,
and this module must never hand out a key that a finished `remove` took away.

Why IVF-Flat (measured by ``bench/retrieval.py`` on 100,000 clustered items of dimension 64, see
BENCHMARKS.md): it replaces 1,000 changed vectors in ~8 ms, where an HNSW graph needs ~420 ms (hnswlib) or
cannot replace at all (faiss HNSW: append and rebuild), and it builds in ~2 s instead of 11-13 s. HNSW answers
a query about twice as fast (0.15-0.2 ms against 0.35-0.45 ms, both at recall@10 >= 0.95), which matters less
than freshness here. Neither library allows searching while the structure is modified, so updates must
exclude searches anyway; with IVF that exclusion lasts milliseconds, not half a second.

Concurrency model
-----------------
All state (key map, vectors, ANN index) sits behind a writer-preferring read-write lock. A search holds the
read lock for its whole duration, so it works on one consistent state. An update is two steps: `prepare`
validates it and does the slow part without the write lock (assigning the new vectors to IVF lists: ~14 ms for
1,000 vectors at 100,000 items on one core; growing the arrays), and `commit` applies the whole update under
the write lock (removals, slots, vectors, the IVF lists with the precomputed assignment: about a millisecond
for 1,000 items). Each commit is atomic: a search sees all of it or none of it, and a search that starts after
a removal was committed never sees the removed keys. The split lets the server hold its own lock only for
`commit`, so that the index changes in the same instant as the model version. `upsert` and `remove` are
prepare + commit + `maintain`. Slow maintenance (building or retraining the ANN index) runs in `maintain` on
the calling thread without the write lock, while searches continue on the old state, and is swapped in under
it. Updaters are serialised by a second lock, so several updating threads are safe too, just not parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from freshrec.errors import ConfigError
from freshrec.keyindex import KeyIndex, as_keys
from freshrec.serving.config import _TRAIN_POINTS_PER_LIST, RetrievalConfig

__all__ = ["ItemIndex", "PreparedUpdate", "RetrievalConfig"]


@dataclass(frozen=True)
class PreparedUpdate:
    """An update of an `ItemIndex` validated and precomputed by `ItemIndex.prepare`, waiting for `commit`.

    Attributes
    ----------
    keys, vectors
        Distinct keys to upsert (sorted) and their vectors (the last given per key; normalised for cosine).
    removed
        Distinct keys to remove first.
    ann, lists
        The ANN index the IVF list of each vector was computed against, and those lists (None while exact).
    """

    keys: np.ndarray
    vectors: np.ndarray
    removed: np.ndarray
    ann: Any
    lists: np.ndarray | None


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers, so a stream of searches cannot
    starve the updater. Not re-entrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class ItemIndex:
    """Top-K retrieval by inner product over items identified by uint64 keys, updated incrementally.

    Items live in rows of one float32 matrix (a `KeyIndex` maps keys to rows); exact search multiplies the
    queries with it. From `RetrievalConfig.exact_below` items on, an IVF-Flat index over the same rows (faiss
    ids are the rows) answers instead. See the module docstring for the concurrency model.

    Parameters
    ----------
    dim
        Dimension of the item and query vectors.
    config
        Search settings; the defaults were tuned on 5,000-100,000 items of dimension 64 (BENCHMARKS.md).

    Examples
    --------
    >>> index = ItemIndex(dim=2)
    >>> index.upsert(np.array([1, 2, 3], dtype=np.uint64), np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    >>> keys, scores = index.search(np.array([[1.0, 0.5]], np.float32), k=2)
    >>> keys.tolist(), scores.tolist()
    ([[3, 1]], [[1.5, 1.0]])
    >>> keys, _ = index.search(np.array([[1.0, 0.5]], np.float32), k=4, exclude=[np.array([3])])
    >>> keys.tolist()   # item 3 was seen; only two items are left, so the row is padded with key 0
    [[1, 2, 0, 0]]
    """

    def __init__(self, dim: int, config: RetrievalConfig | None = None) -> None:
        if not isinstance(dim, int | np.integer) or dim < 1:
            raise ConfigError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.config = config or RetrievalConfig()
        capacity = self.config.initial_capacity
        self._map = KeyIndex(capacity, eviction="none")
        self._vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        # 0 for live rows, -inf for free ones: added to exact scores in the same BLAS call (addmm), so free
        # rows never win without a separate masking pass over the [q, capacity] scores.
        self._row_bias = np.full(capacity, -np.inf, dtype=np.float32)
        self._ann: Any = None  # faiss.IndexIVFFlat over live rows, or None while search is exact
        self._ann_built_size = 0
        self._changed_since_build = 0  # distinct rows upserted since the ANN build
        self._changed_rows = np.zeros(capacity, dtype=bool)
        self._lock = _ReadWriteLock()
        self._update_lock = threading.Lock()

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._map)

    @property
    def uses_ann(self) -> bool:
        """True while searches go through the ANN index, False while they are exact."""
        return self._ann is not None

    def keys(self) -> np.ndarray:
        """uint64 keys of the live items, ascending (a new array)."""
        with self._lock.read():
            return np.sort(self._map.keys_of(self._map.live_slots()))

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` items of highest score for each query.

        Parameters
        ----------
        queries
            float32 [q, dim] query (user) vectors; a single [dim] vector is treated as one row.
        k
            Results per row.
        exclude
            None, or one entry per query: keys to leave out of that row's results (the items the user has
            seen), as an integer array or None. Keys not in the index are ignored.

        Returns
        -------
        keys, scores
            uint64 [q, k] and float32 [q, k], best first. Rows with fewer than `k` eligible items are padded
            with key 0 and score -inf.
        """
        queries = self._prepare_queries(queries)
        if not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        excluded = self._exclusion_lists(exclude, len(queries))
        with self._lock.read():
            out_keys = np.zeros((len(queries), k), dtype=np.uint64)
            out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            if len(self._map) == 0 or len(queries) == 0:
                return out_keys, out_scores
            if self._ann is not None and len(queries) == 1:
                one = self._approximate_one(queries, k, excluded[0] if excluded else None)
                if one is not None:
                    found, scores = one
                    out_keys[0, : len(found)] = self._map.keys_of(found)
                    out_scores[0, : len(found)] = scores
                    return out_keys, out_scores
            rows, slots = self._excluded_pairs(excluded)
            if self._ann is None:
                found, scores = self._exact(queries, k, rows, slots)
            else:
                found, scores = self._approximate(queries, k, rows, slots)
            width = found.shape[1]
            out_scores[:, :width] = scores
            out_keys[:, :width] = np.where(np.isneginf(scores), np.uint64(0), self._map.keys_of(found))
        return out_keys, out_scores

    # ------------------------------------------------------------------ updates
    def upsert(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Insert new items and replace the vectors of existing ones; if a key repeats, its last vector wins.

        Parameters
        ----------
        keys
            uint64 [n] item keys, never 0 (0 pads short result rows).
        vectors
            float32 [n, dim], finite.
        """
        self.commit(self.prepare(keys, vectors))
        self.maintain()

    def remove(self, keys: np.ndarray) -> None:
        """Remove items (unknown keys are ignored). Once this returns, no search finds them."""
        self.commit(self.prepare(np.zeros(0, np.uint64), np.zeros((0, self.dim), np.float32), remove=keys))
        self.maintain()

    def prepare(
        self, keys: np.ndarray, vectors: np.ndarray, remove: np.ndarray | None = None
    ) -> PreparedUpdate:
        """Validate an update and do its slow part, changing nothing a search can see; `commit` applies it.

        The slow part is the coarse assignment of the new vectors to IVF lists (one search of the centroids:
        ~14 ms for 1,000 vectors against 1,265 lists on one core) and any growth of the arrays. Splitting it
        off lets a caller that must make the index change atomic with something else (the server swapping
        in the model version the vectors come from) hold its own lock only for `commit`.

        Parameters
        ----------
        keys, vectors
            As in `upsert`.
        remove
            Keys to remove (unknown keys are ignored). Removals apply before the upserts, so a key in both
            ends up present with its new vector.
        """
        keys = as_keys(keys)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ConfigError(
                f"vectors has shape {vectors.shape}, expected ({len(keys)}, {self.dim}) for {len(keys)} keys "
                f"of dimension {self.dim}"
            )
        removed = np.unique(as_keys(np.zeros(0, np.uint64) if remove is None else remove, "remove"))
        if len(keys) and not keys.all():
            raise ConfigError("keys contains key 0, which pads short result rows; items need nonzero keys")
        if not np.isfinite(vectors).all():
            raise ConfigError("vectors contains NaN or infinity; fix the model's export before publishing")
        # Last occurrence of each key wins, as if the rows were applied one after the other.
        unique, first_from_end = np.unique(keys[::-1], return_index=True)
        vectors = vectors[len(keys) - 1 - first_from_end]
        if self.config.metric == "cosine":
            vectors = _normalised(vectors)
        vectors = np.ascontiguousarray(vectors)
        with self._update_lock:
            n_new = int((self._map.lookup(unique) < 0).sum())
            if len(self._map) + n_new > self._map.capacity:
                grown = self._grown(len(self._map) + n_new)  # O(n) copy, outside the write lock
                with self._lock.write():  # same keys in the same rows: no search result changes
                    self._map, self._vectors, self._row_bias, self._changed_rows = grown
            ann = self._ann
            lists = _coarse_lists(ann, vectors) if ann is not None and len(unique) else None
        return PreparedUpdate(unique, vectors, removed, ann, lists)

    def commit(self, update: PreparedUpdate) -> None:
        """Apply a `prepare`d update atomically (a search sees all of it or none of it); milliseconds.

        Updates committed in between (or an ANN rebuild) are allowed: what they made stale is redone here,
        under the write lock, at the cost `prepare` would have had. Does not rebuild the ANN index: call
        `maintain` afterwards, outside any lock of the caller's.
        """
        keys, vectors = update.keys, update.vectors
        with self._update_lock:
            lists = update.lists
            if self._ann is not None and len(keys) and (update.ann is not self._ann or lists is None):
                lists = _coarse_lists(self._ann, vectors)  # the index was rebuilt since prepare
            n_new = int((self._map.lookup(keys) < 0).sum())
            if len(self._map) + n_new > self._map.capacity:  # another update grew the catalogue since
                grown = self._grown(len(self._map) + n_new)
                with self._lock.write():
                    self._map, self._vectors, self._row_bias, self._changed_rows = grown
            with self._lock.write():
                if len(update.removed):
                    slots = self._map.remove(update.removed)
                    freed = np.unique(slots[slots >= 0])
                    self._row_bias[freed] = -np.inf
                    self._vectors[freed] = 0.0
                    if self._ann is not None and len(freed):
                        self._ann.remove_ids(freed)
                if len(keys):
                    known = self._map.lookup(keys)
                    slots = np.ascontiguousarray(self._map.assign(keys, now=0.0).slots, dtype=np.int64)
                    self._vectors[slots] = vectors
                    self._row_bias[slots] = 0.0
                    if self._ann is not None:
                        replaced = known[known >= 0]
                        if len(replaced):
                            self._ann.remove_ids(replaced)
                        _add_preassigned(self._ann, vectors, slots, lists)
            if len(keys):
                fresh = slots[~self._changed_rows[slots]]
                self._changed_rows[fresh] = True
                self._changed_since_build += len(fresh)

    def maintain(self) -> None:
        """Build, rebuild or drop the ANN index if the catalogue's size or drift calls for it (see
        `RetrievalConfig`). The build (seconds at 100,000 items) runs on the calling thread while searches go
        on with the current state, and is swapped in under the write lock."""
        with self._update_lock:
            self._maintain_ann()

    # ------------------------------------------------------------------ internals: search
    def _prepare_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(
                f"queries has shape {queries.shape}, expected (q, {self.dim}); pass one row per user vector"
            )
        if not np.isfinite(queries).all():
            raise ConfigError("queries contains NaN or infinity; check the user vectors")
        if self.config.metric == "cosine":
            queries = _normalised(queries)
        return np.ascontiguousarray(queries)

    @staticmethod
    def _exclusion_lists(exclude: Sequence[np.ndarray | None] | None, n_queries: int) -> list[np.ndarray]:
        if exclude is None:
            return []
        if len(exclude) != n_queries:
            raise ConfigError(
                f"exclude has {len(exclude)} entries but there are {n_queries} queries; pass one array "
                "(or None) per query"
            )
        return [as_keys(np.zeros(0, np.uint64) if e is None else e, "exclude[i]") for e in exclude]

    def _excluded_pairs(self, excluded: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(query row, item row) of every excluded key that is live; call under the read lock."""
        if not excluded:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lengths = np.fromiter((len(e) for e in excluded), dtype=np.int64, count=len(excluded))
        rows = np.repeat(np.arange(len(excluded), dtype=np.int64), lengths)
        slots = self._map.lookup(np.concatenate(excluded))
        live = slots >= 0
        # A key listed twice for one user must count once when deciding whether a row came up short.
        width = np.int64(self._vectors.shape[0])
        pairs = np.unique(rows[live] * width + slots[live])
        return pairs // width, pairs % width

    def _exact(
        self, queries: np.ndarray, k: int, rows: np.ndarray, slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over all rows: (item rows int64 [q, k'], scores float32 [q, k']) with
        k' = min(k, capacity); free and excluded rows score -inf."""
        vectors = torch.from_numpy(self._vectors)
        scores = torch.addmm(torch.from_numpy(self._row_bias), torch.from_numpy(queries), vectors.T)
        if len(rows):
            scores[torch.from_numpy(rows), torch.from_numpy(slots)] = -torch.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return top.indices.numpy(), top.values.numpy()

    def _approximate(
        self, queries: np.ndarray, k: int, rows: np.ndarray, slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """ANN top-k with exclusions: over-fetch and filter; refetch short rows with all their exclusions;
        search rows that are still short exactly (the ANN index may return fewer candidates than asked)."""
        n_live = len(self._map)
        n_excluded = np.bincount(rows, minlength=len(queries))
        eligible = np.minimum(k, n_live - n_excluded)  # results each row can have at best
        fetch = min(n_live, k + min(int(n_excluded.max(initial=0)), self.config.max_overfetch))
        found, scores, count = self._filtered_ann(queries, k, fetch, rows, slots)
        short = np.flatnonzero(count < eligible)
        if len(short):
            refetch = min(n_live, k + int(n_excluded[short].max()))
            if refetch > fetch:
                sub_rows, sub_slots = _pairs_of_rows(rows, slots, short)
                f2, s2, c2 = self._filtered_ann(queries[short], k, refetch, sub_rows, sub_slots)
                found[short], scores[short], count[short] = f2, s2, c2
                short = short[c2 < eligible[short]]
        if len(short):
            sub_rows, sub_slots = _pairs_of_rows(rows, slots, short)
            f3, s3 = self._exact(queries[short], k, sub_rows, sub_slots)
            found[short, : f3.shape[1]], scores[short, : f3.shape[1]] = f3, s3
        return found, scores

    def _approximate_one(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """`_approximate` for a single query, the serving case: one ANN call over-fetching by the number of
        excluded items, filtered through a Python set (the batch path's sorts and masks cost more than the
        search at one row). Returns (item rows, scores) of the eligible results, best first, or None when
        the ANN came up short, for the batch path (refetch, then exact search) to take over."""
        excluded: set[int] = set()
        if exclude is not None and len(exclude):
            slots = self._map.lookup(exclude)
            excluded = set(slots[slots >= 0].tolist())
        n_live = len(self._map)
        eligible = min(k, n_live - len(excluded))
        fetch = min(n_live, k + min(len(excluded), self.config.max_overfetch))
        distances, ids = self._ann.search(query, fetch)
        picked = [j for j, row in enumerate(ids[0].tolist()) if row >= 0 and row not in excluded][:k]
        if len(picked) < eligible:
            return None
        return ids[0, picked], distances[0, picked].astype(np.float32, copy=False)

    def _filtered_ann(
        self, queries: np.ndarray, k: int, fetch: int, rows: np.ndarray, slots: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fetch `fetch` ANN candidates per row, drop excluded ones, keep the first `k` (order preserved).
        Returns (item rows int64 [q, k], scores float32 [q, k], valid count int64 [q]); invalid entries score
        -inf."""
        distances, ids = self._ann.search(queries, fetch)
        keep = ids >= 0
        if not len(rows) and fetch >= k and keep.all():  # the common case, nothing to drop: skip the shuffle
            return ids[:, :k], distances[:, :k], np.full(len(queries), k, dtype=np.int64)
        if len(rows):
            # One sorted membership test for the batch: (query row, item row) -> query * capacity + item.
            width = np.int64(self._vectors.shape[0])
            pairs = np.where(keep, np.arange(len(queries), dtype=np.int64)[:, None] * width + ids, -1)
            keep &= ~np.isin(pairs, rows * width + slots)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(ids, order, axis=1)
        scores = np.take_along_axis(distances, order, axis=1).astype(np.float32, copy=False)
        count = np.minimum(keep.sum(axis=1), k)
        invalid = np.arange(found.shape[1])[None, :] >= count[:, None]
        found[invalid], scores[invalid] = 0, -np.inf
        if found.shape[1] < k:  # fetch < k happens only when the catalogue is smaller than k
            pad = k - found.shape[1]
            found = np.pad(found, ((0, 0), (0, pad)))
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return found, scores, count

    # ------------------------------------------------------------------ internals: maintenance
    def _grown(self, needed: int) -> tuple[KeyIndex, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the key map and the per-row arrays (vectors, bias, changed-since-build flags) with room
        for `needed` items; every key keeps its row (so the ANN index, whose ids are rows, stays valid). Call
        under the update lock only."""
        capacity = max(needed, 2 * self._map.capacity)
        old = self._map.state_dict()
        pad = capacity - self._map.capacity
        grown_map = KeyIndex(capacity, eviction="none")
        grown_map.load_state_dict(
            {
                "slot_keys": np.pad(old["slot_keys"], (0, pad)),
                "last_seen": np.pad(old["last_seen"], (0, pad), constant_values=-np.inf),
                "counts": np.pad(old["counts"], (0, pad)),
            }
        )
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        vectors[: self._map.capacity] = self._vectors
        bias = np.full(capacity, -np.inf, dtype=np.float32)
        bias[: self._map.capacity] = self._row_bias
        return grown_map, vectors, bias, np.pad(self._changed_rows, (0, pad))

    def _maintain_ann(self) -> None:
        """Build, rebuild or drop the ANN index after an update. Call under the update lock (no writer can
        run, so reading the arrays without the write lock is safe); searches go on meanwhile."""
        n, cfg = len(self._map), self.config
        if self._ann is None:
            if n >= cfg.exact_below:
                self._install_ann(self._built_ann())
            return
        if n < cfg.exact_below // 2:
            with self._lock.write():
                self._ann = None
            return
        ratio = n / max(self._ann_built_size, 1)
        if (
            ratio >= cfg.rebuild_growth
            or ratio <= 1.0 / cfg.rebuild_growth
            or self._changed_since_build >= cfg.rebuild_after_changes * self._ann_built_size
        ):
            self._install_ann(self._built_ann())

    def _install_ann(self, ann: Any) -> None:
        with self._lock.write():
            self._ann = ann
        self._ann_built_size = len(self._map)
        self._changed_since_build = 0
        self._changed_rows[:] = False

    def _built_ann(self) -> Any:
        """A new IVF-Flat index (inner product) over the live rows, ids = rows."""
        try:
            import faiss
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"the catalogue reached exact_below={self.config.exact_below} items, so approximate search "
                "needs faiss: pip install faiss-cpu (or raise exact_below to stay exact)"
            ) from error
        live = self._map.live_slots()
        n = len(live)
        most_lists = max(1, n // _TRAIN_POINTS_PER_LIST)
        nlist = self.config.nlist or int(round(4.0 * np.sqrt(n)))
        nlist = int(min(nlist, most_lists))
        rng = np.random.default_rng(self.config.seed)
        sample_size = min(n, _TRAIN_POINTS_PER_LIST * nlist)
        sample = self._vectors[np.sort(rng.choice(live, size=sample_size, replace=False))]
        quantizer = faiss.IndexFlatIP(self.dim)
        ann = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ann.cp.seed = self.config.seed
        ann.train(sample)
        # A hash map from id to list entry makes remove_ids cost O(removed) instead of a scan of every list.
        ann.set_direct_map_type(faiss.DirectMap.Hashtable)
        ann.add_with_ids(self._vectors[live], live)
        ann.nprobe = min(self.config.nprobe, nlist)
        # Training and adding are the updater's own work; searches used the old state meanwhile.
        return ann


def _pairs_of_rows(
    rows: np.ndarray, slots: np.ndarray, selected: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The (row, slot) exclusion pairs of the query rows `selected`, renumbered 0..len(selected)-1."""
    renumber = np.full(int(rows.max(initial=-1)) + 1, -1, dtype=np.int64)
    valid = selected[selected < len(renumber)]
    renumber[valid] = np.flatnonzero(selected < len(renumber))
    new_rows = renumber[rows] if len(rows) else rows
    mask = new_rows >= 0
    return new_rows[mask], slots[mask]


def _coarse_lists(ann: Any, vectors: np.ndarray) -> np.ndarray:
    """int64 [n]: the IVF list of each vector (its nearest centroid), what `add_with_ids` would compute."""
    _, lists = ann.quantizer.search(vectors, 1)
    return np.ascontiguousarray(lists.reshape(-1), dtype=np.int64)


def _add_preassigned(ann: Any, vectors: np.ndarray, ids: np.ndarray, lists: np.ndarray) -> None:
    """`ann.add_with_ids` with the list assignment already computed (IndexIVF.add_core). The arguments must
    be C-contiguous float32 / int64 arrays that stay alive for the call: faiss reads raw pointers."""
    import faiss

    ann.add_core(len(ids), faiss.swig_ptr(vectors), faiss.swig_ptr(ids), faiss.swig_ptr(lists))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
