"""SASRecModel: shapes and the inner-product form, causality and padding, the folded last block against
the full one, cold users, learning a repeated sequence, and publishing (a replica fed only deltas is the
model)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.config import parse
from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.model_state import public_state
from freshrec.models.base import Model, Recommender
from freshrec.models.sasrec import SASRecConfig, SASRecModel

U = np.uint64
N = 6


def small(**overrides: object) -> SASRecModel:
    settings: dict[str, object] = dict(
        dim=16, history_length=N, heads=2, ffn_dim=16, item_capacity=64, seed=1
    )
    settings.update(overrides)
    return SASRecModel(parse(SASRecConfig, settings, "test"))  # flat table keys: the legacy names


def random_query(rng: np.random.Generator, size: int, universe: int = 30, now: float = 1e6) -> Query:
    history = rng.integers(1, universe, (size, N)).astype(U)
    lengths = rng.integers(0, N + 1, size)
    history[np.arange(N)[None, :] < (N - lengths)[:, None]] = 0  # right-aligned, left padding
    times = np.where(history == 0, np.nan, now - rng.uniform(1, 1e5, (size, N)))
    return Query(rng.integers(1, 99, size).astype(U), np.full(size, now), history, times)


def random_batch(rng: np.random.Generator, size: int, universe: int = 30, now: float = 1e6) -> Interactions:
    query = random_query(rng, size, universe, now)
    items = rng.integers(1, universe, size).astype(U)
    negatives = rng.integers(1, universe, (size, 3)).astype(U)
    return Interactions(query, items, np.full(size, np.nan), np.zeros(size, np.int8), negatives)


def trained(model: SASRecModel, seed: int = 0, batches: int = 5) -> SASRecModel:
    rng = np.random.default_rng(seed)
    for step in range(batches):
        model.learn(random_batch(rng, 16, now=1e6 + step))
    return model


def test_is_a_recommender_and_publishable() -> None:
    model = small()
    assert isinstance(model, Recommender) and isinstance(model, Model)
    assert model.history_length == N


def test_scores_have_the_right_shapes_and_equal_the_inner_product_form() -> None:
    model = trained(small())
    query = random_query(np.random.default_rng(1), 5)
    candidates = np.arange(1, 40, dtype=U)  # 30..39 unknown: cold row
    scores = model.score(query, candidates)
    assert scores.shape == (5, 39) and scores.dtype == np.float32 and np.isfinite(scores).all()
    users, items = model.user_vectors(query), model.item_vectors(candidates)
    assert users.shape == (5, 17) and items.shape == (39, 17)
    np.testing.assert_allclose(users @ items.T, scores, rtol=1e-5, atol=1e-5)
    per_row = np.tile(candidates[::-1], (5, 1))
    np.testing.assert_allclose(model.score(query, per_row), scores[:, ::-1], rtol=1e-5, atol=1e-5)


def test_score_does_not_change_the_model() -> None:
    model = trained(small())
    before = model.state_dict()
    model.score(random_query(np.random.default_rng(2), 4), np.arange(1, 30, dtype=U))
    after = model.state_dict()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_later_history_item_never_changes_an_earlier_position(layers: int) -> None:
    model = trained(small(layers=layers))
    rng = np.random.default_rng(3)
    query = random_query(rng, 8)
    query.history_keys[:] = rng.integers(1, 30, (8, N)).astype(U)  # full histories
    query.history_times[:] = 1e6 - 100.0
    outputs = model.sequence_outputs(query)  # [B, N + 1, D]
    for position in range(N):
        changed = Query(
            query.user_keys, query.timestamps, query.history_keys.copy(), query.history_times.copy()
        )
        changed.history_keys[:, position] = (changed.history_keys[:, position] % 29) + 1
        changed.history_times[:, position] -= 5e4
        after = model.sequence_outputs(changed)
        np.testing.assert_array_equal(after[:, :position], outputs[:, :position])
        assert not np.allclose(after[:, position:], outputs[:, position:])


@pytest.mark.parametrize("layers", [1, 2])
def test_the_folded_last_block_equals_the_full_sequence_pass(layers: int) -> None:
    model = trained(small(layers=layers))
    query = random_query(np.random.default_rng(4), 12)
    full = model.sequence_outputs(query)[:, -1]
    np.testing.assert_allclose(model.user_vectors(query)[:, :-1], full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_steep_recency_bias_attends_only_to_the_latest_items(layers: int) -> None:
    """The ALiBi slope is what keeps old positions out: at a steep slope the oldest history item no longer
    moves the state, without it the same change does."""
    rng = np.random.default_rng(6)
    query = random_query(rng, 8)
    query.history_keys[:] = rng.integers(1, 30, (8, N)).astype(U)
    query.history_times[:] = 1e6 - 100.0  # same gap everywhere: only the position tells old from new
    changed = Query(query.user_keys, query.timestamps, query.history_keys.copy(), query.history_times.copy())
    changed.history_keys[:, 0] = (changed.history_keys[:, 0] % 29) + 1
    moved = {}
    for slope in (0.0, 40.0):
        model = trained(small(layers=layers, attention_recency=slope))
        moved[slope] = np.abs(model.user_vectors(changed) - model.user_vectors(query)).max()
    assert moved[40.0] < 1e-5 < moved[0.0]


def test_the_recency_slopes_are_learned_and_published() -> None:
    model = small()
    before = model.state_dict()["dense.blocks.0.recency_slope"].copy()
    np.testing.assert_allclose(before, SASRecConfig().attention_recency)
    for step in range(3):
        model.learn(random_batch(np.random.default_rng(step), 32))
    assert not np.allclose(model.state_dict()["dense.blocks.0.recency_slope"], before)


def test_padding_is_ignored() -> None:
    """An item at a padded position (key 0) must not matter: only the real items and their times do."""
    model = trained(small())
    rng = np.random.default_rng(5)
    query = random_query(rng, 6)
    query.history_keys[:, :3] = 0
    query.history_times[:, :3] = np.nan
    other = Query(query.user_keys, query.timestamps, query.history_keys.copy(), query.history_times.copy())
    other.history_times[:, :3] = 12.0  # garbage times under padding
    candidates = np.arange(1, 30, dtype=U)
    np.testing.assert_array_equal(model.score(query, candidates), model.score(other, candidates))


def test_cold_users_and_unknown_items_get_finite_scores_from_the_query_token() -> None:
    model = trained(small())
    query = Query.without_history(np.array([7, 8], dtype=U), np.array([1e6, 1e6]))
    scores = model.score(query, np.array([1, 2, 3, 12345], dtype=U))
    assert np.isfinite(scores).all()
    np.testing.assert_array_equal(scores[0], scores[1])  # no history: the same state for everyone


def test_learning_a_repeated_sequence_ranks_the_next_item_first() -> None:
    """Items follow a fixed cycle 1 -> 2 -> ... -> 12 -> 1: after a few hundred events the model ranks each
    history's next item first and its loss has fallen well below chance."""
    model = small(dim=32, ffn_dim=32, heads=2, dense_learning_rate=3e-3, embedding_learning_rate=0.1)
    rng = np.random.default_rng(6)
    cycle = 12
    losses = []
    for step in range(60):
        starts = rng.integers(0, cycle, 32)
        offsets = np.arange(N)[None, :]
        history = ((starts[:, None] + offsets) % cycle + 1).astype(U)
        items = ((starts + N) % cycle + 1).astype(U)
        times = 1e6 + step * 60.0
        query = Query(np.arange(32, dtype=U), np.full(32, times), history, np.full((32, N), times - 30.0))
        negatives = rng.integers(1, cycle + 1, (32, 4)).astype(U)
        losses.append(
            model.learn(
                Interactions(query, items, np.full(32, np.nan), np.zeros(32, np.int8), negatives)
            ).loss
        )
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    starts = np.arange(cycle)
    history = ((starts[:, None] + np.arange(N)[None, :]) % cycle + 1).astype(U)
    query = Query(starts.astype(U), np.full(cycle, 2e6), history, np.full((cycle, N), 2e6 - 30.0))
    candidates = np.arange(1, cycle + 1, dtype=U)
    scores = model.score(query, candidates)
    scores[np.arange(cycle)[:, None], (history - 1).astype(np.int64)] = -np.inf  # seen items excluded
    predicted = candidates[scores.argmax(axis=1)]
    np.testing.assert_array_equal(predicted, (starts + N) % cycle + 1)


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Public arrays equal (a replica's private ones, such as its row initialiser's position, are its own)."""
    a, b = public_state(a), public_state(b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replica_fed_only_deltas_equals_the_trainer_through_eviction(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Keys 1..29 against 8 rows: eviction every batch. The replica starts from different weights.
    trainer, replica = small(item_capacity=8, seed=seed), small(item_capacity=8, seed=seed + 100)
    replica.apply_changes(trainer.drain_changes())
    for step in range(8):
        trainer.learn(random_batch(rng, int(rng.integers(1, 9)), now=1e6 + 60.0 * step))
        if step % 3 == 2 or step == 7:
            changes = trainer.drain_changes()
            assert changes.complete and not set(changes.rows) & set(changes.replaced)
            replica.apply_changes(changes)
            assert_same_state(trainer.state_dict(), replica.state_dict())
            query, candidates = random_query(rng, 5), np.arange(1, 35, dtype=U)
            np.testing.assert_array_equal(trainer.score(query, candidates), replica.score(query, candidates))
    changes = trainer.drain_changes()
    assert changes.changed_rows == 0 and not changes.replaced.keys() - {"items.counters", "items.clock"}
    assert any(name.startswith("adam.") for name in replica.state_dict())  # Adam's moments travelled too


def test_state_round_trips_through_safetensors(tmp_path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    trainer = trained(small())
    path = tmp_path / "sasrec.safetensors"
    safetensors_numpy.save_file(trainer.state_dict(), str(path))
    copy = small(seed=9)
    copy.load_state_dict(safetensors_numpy.load_file(str(path)))
    assert_same_state(trainer.state_dict(), copy.state_dict())
    query = random_query(np.random.default_rng(8), 4)
    np.testing.assert_array_equal(
        trainer.score(query, np.arange(1, 30, dtype=U)), copy.score(query, np.arange(1, 30, dtype=U))
    )
    assert copy.drain_changes().changed_rows == 0


def test_bad_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="heads"):
        SASRecConfig(dim=30, heads=4)
    for slope in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="attention_recency"):
            SASRecConfig(attention_recency=slope)
    with pytest.raises(ConfigError, match="history_length"):
        SASRecConfig(history_length=0)
    with pytest.raises(ConfigError, match="same config|shape"):
        small().load_state_dict(small(dim=8).state_dict())
