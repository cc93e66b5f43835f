import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.serving.retrieval import ItemIndex, RetrievalConfig

DIM = 16
EXACT = RetrievalConfig(exact_below=10**9)
# Tiny threshold and a real (partial) probe, so the IVF path is exercised on small catalogues.
ANN = RetrievalConfig(exact_below=256, nprobe=8, initial_capacity=64)


def clustered(n, dim=DIM, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32) * 3
    labels = rng.integers(0, clusters, n)
    items = centers[labels] + rng.standard_normal((n, dim)).astype(np.float32)
    queries = centers[rng.integers(0, clusters, 200)] + rng.standard_normal((200, dim)).astype(np.float32)
    return items.astype(np.float32), queries.astype(np.float32)


def keys_for(n, offset=0):
    # Large, scattered keys: catches any confusion between keys and rows.
    return (np.arange(n, dtype=np.uint64) + np.uint64(offset)) * np.uint64(2654435761) + np.uint64(7)


def reference_top(keys, vectors, queries, k, exclude=None):
    """Brute force: keys and scores of the k best per query, ties broken by key."""
    scores = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    out_keys, out_scores = [], []
    for i, row in enumerate(scores):
        allowed = np.ones(len(keys), bool)
        if exclude is not None:
            allowed &= ~np.isin(keys, exclude[i])
        order = sorted(np.flatnonzero(allowed), key=lambda j: (-row[j], keys[j]))[:k]
        out_keys.append(keys[order])
        out_scores.append(row[order])
    return out_keys, out_scores


def index_with(config, n, seed=0):
    items, queries = clustered(n, seed=seed)
    keys = keys_for(n)
    index = ItemIndex(DIM, config)
    index.upsert(keys, items)
    return index, keys, items, queries


def test_exact_search_matches_brute_force():
    index, keys, items, queries = index_with(EXACT, 500)
    assert not index.uses_ann
    found, scores = index.search(queries, k=10)
    ref_keys, ref_scores = reference_top(keys, items, queries, 10)
    assert found.dtype == np.uint64 and scores.dtype == np.float32 and found.shape == (200, 10)
    np.testing.assert_allclose(scores, np.array(ref_scores), rtol=1e-5, atol=1e-4)
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ref_keys, strict=True)])
    assert agree > 0.99  # only float ties may reorder


def test_ann_recall_against_exact_on_clustered_items():
    index, keys, items, queries = index_with(ANN, 4000)
    assert index.uses_ann
    exact = ItemIndex(DIM, EXACT)
    exact.upsert(keys, items)
    ann_keys, ann_scores = index.search(queries, k=10)
    exact_keys, _ = exact.search(queries, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ann_keys, exact_keys, strict=True)])
    assert recall >= 0.95
    # Scores are true inner products of the returned items, best first.
    by_key = dict(zip(keys.tolist(), items, strict=True))
    expected = np.array(
        [[queries[i] @ by_key[key] for key in row] for i, row in enumerate(ann_keys.tolist())]
    )
    np.testing.assert_allclose(ann_scores, expected, rtol=1e-4, atol=1e-3)
    assert (np.diff(ann_scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("config", [EXACT, ANN], ids=["exact", "ann"])
def test_upsert_replaces_the_vector(config):
    index, keys, items, queries = index_with(config, 1000)
    query = queries[0]
    target = keys[-1]
    # Move one item far along the query: it must now be the best match, scored with its new vector.
    new_vector = (query / np.linalg.norm(query) * 100).astype(np.float32)
    index.upsert(np.array([target]), new_vector[None, :])
    found, scores = index.search(query, k=3)
    assert found[0, 0] == target
    assert scores[0, 0] == pytest.approx(float(query @ new_vector), rel=1e-5)
    # And move it away: it must disappear from the top, where the old vector no longer counts either.
    index.upsert(np.array([target]), -new_vector[None, :])
    found, _ = index.search(query, k=50)
    assert target not in found
    assert len(index) == 1000


def test_upsert_with_repeated_key_keeps_the_last_vector():
    index = ItemIndex(2, EXACT)
    index.upsert(np.array([5, 5, 6]), np.array([[1, 0], [0, 3], [0, 1]], np.float32))
    found, scores = index.search(np.array([0.0, 1.0], np.float32), k=2)
    assert found.tolist() == [[5, 6]] and scores.tolist() == [[3.0, 1.0]]
    assert len(index) == 2


@pytest.mark.parametrize("config", [EXACT, ANN], ids=["exact", "ann"])
def test_remove_makes_an_item_unfindable(config):
    index, keys, items, queries = index_with(config, 1000)
    best, _ = index.search(queries[:20], k=1)
    gone = np.unique(best[:, 0])
    index.remove(np.concatenate([gone, np.array([12345], np.uint64)]))  # an unknown key is ignored
    assert len(index) == 1000 - len(gone)
    assert not np.isin(index.keys(), gone).any()
    found, _ = index.search(queries, k=20)
    assert not np.isin(found, gone).any()
    assert (found != 0).all()


@pytest.mark.parametrize("config", [EXACT, ANN], ids=["exact", "ann"])
def test_exclusion_removes_seen_items_and_still_returns_k(config):
    index, keys, items, queries = index_with(config, 2000)
    queries = queries[:30]
    top, _ = index.search(queries, k=40)
    # Each user has seen their 40 best items, some unknown keys and (row 1) nothing at all.
    exclude = [np.concatenate([row, np.array([99, 98], np.uint64)]) for row in top]
    exclude[1] = None
    found, scores = index.search(queries, k=10, exclude=exclude)
    for i, row in enumerate(found):
        if i != 1:
            assert not np.isin(row, exclude[i]).any()
    assert (found != 0).all() and np.isfinite(scores).all()
    if config is EXACT:
        ref_keys, ref_scores = reference_top(
            keys, items, queries, 10, exclude=[e if e is not None else [] for e in exclude]
        )
        np.testing.assert_allclose(scores, np.array(ref_scores), rtol=1e-5, atol=1e-4)


def test_heavy_exclusion_falls_back_and_stays_complete():
    # max_overfetch far below what users have seen: the first ANN pass comes up short, the refetch or the
    # exact fallback must still fill every row with the true best unseen items.
    config = RetrievalConfig(exact_below=256, nprobe=4, max_overfetch=4, initial_capacity=64)
    index, keys, items, queries = index_with(config, 3000)
    queries = queries[:8]
    exact = ItemIndex(DIM, EXACT)
    exact.upsert(keys, items)
    seen, _ = exact.search(queries, k=500)
    found, scores = index.search(queries, k=10, exclude=list(seen))
    ref, ref_scores = exact.search(queries, k=10, exclude=list(seen))
    assert (found != 0).all()
    for i in range(len(queries)):
        assert not np.isin(found[i], seen[i]).any()
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, ref, strict=True)])
    assert recall >= 0.9


@pytest.mark.parametrize("config", [EXACT, ANN], ids=["exact", "ann"])
def test_exclusion_leaving_fewer_than_k_pads(config):
    index, keys, items, queries = index_with(config, 300)
    everything_but_two = keys[2:]
    found, scores = index.search(queries[:3], k=5, exclude=[everything_but_two] * 3)
    assert (np.sort(found[:, :2], axis=1) == np.sort(keys[:2])).all()
    assert (found[:, 2:] == 0).all() and np.isneginf(scores[:, 2:]).all()


def test_small_catalogue_pads_with_key_zero_and_minus_inf():
    index = ItemIndex(DIM, RetrievalConfig(initial_capacity=2))
    empty_keys, empty_scores = index.search(np.ones((2, DIM), np.float32), k=4)
    assert (empty_keys == 0).all() and np.isneginf(empty_scores).all()
    items, queries = clustered(3)
    index.upsert(keys_for(3), items)
    found, scores = index.search(queries[:2], k=5)
    assert found.shape == (2, 5)
    assert sorted(found[0, :3].tolist()) == sorted(keys_for(3).tolist())
    assert (found[:, 3:] == 0).all() and np.isneginf(scores[:, 3:]).all() and np.isfinite(scores[:, :3]).all()


def test_threshold_switch_between_exact_and_ann_keeps_results():
    config = RetrievalConfig(exact_below=1000, initial_capacity=16)  # default nprobe: near-exhaustive here
    items, queries = clustered(1500)
    keys = keys_for(1500)
    index = ItemIndex(DIM, config)
    index.upsert(keys[:900], items[:900])
    assert not index.uses_ann
    before, _ = index.search(queries, k=10)
    index.upsert(keys[900:], items[900:])
    assert index.uses_ann
    ref_keys, _ = reference_top(keys, items, queries, 10)
    after, _ = index.search(queries, k=10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(after, ref_keys, strict=True)]) >= 0.95
    # Shrink to 600 (above half the threshold): still ANN, and the removed items are gone.
    index.remove(keys[600:])
    assert index.uses_ann and len(index) == 600
    found, _ = index.search(queries, k=10)
    assert not np.isin(found, keys[600:]).any()
    # Under half the threshold the index drops the ANN structure and is exact again.
    index.remove(keys[450:600])
    assert not index.uses_ann
    found, scores = index.search(queries, k=10)
    _, ref_scores = reference_top(keys[:450], items[:450], queries, 10)
    np.testing.assert_allclose(scores, np.array(ref_scores), rtol=1e-5, atol=1e-4)
    exact_before = ItemIndex(DIM, EXACT)
    exact_before.upsert(keys[:900], items[:900])
    assert (exact_before.search(queries, k=10)[0] == before).mean() > 0.99


def test_growth_keeps_every_item():
    index = ItemIndex(DIM, RetrievalConfig(initial_capacity=4, exact_below=200))
    items, queries = clustered(1000)
    keys = keys_for(1000)
    for start in range(0, 1000, 37):  # many small deltas: grows, builds the ANN index, rebuilds it
        index.upsert(keys[start : start + 37], items[start : start + 37])
    assert len(index) == 1000 and index.uses_ann
    assert (index.keys() == np.sort(keys)).all()
    found, _ = index.search(items[:50], k=1)  # each item's own vector is (nearly always) its best match
    ref_keys, _ = reference_top(keys, items, items[:50], 1)
    assert (found[:, 0] == np.array([r[0] for r in ref_keys])).mean() >= 0.95


def test_cosine_metric_scores_are_cosines():
    index = ItemIndex(2, RetrievalConfig(metric="cosine"))
    index.upsert(np.array([1, 2]), np.array([[10, 0], [1, 1]], np.float32))
    found, scores = index.search(np.array([[0.5, 0.5]], np.float32), k=2)
    assert found.tolist() == [[2, 1]]
    np.testing.assert_allclose(scores, [[1.0, np.sqrt(0.5)]], rtol=1e-6)


def test_concurrent_searches_during_updates_never_fail_nor_see_removed_or_torn_state():
    config = RetrievalConfig(exact_below=300, nprobe=16, initial_capacity=32, rebuild_after_changes=0.5)
    items, queries = clustered(4000, seed=1)
    keys = keys_for(4000)
    index = ItemIndex(DIM, config)
    index.upsert(keys[:200], items[:200])
    # Each round upserts a "marker" batch of G items sharing one vector, longer every round, along `probe`:
    # if upserts are atomic, the top G for `probe` is always exactly one whole batch, never a mix of two.
    G = 12
    probe = np.zeros(DIM, np.float32)
    probe[0] = 1.0
    marker_keys = keys_for(G * 100, offset=10**6)
    # Batch 0 is in before any search, so every search has a whole batch to find.
    batches: list[set[int]] = [set(marker_keys[:G].tolist())]
    index.upsert(marker_keys[:G], np.tile(probe * 1000, (G, 1)))
    removed: list[np.ndarray] = []  # appended only after remove() returned
    errors: list[BaseException] = []
    violations = {"removed": 0, "torn": 0}
    done = threading.Event()
    searches = [0]

    def searcher(seed):
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                known = len(removed)  # every batch removed before this search started
                batch = queries[rng.integers(0, len(queries), int(rng.integers(1, 9)))]
                found, scores = index.search(batch, k=10, exclude=[keys[:5]] * len(batch))
                assert found.shape == (len(batch), 10) and np.isfinite(scores).all() and (found != 0).all()
                if known:
                    violations["removed"] += int(np.isin(found, np.concatenate(removed[:known])).sum())
                top = set(index.search(probe, k=G)[0][0].tolist())
                violations["torn"] += not any(top == b for b in batches)
                searches[0] += 1
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        rng = np.random.default_rng(2)
        for r, start in enumerate(range(200, 4000, 200), start=1):  # grows through the threshold
            marker = marker_keys[r * G : (r + 1) * G]
            batches.append(set(marker.tolist()))  # before the upsert: a search may see it from now on
            index.upsert(marker, np.tile(probe * 1000 * (r + 1), (G, 1)))
            index.upsert(keys[start : start + 200], items[start : start + 200])
            live = np.setdiff1d(index.keys(), marker_keys)
            changed = rng.choice(live, 100, replace=False)
            index.upsert(changed, rng.standard_normal((100, DIM)).astype(np.float32))
            gone = rng.choice(live, 40, replace=False)
            index.remove(gone)
            removed.append(gone)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert searches[0] > 20
    assert violations == {"removed": 0, "torn": 0}
    assert index.uses_ann and len(index) == 4000 + G * len(batches) - 40 * len(removed)


def test_read_write_lock_excludes_and_prefers_the_writer():
    from freshrec.serving.retrieval import _ReadWriteLock

    lock = _ReadWriteLock()
    log: list[str] = []
    writer_waiting, late_reader_done = threading.Event(), threading.Event()

    def writer():
        writer_waiting.set()
        with lock.write():
            log.append("write")

    def late_reader():
        with lock.read():
            log.append("late read")
        late_reader_done.set()

    with lock.read():
        w = threading.Thread(target=writer)
        w.start()
        writer_waiting.wait()
        for _ in range(1000):  # until the writer has queued (no sleep-and-hope on a loaded machine)
            if lock._writers_waiting:
                break
            threading.Event().wait(0.005)
        r = threading.Thread(target=late_reader)
        r.start()
        assert not late_reader_done.wait(0.05)  # a waiting writer holds new readers back
        assert log == []  # and the writer waits for the reader in progress
    w.join()
    r.join()
    assert log == ["write", "late read"]


def test_invalid_inputs_raise_config_errors():
    index = ItemIndex(3)
    with pytest.raises(ConfigError, match="key 0"):
        index.upsert(np.array([0, 1]), np.ones((2, 3), np.float32))
    with pytest.raises(ConfigError, match="shape"):
        index.upsert(np.array([1, 2]), np.ones((2, 4), np.float32))
    with pytest.raises(ConfigError, match="NaN"):
        index.upsert(np.array([1]), np.array([[np.nan, 0, 0]], np.float32))
    index.upsert(np.array([1]), np.ones((1, 3), np.float32))
    with pytest.raises(ConfigError, match="queries"):
        index.search(np.ones((1, 2), np.float32), k=1)
    with pytest.raises(ConfigError, match="k must"):
        index.search(np.ones((1, 3), np.float32), k=0)
    with pytest.raises(ConfigError, match="exclude has 1 entries"):
        index.search(np.ones((2, 3), np.float32), k=1, exclude=[np.array([1])])
    with pytest.raises(ConfigError, match="dim"):
        ItemIndex(0)
    with pytest.raises(ConfigError, match="metric"):
        RetrievalConfig(metric="l2")
    with pytest.raises(ConfigError, match="nprobe"):
        RetrievalConfig(nprobe=0)


updates = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.integers(1, 40), min_size=1, max_size=12)),
        st.tuples(st.just("remove"), st.lists(st.integers(1, 45), min_size=1, max_size=6)),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize(
    "config", [EXACT, RetrievalConfig(exact_below=8, initial_capacity=2)], ids=["exact", "ann"]
)
@given(ops=updates, seed=st.integers(0, 2**16), k=st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_matches_a_dictionary_after_any_update_sequence(config, ops, seed, k):
    rng = np.random.default_rng(seed)
    index = ItemIndex(4, config)
    live: dict[int, np.ndarray] = {}
    for op, ids in ops:
        keys = np.array(ids, dtype=np.uint64)
        if op == "upsert":
            vectors = rng.standard_normal((len(ids), 4)).astype(np.float32)
            index.upsert(keys, vectors)
            live.update(zip(ids, vectors, strict=True))
        else:
            index.remove(keys)
            for key in ids:
                live.pop(key, None)
    assert len(index) == len(live) and index.keys().tolist() == sorted(live)
    queries = rng.standard_normal((3, 4)).astype(np.float32)
    exclude = [np.array(list(live)[: int(rng.integers(0, 4))], dtype=np.uint64) for _ in range(3)]
    found, scores = index.search(queries, k=k, exclude=exclude)
    for i in range(3):
        allowed = {key: vec for key, vec in live.items() if key not in set(exclude[i].tolist())}
        n_real = min(k, len(allowed))
        assert (found[i, n_real:] == 0).all() and np.isneginf(scores[i, n_real:]).all()
        returned = found[i, :n_real].tolist()
        assert len(set(returned)) == n_real and set(returned) <= set(allowed)
        np.testing.assert_allclose(
            scores[i, :n_real], [queries[i] @ allowed[key] for key in returned], rtol=1e-5, atol=1e-5
        )
        # With at most a few dozen items every probe covers all lists, so ANN is exact too.
        best = sorted((float(queries[i] @ vec) for vec in allowed.values()), reverse=True)[:n_real]
        np.testing.assert_allclose(scores[i, :n_real], best, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [EXACT, ANN], ids=["exact", "ann"])
def test_prepare_changes_nothing_until_commit_applies_removals_and_upserts_at_once(config):
    index, keys, items, queries = index_with(config, 1000)
    before = index.search(queries[:20], k=10)
    gone = keys[:100]
    moved = keys[100:110]
    new_keys = keys_for(5, offset=10**6)
    vectors = np.concatenate([np.tile(queries[0] * 50, (10, 1)), np.tile(queries[0] * 60, (5, 1))])
    update = index.prepare(np.concatenate([moved, new_keys]), vectors.astype(np.float32), remove=gone)
    after_prepare = index.search(queries[:20], k=10)
    assert (after_prepare[0] == before[0]).all() and len(index) == 1000
    index.commit(update)
    assert len(index) == 1000 - 100 + 5
    found, _ = index.search(queries[0], k=15)
    assert set(found[0, :5].tolist()) == set(new_keys.tolist())
    assert set(found[0, 5:15].tolist()) == set(moved.tolist())
    assert not np.isin(index.search(queries, k=20)[0], gone).any()


def test_commit_after_a_rebuild_recomputes_the_stale_list_assignment():
    config = RetrievalConfig(exact_below=256, nprobe=8, initial_capacity=64, rebuild_after_changes=0.1)
    index, keys, items, queries = index_with(config, 1000)
    target = keys[0]
    new_vector = (queries[3] / np.linalg.norm(queries[3]) * 100).astype(np.float32)
    update = index.prepare(np.array([target]), new_vector[None, :])
    stale = update.ann
    index.upsert(keys[1:200], items[1:200])  # enough changes to rebuild the IVF structure
    assert index._ann is not stale
    index.commit(update)
    found, scores = index.search(queries[3], k=1)
    assert found[0, 0] == target
    assert scores[0, 0] == pytest.approx(float(queries[3] @ new_vector), rel=1e-5)


def test_drift_counts_distinct_items_so_hot_items_updated_again_and_again_do_not_rebuild():
    config = RetrievalConfig(exact_below=256, nprobe=8, initial_capacity=64, rebuild_after_changes=0.2)
    index, keys, items, _ = index_with(config, 1000)
    built = index._ann
    rng = np.random.default_rng(1)
    for _ in range(50):  # 50 x 50 upserts of the same 50 popular items: 2.5x the catalogue, 5% of it distinct
        hot = keys[:50]
        index.upsert(hot, items[:50] + rng.standard_normal((50, DIM)).astype(np.float32) * 0.1)
    assert index._ann is built
    index.upsert(keys[50:250], items[50:250] * 1.01)  # 250 distinct items changed: a quarter of them
    assert index._ann is not built
    rebuilt = index._ann
    index.upsert(keys[:100], items[:100])  # counting starts afresh after a rebuild
    assert index._ann is rebuilt


def test_a_single_query_answers_as_the_batch_path_does_with_and_without_exclusions():
    # One query row takes a path of its own (one ANN call, a set of excluded rows); it must answer exactly
    # as the batch path, including rows whose exclusions exceed the over-fetch (the batch path's fallback).
    config = RetrievalConfig(exact_below=256, nprobe=8, initial_capacity=64, max_overfetch=32)
    index, keys, _, queries = index_with(config, 1500)
    rng = np.random.default_rng(4)
    excluded = [rng.choice(keys, size=size, replace=False) for size in rng.integers(0, 120, len(queries))]
    excluded[0] = np.zeros(0, np.uint64)
    batch_keys, batch_scores = index.search(queries, 10, exclude=excluded)
    for i in range(len(queries)):
        one_keys, one_scores = index.search(queries[i], 10, exclude=[excluded[i]])
        assert one_keys[0].tolist() == batch_keys[i].tolist()
        assert np.allclose(one_scores[0], batch_scores[i])
        assert not set(one_keys[0].tolist()) & set(excluded[i].tolist())
