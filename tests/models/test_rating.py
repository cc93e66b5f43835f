"""RatingModel: clipped predictions, learning recovers known biases, biases follow drift, micro-batches stay
stable, top-K and retrieval agree, and the state publishes exactly (deltas and full round trips)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.events import KIND_CODES
from freshrec.interactions import Interactions, Query
from freshrec.models.base import Model, Recommender
from freshrec.models.rating import RatingConfig, RatingModel

U = np.uint64
RATING = KIND_CODES["rating"]


def rated(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, times: np.ndarray) -> Interactions:
    query = Query.without_history(users.astype(U), times.astype(np.float64))
    n = len(users)
    return Interactions(
        query, items.astype(U), ratings.astype(np.float64), np.full(n, RATING, np.int8), np.zeros((n, 0), U)
    )


def small(**overrides: object) -> RatingModel:
    settings_ = {"dim": 8, "user_capacity": 64, "item_capacity": 64} | overrides
    return RatingModel(RatingConfig(**settings_))  # type: ignore[arg-type]


def synthetic_stream(seed: int, n: int, users: int = 30, items: int = 40):
    """Ratings = 3.5 + known user bias + known item bias + noise (clipped to 1..5), in random order."""
    rng = np.random.default_rng(seed)
    user_bias = rng.normal(0, 0.6, users)
    item_bias = rng.normal(0, 0.6, items)
    u = rng.integers(0, users, n)
    i = rng.integers(0, items, n)
    r = np.clip(3.5 + user_bias[u] + item_bias[i] + rng.normal(0, 0.3, n), 1, 5)
    return u + 1, i + 1, r, np.arange(n, dtype=np.float64), user_bias, item_bias


def prequential_errors(model: RatingModel, u, i, r, t, batch_size: int) -> np.ndarray:
    errors = np.empty(len(r))
    for start in range(0, len(r), batch_size):
        part = slice(start, start + batch_size)
        batch = rated(u[part], i[part], r[part], t[part])
        errors[part] = model.predict_ratings(batch.query, batch.item_keys) - r[part]
        model.learn(batch)
    return errors


def test_is_a_recommender_and_publishable() -> None:
    model = small()
    assert isinstance(model, Recommender)
    assert isinstance(model, Model)
    assert model.name == "rating-mf"


def test_predictions_are_clipped_to_the_scale_and_finite_for_unknown_ids() -> None:
    fresh = small()
    query = Query.without_history(np.array([1, 2, 999], dtype=U), np.zeros(3))
    items = np.array([1, 2, 777], dtype=U)
    assert fresh.predict_ratings(query, items).tolist() == [3.0, 3.0, 3.0]  # mid-scale before any rating
    model = small(min_rating=1.0, max_rating=5.0)
    model.learn(rated(np.array([1, 2]), np.array([1, 2]), np.array([4.0, 2.0]), np.zeros(2)))
    slots = model.users.index.lookup(np.array([1, 2], dtype=U))
    model.users.bias[slots] = [10.0, -10.0]  # raw predictions far outside the scale
    predicted = model.predict_ratings(query, items)
    assert predicted.dtype == np.float64
    assert predicted.tolist()[:2] == [5.0, 1.0]  # clipped, not extrapolated
    assert predicted[2] == pytest.approx(3.0)  # unknown user and item: the global mean
    assert model.global_mean == 3.0


def test_learning_recovers_known_user_and_item_biases() -> None:
    u, i, r, t, user_bias, item_bias = synthetic_stream(seed=0, n=6000)
    model = small()
    errors = prequential_errors(model, u, i, r, t, batch_size=16)
    first, last = np.sqrt(np.mean(errors[:100] ** 2)), np.sqrt(np.mean(errors[-1000:] ** 2))
    assert last < 0.5 * first  # learning cuts the error by more than half
    assert last < 0.35  # close to the noise (0.3)
    learned_users = model.users.bias[model.users.index.lookup(np.arange(1, 31, dtype=U))]
    learned_items = model.items.bias[model.items.index.lookup(np.arange(1, 41, dtype=U))]
    # Biases are identified up to a shared offset (absorbed by the global mean): compare centred.
    assert np.corrcoef(learned_users, user_bias)[0, 1] > 0.9
    assert np.corrcoef(learned_items, item_bias)[0, 1] > 0.9


def test_micro_batches_learn_as_well_as_single_events_without_blowing_up() -> None:
    """A user with hundreds of ratings in one batch must not take hundreds of full steps at once."""
    u, i, r, t, *_ = synthetic_stream(seed=1, n=2000, users=5)  # few users: many repeats per batch
    single = prequential_errors(small(), u, i, r, t, batch_size=1)
    batched_model = small()
    batched = prequential_errors(batched_model, u, i, r, t, batch_size=256)
    assert np.all(np.isfinite(batched))
    assert np.abs(batched_model.users.bias).max() < 3.0
    late = slice(-700, None)  # once both have warmed up
    assert np.sqrt(np.mean(batched[late] ** 2)) < np.sqrt(np.mean(single[late] ** 2)) + 0.03


def test_user_bias_follows_drift() -> None:
    """A user whose taste drops from +1 to -1: the floored step tracks it, a pure running mean cannot."""
    rng = np.random.default_rng(2)
    n = 5000
    u = np.where(np.arange(n) % 5 == 0, 1, rng.integers(2, 40, n))  # user 1 rates every 5th event
    i = rng.integers(1, 30, n)
    mood = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    r = np.clip(3.0 + np.where(u == 1, mood, 0.0) + rng.normal(0, 0.2, n), 1, 5)
    t = np.arange(n, dtype=np.float64)

    query = Query.without_history(np.ones(10, dtype=U), np.zeros(10))
    items = np.arange(1, 11, dtype=U)

    def user_one_mean_prediction(model: RatingModel) -> float:
        return float(model.predict_ratings(query, items).mean())

    # Biases only (no factors, no scale), so nothing else can absorb the drift; floor 0 is the lifetime
    # running mean of the user's residuals.
    biases_only = {"factor_learning_rate": 0.0, "scale_learning_rate": 0.0, "init_std": 0.0}
    tracking, frozen = small(**biases_only), small(user_bias_floor=0.0, **biases_only)
    half = slice(0, n // 2)
    for model in (tracking, frozen):
        prequential_errors(model, u[half], i[half], r[half], t[half], batch_size=16)
    assert user_one_mean_prediction(tracking) > 3.7  # the +1 level is learned by both
    assert user_one_mean_prediction(frozen) > 3.7
    rest = slice(n // 2, None)
    late_errors = [prequential_errors(m, u[rest], i[rest], r[rest], t[rest], 16) for m in (tracking, frozen)]
    assert user_one_mean_prediction(tracking) < 2.3  # moved to the new level (2)
    assert user_one_mean_prediction(frozen) > 2.6  # the lifetime mean sits between the two levels
    ones = u[rest] == 1
    rmse = [float(np.sqrt(np.mean(e[ones] ** 2))) for e in late_errors]
    assert rmse[0] < rmse[1]


def test_events_without_a_rating_are_not_learned() -> None:
    model = small()
    batch = rated(np.array([1, 2]), np.array([3, 4]), np.array([np.nan, np.nan]), np.zeros(2))
    assert model.learn(batch).loss is None
    assert len(model) == 0 and model.global_mean == 3.0


def test_score_ranks_like_user_and_item_vectors() -> None:
    u, i, r, t, *_ = synthetic_stream(seed=3, n=800)
    model = small()
    prequential_errors(model, u, i, r, t, batch_size=32)
    query = Query.without_history(np.array([1, 2, 500], dtype=U), np.zeros(3))
    candidates = np.arange(1, 45, dtype=U)  # 41..44 never seen
    scores = model.score(query, candidates)
    assert scores.shape == (3, 44) and scores.dtype == np.float32 and np.isfinite(scores).all()
    dots = model.user_vectors(query) @ model.item_vectors(candidates).T
    np.testing.assert_allclose(scores - scores[:, :1], dots - dots[:, :1], atol=1e-4)
    per_row = model.score(query, np.tile(candidates, (3, 1)))
    np.testing.assert_allclose(per_row, scores, atol=1e-5)
    # popularity_weight 0: the score is the unclipped predicted rating
    plain = RatingModel(dataclasses.replace(model.config, popularity_weight=0.0))
    plain.load_state_dict(model.state_dict())
    predicted = plain.predict_ratings(
        Query.without_history(np.full(44, 1, dtype=U), np.zeros(44)), candidates
    )
    inside = (predicted > 1) & (predicted < 5)
    np.testing.assert_allclose(plain.score(query, candidates)[0][inside], predicted[inside], atol=1e-4)


def test_invalid_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="min_rating"):
        RatingConfig(min_rating=5.0, max_rating=1.0)
    with pytest.raises(ConfigError, match="user_bias_floor"):
        RatingConfig(user_bias_floor=1.5)
    with pytest.raises(ConfigError, match="dim"):
        RatingConfig(dim=0)


# ---------------------------------------------------------------------- publishing
UNIVERSE = 30  # keys 1..30 against capacities of 6-8: eviction on nearly every batch


def random_rated_batch(rng: np.random.Generator, now: float, size: int) -> Interactions:
    values = rng.integers(1, 6, size).astype(np.float64)
    values[rng.random(size) < 0.2] = np.nan  # some events carry no rating
    return rated(
        rng.integers(1, UNIVERSE, size),
        rng.integers(1, UNIVERSE, size),
        values,
        np.sort(now + rng.uniform(0, 60.0, size)),
    )


def tiny(eviction: str = "lru") -> RatingModel:
    return small(dim=4, user_capacity=6, item_capacity=8, eviction=eviction, seed=5)


def assert_same(a: RatingModel, b: RatingModel, rng: np.random.Generator) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)
    query = Query.without_history(rng.integers(1, UNIVERSE + 3, 5).astype(U), np.zeros(5))
    candidates = np.arange(1, UNIVERSE + 3, dtype=U)
    np.testing.assert_array_equal(a.score(query, candidates), b.score(query, candidates))
    np.testing.assert_array_equal(
        a.predict_ratings(query, candidates[:5]), b.predict_ratings(query, candidates[:5])
    )


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    drain_every=st.integers(1, 4),
    batches=st.integers(3, 12),
    eviction=st.sampled_from(["lru", "lfu"]),
)
def test_replica_fed_only_deltas_equals_the_trainer(
    seed: int, drain_every: int, batches: int, eviction: str
) -> None:
    rng = np.random.default_rng(seed)
    trainer, replica = tiny(eviction), tiny(eviction)
    replica.apply_changes(trainer.drain_changes())
    for step in range(batches):
        trainer.learn(random_rated_batch(rng, 100.0 * step, int(rng.integers(1, 7))))
        if (step + 1) % drain_every == 0 or step == batches - 1:
            changes = trainer.drain_changes()
            assert changes.complete
            assert not set(changes.rows) & set(changes.replaced)
            replica.apply_changes(changes)
            assert_same(trainer, replica, rng)
            state = trainer.state_dict()
            assert all(np.isfinite(a).all() for a in state.values() if a.dtype.kind == "f")
    changes = trainer.drain_changes()
    assert changes.changed_rows == 0 and not changes.replaced
    replica.apply_changes(changes)
    assert_same(trainer, replica, rng)


def test_state_round_trips_through_safetensors_and_keeps_taking_deltas(tmp_path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(11)
    trainer = tiny()
    for step in range(10):
        trainer.learn(random_rated_batch(rng, 100.0 * step, 6))
    path = tmp_path / "rating.safetensors"
    safetensors_numpy.save_file(trainer.state_dict(), str(path))
    copy = tiny()
    copy.load_state_dict(safetensors_numpy.load_file(str(path)))
    assert_same(trainer, copy, rng)
    assert copy.drain_changes().changed_rows == 0  # loading is not a change to publish
    trainer.drain_changes()
    trainer.learn(random_rated_batch(rng, 5000.0, 6))
    copy.apply_changes(trainer.drain_changes())
    assert_same(trainer, copy, rng)
    # Learning the same batch on both keeps them equal: new rows start from the id, not from an RNG.
    batch = random_rated_batch(rng, 6000.0, 6)
    trainer.learn(batch)
    copy.learn(batch)
    assert_same(trainer, copy, rng)


def test_load_state_dict_refuses_another_shape() -> None:
    with pytest.raises(ConfigError, match="users.bias"):
        small(user_capacity=10).load_state_dict(small(user_capacity=11).state_dict())


def test_rows_are_bounded_by_capacity() -> None:
    model = tiny()
    rng = np.random.default_rng(4)
    for step in range(20):
        model.learn(random_rated_batch(rng, 10.0 * step, 5))
    assert len(model) <= 6 and len(model.items.index) <= 8


def test_ratings_earlier_in_the_batch_move_the_prediction_before_they_are_learned():
    """A new user rates five films 5 in one micro-batch: the trainer's live history carries those ratings,
    and each later prediction moves toward 5 although nothing was learned yet."""
    from freshrec.events import Event, EventBatch
    from freshrec.training.online import OnlineTrainer, TrainerConfig

    model = RatingModel(RatingConfig(user_capacity=64, item_capacity=64, dim=4))
    trainer = OnlineTrainer(model, TrainerConfig(batch_size=64, k=1))
    # Warm-up: every film averages 3 over other users (learned), then the newcomer's burst in one batch.
    warm = [Event(f"w{n}", n, f"u{n % 8}", f"f{n % 6}", "rating", 3.0) for n in range(48)]
    trainer.process(EventBatch.from_events(warm))
    burst = [Event(f"b{n}", 100 + n, "newcomer", f"f{n}", "rating", 5.0) for n in range(6)]
    query = trainer.features.history.query_and_record(
        _keys([e.user_id for e in burst]),
        _keys([e.item_id for e in burst]),
        np.array([e.timestamp for e in burst]),
        np.array([e.value for e in burst]),
    )
    predicted = model.predict_ratings(query, _keys([e.item_id for e in burst]))
    assert predicted[0] < 3.3  # nothing known of the newcomer yet
    assert np.all(np.diff(predicted) > 0) and predicted[-1] > predicted[0] + 0.8
    # The same rows without history values: the model has nothing to correct with.
    from freshrec.interactions import Query

    blind = Query(query.user_keys, query.timestamps, query.history_keys, query.history_times)
    assert np.allclose(
        model.predict_ratings(blind, _keys([e.item_id for e in burst])), predicted[0], atol=0.05
    )


def _keys(ids):
    from freshrec.preprocess.encode import encode_ids

    return encode_ids(np.array(ids, dtype=object))
