"""CooccurrenceModel: pair weights by hand, the neighbour bound, eviction, decay, finite and pure scoring."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.features.history import HistoryConfig, UserHistory
from freshrec.interactions import Interactions, Query
from freshrec.models.base import Recommender, VectorModel
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel

DAY = 86_400.0


def exact(**overrides: object) -> CooccurrenceConfig:
    """A small config whose scores are plain sums (no popularity damping, no tie-breaker, no decay)."""
    values: dict[str, object] = {
        "capacity": 64,
        "max_neighbors": 8,
        "history_length": 2,
        "recency_decay": 0.5,
        "popularity_exponent": 0.0,
        "half_life_days": None,
        "tie_breaker": 0.0,
    }
    values.update(overrides)
    return CooccurrenceConfig(**values)  # type: ignore[arg-type]


class Stream:
    """Feeds (user, item, time) events to a model with live per-event histories, as the trainer does."""

    def __init__(self, model: CooccurrenceModel, history_length: int | None = None) -> None:
        self.model = model
        self.history = UserHistory(HistoryConfig(history_length or model.history_length, 1_000))

    def learn(self, users: list[int], items: list[int], times: list[float] | None = None) -> None:
        user_keys = np.array(users, dtype=np.uint64)
        item_keys = np.array(items, dtype=np.uint64)
        stamps = np.array(times if times is not None else [0.0] * len(users), dtype=np.float64)
        query = self.history.query_and_record(user_keys, item_keys, stamps)
        n = len(users)
        self.model.learn(
            Interactions(query, item_keys, np.full(n, np.nan), np.zeros(n, np.int8), item_keys[:, None])
        )

    def ask(self, user: int, candidates: list[int], time: float = 0.0) -> np.ndarray:
        query = self.history.query(np.array([user], dtype=np.uint64), np.array([time]))
        return self.model.score(query, np.array(candidates, dtype=np.uint64))[0]


def query_of(history: list[list[int]], times: list[float] | None = None) -> Query:
    keys = np.array(history, dtype=np.uint64)
    n = len(history)
    stamps = np.array(times if times is not None else [0.0] * n, dtype=np.float64)
    return Query(np.arange(1, n + 1, dtype=np.uint64), stamps, keys, np.zeros(keys.shape))


def state(model: CooccurrenceModel) -> list[np.ndarray]:
    index = model._items.state_dict()
    return [model._neighbor_keys.copy(), model._weights.copy(), model._counts.copy(), *index.values()]


def test_is_a_recommender_without_item_vectors() -> None:
    model = CooccurrenceModel(exact())
    assert isinstance(model, Recommender)
    assert model.name == "cooccurrence" and model.history_length == 2
    assert not isinstance(model, VectorModel)


def test_pair_weights_of_a_hand_made_sequence() -> None:
    stream = Stream(CooccurrenceModel(exact()))
    stream.learn([7, 7, 7], [1, 2, 3])  # user 7: item 1, then 2 (after 1), then 3 (after 1, 2)
    model = stream.model
    # Age 0 weighs 1, age 1 weighs 0.5; symmetric: w(i, h) = w(h, i).
    assert model.neighbors(1) == {2: 1.0, 3: 0.5}
    assert model.neighbors(2) == {1: 1.0, 3: 1.0}
    assert model.neighbors(3) == {2: 1.0, 1: 0.5}
    # History [2, 3] (3 most recent): score(c) = w(3, c) + 0.5 * w(2, c).
    np.testing.assert_allclose(stream.ask(7, [1, 2, 3, 99]), [1.0 * 0.5 + 0.5 * 1.0, 1.0, 0.5, 0.0])


def test_asymmetric_weights_only_point_forward() -> None:
    stream = Stream(CooccurrenceModel(exact(symmetric=False)))
    stream.learn([7, 7, 7], [1, 2, 3])
    assert stream.model.neighbors(1) == {2: 1.0, 3: 0.5}
    assert stream.model.neighbors(3) == {}


def test_a_repeated_candidate_gets_the_same_score_in_every_copy() -> None:
    # Regression: the candidate mapping found one column per key, so [7, 7, 6, 6] scored only the first 7
    # and the first 6 (the copies got the tie-breaker alone).
    stream = Stream(CooccurrenceModel(exact(popularity_exponent=0.5, tie_breaker=1e-3)))
    stream.learn([1, 1, 1, 2, 2], [5, 7, 6, 5, 6])
    repeated = stream.ask(1, [7, 7, 6, 6, 99, 7])
    distinct = stream.ask(1, [7, 6, 99])
    assert distinct[0] > 0 and distinct[1] > 0
    np.testing.assert_array_equal(repeated, distinct[[0, 0, 1, 1, 2, 0]])


def test_popularity_damping_and_tie_breaker() -> None:
    stream = Stream(CooccurrenceModel(exact(popularity_exponent=0.5, tie_breaker=1e-3)))
    stream.learn([1, 1, 2, 2, 3, 4, 4], [10, 20, 10, 30, 30, 30, 40])
    # Counts: 10 -> 2, 20 -> 1, 30 -> 3, 40 -> 1. User 5 has no history: popularity order only.
    cold = stream.ask(5, [20, 10, 30, 40, 99])
    assert np.argsort(-cold, kind="stable").tolist() == [2, 1, 0, 3, 4]
    assert cold.max() == pytest.approx(1e-3)
    # User 1 did 10 then 20: score(c) = w(20, c) + 0.5 w(10, c), divided by sqrt(count(c) + 1).
    # w(20, 10) = 1, w(10, 30) = 1 (user 2): score(10) = 1 / sqrt(3), score(30) = 0.5 / sqrt(4).
    warm = stream.ask(1, [10, 30, 40])
    top = 1 / np.sqrt(3)
    np.testing.assert_allclose(warm, [top + 1e-3 * top * 2 / 3, 0.25 + 1e-3 * top, 1e-3 * top / 3], rtol=1e-5)


def test_batching_does_not_change_the_weights() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(1, 6, 80).tolist()
    items = rng.integers(1, 9, 80).tolist()
    whole, single = (
        Stream(CooccurrenceModel(exact(max_neighbors=16))),
        Stream(CooccurrenceModel(exact(max_neighbors=16))),
    )
    whole.learn(users, items)
    for user, item in zip(users, items, strict=True):
        single.learn([user], [item])
    for item in range(1, 9):
        assert whole.model.neighbors(item) == pytest.approx(single.model.neighbors(item), rel=1e-6)


def test_a_full_row_takes_a_newcomer_only_if_it_is_stronger() -> None:
    model = CooccurrenceModel(exact(max_neighbors=2, history_length=1, symmetric=False))
    stream = Stream(model)
    # Row of item 1: neighbour 2 twice, neighbour 3 once.
    stream.learn([1, 1, 2, 2, 3, 3], [1, 2, 1, 2, 1, 3])
    assert model.neighbors(1) == {2: 2.0, 3: 1.0}
    stream.learn([4, 4], [1, 5])  # 5 weighs 1, as much as the weakest (3): the current neighbour stays
    assert model.neighbors(1) == {2: 2.0, 3: 1.0}
    stream.learn([5, 5, 6, 6], [1, 6, 1, 6])  # 6 arrives twice in one batch: 2 > 1, it replaces 3
    assert model.neighbors(1) == {2: 2.0, 6: 2.0}


def test_rows_never_exceed_the_bound_and_memory_stays_constant() -> None:
    model = CooccurrenceModel(
        CooccurrenceConfig(capacity=300, max_neighbors=6, history_length=10, half_life_days=1.0)
    )
    stream = Stream(model)
    before = model.nbytes
    rng = np.random.default_rng(2)
    for step in range(20):  # 4,000 events over 2,000 items: far more pairs than 300 x 6 cells
        users = rng.integers(1, 50, 200).tolist()
        items = rng.integers(1, 2_000, 200).tolist()
        stream.learn(users, items, [step * 3_600.0] * 200)
    assert model.nbytes == before
    assert model._neighbor_keys.shape == (300, 6) and len(model) == 300
    live = model._items.live_slots()
    filled = (model._neighbor_keys[live] != 0).sum(axis=1)
    assert filled.max() == 6
    for slot in live[:50]:
        keys = model._neighbor_keys[slot][model._neighbor_keys[slot] != 0]
        assert len(set(keys.tolist())) == len(keys)  # a neighbour sits in a row at most once
        assert (model._weights[slot][model._neighbor_keys[slot] == 0] == 0).all()


def test_an_evicted_item_comes_back_with_an_empty_row() -> None:
    model = CooccurrenceModel(exact(capacity=3, eviction="lru"))
    stream = Stream(model)
    stream.learn([1, 1, 1], [10, 20, 30], [0.0, 1.0, 2.0])
    assert model.neighbors(10) == {20: 1.0, 30: 0.5}
    stream.learn([2], [40], [3.0])  # full: forgets item 10 (least recently acted on)
    assert model.neighbors(10) == {}
    slot_of_40 = int(model._items.lookup(np.array([40], dtype=np.uint64))[0])
    assert model.neighbors(40) == {} and model._counts[slot_of_40] == 1.0  # no trace of item 10's row
    # Rows that named item 10 keep naming it by key, not by the slot now owned by 40.
    assert model.neighbors(20) == {10: 1.0, 30: 1.0}
    stream.learn([3], [10], [4.0])  # 10 returns (evicting 20): a fresh row and count
    assert model.neighbors(10) == {}
    slot_of_10 = int(model._items.lookup(np.array([10], dtype=np.uint64))[0])
    assert model._counts[slot_of_10] == 1.0


def test_weights_decay_with_event_time_across_rebases() -> None:
    model = CooccurrenceModel(exact(half_life_days=1.0))
    stream = Stream(model)
    stream.learn([1, 1], [10, 20], [0.0, 0.0])
    stream.learn([2, 2], [30, 40], [DAY, DAY])
    assert model.neighbors(10, timestamp=2 * DAY) == pytest.approx({20: 0.25})
    assert model.neighbors(30, timestamp=2 * DAY) == pytest.approx({40: 0.5})
    # 100 days later, after origin rebases (every 32 half-lives): the same law, and nothing overflows.
    for day in range(3, 100, 10):
        stream.learn([3], [50 + day], [day * DAY])
    stream.learn([2], [20], [100 * DAY])  # user 2's history is [30, 40]
    assert model.clock.origin is not None and model.clock.origin >= 33 * DAY
    assert model.neighbors(30, timestamp=100 * DAY) == pytest.approx({20: 0.5, 40: 2.0**-99}, rel=1e-5)
    assert model.neighbors(20, timestamp=100 * DAY) == pytest.approx(
        {40: 1.0, 30: 0.5, 10: 2.0**-100}, rel=1e-5
    )
    assert np.isfinite(model._weights).all()


@settings(max_examples=30, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 30)), min_size=1, max_size=60),
    times=st.lists(st.floats(-1e9, 1e10), min_size=3, max_size=3),
    half_life=st.sampled_from([None, 0.001, 30.0]),
)
def test_scores_are_finite_and_scoring_changes_nothing(
    events: list[tuple[int, int]], times: list[float], half_life: float | None
) -> None:
    model = CooccurrenceModel(
        CooccurrenceConfig(capacity=32, max_neighbors=4, history_length=5, half_life_days=half_life)
    )
    stream = Stream(model)
    users, items = [u for u, _ in events], [i for _, i in events]
    stream.learn(users, items, [float(n) * 3_600.0 for n in range(len(events))])
    query = stream.history.query(np.array([1, 2, 9], dtype=np.uint64), np.array(times))
    candidates = np.arange(1, 40, dtype=np.uint64)  # includes items never seen and evicted ones
    before = state(model)
    scores = model.score(query, candidates)
    assert scores.dtype == np.float32 and scores.shape == (3, 39)
    assert np.isfinite(scores).all() and (scores >= 0).all()
    for old, new in zip(before, state(model), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(scores, model.score(query, candidates))


def test_empty_inputs_and_bad_configs() -> None:
    model = CooccurrenceModel(exact())
    assert model.score(query_of([[1, 2]]), np.zeros(0, dtype=np.uint64)).shape == (1, 0)
    assert model.score(query_of([[0, 0]]), np.array([1, 2], dtype=np.uint64)).tolist() == [[0.0, 0.0]]
    with pytest.raises(ConfigError, match="max_neighbors"):
        CooccurrenceConfig(max_neighbors=0)
    with pytest.raises(ConfigError, match="recency_decay"):
        CooccurrenceConfig(recency_decay=1.5)
