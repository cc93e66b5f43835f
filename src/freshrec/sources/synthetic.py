"""A synthetic event stream with known structure, of any length, generated in vectorised chunks.

The stream is built to be *learnable*: items belong to interest clusters with power-law popularity
inside each cluster (and across clusters); each user prefers a few clusters, and those preferences drift
over event time; users act in sessions, several events close in time, mostly inside the session's
cluster; new users and new items keep arriving, and new items get a share of attention while fresh.
A model that learns who likes what beats global popularity on it; the ground truth (`cluster_of_item`,
`items_of_cluster`, `favourite_clusters`) is exposed for tests.

Generation never holds more than one chunk of sessions (plus the sessions still running at its end) in
memory, so 10^8 events stream with flat memory; the same seed gives the same stream whatever batch size
it is read with. This module never reads files or the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from freshrec.errors import ConfigError
from freshrec.events import EVENT_KINDS, KIND_CODES
from freshrec.hashing import GOLDEN_GAMMA, mix64
from freshrec.sources.base import RawBatch

__all__ = ["SyntheticConfig", "SyntheticStream"]

_DAY = 86_400.0
# Salts that make the per-id hash families independent of each other.
_SALT_ITEM_WEIGHT, _SALT_SLOT_CLUSTER, _SALT_SLOT_WEIGHT, _SALT_PHASE, _SALT_QUALITY, _SALT_ACTIVITY = range(
    1, 7
)
_ACTIVITY_CANDIDATES = 16  # candidate users drawn per returning session (acceptance sampling)
_GUIDE_PER_ITEM = 2  # guide-table buckets per item slot (see SyntheticStream._inverse_cdf)


@dataclass(frozen=True)
class SyntheticConfig:
    """The shape of a synthetic stream. Defaults give a small, clearly structured stream.

    Attributes
    ----------
    n_events
        Events to generate; None streams forever.
    n_users, n_items
        Users and items present at the start (``n_items >= n_clusters``).
    n_clusters
        Interest clusters; item ``i`` is in cluster ``i % n_clusters``.
    seed
        Same seed, same stream.
    start_time, events_per_second
        Event time of the first event (epoch seconds) and the stream's average rate in event time
        (the default 5/s makes a million events span about 2.3 days, so interest drift shows).
    item_zipf, cluster_zipf
        Power-law exponents of item popularity inside a cluster and of cluster popularity.
    clusters_per_user
        How many favourite clusters a user has (with user-specific weights).
    interest_drift_per_day
        Expected number of times per day of event time that each favourite cluster of a user is replaced
        by another one (0: interests never change).
    session_length, session_gap_seconds
        Mean events per session and mean event-time gap between a session's events.
    session_focus
        Share of a session's events inside the session's cluster; the rest follow global popularity.
    user_activity_skew
        Heavy users: a user's activity is ``h ** skew`` for a per-user uniform ``h`` (0: all alike).
    new_user_fraction
        Share of sessions opened by a user never seen before.
    new_item_rate
        New items per event (item ids beyond the initial catalogue become active over time).
    fresh_item_share, fresh_item_window
        Share of events that go to one of the newest items of their cluster, and the mean recency rank
        (0 = newest) of such a pick.
    rating_fraction
        Share of ``rating`` events (value 1-5, higher inside the user's interests).
    kind_weights
        Relative frequencies of ``view, click, like, purchase`` among the other events.
    kind_signal
        How much more closely a purchase follows the user's true preference than a view, from 0 (kinds
        are drawn independently of the item: the stream as it always was, draw for draw) to 1. With
        ``s > 0`` the kind is drawn first and the event is inside the session's cluster (one of the user's
        favourites) with a probability that depends on it, ``f`` being `session_focus`: a purchase
        ``f + (1 - f) s`` (at 1 always), a click, like or rating ``f``, a view ``f (1 - s / 2)``; the rest
        follow global popularity. Views are then the noisiest signal and purchases the sharpest, as in a
        shop where a view is often a scroll past and a purchase is money spent.
    duplicate_fraction
        Share of events re-delivered as an exact copy of a recent event (same event id), as an
        at-least-once broker would; for exercising deduplication.
    chunk_events
        Events generated per internal step (about); output does not depend on it being read in batches.
    """

    n_events: int | None = 1_000_000
    n_users: int = 10_000
    n_items: int = 5_000
    n_clusters: int = 50
    seed: int = 0
    start_time: float = 1_700_000_000.0
    events_per_second: float = 5.0
    item_zipf: float = 1.1
    cluster_zipf: float = 0.7
    clusters_per_user: int = 3
    interest_drift_per_day: float = 0.5
    session_length: float = 8.0
    session_gap_seconds: float = 60.0
    session_focus: float = 0.85
    user_activity_skew: float = 2.0
    new_user_fraction: float = 0.1
    new_item_rate: float = 0.001
    fresh_item_share: float = 0.1
    fresh_item_window: float = 10.0
    rating_fraction: float = 0.2
    kind_weights: tuple[float, float, float, float] = (0.7, 0.2, 0.07, 0.03)
    kind_signal: float = 0.0
    duplicate_fraction: float = 0.0
    chunk_events: int = 65_536

    @classmethod
    def drifting(cls, n_events: int = 150_000, days: float = 10.0, seed: int = 7) -> SyntheticConfig:
        """A stream where recency matters, spread over `days` of event time: each user's favourite clusters
        change about once a day, and items keep being born (1 per 200 events) and trend while new (30% of
        events go to a cluster's newest items), as in news or short video. The cadence study uses it.

        >>> SyntheticConfig.drifting(1000, days=1.0).events_per_second
        0.011574074074074073
        """
        return cls(
            n_events=n_events,
            n_users=5_000,
            n_items=3_000,
            n_clusters=30,
            seed=seed,
            events_per_second=n_events / (days * 86_400.0),
            interest_drift_per_day=1.0,
            new_item_rate=0.005,
            fresh_item_share=0.3,
            fresh_item_window=3.0,
        )

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"SyntheticConfig: {what}")

        need(
            self.n_events is None or self.n_events >= 0, f"n_events must be >= 0 or None, got {self.n_events}"
        )
        need(self.n_users >= 1, f"n_users must be >= 1, got {self.n_users}")
        need(self.n_clusters >= 1, f"n_clusters must be >= 1, got {self.n_clusters}")
        need(
            self.n_items >= self.n_clusters,
            f"n_items ({self.n_items}) must be >= n_clusters ({self.n_clusters})",
        )
        need(self.events_per_second > 0, f"events_per_second must be > 0, got {self.events_per_second}")
        need(self.session_length >= 1, f"session_length must be >= 1, got {self.session_length}")
        need(self.session_gap_seconds > 0, f"session_gap_seconds must be > 0, got {self.session_gap_seconds}")
        need(self.clusters_per_user >= 1, f"clusters_per_user must be >= 1, got {self.clusters_per_user}")
        need(self.chunk_events >= 1, f"chunk_events must be >= 1, got {self.chunk_events}")
        need(self.interest_drift_per_day >= 0, "interest_drift_per_day must be >= 0")
        need(self.new_item_rate >= 0, "new_item_rate must be >= 0")
        need(self.user_activity_skew >= 0, "user_activity_skew must be >= 0")
        need(self.fresh_item_window >= 0, "fresh_item_window must be >= 0")
        shares = ("session_focus", "new_user_fraction", "fresh_item_share", "rating_fraction", "kind_signal")
        for name in shares:
            need(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)}")
        need(0 <= self.duplicate_fraction < 1, "duplicate_fraction must be in [0, 1)")
        need(
            len(self.kind_weights) == 4 and min(self.kind_weights) >= 0 and sum(self.kind_weights) > 0,
            f"kind_weights must be 4 weights >= 0 (view, click, like, purchase), got {self.kind_weights}",
        )


@dataclass
class _Events:
    """Generated events as columns (one chunk, or the part of it still to come)."""

    timestamp: np.ndarray
    user_id: np.ndarray
    item_id: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    event_id: np.ndarray  # assigned when events leave the generator in time order

    def __len__(self) -> int:
        return len(self.timestamp)

    def take(self, index: np.ndarray | slice) -> _Events:
        return _Events(*(getattr(self, name)[index] for name in _EVENT_FIELDS))

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        if len(parts) == 1:
            return parts[0]
        return _Events(*(np.concatenate([getattr(p, name) for p in parts]) for name in _EVENT_FIELDS))


_EVENT_FIELDS = ("timestamp", "user_id", "item_id", "kind", "value", "event_id")


class SyntheticStream:
    """A `Source` of synthetic events with typed columns (int64 ids and event ids, float64 times, int8 kinds).

    Each call to `batches` starts at the last committed offset (regenerating and skipping what came
    before, since the stream is deterministic).

    >>> stream = SyntheticStream(SyntheticConfig(n_events=1000, n_users=50, n_items=100, n_clusters=5))
    >>> batches = list(stream.batches(400))
    >>> [b.records_read for b in batches], batches[-1].end_offset
    ([400, 400, 200], 1000)
    >>> bool(np.all(np.diff(np.concatenate([b.columns["timestamp"] for b in batches])) >= 0))
    True
    """

    def __init__(self, config: SyntheticConfig | None = None, name: str | None = None) -> None:
        self.config = config if config is not None else SyntheticConfig()
        self.name = name if name is not None else f"synthetic-{self.config.seed}"
        self._committed = 0
        c = self.config
        self._chunk_seconds = c.chunk_events / c.events_per_second
        self._items_per_second = c.new_item_rate * c.events_per_second
        self._drift_per_second = c.interest_drift_per_day / _DAY
        cluster_weights = np.arange(1, c.n_clusters + 1, dtype=np.float64) ** -c.cluster_zipf
        self._cluster_cdf = np.cumsum(cluster_weights) / cluster_weights.sum()
        kind_weights = np.asarray(c.kind_weights, dtype=np.float64)
        self._kind_cdf = np.cumsum(kind_weights) / kind_weights.sum()
        # Items in cluster c are c, c + K, c + 2K, ...: slot j of cluster c is item c + j*K. Popularity
        # is a per-item weight from a hash, so items arriving later need no re-shuffle of the others.
        self._cluster_size0 = max(c.n_items / c.n_clusters, 1.0)
        self._capacity = 0
        self._cdf = np.empty(0)
        self._guide = np.empty(0, dtype=np.int64)
        self._guide_buckets = 0
        expected_items = c.n_items + (
            math.ceil(c.new_item_rate * c.n_events) + 1 if c.n_events else c.n_items
        )
        self._grow_catalogue(expected_items)

    # -- Source protocol ---------------------------------------------------------------------------------

    def batches(self, max_records: int) -> Iterator[RawBatch]:
        """Typed batches of at most `max_records` events, from the committed offset to the end."""
        if max_records < 1:
            raise ConfigError(f"max_records must be at least 1, got {max_records}")
        start = self._committed
        position = 0  # stream index of the first buffered event
        buffer: list[_Events] = []
        buffered = 0
        for chunk in self._stream():
            if position + len(chunk) <= start:  # before the committed offset: regenerated, skipped
                position += len(chunk)
                continue
            if position < start:
                chunk, position = chunk.take(slice(start - position, None)), start
            buffer.append(chunk)
            buffered += len(chunk)
            while buffered >= max_records:
                events = _Events.concat(buffer)
                yield self._raw_batch(events.take(slice(0, max_records)), position)
                rest = events.take(slice(max_records, None))
                buffer, buffered = ([rest] if len(rest) else []), len(rest)
                position += max_records
        if buffered:
            yield self._raw_batch(_Events.concat(buffer), position)

    def commit(self, offset: int) -> None:
        """Remember `offset` as processed: the next `batches` call resumes there."""
        if offset < 0 or (self.config.n_events is not None and offset > self.config.n_events):
            raise ConfigError(f"offset {offset} is outside 0..{self.config.n_events}")
        self._committed = offset

    @property
    def committed_offset(self) -> int:
        return self._committed

    # -- ground truth ------------------------------------------------------------------------------------

    def cluster_of_item(self, item_ids: np.ndarray) -> np.ndarray:
        """The cluster of each item id (int64).

        >>> SyntheticStream(SyntheticConfig(n_clusters=4)).cluster_of_item(np.array([0, 5, 11])).tolist()
        [0, 1, 3]
        """
        return np.asarray(item_ids, dtype=np.int64) % self.config.n_clusters

    def items_of_cluster(self, cluster: int, at_time: float | None = None) -> np.ndarray:
        """Item ids of `cluster` active at event time `at_time` (default: the initial catalogue)."""
        if not 0 <= cluster < self.config.n_clusters:
            raise ConfigError(f"cluster {cluster} is outside 0..{self.config.n_clusters - 1}")
        time = self.config.start_time if at_time is None else at_time
        n_active = int(self._active_items(np.array([time]))[0])
        return np.arange(cluster, n_active, self.config.n_clusters, dtype=np.int64)

    def active_items(self, at_time: float) -> int:
        """How many items (ids ``0 .. n-1``) are active at event time `at_time`."""
        return int(self._active_items(np.array([at_time]))[0])

    def favourite_clusters(
        self, user_ids: np.ndarray, timestamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each user's favourite clusters at each time, int64 [n, clusters_per_user], with their weights."""
        users = np.asarray(user_ids, dtype=np.int64)
        times = np.broadcast_to(np.asarray(timestamps, dtype=np.float64), users.shape)
        return self._favourites(users, times)

    # -- generation --------------------------------------------------------------------------------------

    def _stream(self) -> Iterator[_Events]:
        """The whole stream as chunks, cut at `n_events`."""
        total = self.config.n_events
        produced = 0
        if total == 0:
            return
        for chunk in self._chunks():
            if total is not None and produced + len(chunk) >= total:
                yield chunk.take(slice(0, total - produced))
                return
            produced += len(chunk)
            yield chunk

    def _chunks(self) -> Iterator[_Events]:
        """Events in event-time order, chunk after chunk (sizes vary around `chunk_events`).

        Chunk k holds the events with times in [t0 + k*T, t0 + (k+1)*T); sessions that started in it and
        run past its end are carried into the next chunk, so the order is exact across chunks.
        """
        c = self.config
        carry: _Events | None = None
        next_user = c.n_users
        next_event_id = 0
        chunk = 0
        while True:
            rng = np.random.default_rng([c.seed, chunk])
            t0 = c.start_time + chunk * self._chunk_seconds
            events, next_user = self._sessions(rng, t0, next_user)
            if carry is not None and len(carry):
                events = _Events.concat([carry, events])
            # Unstable sort is 3x faster and still deterministic; exact time ties have probability 0.
            events = events.take(np.argsort(events.timestamp))
            cut = int(np.searchsorted(events.timestamp, t0 + self._chunk_seconds, side="left"))
            ready, carry = events.take(slice(0, cut)), events.take(slice(cut, None))
            if len(ready):
                ready.event_id = np.arange(next_event_id, next_event_id + len(ready), dtype=np.int64)
                next_event_id += len(ready)
                yield self._with_duplicates(rng, ready)
            chunk += 1

    def _sessions(self, rng: np.random.Generator, t0: float, next_user: int) -> tuple[_Events, int]:
        """The sessions that start in one chunk's time window, as events (not yet in time order)."""
        c = self.config
        n_sessions = max(1, round(c.chunk_events / c.session_length))
        starts = t0 + rng.random(n_sessions) * self._chunk_seconds
        # Users: a share of sessions opens with a brand-new user (ids in order of arrival); the rest
        # come from users already seen, heavy users more often.
        is_new = rng.random(n_sessions) < c.new_user_fraction
        users = np.empty(n_sessions, dtype=np.int64)
        new_idx = np.flatnonzero(is_new)
        new_idx = new_idx[np.argsort(starts[new_idx], kind="stable")]
        users[new_idx] = next_user + np.arange(len(new_idx))
        users[~is_new] = self._returning_users(rng, int(np.count_nonzero(~is_new)), next_user)
        next_user += len(new_idx)
        # The session's cluster: one of the user's favourites at the session's start, by weight.
        favourites, weights = self._favourites(users, starts)
        pick = (np.cumsum(weights, axis=1) < rng.random(n_sessions)[:, None]).sum(axis=1)
        pick = np.minimum(pick, c.clusters_per_user - 1)
        session_cluster = favourites[np.arange(n_sessions), pick]
        # Events of each session: a geometric number, separated by exponential gaps.
        lengths = rng.geometric(1.0 / c.session_length, n_sessions)
        n = int(lengths.sum())
        session_of = np.repeat(np.arange(n_sessions), lengths)
        gaps = rng.exponential(c.session_gap_seconds, n)
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        gaps[first] = 0.0
        elapsed = np.cumsum(gaps)
        timestamp = (starts - elapsed[first])[session_of] + elapsed
        # Items: mostly the session's cluster, sometimes anywhere (by cluster popularity); inside the
        # cluster, by popularity among the active items, or one of the newest items.
        if c.kind_signal > 0:  # kinds first: how closely the item follows the user depends on them
            kind, rating = self._kinds(rng, n)
            focus = np.full(len(EVENT_KINDS), c.session_focus)
            focus[KIND_CODES["purchase"]] += (1.0 - c.session_focus) * c.kind_signal
            focus[KIND_CODES["view"]] *= 1.0 - c.kind_signal / 2.0
            in_focus = rng.random(n) < focus[kind]
        else:
            in_focus = rng.random(n) < c.session_focus
        cluster = session_cluster[session_of]
        stray = np.flatnonzero(~in_focus)
        cluster[stray] = np.searchsorted(self._cluster_cdf, rng.random(len(stray)), side="right")
        cluster = np.minimum(cluster, c.n_clusters - 1)
        item = self._draw_items(rng, cluster, timestamp)
        # Kinds (drawn here, after the items, unless they steer them) and values: ratings are higher for
        # items inside the session's cluster.
        if c.kind_signal == 0:
            kind, rating = self._kinds(rng, n)
        value = np.full(n, np.nan)
        if rating.any():
            quality = _uniform(c.seed, _SALT_QUALITY, item[rating]) - 0.5
            base = np.where(in_focus[rating], 4.0, 2.6)
            noisy = base + 1.2 * quality + rng.normal(0.0, 0.6, int(rating.sum()))
            value[rating] = np.clip(np.rint(noisy), 1.0, 5.0)
        event_id = np.zeros(n, dtype=np.int64)
        return _Events(timestamp, users[session_of], item, kind, value, event_id), next_user

    def _kinds(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """int8 kind codes of `n` events and the mask of the ``rating`` ones."""
        draw = rng.random(n)
        kind = np.zeros(n, dtype=np.int8)  # view, click, like, purchase by three comparisons
        for bound in self._kind_cdf[:-1]:
            kind += draw >= bound
        rating = rng.random(n) < self.config.rating_fraction
        kind[rating] = KIND_CODES["rating"]
        return kind, rating

    def _returning_users(self, rng: np.random.Generator, count: int, n_known: int) -> np.ndarray:
        """`count` users among ids ``0 .. n_known-1``, each accepted with probability activity(user)."""
        candidates = rng.integers(0, n_known, (count, _ACTIVITY_CANDIDATES))
        if self.config.user_activity_skew == 0 or count == 0:
            return candidates[:, 0]
        activity = _uniform(self.config.seed, _SALT_ACTIVITY, candidates) ** self.config.user_activity_skew
        accepted = rng.random(candidates.shape) < activity
        first = np.where(accepted.any(axis=1), accepted.argmax(axis=1), _ACTIVITY_CANDIDATES - 1)
        return candidates[np.arange(count), first]

    def _favourites(self, users: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Favourite clusters [n, k] of users at times, and their normalised weights [n, k].

        Slot j of user u holds one cluster during each "epoch" of length 1/drift, with a per-(u, j)
        phase, so a user's slots change one at a time rather than all at once.
        """
        c = self.config
        slots = np.arange(c.clusters_per_user, dtype=np.int64)[None, :]
        u = users[:, None]
        if self._drift_per_second > 0:
            phase = _uniform(c.seed, _SALT_PHASE, u, slots)
            epoch = np.floor(times[:, None] * self._drift_per_second + phase).astype(np.int64)
        else:
            epoch = np.zeros((len(users), c.clusters_per_user), dtype=np.int64)
        draw = _uniform(c.seed, _SALT_SLOT_CLUSTER, u, slots, epoch)
        clusters = np.minimum(np.searchsorted(self._cluster_cdf, draw, side="right"), c.n_clusters - 1)
        raw = -np.log(_uniform(c.seed, _SALT_SLOT_WEIGHT, u, slots) + 1e-12)
        return clusters.astype(np.int64), raw / raw.sum(axis=1, keepdims=True)

    def _active_items(self, times: np.ndarray) -> np.ndarray:
        elapsed = np.maximum(times - self.config.start_time, 0.0)
        return self.config.n_items + np.floor(elapsed * self._items_per_second).astype(np.int64)

    def _draw_items(self, rng: np.random.Generator, cluster: np.ndarray, times: np.ndarray) -> np.ndarray:
        c = self.config
        n_active = self._active_items(times)
        self._grow_catalogue(int(n_active.max()) if len(n_active) else c.n_items)
        # Active items of cluster k: ids k, k+K, ... below n_active, i.e. the first `per_cluster` slots.
        per_cluster = (n_active - cluster + c.n_clusters - 1) // c.n_clusters
        row = cluster * self._capacity
        reach = self._cdf[row + per_cluster - 1] - cluster  # the active slots' share of the cluster weight
        target = cluster + rng.random(len(cluster)) * reach
        slot = self._inverse_cdf(target) - row
        slot = np.clip(slot, 0, per_cluster - 1)
        fresh = rng.random(len(cluster)) < c.fresh_item_share
        if fresh.any():
            back = np.floor(rng.exponential(c.fresh_item_window, int(fresh.sum()))).astype(np.int64)
            slot[fresh] = np.maximum(per_cluster[fresh] - 1 - back, 0)
        return cluster + slot * c.n_clusters

    def _grow_catalogue(self, n_items: int) -> None:
        """Make the per-cluster popularity table cover item ids below `n_items` (doubling when needed)."""
        c = self.config
        needed = -(-n_items // c.n_clusters)
        if needed <= self._capacity:
            return
        capacity = max(needed, 2 * self._capacity)
        slots = np.arange(capacity, dtype=np.int64)
        items = np.arange(c.n_clusters, dtype=np.int64)[:, None] + slots[None, :] * c.n_clusters
        # Zipf inside a cluster: weight (1 + rank)^-a with rank = h * initial cluster size, h uniform per
        # item, so the largest weight is 1 and items arriving later fall anywhere in the ranking.
        rank = _uniform(c.seed, _SALT_ITEM_WEIGHT, items) * self._cluster_size0
        weights = (1.0 + rank) ** -c.item_zipf
        cumulative = np.cumsum(weights, axis=1)
        # Row k holds k + (cumulative share of cluster k): one sorted array for all clusters, so one
        # searchsorted call draws items of different clusters at once.
        self._cdf = (np.arange(c.n_clusters)[:, None] + cumulative / cumulative[:, -1:]).ravel()
        # Guide table (Chen & Asau): for each of `_GUIDE_PER_ITEM` buckets per item slot, the first index
        # whose cumulative value passes the bucket's start. A draw starts there and steps forward a
        # slot or two, which is several times faster than a binary search per draw.
        self._guide_buckets = _GUIDE_PER_ITEM * capacity
        starts = np.arange(c.n_clusters * self._guide_buckets, dtype=np.float64) / self._guide_buckets
        self._guide = np.searchsorted(self._cdf, starts, side="right").astype(np.int64)
        self._capacity = capacity

    def _inverse_cdf(self, target: np.ndarray) -> np.ndarray:
        """``np.searchsorted(self._cdf, target, side="right")``, through the guide table."""
        bucket = np.floor(target * self._guide_buckets).astype(np.int64) - 1  # -1: rounding safety
        index = self._guide[np.clip(bucket, 0, len(self._guide) - 1)]
        index = np.minimum(index, len(self._cdf) - 1)
        pending = np.flatnonzero(self._cdf[index] <= target)
        while len(pending):
            index[pending] += 1
            pending = pending[self._cdf[np.minimum(index[pending], len(self._cdf) - 1)] <= target[pending]]
            pending = pending[index[pending] < len(self._cdf)]
        return index

    def _with_duplicates(self, rng: np.random.Generator, events: _Events) -> _Events:
        """Re-deliver a share of events as copies of a recent event (same event id, same fields)."""
        share = self.config.duplicate_fraction
        if share == 0 or len(events) < 2:
            return events
        rows = np.flatnonzero(rng.random(len(events)) < share)
        rows = rows[rows > 0]
        source = np.maximum(rows - 1 - np.floor(rng.exponential(20.0, len(rows))).astype(np.int64), 0)
        for name in _EVENT_FIELDS:
            column = getattr(events, name)
            column[rows] = column[source]
        return events

    def _raw_batch(self, events: _Events, offset: int) -> RawBatch:
        n = len(events)
        columns = {
            "event_id": events.event_id,
            "timestamp": events.timestamp,
            "user_id": events.user_id,
            "item_id": events.item_id,
            "kind": events.kind,
            "value": events.value,
        }
        return RawBatch(columns, np.arange(offset, offset + n, dtype=np.int64), end_offset=offset + n)


def _uniform(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """A uniform [0, 1) value per combination of keys, fixed for (seed, salt): stateless randomness."""
    with np.errstate(over="ignore"):
        h = mix64(np.uint64((seed * GOLDEN_GAMMA + salt) % 2**64) + np.zeros(1, dtype=np.uint64))
        for key in keys:
            h = mix64(h ^ (np.asarray(key).astype(np.int64).view(np.uint64) + np.uint64(GOLDEN_GAMMA)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
