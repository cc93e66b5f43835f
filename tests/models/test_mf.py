"""BPR matrix factorisation: the Recommender contract, the bias convention, learning a planted preference,
updates limited to the batch's rows, and state round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.config import parse
from freshrec.errors import ConfigError
from freshrec.interactions import Interactions, Query
from freshrec.models.base import Recommender
from freshrec.models.mf import BPRMatrixFactorization, MFConfig, bpr_gradients

U = np.uint64


def small_model(**overrides: object) -> BPRMatrixFactorization:
    settings = {"dim": 8, "user_capacity": 64, "item_capacity": 64}
    settings.update(overrides)
    return BPRMatrixFactorization(parse(MFConfig, settings, "flat"))


def interactions(
    users: np.ndarray, items: np.ndarray, negatives: np.ndarray, t0: float = 0.0
) -> Interactions:
    n = len(users)
    query = Query.without_history(users.astype(U), t0 + np.arange(n, dtype=np.float64))
    return Interactions(query, items.astype(U), np.full(n, np.nan), np.zeros(n, np.int8), negatives.astype(U))


def planted_stream(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users 1..20 like items 101..110, users 21..40 like items 111..120; negatives from all 20 items."""
    users = rng.integers(1, 41, n)
    items = np.where(users <= 20, rng.integers(101, 111, n), rng.integers(111, 121, n))
    negatives = rng.integers(101, 121, (n, 2))
    return users, items, negatives


def test_follows_the_recommender_contract() -> None:
    model = small_model()
    assert isinstance(model, Recommender)
    assert model.name == "bpr-mf" and model.history_length == 0


def test_learns_a_planted_preference() -> None:
    rng = np.random.default_rng(0)
    model = small_model(learning_rate=0.1)
    users, items, negatives = planted_stream(rng, 6000)
    for start in range(0, 6000, 200):
        stats = model.learn(
            interactions(
                users[start : start + 200],
                items[start : start + 200],
                negatives[start : start + 200],
                t0=start,
            )
        )
    # chance is log(2) = 0.69; pairs whose negative is from the liked group stay near it: floor ~0.35
    assert stats.loss < 0.45
    query = Query.without_history(np.array([3, 30], dtype=U), np.zeros(2))
    scores = model.score(query, np.arange(101, 121, dtype=U))
    assert scores[0, :10].min() > scores[0, 10:].max()  # user 3 ranks its group's items first
    assert scores[1, 10:].min() > scores[1, :10].max()


def test_score_is_the_dot_product_of_exported_vectors_and_has_no_side_effects() -> None:
    rng = np.random.default_rng(1)
    model = small_model()
    model.learn(interactions(*planted_stream(rng, 300)))
    model.drain_changes()
    state = model.state_dict()
    query = Query.without_history(np.array([1, 25, 999], dtype=U), np.zeros(3))  # 999: unknown user
    candidates = np.array([101, 115, 5555], dtype=U)  # 5555: unknown item
    scores = model.score(query, candidates)
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    user_vectors, item_vectors = model.user_vectors(query), model.item_vectors(candidates)
    assert user_vectors.shape == item_vectors.shape == (3, 8)
    np.testing.assert_allclose(scores, user_vectors @ item_vectors.T, rtol=1e-5, atol=1e-6)
    assert (user_vectors[:, -1] == 1.0).all()  # the bias convention
    cold_item = model.items.weights(np.array([0])).numpy()[0]
    np.testing.assert_array_equal(item_vectors[2], cold_item)  # unknown items are scored with the cold row
    per_row = model.score(query, np.tile(candidates, (3, 1)))
    np.testing.assert_allclose(per_row, scores, rtol=1e-5, atol=1e-6)
    for name, array in model.state_dict().items():
        np.testing.assert_array_equal(array, state[name])
    assert model.drain_changes().changed_rows == 0


def test_closed_form_gradients_match_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    n, pairs, dim, l2 = 5, 9, 8, 0.01
    users, items = torch.randn(n, dim, generator=gen), torch.randn(n + pairs, dim, generator=gen)
    pair_event = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    weights = torch.rand(pairs, generator=gen) + 0.5
    grad_users, grad_items, loss = bpr_gradients(users, items, pair_event, weights, l2)

    u, v = users.clone().requires_grad_(), items.clone().requires_grad_()
    side = torch.cat([u[:, :-1], torch.ones(n, 1)], dim=1)
    event = torch.from_numpy(pair_event)
    margins = (side[event] * (v[:n][event] - v[n:])).sum(dim=1)
    total = -(torch.nn.functional.logsigmoid(margins) * weights).sum()
    (total + l2 * (u[:, :-1].pow(2).sum() + v.pow(2).sum())).backward()
    torch.testing.assert_close(grad_users, u.grad)
    torch.testing.assert_close(grad_items, v.grad)
    assert loss == pytest.approx(float(-torch.nn.functional.logsigmoid(margins.detach()).mean()), rel=1e-5)


def test_learn_moves_only_the_rows_of_the_batch() -> None:
    model = small_model()
    model.learn(interactions(np.array([1, 2]), np.array([10, 11]), np.array([[11], [10]])))
    before_users = model.users.state_dict()["weights"]
    before_items = model.items.state_dict()["weights"]
    stats = model.learn(interactions(np.array([1]), np.array([10]), np.array([[11]]), t0=5.0))
    assert stats.extra["pairs"] == 1.0 and np.isfinite(stats.loss)
    users, items = model.users.state_dict()["weights"], model.items.state_dict()["weights"]
    user_row = model.users.rows_for_serving(np.array([1], dtype=U))[0]
    item_rows = set(model.items.rows_for_serving(np.array([10, 11], dtype=U)).tolist())
    changed_users = set(np.flatnonzero((users != before_users).any(axis=1)).tolist())
    changed_items = set(np.flatnonzero((items != before_items).any(axis=1)).tolist())
    assert changed_users == {user_row}
    assert changed_items == item_rows


def test_negatives_that_are_cold_or_the_positive_are_dropped() -> None:
    model = small_model()
    stats = model.learn(interactions(np.array([1, 2]), np.array([10, 11]), np.array([[10], [77]])))
    # 10 is the positive of its row; 77 has no row (only positives get rows): no usable pair, no change
    assert stats.extra["pairs"] == 0.0
    assert model.items.rows_for_serving(np.array([77], dtype=U)).tolist() == [0]
    assert len(model.learn(interactions(np.zeros(0), np.zeros(0), np.zeros((0, 1)))).extra) == 0


def test_state_round_trip_gives_identical_scores() -> None:
    rng = np.random.default_rng(2)
    model = small_model(admit_after=2)
    model.learn(interactions(*planted_stream(rng, 500)))
    copy = small_model(admit_after=2)
    copy.load_state_dict(model.state_dict())
    query = Query.without_history(np.arange(1, 41, dtype=U), np.zeros(40))
    candidates = np.arange(100, 122, dtype=U)
    np.testing.assert_array_equal(copy.score(query, candidates), model.score(query, candidates))


def test_rejects_bad_config() -> None:
    with pytest.raises(ConfigError, match="multiple of 4"):
        small_model(dim=10)
    with pytest.raises(ConfigError, match="l2"):
        MFConfig(l2=-1.0)
