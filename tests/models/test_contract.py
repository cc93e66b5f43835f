"""One contract for every registered model, the way River's estimator checks run every estimator: each model
the registry knows (and any added later, with no change here) is learned through the live loop, published
through the gate to a real store, served by a store follower, replicated from deltas alone, and saved and
loaded by the library API; every copy must answer exactly as the trainer's model does."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import freshrec
from freshrec.evaluation.gate import GateConfig
from freshrec.events import KindWeights
from freshrec.features.catalogue import Catalogue
from freshrec.interactions import Query
from freshrec.model_state import public_state
from freshrec.models.base import Model, RatingPredictor, VectorModel
from freshrec.models.registry import ModelSpec, model_names
from freshrec.preprocess.pipeline import IngestPipeline
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.serving.ranking import top_items
from freshrec.serving.served import ServedModel
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig

#: Every model the registry knows when the tests are collected.
MODELS = model_names()


def stream_batches(n: int = 1200, seed: int = 5):
    """Valid event batches of a small synthetic stream (ratings among them, for the rating model)."""
    stream = SyntheticStream(
        SyntheticConfig(n_events=n, n_users=80, n_items=120, n_clusters=6, seed=seed, rating_fraction=0.5)
    )
    validator = EventValidator()
    return [validator.validate(raw).events for raw in stream.batches(300)]


def assert_same_public_state(a: Model, b: Model, name: str) -> None:
    left, right = public_state(a.state_dict()), public_state(b.state_dict())
    assert sorted(left) == sorted(right), name
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=f"{name}: {key}")


def probe(model: Model, features, items: np.ndarray) -> np.ndarray:
    """Scores of every known item for a few known and unknown users, at their live histories."""
    users = np.array([1, 2, 3, 10**9], dtype=np.uint64)
    query = features.query(users, np.full(len(users), 2e9), length=model.history_length)
    return model.score(query, items)


@pytest.mark.parametrize("name", MODELS)
def test_learns_and_a_replica_fed_only_deltas_answers_exactly_alike(name: str) -> None:
    spec = ModelSpec.of(name)
    model = spec.build()
    assert isinstance(model, Model) and model.name == name
    assert ModelSpec.from_dict(spec.as_dict()) == spec  # what a version records rebuilds the same model
    replica = spec.build()
    replica.apply_changes(model.drain_changes())  # construction-time state (cold rows, initial weights)
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=100, negatives=3))
    loop = TrainingLoop(trainer)
    for batch in stream_batches():
        loop.feed_events(batch)
        stats = trainer.last_stats
        assert stats.loss is None or np.isfinite(stats.loss), f"{name} diverged"
        replica.apply_changes(model.drain_changes())
        assert_same_public_state(replica, model, name)
    items = trainer.features.candidates
    before = public_state(model.state_dict())
    scores = probe(model, trainer.features, items)
    assert scores.shape == (4, len(items)) and np.isfinite(scores).all(), name
    np.testing.assert_array_equal(probe(replica, trainer.features, items), scores)
    if model.scores_rows_alike:  # what it claims: every row one vector times a positive factor
        users = np.array([1, 2, 3, 10**9], dtype=np.uint64)
        times = np.array([1.7e9, 1.7e9 + 3600, 1.7e9 + 86_400 * 30, 1.7e9 + 5.0])
        rows = model.score(trainer.features.query(users, times, length=model.history_length), items)
        factors = rows.max(axis=1, keepdims=True)
        assert (factors > 0).all(), name
        np.testing.assert_allclose(
            rows / factors, np.broadcast_to(rows[:1] / factors[:1], rows.shape), rtol=1e-6
        )
    for key, array in public_state(model.state_dict()).items():  # scoring changes nothing
        np.testing.assert_array_equal(array, before[key], err_msg=f"{name}: score changed {key}")
    # Loading a state is not a change to publish.
    copy = spec.build()
    copy.load_state_dict(model.state_dict())
    assert copy.drain_changes().changed_rows == 0, name
    # Its id tables (what the dashboard shows) hold the ids it learned, within their capacity; a replica's
    # public state is the same, so are its tables.
    tables = model.table_sizes()
    assert tables == replica.table_sizes(), name
    for table, sizes in tables.items():
        assert 0 < sizes["live_rows"] <= sizes["capacity"], f"{name}: {table}"
        if "admitted" in sizes:
            assert sizes["admitted"] - sizes["evicted"] - sizes["expired"] == sizes["live_rows"], name


@pytest.mark.parametrize("name", MODELS)
def test_published_through_the_gate_and_served_from_the_store(name: str, tmp_path: Path) -> None:
    spec = ModelSpec.of(name)
    model = spec.build()
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, snapshot_every=3, gate=GateConfig(tolerance=1.0)),
            metadata={"model": spec.as_dict()},
        )
        trainer = OnlineTrainer(model, TrainerConfig(batch_size=100, negatives=3))
        loop = TrainingLoop(trainer, publisher=publisher)
        served = ServedModel(ModelStore.open(tmp_path / "store"), threading.Lock())
        batches = stream_batches()
        for batch in batches[:2]:
            loop.feed_events(batch)
        served.load_current()
        for batch in batches[2:]:  # the server follows delta by delta (and through snapshots)
            loop.feed_events(batch)
            served.advance_to(store.current_version())
        kinds = {info.kind for info in store.versions()}
        assert {"snapshot", "delta"} <= kinds, f"{name} published {kinds}"
        assert served.version == store.current_version() == publisher.version
        # What is served is what the publisher published (its shadow), rebuilt from the version's spec.
        assert_same_public_state(served.model, publisher.shadow, name)
        items = trainer.features.candidates
        np.testing.assert_array_equal(
            probe(served.model, trainer.features, items), probe(publisher.shadow, trainer.features, items)
        )
        # A vector model is answered from an item index holding exactly the items with a vector.
        if isinstance(served.model, VectorModel):
            assert served.index is not None
            assert sorted(served.index.keys().tolist()) == sorted(served.model.vector_items().tolist())
        else:
            assert served.index is None


@pytest.mark.parametrize("name", MODELS)
def test_saved_and_loaded_it_answers_and_learns_on_exactly_alike(name: str, tmp_path: Path) -> None:
    batches = stream_batches(n=900, seed=8)
    rec = freshrec.Recommender(name, batch_size=100)
    for batch in batches[:2]:
        rec.learn(batch)
    rec.save(tmp_path / name)
    loaded = freshrec.Recommender.load(tmp_path / name)
    users = [int(u) for u in np.unique(batches[0].user_id)[:12]] + ["nobody"]
    assert [loaded.recommend(u, k=10) for u in users] == [rec.recommend(u, k=10) for u in users]
    for each in (rec, loaded):
        for batch in batches[2:]:
            each.learn(batch)
    assert [loaded.recommend(u, k=10) for u in users] == [rec.recommend(u, k=10) for u in users], name
    assert_same_public_state(loaded.model, rec.model, name)
    # Private state too: the next rows are initialised and placed alike.
    for key, array in rec.model.state_dict().items():
        np.testing.assert_array_equal(loaded.model.state_dict()[key], array, err_msg=f"{name}: {key}")


def test_exact_top_k_and_the_catalogue_agree_for_a_vector_model() -> None:
    """Retrieval's exact path and a vector model's own scores name the same items."""
    model = ModelSpec.of("bpr-mf", {"dim": 8}).build()
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=100))
    loop = TrainingLoop(trainer)
    for batch in stream_batches(600):
        loop.feed_events(batch)
    catalogue = trainer.features.catalogue
    assert isinstance(catalogue, Catalogue)
    query = Query.without_history(np.array([1], np.uint64), np.array([2e9]))
    keys, scores = top_items(model, query, catalogue, np.zeros(0, np.uint64), k=5)
    dots = (model.user_vectors(query) @ model.item_vectors(keys).T)[0]
    np.testing.assert_allclose(scores, dots, rtol=1e-5, atol=1e-6)


def learned_with_weights(model: Model, weigh) -> dict[str, np.ndarray]:
    """The public state of `model` after learning the contract stream with each batch's weights set by
    ``weigh(kinds)`` (None: unweighted)."""
    features = OnlineTrainer(model, TrainerConfig(batch_size=100, negatives=3, evaluate=False)).features
    pipeline = IngestPipeline()
    for events in stream_batches():
        batch = pipeline.accept(events).events
        for start in range(0, len(batch), 100):
            interactions = features.observe(batch.take(slice(start, start + 100)), negatives=3).interactions()
            interactions.weights = weigh(interactions.kinds)
            model.learn(interactions)
    return public_state(model.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_kind_weights_change_what_an_implicit_model_learns_and_weights_of_1_do_not(name: str) -> None:
    spec = ModelSpec.of(name)
    start = spec.build().state_dict()

    def fresh() -> Model:
        model = spec.build()
        model.load_state_dict(start)  # the same starting point for every variant
        return model

    unweighted = learned_with_weights(fresh(), lambda kinds: None)
    ones = learned_with_weights(fresh(), lambda kinds: np.ones(len(kinds), np.float32))
    weighted = learned_with_weights(fresh(), KindWeights().of)
    assert sorted(unweighted) == sorted(ones) == sorted(weighted), name
    for key in unweighted:  # a weight of 1 is no weight (up to float rounding of the weighted loss)
        np.testing.assert_allclose(ones[key], unweighted[key], rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")
    differs = [key for key in unweighted if not np.array_equal(weighted[key], unweighted[key])]
    if isinstance(spec.build(), RatingPredictor):  # explicit ratings: the value is the signal, not the kind
        assert differs == [], f"{name} is explicit and must ignore kind weights, changed {differs}"
    else:
        assert differs, f"{name} learned the same with kind weights as without"
