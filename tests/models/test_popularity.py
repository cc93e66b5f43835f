"""PopularityModel and DecayClock: exact counts, exact decay, eviction, no mutation on scoring."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.models.base import Recommender, VectorModel
from freshrec.models.popularity import DecayClock, PopularityConfig, PopularityModel

DAY = 86_400.0


def interactions(items: list[int], times: list[float]) -> Interactions:
    keys = np.array(items, dtype=np.uint64)
    query = Query.without_history(
        np.arange(1, len(items) + 1, dtype=np.uint64), np.array(times, dtype=np.float64)
    )
    return Interactions(query, keys, np.full(len(keys), np.nan), np.zeros(len(keys), np.int8), keys[:, None])


def ask(model: PopularityModel, candidates: list[int], times: list[float]) -> np.ndarray:
    query = Query.without_history(np.full(len(times), 99, dtype=np.uint64), np.array(times, dtype=np.float64))
    return model.score(query, np.array(candidates, dtype=np.uint64))


def test_is_a_recommender_with_the_registry_names() -> None:
    assert isinstance(PopularityModel(PopularityConfig(capacity=4)), Recommender)
    assert PopularityModel(PopularityConfig(capacity=4)).name == "popularity"
    assert PopularityModel(PopularityConfig(half_life_days=7.0, capacity=4)).name == "popularity-decayed"
    assert not isinstance(PopularityModel(PopularityConfig(capacity=4)), VectorModel)


def test_counts_every_event_and_scores_every_row_alike() -> None:
    model = PopularityModel(PopularityConfig(capacity=8))
    model.learn(interactions([5, 7, 5], [0.0, 1.0, 2.0]))
    model.learn(interactions([5], [3.0]))
    scores = ask(model, [5, 7, 11], [4.0, 5.0])
    assert scores.dtype == np.float32 and scores.shape == (2, 3)
    assert scores.tolist() == [[3.0, 1.0, 0.0], [3.0, 1.0, 0.0]]


def test_decayed_count_is_the_sum_of_halvings() -> None:
    model = PopularityModel(PopularityConfig(half_life_days=1.0, capacity=8))
    model.learn(interactions([5, 7], [0.0, 0.0]))
    model.learn(interactions([5], [DAY]))
    # At day 2: item 5 = 2^-2 + 2^-1, item 7 = 2^-2; at day 1: 5 = 2^-1 + 1, 7 = 2^-1.
    np.testing.assert_allclose(ask(model, [5, 7], [2 * DAY, DAY]), [[0.75, 0.25], [1.5, 0.5]], rtol=1e-6)


def test_decay_stays_exact_across_origin_rebases() -> None:
    # A one-second half-life over 200 seconds forces several rebases (every 32 half-lives).
    model = PopularityModel(PopularityConfig(half_life_days=1.0 / DAY, capacity=8))
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0.0, 200.0, 60))
    items = rng.integers(1, 4, 60)
    for start in range(0, 60, 7):
        model.learn(interactions(items[start : start + 7].tolist(), times[start : start + 7].tolist()))
    now = 205.0
    expected = [np.exp2(-(now - times[items == item])).sum() for item in (1, 2, 3)]
    np.testing.assert_allclose(ask(model, [1, 2, 3], [now])[0], expected, rtol=1e-5)
    assert model.clock.origin is not None and model.clock.origin > 100.0


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(st.integers(1, 6), min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 40), max_size=5),
)
def test_counts_do_not_depend_on_batching(items: list[int], cuts: list[int]) -> None:
    model = PopularityModel(PopularityConfig(capacity=16))
    bounds = sorted({0, len(items), *(c for c in cuts if c < len(items))})
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        model.learn(interactions(items[start:end], [float(t) for t in range(start, end)]))
    expected = [items.count(item) for item in range(1, 8)]
    assert ask(model, list(range(1, 8)), [100.0])[0].tolist() == expected


def test_an_evicted_item_starts_again_from_zero() -> None:
    model = PopularityModel(PopularityConfig(capacity=2, eviction="lru"))
    model.learn(interactions([1, 1, 2], [0.0, 1.0, 2.0]))
    model.learn(interactions([3], [3.0]))  # full: forgets item 1 (least recently seen)
    assert ask(model, [1, 2, 3], [4.0])[0].tolist() == [0.0, 1.0, 1.0]
    model.learn(interactions([1], [5.0]))  # comes back into the slot of item 2
    assert ask(model, [1, 2, 3], [6.0])[0].tolist() == [1.0, 0.0, 1.0]
    assert len(model) == 2


def test_scoring_changes_nothing() -> None:
    model = PopularityModel(PopularityConfig(half_life_days=3.0, capacity=8))
    model.learn(interactions([1, 2, 1], [0.0, DAY, 2 * DAY]))
    before = (model._counts.copy(), model.clock.origin, model._items.state_dict())
    first = ask(model, [1, 2, 3], [10 * DAY, -5 * DAY])
    second = ask(model, [1, 2, 3], [10 * DAY, -5 * DAY])
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(model._counts, before[0])
    assert model.clock.origin == before[1]
    for name, array in model._items.state_dict().items():
        np.testing.assert_array_equal(array, before[2][name])


def test_decay_clock_rejects_a_bad_half_life() -> None:
    with pytest.raises(ConfigError, match="half_life"):
        DecayClock(half_life_seconds=0.0)
    with pytest.raises(ConfigError, match="half_life"):
        PopularityModel(PopularityConfig(half_life_days=-1.0, capacity=4))
