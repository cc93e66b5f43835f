"""The two-tower model: shapes and the inner-product contract, the logQ correction on hand examples, learning
of co-consumed items, item features in the item tower, and deltas that rebuild the trainer's model exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.config import parse
from freshrec.embeddings.config import TableConfig
from freshrec.errors import ConfigError
from freshrec.features.items import ItemFeatureTable
from freshrec.interactions import Interactions, Query
from freshrec.model_state import public_state
from freshrec.models.base import Model, Recommender
from freshrec.models.twotower import (
    StreamingFrequency,
    TwoTowerConfig,
    TwoTowerModel,
    changes_every_item_vector,
    logq_logits,
)

U = np.uint64
HISTORY = 4
UNIVERSE = 40


def small(**overrides: object) -> TwoTowerConfig:
    settings_ = dict(dim=8, hidden=16, history_length=HISTORY, user_capacity=16, item_capacity=16, seed=1)
    settings_.update(overrides)
    return parse(TwoTowerConfig, settings_, "test")  # flat table keys: the legacy names still read


def features_table(item_ids: list[int], genres: list[list[str]]) -> ItemFeatureTable:
    return ItemFeatureTable.from_arrow(
        pa.table({"item_id": item_ids, "genres": pa.array(genres, pa.list_(pa.string()))}), "genres"
    )


def keys_of(raw: list[int] | np.ndarray) -> np.ndarray:
    from freshrec.preprocess.encode import encode_ids

    return encode_ids(np.asarray(raw, dtype=np.int64))


def random_batch(rng: np.random.Generator, now: float, size: int) -> Interactions:
    users = rng.integers(1, UNIVERSE, size).astype(U)
    items = rng.integers(1, UNIVERSE, size).astype(U)
    history = rng.integers(0, UNIVERSE, (size, HISTORY)).astype(U)  # 0: padding
    times = np.sort(now + rng.uniform(0, 3600.0, size))
    query = Query(users, times, history, np.where(history == 0, np.nan, times[:, None] - 60.0))
    negatives = rng.integers(1, UNIVERSE, (size, 3)).astype(U)
    return Interactions(query, items, np.full(size, np.nan), np.zeros(size, np.int8), negatives)


def test_shapes_and_inner_product_equals_score() -> None:
    model = TwoTowerModel(small())
    assert isinstance(model, Recommender) and isinstance(model, Model)
    rng = np.random.default_rng(0)
    for step in range(5):
        model.learn(random_batch(rng, 3600.0 * step, 8))
    query = random_batch(rng, 20_000.0, 5).query
    candidates = np.arange(1, UNIVERSE + 6, dtype=U)  # the last five unknown
    scores = model.score(query, candidates)
    users, items = model.user_vectors(query), model.item_vectors(candidates)
    assert scores.shape == (5, len(candidates)) and scores.dtype == np.float32
    assert users.shape == (5, 9) and items.shape == (len(candidates), 9)
    np.testing.assert_allclose(users @ items.T, scores, rtol=1e-5, atol=1e-5)
    # per-row candidates score like the shared ones
    per_row = np.stack([rng.permutation(candidates)[:7] for _ in range(5)])
    expected = np.take_along_axis(scores, np.searchsorted(candidates, per_row), axis=1)
    np.testing.assert_allclose(model.score(query, per_row), expected, rtol=1e-6, atol=1e-6)


def test_cold_users_and_unknown_items_get_finite_scores() -> None:
    model = TwoTowerModel(small())
    empty = Query(
        np.array([7, 8], dtype=U),
        np.array([0.0, 1e9]),
        np.zeros((2, HISTORY), U),
        np.full((2, HISTORY), np.nan),
    )
    scores = model.score(empty, np.array([1, 2, 3], dtype=U))  # nothing learned, nobody known
    assert scores.shape == (2, 3) and np.isfinite(scores).all()
    model.learn(random_batch(np.random.default_rng(1), 0.0, 6))
    short = Query.without_history(np.array([999], dtype=U), np.array([5.0]))  # no history columns at all
    assert np.isfinite(model.score(short, np.array([1, 500], dtype=U))).all()


def test_streaming_frequency_estimates_rates_per_step() -> None:
    frequency = StreamingFrequency(buckets=1024, ema=0.2)
    for step in range(120):
        keys = [1, 1, 1, 2] + ([3] if step % 4 == 0 else [])
        frequency.update(np.array(keys, dtype=U))
    q = frequency.probability(np.array([1, 2, 3, 4], dtype=U))
    # item 1: 3 per step, item 2: 1 per step, item 3: one every 4 steps, item 4: never (1 / steps so far)
    np.testing.assert_allclose(q, [3.0, 1.0, 0.25, 1 / 120], rtol=0.02)


def test_logq_correction_on_a_hand_example() -> None:
    # Two candidates with equal scores; the first is sampled 4x as often. Uncorrected, the softmax puts
    # equal mass on both; corrected, the rarely sampled one gets log(4) more logit: p = 4/5 vs 1/5.
    logits = logq_logits(torch.tensor([[1.0, 1.0]]), np.array([0.4, 0.1]))
    np.testing.assert_allclose(logits.numpy(), [[1.0 - np.log(0.4), 1.0 - np.log(0.1)]], rtol=1e-6)
    np.testing.assert_allclose(torch.softmax(logits, dim=1).numpy(), [[0.2, 0.8]], rtol=1e-6)
    # The loss of a positive on the popular column: -log(0.2); a constant factor on q changes nothing.
    loss = F.cross_entropy(logits, torch.tensor([0]))
    assert float(loss) == pytest.approx(-np.log(0.2), rel=1e-6)
    scaled = logq_logits(torch.tensor([[1.0, 1.0]]), np.array([4.0, 1.0]))
    assert float(F.cross_entropy(scaled, torch.tensor([0]))) == pytest.approx(float(loss), rel=1e-6)
    assert torch.equal(logq_logits(torch.ones(1, 2), np.array([0.4, 0.1]), weight=0.0), torch.ones(1, 2))


def co_consumption_batch(rng: np.random.Generator, step: int, size: int = 64) -> Interactions:
    """Each user takes an item a in 1..10, then either its partner a + 10 or one of the noise items 21..30."""
    half = size // 2
    users = np.tile(np.arange(step * half, (step + 1) * half, dtype=U) + 1, 2)
    first = rng.integers(1, 11, half).astype(U)
    second = np.where(rng.random(half) < 0.5, first + U(10), rng.integers(21, 31, half).astype(U))
    history = np.zeros((size, HISTORY), dtype=U)
    history[half:, -1] = first
    times = np.concatenate([np.full(half, 100.0 * step), np.full(half, 100.0 * step + 30.0)])
    query = Query(users, times, history, np.where(history == 0, np.nan, times[:, None] - 30.0))
    negatives = rng.integers(1, 31, (size, 4)).astype(U)
    items = np.concatenate([first, second])
    return Interactions(query, items, np.full(size, np.nan), np.zeros(size, np.int8), negatives)


def test_learning_ranks_the_co_consumed_item_up() -> None:
    model = TwoTowerModel(small(item_capacity=64, user_capacity=64))
    rng = np.random.default_rng(3)
    candidates = np.arange(1, 31, dtype=U)
    firsts = np.arange(1, 11, dtype=U)
    query = Query(
        np.full(10, 10_000, dtype=U),
        np.full(10, 1e6),
        np.concatenate([np.zeros((10, HISTORY - 1), U), firsts[:, None]], axis=1),
        np.full((10, HISTORY), 1e6 - 30.0),
    )

    def partner_ranks() -> np.ndarray:
        partners = model.score(query, candidates)[:, 10:20]  # rank among the ten possible partners
        own = partners[np.arange(10), np.arange(10)]
        return (partners >= own[:, None]).sum(axis=1) - 1  # ties count against

    losses = [model.learn(co_consumption_batch(rng, step)).loss for step in range(150)]
    after = partner_ranks()
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert (after == 0).mean() >= 0.8, after  # chance: 0.1


def test_item_features_change_item_vectors() -> None:
    genres = features_table([1, 2, 3], [["Comedy"], ["Comedy"], ["Horror"]])
    plain, featured = TwoTowerModel(small()), TwoTowerModel(small(), item_features=genres)
    keys = np.concatenate([keys_of([1, 2, 3]), keys_of([4])])  # item 4 has no features
    rows = keys_of([1, 2, 3, 4])
    batch = Interactions(
        Query.without_history(keys_of([100, 101, 102, 103]), np.arange(4.0)),
        rows,
        np.full(4, np.nan),
        np.zeros(4, np.int8),
        rows[::-1, None].copy(),
    )
    # same seed, same towers and id rows: only the feature embeddings differ
    plain_vectors, featured_vectors = plain.item_vectors(keys), featured.item_vectors(keys)
    assert not np.allclose(plain_vectors[:3], featured_vectors[:3])
    np.testing.assert_array_equal(plain_vectors[3], featured_vectors[3])
    # an item never seen (cold id row) still gets its genre: the two comedies' cold vectors are equal and
    # differ from the horror film's
    unseen = featured.item_vectors(keys)
    np.testing.assert_allclose(unseen[0], unseen[1])
    assert not np.allclose(unseen[0], unseen[2])
    # learning moves the feature embeddings, so an item's vector moves with others of its genre
    before = featured.item_vectors(keys)
    featured.learn(batch)
    assert not np.allclose(before, featured.item_vectors(keys))


def test_history_time_buckets_weigh_history_items_by_their_age() -> None:
    rng = np.random.default_rng(7)
    batch = random_batch(rng, 1e6, 16)
    query = batch.query
    query.history_keys[:] = rng.integers(1, UNIVERSE, (16, HISTORY)).astype(U)  # full histories
    query.history_times[:] = query.timestamps[:, None] - 60.0
    older = Query(query.user_keys, query.timestamps, query.history_keys, query.history_times.copy())
    older.history_times[:, 0] -= 30 * 86_400.0  # the oldest item a month earlier; the last one unchanged
    off, on = TwoTowerModel(small()), TwoTowerModel(small(history_time_buckets=32))
    np.testing.assert_array_equal(off.user_vectors(older), off.user_vectors(query))
    np.testing.assert_array_equal(on.user_vectors(older), on.user_vectors(query))  # logits start at 0
    for step in range(8):
        learned = random_batch(rng, 1e6 + 1e5 * step, 12)
        learned.query.history_times[:] -= rng.uniform(0, 1e7, learned.query.history_times.shape)
        on.learn(learned)
    assert np.abs(on.dense.time_logits.detach().numpy()).max() > 0  # learned, so published with dense.*
    assert not np.allclose(on.user_vectors(older), on.user_vectors(query))


# ---------------------------------------------------------------------- publishing
FACTORIES = {
    "shared": lambda: TwoTowerModel(small(user_capacity=6, item_capacity=8)),
    "separate-history-ttl-admission": lambda: TwoTowerModel(
        small(
            user_capacity=6,
            item_capacity=8,
            share_history_embeddings=False,
            admit_after=2,
            ttl_seconds=3 * 3600.0,
        )
    ),
    "features-lfu": lambda: TwoTowerModel(
        small(user_capacity=5, item_capacity=7, eviction="lfu", frequency_buckets=16),
        item_features=features_table(list(range(1, 20)), [["a", "b"][: i % 3] for i in range(1, 20)]),
    ),
}


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Public arrays equal (a replica's private ones, such as its row initialiser's position, are its own)."""
    a, b = public_state(a), public_state(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_same_scores(a: TwoTowerModel, b: TwoTowerModel, rng: np.random.Generator, now: float) -> None:
    query = random_batch(rng, now, 6).query
    candidates = np.arange(1, UNIVERSE + 5, dtype=U)
    np.testing.assert_array_equal(a.score(query, candidates), b.score(query, candidates))
    np.testing.assert_array_equal(a.item_vectors(candidates), b.item_vectors(candidates))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drain_every=st.integers(1, 3), batches=st.integers(3, 10))
def test_replica_fed_only_deltas_equals_the_trainer(
    name: str, seed: int, drain_every: int, batches: int
) -> None:
    rng = np.random.default_rng(seed)
    trainer, replica = FACTORIES[name](), FACTORIES[name]()
    replica.apply_changes(trainer.drain_changes())
    now = 0.0
    for step in range(batches):
        now += float(rng.choice([60.0, 3600.0, 5 * 3600.0]))
        trainer.learn(random_batch(rng, now, int(rng.integers(1, 6))))
        if (step + 1) % drain_every == 0 or step == batches - 1:
            changes = trainer.drain_changes()
            assert changes.complete
            assert changes_every_item_vector(changes)  # a step ran: the dense weights travel
            assert not set(changes.rows) & set(changes.replaced)
            replica.apply_changes(changes)
            state = trainer.state_dict()
            assert_same_state(state, replica.state_dict())
            assert all(np.isfinite(a).all() for a in state.values() if a.dtype.kind == "f")
            assert_same_scores(trainer, replica, rng, now + 60.0)
    changes = trainer.drain_changes()  # nothing happened since: no rows, no dense weights
    assert changes.changed_rows == 0 and not changes_every_item_vector(changes)
    replica.apply_changes(changes)
    assert_same_state(trainer.state_dict(), replica.state_dict())


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_round_trips_through_safetensors(name: str, tmp_path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(5)
    trainer = FACTORIES[name]()
    for step in range(6):
        trainer.learn(random_batch(rng, 3600.0 * step, 5))
    path = tmp_path / "state.safetensors"
    safetensors_numpy.save_file(trainer.state_dict(), str(path))
    copy = FACTORIES[name]()
    copy.load_state_dict(safetensors_numpy.load_file(str(path)))
    assert_same_state(trainer.state_dict(), copy.state_dict())
    assert_same_scores(trainer, copy, rng, 30_000.0)
    assert copy.drain_changes().changed_rows == 0
    # Adam's moments (adam.*) and the frequency estimate (frequency.*) are part of the state compared above
    assert any(name.startswith("adam.") for name in copy.state_dict())


def test_state_refuses_another_feature_table() -> None:
    featured = TwoTowerModel(small(), item_features=features_table([1], [["a"]]))
    other = TwoTowerModel(small(), item_features=features_table([1], [["b"]]))
    with pytest.raises(ConfigError, match="fingerprint"):
        other.load_state_dict(featured.state_dict())


def test_user_and_item_rows_take_their_own_adagrad_steps() -> None:
    # Row-wise Adagrad's first step moves a row by lr * g / sqrt(mean g^2): root-mean-square exactly lr.
    steps = dict(embedding_learning_rate=0.2, user_embedding_learning_rate=0.05)
    model = TwoTowerModel(small(**steps, user_capacity=64, item_capacity=64))
    batch = random_batch(np.random.default_rng(0), 1000.0, 12)
    every_key = np.arange(1, UNIVERSE, dtype=U)
    for table in (model.users, model.items):  # admit first: admission re-initialises a row
        table.rows_for_training(every_key, 0.0)
    users_before = model.users._weights.clone()
    items_before = model.items._weights.clone()
    model.learn(batch)
    for table, before, lr in ((model.users, users_before, 0.05), (model.items, items_before, 0.2)):
        moved = table._weights - before  # the whole row: Adagrad's mean runs over every column
        step = moved[moved.abs().sum(dim=1) > 0]
        assert len(step) > 0
        rms = step.pow(2).mean(dim=1).sqrt()
        assert torch.allclose(rms, torch.full_like(rms, lr), rtol=1e-3), (lr, rms)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="dim"):
        TwoTowerConfig(dim=10)
    with pytest.raises(ConfigError, match="history_decay"):
        TwoTowerConfig(history_decay=0.0)
    with pytest.raises(ConfigError, match="history_time_buckets"):
        TwoTowerConfig(history_time_buckets=-1)
    with pytest.raises(ConfigError, match="learning_rate"):
        TwoTowerConfig(users=TableConfig(learning_rate=0.0))
    with pytest.raises(ConfigError, match="power of two"):
        StreamingFrequency(buckets=12, ema=0.1)
