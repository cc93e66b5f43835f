"""BlendedModel: weights move toward the useful component on a constructed stream, scores are a per-row
normalised blend, and a replica fed only deltas equals the trainer (components and weights)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from freshrec.config import as_plain, parse
from freshrec.embeddings.config import TableConfig
from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.model_state import public_state
from freshrec.models.base import Model
from freshrec.models.blend import BlendConfig, BlendedModel, _ranks_among_keys, _reference_ranks
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.models.popularity import PopularityConfig, PopularityModel
from freshrec.models.sasrec import SASRecConfig, SASRecModel

U = np.uint64
N = 4


def components(capacity: int = 64) -> list[Model]:
    return [
        CooccurrenceModel(CooccurrenceConfig(capacity=capacity, max_neighbors=8, history_length=N)),
        PopularityModel(PopularityConfig(capacity=capacity)),
    ]


def with_sasrec(capacity: int = 8, seed: int = 0) -> BlendedModel:
    sasrec = SASRecModel(
        SASRecConfig(
            dim=8, history_length=N + 2, heads=2, ffn_dim=8, items=TableConfig(capacity=capacity), seed=seed
        )
    )
    return BlendedModel([sasrec, *components(capacity)], BlendConfig(reference_size=8, occurrence_window=16))


def cycle_stream(rng: np.random.Generator, step: int, size: int = 64, items: int = 40) -> Interactions:
    """Each user's next item follows its last one (i -> i + 1), items are uniform: co-occurrence predicts,
    popularity counts are noise."""
    starts = rng.integers(1, items + 1, size)
    history = ((starts[:, None] - 1 + np.arange(N)[None, :]) % items + 1).astype(U)
    positives = ((starts - 1 + N) % items + 1).astype(U)
    now = 1e6 + 600.0 * step
    query = Query(
        rng.integers(1, 10_000, size).astype(U), np.full(size, now), history, np.full((size, N), now - 60)
    )
    negatives = rng.integers(1, items + 1, (size, 4)).astype(U)
    return Interactions(query, positives, np.full(size, np.nan), np.zeros(size, np.int8), negatives)


def test_is_a_recommender_and_publishable_with_the_longest_history() -> None:
    blend = with_sasrec()
    assert isinstance(blend, Model) and isinstance(blend, Model)
    assert blend.history_length == N + 2
    config = BlendConfig()
    buckets = (len(config.history_buckets) + 1) * (len(config.gap_buckets) + 1)
    assert blend.weights.shape == (buckets, 3 * len(config.feature_kinds))


@pytest.mark.parametrize("training_candidates", ["recent", "sampled"])
@pytest.mark.parametrize("feature_kinds", [("score",), ("score", "log_rank")])
def test_weights_move_toward_the_useful_component(
    training_candidates: str, feature_kinds: tuple[str, ...]
) -> None:
    config = BlendConfig(
        reference_size=32,
        occurrence_window=256,
        feature_kinds=feature_kinds,
        training_candidates=training_candidates,  # type: ignore[arg-type]
    )
    blend = BlendedModel(components(), config)
    rng = np.random.default_rng(0)
    losses = [blend.learn(cycle_stream(rng, step)).loss for step in range(40)]
    bucket = int(blend.history_bucket(cycle_stream(rng, 0).query)[0])  # every row has N items of history
    cooccurrence, popularity = blend.weights[bucket].reshape(2, len(feature_kinds))  # all started at 1
    assert cooccurrence.sum() > 1.3 * len(feature_kinds) and (popularity < 0.7).all(), blend.weights[bucket]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # Buckets no row fell in did not move.
    untouched = [b for b in range(len(blend.weights)) if b != bucket]
    np.testing.assert_array_equal(blend.weights[untouched], 1.0)


def test_scores_are_the_weighted_normalised_component_scores() -> None:
    config = BlendConfig(reference_size=16, occurrence_window=64, feature_kinds=("score", "log_rank"))
    blend = BlendedModel(components(), config)
    rng = np.random.default_rng(1)
    for step in range(5):
        blend.learn(cycle_stream(rng, step))
    query = cycle_stream(rng, 9).query
    candidates = np.arange(1, 45, dtype=U)
    features = blend.features(query, candidates)
    assert features.shape == (len(query), 44, 4) and np.isfinite(features).all()
    # Standardised over the reference set: scoring the reference itself gives mean 0, std 1 per row.
    reference = blend._reference()
    standard = blend.features(query, reference)
    np.testing.assert_allclose(standard[:, :, 0].mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(standard[:, :, 0].std(axis=1), 1.0, atol=1e-3)
    # -log(1 + rank among the reference scores): scored against itself (ties, its own score included,
    # count half), the ranks of a row add up to R^2 / 2, whatever the scores.
    ranks = np.expm1(-standard[:, :, 1].astype(np.float64))
    size = len(reference)
    np.testing.assert_allclose(ranks.sum(axis=1), size * size / 2, rtol=1e-4)
    weights = blend.weights[blend.history_bucket(query)]
    np.testing.assert_allclose(
        blend.score(query, candidates), np.einsum("bck,bk->bc", features, weights), rtol=1e-5, atol=1e-5
    )
    per_row = np.tile(candidates, (len(query), 1))
    np.testing.assert_allclose(
        blend.score(query, per_row), blend.score(query, candidates), rtol=1e-5, atol=1e-5
    )


def test_cold_start_scores_are_finite() -> None:
    blend = with_sasrec()
    query = Query.without_history(np.array([1, 2], dtype=U), np.array([0.0, 0.0]))
    assert np.isfinite(blend.score(query, np.array([5, 6, 7], dtype=U))).all()  # nothing learned yet
    blend.learn(cycle_stream(np.random.default_rng(2), 0, size=8))
    assert np.isfinite(blend.score(query, np.array([5, 6, 999], dtype=U))).all()


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Public arrays equal (a replica's private ones, such as its row initialiser's position, are its own)."""
    a, b = public_state(a), public_state(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_replica_fed_only_deltas_equals_the_trainer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    trainer, replica = with_sasrec(seed=seed), with_sasrec(seed=seed + 10)
    replica.apply_changes(trainer.drain_changes())
    for step in range(6):
        trainer.learn(cycle_stream(rng, step, size=int(rng.integers(2, 12)), items=20))
        if step % 2 == 1:
            changes = trainer.drain_changes()
            assert changes.complete and not set(changes.rows) & set(changes.replaced)
            replica.apply_changes(changes)
            state = trainer.state_dict()
            assert_same_state(state, replica.state_dict())
            assert any(name.startswith("sasrec.items.") for name in state)
            query, candidates = cycle_stream(rng, step).query, np.arange(1, 25, dtype=U)
            np.testing.assert_array_equal(trainer.score(query, candidates), replica.score(query, candidates))


def test_load_state_dict_round_trips() -> None:
    trainer = with_sasrec()
    rng = np.random.default_rng(3)
    for step in range(4):
        trainer.learn(cycle_stream(rng, step, size=8, items=20))
    restored = with_sasrec(seed=5)
    restored.load_state_dict(trainer.state_dict())
    assert_same_state(trainer.state_dict(), restored.state_dict())
    assert restored.drain_changes().changed_rows == 0


def test_reference_ranks_count_the_reference_scores_above_with_ties_as_half() -> None:
    reference = np.array([[1.0, 2.0, 2.0, 5.0], [3.0, 3.0, 3.0, 3.0]])
    scores = np.array([[6.0, 5.0, 2.0, 0.0], [9.0, 3.0, 0.0, 1.0]])
    flat = np.array([[False], [True]])
    np.testing.assert_array_equal(
        _reference_ranks(scores, reference, flat), [[0.0, 0.5, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0]]
    )


@settings(max_examples=200, deadline=None)
@given(
    reference=hnp.arrays(
        np.float64, st.tuples(st.integers(1, 3), st.integers(1, 12)), elements=st.integers(-3, 3)
    ),
    data=st.data(),
)
def test_reference_ranks_equal_the_count_of_reference_scores_above(reference, data) -> None:
    rows = reference.shape[0]
    scores = data.draw(hnp.arrays(np.float64, (rows, 7), elements=st.integers(-4, 4)))
    above = (reference[:, None, :] > scores[:, :, None]).sum(axis=2)
    tied = (reference[:, None, :] == scores[:, :, None]).sum(axis=2)
    flat = np.zeros((rows, 1), dtype=bool)
    np.testing.assert_array_equal(_reference_ranks(scores, reference, flat), above + 0.5 * tied)


@settings(max_examples=200, deadline=None)
@given(
    scores=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 3), st.integers(1, 12)), elements=st.integers(-3, 3)
    ),
    data=st.data(),
)
def test_ranks_by_sorting_the_keys_equal_the_binary_search_over_the_reference(scores, data) -> None:
    keys = scores.shape[1]
    reference = np.array(data.draw(st.lists(st.integers(0, keys - 1), min_size=1, max_size=20)))
    flat = np.zeros((len(scores), 1), dtype=bool)
    expected = _reference_ranks(scores.astype(np.float64), scores[:, reference].astype(np.float64), flat)
    weights = np.bincount(reference, minlength=keys)
    np.testing.assert_array_equal(_ranks_among_keys(scores, weights, flat), expected)


def test_learning_after_scoring_the_same_query_reuses_its_features() -> None:
    rng = np.random.default_rng(4)
    blend = with_sasrec(capacity=64)
    for step in range(3):
        blend.learn(cycle_stream(rng, step))
    batch = cycle_stream(rng, 3)
    catalogue = np.arange(1, 41, dtype=U)
    fresh = copy.deepcopy(blend)
    evaluated = blend.features(batch.query, catalogue)  # what the trainer's evaluation computes
    subset = np.array([3, 1, 17, 40], dtype=U)
    reused = blend.features(batch.query, subset)
    np.testing.assert_array_equal(reused, evaluated[:, subset.astype(int) - 1])  # the same numbers
    # Computed afresh for other keys, a component's matrix products round differently in the last bits.
    np.testing.assert_allclose(reused, fresh.features(batch.query, subset), rtol=1e-5, atol=1e-5)
    # Per-row candidates give each cell the feature of its key.
    per_row = np.tile(subset, (len(batch), 1))[:, ::-1]
    np.testing.assert_allclose(fresh.features(batch.query, per_row), reused[:, ::-1], rtol=1e-5, atol=1e-5)
    # Once anything learned, the features are those of the new state, not the remembered ones.
    blend.learn(batch)
    assert np.abs(blend.features(batch.query, subset) - reused).max() > 1e-3


def test_buckets_cross_history_length_with_the_time_since_the_last_event() -> None:
    config = BlendConfig(history_buckets=(1, 3), gap_buckets=(60.0, 3600.0))
    blend = BlendedModel(components(), config)
    assert blend.weights.shape == (3 * 3, 2 * len(config.feature_kinds))
    now = 1e6
    history = np.array([[0, 0, 0, 0], [0, 0, 0, 7], [0, 0, 0, 7], [5, 6, 7, 8], [5, 6, 7, 8]], dtype=U)
    last = np.array([np.nan, now - 10, now - 600, now - 60, now - 86_400])
    times = np.where(history == 0, np.nan, last[:, None])
    query = Query(np.arange(1, 6, dtype=U), np.full(5, now), history, times)
    # length bucket * 3 + gap bucket; no history counts as the longest absence; a gap equal to a bound
    # falls in the bucket above it.
    np.testing.assert_array_equal(blend.history_bucket(query), [2, 3, 4, 7, 8])
    without = BlendedModel(components(), BlendConfig(history_buckets=(1, 3), gap_buckets=()))
    np.testing.assert_array_equal(without.history_bucket(query), [0, 1, 1, 2, 2])


def test_config_round_trips_through_json() -> None:
    # The registry records dataclasses.asdict(config) in each published version and rebuilds from it.
    config = BlendConfig(feature_kinds=("score", "inverse_rank"), training_candidates="sampled")
    recorded = json.loads(json.dumps(as_plain(config)))
    assert parse(BlendConfig, recorded, "test") == config


def test_bad_components_and_configs_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="distinct names"):
        BlendedModel([PopularityModel(PopularityConfig(capacity=8))] * 2)
    with pytest.raises(ConfigError, match="history_buckets"):
        BlendConfig(history_buckets=(5, 2))
    with pytest.raises(ConfigError, match="gap_buckets"):
        BlendConfig(gap_buckets=(60.0, 60.0))
    with pytest.raises(ConfigError, match="gap_buckets"):
        BlendConfig(gap_buckets=(0.0, 60.0))
    with pytest.raises(ConfigError, match="reference_size"):
        BlendConfig(reference_size=10, occurrence_window=5)
    with pytest.raises(ConfigError, match="feature_kinds"):
        BlendConfig(feature_kinds=("score", "rank"))
    with pytest.raises(ConfigError, match="training_candidates"):
        BlendConfig(training_candidates="all")  # type: ignore[arg-type]
