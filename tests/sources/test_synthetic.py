"""The synthetic stream: freshrec.sources.synthetic."""

import numpy as np
import pytest

from freshrec.errors import ConfigError
from freshrec.events import KIND_CODES
from freshrec.preprocess.dedupe import Deduplicator
from freshrec.preprocess.validate import EventValidator
from freshrec.sources.base import Source
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

SMALL = SyntheticConfig(n_events=40_000, n_users=500, n_items=400, n_clusters=8, chunk_events=4096)


def _columns(stream: SyntheticStream, max_records: int) -> dict[str, np.ndarray]:
    batches = list(stream.batches(max_records))
    return {name: np.concatenate([b.columns[name] for b in batches]) for name in batches[0].columns}


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_same_seed_same_stream_whatever_the_batch_size() -> None:
    a = _columns(SyntheticStream(SMALL), 1000)
    b = _columns(SyntheticStream(SMALL), 7777)
    c = _columns(SyntheticStream(SMALL), 40_000)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(a[name], c[name])
    other = _columns(SyntheticStream(SyntheticConfig(**{**SMALL.__dict__, "seed": 1})), 40_000)
    assert not np.array_equal(a["item_id"], other["item_id"])


def test_batches_are_bounded_contiguous_typed_and_time_ordered() -> None:
    stream = SyntheticStream(SMALL)
    assert isinstance(stream, Source)
    batches = list(stream.batches(3000))
    assert all(b.records_read <= 3000 for b in batches)
    assert sum(b.records_read for b in batches) == 40_000
    assert [b.end_offset for b in batches] == [min(3000 * (i + 1), 40_000) for i in range(len(batches))]
    columns = _columns(stream, 3000)
    assert columns["event_id"].tolist() == list(range(40_000))
    assert np.all(np.diff(columns["timestamp"]) >= 0)
    dtypes = {name: column.dtype for name, column in columns.items()}
    assert dtypes == {
        "event_id": np.int64,
        "timestamp": np.float64,
        "user_id": np.int64,
        "item_id": np.int64,
        "kind": np.int8,
        "value": np.float64,
    }
    result = EventValidator().validate(batches[0])
    assert result.rejected == 0 and result.accepted == 3000


def test_commit_resumes_at_the_offset() -> None:
    stream = SyntheticStream(SMALL)
    whole = _columns(stream, 10_000)
    stream.commit(12_345)
    tail = _columns(stream, 10_000)
    assert tail["event_id"][0] == 12_345
    np.testing.assert_array_equal(tail["item_id"], whole["item_id"][12_345:])
    with pytest.raises(ConfigError):
        stream.commit(40_001)


def test_kinds_and_ratings() -> None:
    columns = _columns(SyntheticStream(SMALL), 40_000)
    kind, value = columns["kind"], columns["value"]
    rating = kind == KIND_CODES["rating"]
    assert 0.17 < rating.mean() < 0.23
    assert set(np.unique(value[rating]).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.isnan(value[~rating]).all()
    views = (kind == KIND_CODES["view"]).sum() / (~rating).sum()
    assert 0.65 < views < 0.75


def test_users_and_items_arrive_over_time() -> None:
    stream = SyntheticStream(SMALL)
    columns = _columns(stream, 40_000)
    users, items, times = columns["user_id"], columns["item_id"], columns["timestamp"]
    assert users.max() >= SMALL.n_users  # new users appeared
    assert items.max() >= SMALL.n_items  # new items appeared
    first_seen = {}
    for item, time in zip(items.tolist(), times.tolist(), strict=True):
        first_seen.setdefault(item, time)
    new_items = sorted(i for i in first_seen if i >= SMALL.n_items)
    for item in new_items:  # never before it is active
        assert stream.active_items(first_seen[item]) > item
    end = times[-1]
    assert len(stream.items_of_cluster(3, at_time=end)) > len(stream.items_of_cluster(3))


def test_cluster_structure_is_there() -> None:
    stream = SyntheticStream(SMALL)
    columns = _columns(stream, 40_000)
    users, items, times = columns["user_id"], columns["item_id"], columns["timestamp"]
    clusters = stream.cluster_of_item(items)
    assert np.array_equal(clusters, items % SMALL.n_clusters)
    for cluster in range(SMALL.n_clusters):
        assert np.all(stream.cluster_of_item(stream.items_of_cluster(cluster)) == cluster)
    # A user's next event within a few minutes is mostly in the same cluster; by chance it would not be.
    order = np.lexsort((times, users))
    same_user = users[order][1:] == users[order][:-1]
    soon = np.diff(times[order]) < 600
    same_cluster = clusters[order][1:] == clusters[order][:-1]
    chance = float((np.bincount(clusters) / len(clusters)) @ (np.bincount(clusters) / len(clusters)))
    assert same_cluster[same_user & soon].mean() > 0.6 > 2 * chance
    # Popularity is skewed: the top 5% of items take a large share of events.
    counts = np.sort(np.bincount(items))[::-1]
    assert counts[: len(counts) // 20].sum() / counts.sum() > 0.2


def test_a_learned_model_beats_popularity() -> None:
    """Item-to-item transitions learned on the first 80% beat global popularity on the last 20% (HR@10)."""
    config = SyntheticConfig(n_events=150_000, n_users=2000, n_items=1000, n_clusters=20, seed=3)
    columns = _columns(SyntheticStream(config), 150_000)
    users, items = columns["user_id"], columns["item_id"]
    n_items = int(items.max()) + 1
    order = np.lexsort((np.arange(len(users)), users))  # each user's events in stream order
    previous = np.full(len(items), -1)
    continues = users[order][1:] == users[order][:-1]
    previous[order[1:][continues]] = items[order][:-1][continues]
    split = int(0.8 * len(items))
    train, test = np.arange(split), np.arange(split, len(items))
    popularity = np.bincount(items[train], minlength=n_items).astype(np.float64)
    transitions = np.zeros((n_items, n_items))
    learn = train[previous[train] >= 0]
    np.add.at(transitions, (previous[learn], items[learn]), 1.0)
    scores = transitions + 1e-6 * popularity  # popularity breaks ties for unseen transitions
    top_by_previous = np.argpartition(-scores, 10, axis=1)[:, :10]
    top_popular = np.argpartition(-popularity, 10)[:10]
    test = test[previous[test] >= 0]
    hr_learned = (top_by_previous[previous[test]] == items[test, None]).any(axis=1).mean()
    hr_popular = np.isin(items[test], top_popular).mean()
    assert hr_learned > 1.5 * hr_popular, (hr_learned, hr_popular)


def test_interests_drift_only_when_asked() -> None:
    users = np.arange(200)
    drifting = SyntheticStream(SyntheticConfig(interest_drift_per_day=2.0))
    early, weights = drifting.favourite_clusters(users, np.full(200, 1.7e9))
    late, _ = drifting.favourite_clusters(users, np.full(200, 1.7e9 + 5 * 86_400))
    assert early.shape == (200, 3) and np.allclose(weights.sum(axis=1), 1.0)
    assert (early != late).mean() > 0.5
    frozen = SyntheticStream(SyntheticConfig(interest_drift_per_day=0.0))
    a, _ = frozen.favourite_clusters(users, np.full(200, 1.7e9))
    b, _ = frozen.favourite_clusters(users, np.full(200, 1.7e9 + 50 * 86_400))
    assert np.array_equal(a, b)


def test_duplicates_for_exercising_dedupe() -> None:
    config = SyntheticConfig(**{**SMALL.__dict__, "duplicate_fraction": 0.05})
    dedupe = Deduplicator(window=100_000)
    validator = EventValidator()
    dropped = 0
    for batch in SyntheticStream(config).batches(5000):
        _, n = dedupe.filter(validator.validate(batch).events)
        dropped += n
    assert 0.04 * 40_000 < dropped < 0.06 * 40_000


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="n_items"):
        SyntheticConfig(n_items=5, n_clusters=10)
    with pytest.raises(ConfigError, match="session_focus"):
        SyntheticConfig(session_focus=1.5)
    with pytest.raises(ConfigError, match="kind_weights"):
        SyntheticConfig(kind_weights=(1.0, -1.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="max_records"):
        list(SyntheticStream(SMALL).batches(0))
    assert list(SyntheticStream(SyntheticConfig(n_events=0)).batches(10)) == []


def test_endless_stream_and_flat_memory() -> None:
    """2M events from an endless stream: resident memory barely moves after the first batches."""
    stream = SyntheticStream(SyntheticConfig(n_events=None))
    batches = stream.batches(65_536)
    for _ in range(3):  # warm up: allocator pools, the catalogue tables
        next(batches)
    before = _rss_bytes()
    seen = 0
    last_time = 0.0
    while seen < 2_000_000:
        batch = next(batches)
        seen += batch.records_read
        assert batch.columns["timestamp"][0] >= last_time
        last_time = batch.columns["timestamp"][-1]
    growth = _rss_bytes() - before
    assert growth < 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 2M events"


def test_catalogue_growth_keeps_the_stream_identical() -> None:
    """An endless stream grows its item tables as items arrive; a finite one sizes them up front.

    Both must give the same events: an item draw only depends on the active items' weights.
    """
    shape = {"n_users": 100, "n_items": 100, "n_clusters": 5, "new_item_rate": 0.05, "chunk_events": 2048}
    endless = SyntheticStream(SyntheticConfig(n_events=None, **shape))
    finite = _columns(SyntheticStream(SyntheticConfig(n_events=30_000, **shape)), 30_000)
    stream = endless.batches(10_000)
    first_three = [next(stream) for _ in range(3)]
    grown = {name: np.concatenate([b.columns[name] for b in first_three]) for name in finite}
    for name in finite:
        np.testing.assert_array_equal(grown[name], finite[name])
    items, times = finite["item_id"], finite["timestamp"]
    assert items.max() > 1000  # the catalogue grew tenfold
    active = np.array([endless.active_items(t) for t in times[::97]])
    assert np.all(items[::97] < active)


def test_with_a_kind_signal_purchases_follow_the_users_preference_more_closely_than_views() -> None:
    config = SyntheticConfig(
        n_events=40_000, n_users=500, n_items=400, n_clusters=8, chunk_events=4096, kind_signal=1.0
    )
    stream = SyntheticStream(config)
    columns = _columns(stream, 40_000)
    favourites, _ = stream.favourite_clusters(columns["user_id"], columns["timestamp"])
    liked = (stream.cluster_of_item(columns["item_id"])[:, None] == favourites).any(axis=1)
    kinds = ("view", "click", "purchase")
    share = {kind: liked[columns["kind"] == KIND_CODES[kind]].mean() for kind in kinds}
    assert share["purchase"] > share["click"] + 0.05 > share["view"] + 0.1, share
    assert share["purchase"] > 0.97, share  # a purchase is always inside a favourite cluster
    # Without the signal, a kind says nothing about the item.
    plain = _columns(SyntheticStream(SyntheticConfig(**{**config.__dict__, "kind_signal": 0.0})), 40_000)
    favourites, _ = stream.favourite_clusters(plain["user_id"], plain["timestamp"])
    liked = (stream.cluster_of_item(plain["item_id"])[:, None] == favourites).any(axis=1)
    views = liked[plain["kind"] == KIND_CODES["view"]]
    purchases = liked[plain["kind"] == KIND_CODES["purchase"]]
    assert abs(views.mean() - purchases.mean()) < 0.05
