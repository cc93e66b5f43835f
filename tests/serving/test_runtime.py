"""The serving runtime over a real model store and event log, with a real BPR-MF trainer publishing deltas:
the item index follows every version (new items, evictions, full loads) and answers what exact scoring of
that version would."""

import gc
import threading
import time
import weakref

import numpy as np
import pytest

from freshrec.config import parse
from freshrec.evaluation.gate import GateConfig
from freshrec.events import Event, EventBatch
from freshrec.models.base import VectorModel
from freshrec.models.mf import BPRMatrixFactorization, MFConfig
from freshrec.models.registry import create_model, model_names
from freshrec.preprocess.encode import encode_ids
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.serving.retrieval import RetrievalConfig
from freshrec.serving.runtime import ServingConfig, ServingRuntime
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig
from tests.publishing.store_damage import DamagingStore, trainer, truncate, write_store
from tests.publishing.store_damage import events as stream_events

EXACT = RetrievalConfig()
ANN = RetrievalConfig(exact_below=40, nprobe=64, initial_capacity=8)  # IVF from 40 items on


def small_mf(capacity: int = 64) -> BPRMatrixFactorization:
    return BPRMatrixFactorization(
        parse(MFConfig, dict(dim=8, user_capacity=256, item_capacity=capacity, seed=3), "flat")
    )


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def events(n, users, items, start=0, seed=0):
    rng = np.random.default_rng(seed)
    now = 1_700_000_000.0
    return [
        {
            "event_id": f"e{start + i}",
            "timestamp": now + start + i,
            "user_id": f"u{rng.integers(users)}",
            "item_id": f"i{items[rng.integers(len(items))]}",
        }
        for i in range(n)
    ]


class Loop:
    """A trainer publishing a small MF model to a store, and a runtime following the store and the log."""

    def __init__(self, tmp_path, capacity=64, retrieval=EXACT, keep_versions=20, make_model=None):
        make_model = make_model or (lambda: small_mf(capacity))
        self.trained = make_model()
        self.store = ModelStore(StoreConfig(tmp_path / "store", keep_versions=keep_versions, fsync=False))
        publisher = ModelPublisher(
            self.trained,
            self.store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": self.trained.name},
        )
        trainer = OnlineTrainer(self.trained, TrainerConfig(batch_size=16, negatives=2))
        self.loop = TrainingLoop(trainer, publisher=publisher)
        config = ServingConfig(user_capacity=1000, retrieval=retrieval)
        self.runtime = ServingRuntime(
            config, tmp_path / "store", tmp_path / "log", build_model=lambda spec: make_model()
        )
        self.runtime.start()

    def feed(self, records):
        """The server logs the events, the trainer learns them and publishes; wait until both are served."""
        applied = self.runtime.events_applied + len(records)
        assert self.runtime.ingest(records).accepted == len(records)
        self.loop.feed_events(EventBatch.from_events(Event(**r) for r in records))
        target = self.store.current_version()
        assert wait_for(lambda: self.runtime.version == target and self.runtime.events_applied >= applied), (
            f"serving version {self.runtime.version} of {target}, "
            f"events {self.runtime.events_applied} of {applied}"
        )

    def close(self):
        self.runtime.close()
        self.store.close()


@pytest.fixture
def loop(tmp_path):
    created = []

    def make(**kwargs):
        created.append(Loop(tmp_path, **kwargs))
        return created[-1]

    yield make
    for each in created:
        each.close()


def exact_top(model, user, k, exclude=()):
    """Exact scoring of every item the model has a row for: raw ids of the top k, best first."""
    keys = item_keys(model)
    query = model_query(user)
    scores = model.score(query, keys)[0].astype(np.float64)
    scores[np.isin(keys, encode_ids(np.array(list(exclude) or [""], dtype=object)))] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    order = order[np.isfinite(scores[order])]
    return keys[order], scores[order]


def model_query(user):
    from freshrec.interactions import Query

    return Query.without_history(encode_ids(np.array([user], dtype=object)), np.array([0.0]))


def raw_to_keys(raw_ids):
    return encode_ids(np.array(raw_ids, dtype=object)) if raw_ids else np.zeros(0, np.uint64)


def item_keys(model):
    return model.vector_items()


def test_vector_models_are_declared():
    assert isinstance(create_model("bpr-mf"), VectorModel) and create_model("bpr-mf").vector_dim == 64
    for name in ("sasrec", "two-tower"):
        assert isinstance(create_model(name), VectorModel)
    for name in ("popularity", "cooccurrence", "blend", "rating-mf"):
        assert not isinstance(create_model(name), VectorModel)


def test_index_answers_exactly_what_scoring_the_version_would(loop):
    live = loop()
    live.feed(events(200, users=12, items=range(30), seed=1))
    live.feed(events(100, users=12, items=range(20, 40), start=200, seed=2))
    runtime = live.runtime
    assert runtime.served.index is not None and not runtime.served.index.uses_ann
    # The index holds exactly the items with a row of their own in the served version.
    assert (runtime.served.index.keys() == np.sort(item_keys(runtime.served.model))).all()
    assert len(runtime.served.index) == 40
    for n in range(12):
        user = f"u{n}"
        answer = runtime.recommend(user, k=5, exclude_seen=False)
        assert answer.model_version == runtime.version
        keys, scores = exact_top(runtime.served.model, user, 5)
        assert (raw_to_keys(answer.item_ids) == keys).all()
        np.testing.assert_allclose(answer.scores, scores, rtol=1e-5, atol=1e-5)
        # Seen items are left out, and the rest keeps the exact order.
        seen = runtime.events.features.seen_items(int(encode_ids(np.array([user], dtype=object))[0]))
        answer = runtime.recommend(user, k=5)
        assert not np.isin(raw_to_keys(answer.item_ids), seen).any()
        keys = item_keys(runtime.served.model)
        scores = runtime.served.model.score(model_query(user), keys)[0].astype(np.float64)
        scores[np.isin(keys, seen)] = -np.inf
        best = keys[np.argsort(-scores, kind="stable")[:5]]
        assert (raw_to_keys(answer.item_ids) == best[np.isfinite(np.sort(scores)[::-1][:5])]).all()
    # An unknown user is answered too (the model's cold-start row), from the same index.
    assert len(runtime.recommend("nobody", k=3).item_ids) == 3


@pytest.mark.parametrize("retrieval", [EXACT, ANN], ids=["exact", "ann"])
def test_new_items_appear_and_evicted_items_disappear(loop, retrieval):
    live = loop(capacity=48, retrieval=retrieval)
    live.feed(events(300, users=10, items=range(48), seed=3))
    runtime = live.runtime
    assert len(runtime.served.index) == 48 and runtime.served.index.uses_ann == (retrieval is ANN)
    first = set(runtime.served.index.keys().tolist())
    # A burst on new items: each admission evicts the least recently used item (capacity 48).
    # (Later than the first events, yet in the past: the server refuses events dated over a day ahead.)
    burst = [
        {"event_id": f"n{i}", "timestamp": 1_750_000_000.0 + i, "user_id": "fan", "item_id": f"new{i % 6}"}
        for i in range(48)
    ]
    live.feed(burst)
    new_keys = raw_to_keys([f"new{i}" for i in range(6)])
    served = runtime.served.index.keys()
    assert np.isin(new_keys, served).all()
    evicted = np.array(sorted(first - set(served.tolist())), dtype=np.uint64)
    assert len(evicted) == 6 and len(served) == 48
    assert (served == np.sort(item_keys(runtime.served.model))).all()
    # The new items are recommendable (k covers the catalogue); the evicted ones never come back.
    everything = raw_to_keys(runtime.recommend("u1", k=48, exclude_seen=False).item_ids)
    assert np.isin(new_keys, everything).all()
    for n in range(10):
        found = raw_to_keys(runtime.recommend(f"u{n}", k=20, exclude_seen=False).item_ids)
        assert not np.isin(found, evicted).any()


def test_full_load_after_a_rollback_rebuilds_the_index(loop):
    live = loop()
    live.feed(events(100, users=8, items=range(10), seed=4))
    early = live.store.current_version()
    early_items = np.sort(item_keys(live.runtime.served.model))
    live.feed(events(100, users=8, items=range(10, 25), start=100, seed=5))
    assert len(live.runtime.served.index) == 25
    live.store.rollback(to=early, reason="test")
    assert wait_for(lambda: live.runtime.version == early)
    assert (live.runtime.served.index.keys() == early_items).all()
    found = raw_to_keys(live.runtime.recommend("u1", k=25, exclude_seen=False).item_ids)
    assert np.isin(found, early_items).all() and len(found) == len(early_items)


def test_every_answer_during_publishing_matches_exact_scoring_of_its_version(loop):
    """Requests race the store follower; each answer must be what its own version scores, never a mix
    (the trainer's store keeps every version, so each can be loaded again and scored)."""
    live = loop(keep_versions=1000)
    items = list(range(30))
    live.feed(events(200, users=6, items=items, seed=6))
    answers: list[tuple[str, object]] = []
    done = threading.Event()

    def ask():
        n = 0
        while not done.is_set():
            user = f"u{n % 6}"
            answers.append((user, live.runtime.recommend(user, k=4, exclude_seen=False)))
            n += 1
            time.sleep(0.002)  # leave the follower and the trainer their share of the GIL

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(4):
            live.feed(events(48, users=6, items=items, start=1000 + 48 * round_, seed=10 + round_))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    versions = {answer.model_version for _, answer in answers}
    assert len(answers) > 50 and len(versions) > 3
    models = {}
    for version in versions:
        state, _ = live.store.load(version)
        models[version] = small_mf()
        models[version].load_state_dict(state)
    for user, answer in answers:
        keys, scores = exact_top(models[answer.model_version], user, 4)
        assert (raw_to_keys(answer.item_ids) == keys).all()
        np.testing.assert_allclose(answer.scores, scores, rtol=1e-5, atol=1e-5)


def test_apply_changes_for_retrieval_names_trained_admitted_and_evicted_items():
    trained, served = small_mf(capacity=4), small_mf(capacity=4)
    store_state = trained.state_dict()
    served.load_state_dict(store_state)
    trained.drain_changes()
    keys = encode_ids(np.array(["a", "b", "c", "d", "e"], dtype=object))
    from freshrec.interactions import Interactions, Query

    def learn(items, t):
        query = Query.without_history(np.full(len(items), 7, np.uint64), np.full(len(items), t))
        trained.learn(
            Interactions(
                query,
                items,
                np.full(len(items), np.nan),
                np.zeros(len(items), np.int8),
                items[::-1, None].copy(),
            )
        )

    learn(keys[:4], 1.0)
    changed = served.apply_changes_for_retrieval(trained.drain_changes())
    assert set(changed.keys.tolist()) == set(keys[:4].tolist()) and len(changed.removed) == 0
    learn(keys[4:], 2.0)  # admits "e", evicting the least recently seen of a-d
    changed = served.apply_changes_for_retrieval(trained.drain_changes())
    assert keys[4] in changed.keys and len(changed.removed) == 1
    assert changed.removed[0] in keys[:4] and changed.removed[0] not in item_keys(served)
    assert set(item_keys(served).tolist()) == set(item_keys(trained).tolist())


def test_a_two_tower_model_is_re_embedded_whole_when_its_item_tower_changes(loop):
    from freshrec.models.twotower import TwoTowerConfig, TwoTowerModel

    def small_two_tower():
        return TwoTowerModel(
            parse(
                TwoTowerConfig,
                dict(dim=8, hidden=8, history_length=3, user_capacity=64, item_capacity=64),
                "flat",
            )
        )

    served = loop(make_model=small_two_tower)
    for start in (0, 60, 120):
        served.feed(events(60, users=12, items=list(range(30)), start=start, seed=start))
    runtime = served.runtime
    keys = runtime.served.index.keys()
    assert len(keys) > 10
    # Every indexed vector is the served model's current item vector, not one from the version that first
    # brought the item: the dense item tower moved with every step.
    query = np.random.default_rng(0).normal(size=(1, runtime.served.index.dim)).astype(np.float32)
    found, scores = runtime.served.index.search(query, k=len(keys))
    expected = runtime.served.model.item_vectors(found[0]) @ query[0]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------- a store with damage
def started(tmp_path) -> ServingRuntime:
    runtime = ServingRuntime(ServingConfig(user_capacity=1000), tmp_path / "store", tmp_path / "log")
    runtime.start()
    return runtime


def test_a_version_that_fails_to_load_leaves_the_served_one_until_an_intact_one_comes(tmp_path):
    with DamagingStore(StoreConfig(tmp_path / "store", keep_versions=20, fsync=False)) as store:
        _, loop = trainer(store)
        loop.feed_events(stream_events(64 * 2))  # versions 1-3
        runtime = started(tmp_path)
        try:
            assert wait_for(lambda: runtime.version == 3)
            store.damage_next = True
            loop.feed_events(stream_events(64, seed=2))  # version 4, damaged on disk
            assert wait_for(lambda: runtime.served.health()["degraded"])
            health = runtime.store_health()
            assert health["failed_version"] == 4 and "v0000000004.delta.safetensors" in health["problem"]
            assert runtime.version == 3 and runtime.recommend("u1", k=5).model_version == 3
            # Deltas on the damaged one cannot be applied; the compaction due at 11 (1 + 10) finds the
            # damage and the trainer's next version is a snapshot, which the server takes.
            loop.feed_events(stream_events(64 * 7, seed=3))  # 5-11
            store.wait_for_compaction()
            assert store.snapshot_wanted is not None
            assert wait_for(lambda: runtime.store_health()["failed_version"] == 11) and runtime.version == 3
            assert runtime.served.load_failures >= 2
            loop.feed_events(stream_events(64, seed=4))  # 12, a snapshot
            assert store.versions()[-1].kind == "snapshot"
            assert wait_for(lambda: runtime.version == 12 and not runtime.served.health()["degraded"])
            assert runtime.recommend("u1", k=5).model_version == 12
        finally:
            runtime.close()


def test_a_server_starts_on_the_newest_intact_version_or_unready_until_one_loads(tmp_path):
    write_store(tmp_path / "store")  # versions 11-30, current 30
    truncate(tmp_path / "store" / ModelStore.open(tmp_path / "store").versions()[-1].file)
    runtime = started(tmp_path)
    try:
        assert runtime.ready and runtime.version == 29
        assert runtime.store_health()["degraded"] and runtime.store_health()["failed_version"] == 30
    finally:
        runtime.close()
    for info in ModelStore.open(tmp_path / "store").versions():
        if info.full is not None:
            truncate(tmp_path / "store" / info.full.file)
    runtime = started(tmp_path)
    try:
        assert not runtime.ready and "no kept version" in runtime.store_health()["problem"]
        with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
            trainer(store)  # a restarted trainer: it starts afresh and publishes a snapshot
        assert wait_for(lambda: runtime.ready and runtime.version == 31)
    finally:
        runtime.close()


# ---------------------------------------------------------------------- full loads free what they replace
@pytest.mark.parametrize("name", model_names())
def test_a_model_is_freed_by_reference_counting_alone(name):
    """A server freezes its long-lived objects instead of running full collections (they stalled every
    request): a model holding a reference cycle would never be freed once replaced."""
    twin = create_model(name)
    twin.load_state_dict(create_model(name).state_dict())
    gc.collect()
    gc.disable()
    try:
        freed = weakref.ref(twin)
        del twin
        assert freed() is None, f"{name} holds a reference cycle"
    finally:
        gc.enable()


def test_a_full_load_frees_the_model_copies_and_index_it_replaces(loop):
    live = loop()
    live.feed(events(100, users=8, items=range(20), seed=4))
    early = live.store.current_version()
    live.feed(events(100, users=8, items=range(20), start=100, seed=5))
    served = live.runtime.served
    replaced = [weakref.ref(thing) for thing in (served.model, served._standby, served.index)]
    gc.disable()  # only reference counting may free them
    try:
        live.store.rollback(to=early, reason="test")  # a full load
        assert wait_for(lambda: live.runtime.version == early)
        assert wait_for(lambda: all(ref() is None for ref in replaced)), [ref() for ref in replaced]
    finally:
        gc.enable()
