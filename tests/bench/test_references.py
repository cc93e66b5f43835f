"""The PROTOCOL reference systems on tiny streams whose hits can be worked out by hand."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# bench/ is a folder of scripts next to src/, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import references  # noqa: E402

DAY = 86_400.0
A, B, C = 101, 102, 103

RUNS = [
    references.run_popularity,
    references.run_popularity_decayed,
    references.run_isgd,
    references.run_cooccurrence,
    references.run_cooccurrence_tuned,
]


def stream(events: list[tuple[int, int]], times: list[float] | None = None) -> tuple[np.ndarray, ...]:
    users = np.array([u for u, _ in events])
    items = np.array([i for _, i in events])
    stamps = np.array(times if times is not None else np.arange(len(events)) * 60.0, dtype=np.float64)
    return users, items, stamps


@pytest.mark.parametrize("run", RUNS, ids=lambda run: run.__name__)
def test_every_reference_runs_and_reports_the_protocol_figures(run: Callable[..., dict[str, float]]) -> None:
    rng = np.random.default_rng(0)
    users, items, times = (
        rng.integers(1, 30, 500),
        rng.integers(1, 60, 500),
        np.sort(rng.uniform(0, 50 * DAY, 500)),
    )
    result = run(users, items, times, k=10)
    assert set(result) == {"hr", "ndcg", "hr_last20", "ndcg_last20", "events_per_second"}
    assert 0.0 < result["ndcg"] <= result["hr"] <= 1.0
    assert 0.0 <= result["ndcg_last20"] <= result["hr_last20"] <= 1.0
    assert result["events_per_second"] > 0
    assert run(users, items, times, k=10)["hr"] == result["hr"]  # deterministic (ISGD: fixed seed)


def test_popularity_counts_new_items_as_misses() -> None:
    # A (new: miss), A (only candidate: hit), B (new: miss), A (A=2 ahead of B=1: hit).
    result = references.run_popularity(*stream([(1, A), (2, A), (3, B), (4, A)]), k=1)
    assert result["hr"] == 0.5 and result["ndcg"] == 0.5


def test_items_the_user_saw_are_excluded() -> None:
    # Last event: user 1 saw A (count 2), so B (count 1) is ranked first; without exclusion it would be 2nd.
    result = references.run_popularity(*stream([(1, A), (2, A), (3, B), (1, B)]), k=1)
    assert result["hr"] == 0.5


def test_ties_are_broken_by_first_seen_order() -> None:
    # Last event: A and B both counted once; A was seen first, so B is ranked second.
    events = stream([(1, A), (2, B), (3, B)])
    assert references.run_popularity(*events, k=1)["hr"] == 0.0
    result = references.run_popularity(*events, k=2)
    assert result["hr"] == pytest.approx(1 / 3)
    assert result["ndcg"] == pytest.approx(1 / 3 / np.log2(3))


def test_the_stream_is_replayed_in_time_order() -> None:
    users, items, times = stream([(1, A), (2, A), (3, B), (4, A)])
    shuffled = np.array([2, 0, 3, 1])
    assert references.run_popularity(users[shuffled], items[shuffled], times[shuffled], k=1)["hr"] == 0.5


def test_decay_lets_a_recent_item_overtake_an_old_favourite() -> None:
    # A twice on day 0, B once on day 30; on day 31 user 4 acts on B: decayed, B (~0.91) beats A (~0.09).
    events = stream([(1, A), (2, A), (3, B), (4, B)], [0.0, 0.0, 30 * DAY, 31 * DAY])
    assert references.run_popularity_decayed(*events, k=1)["hr"] == 0.5
    assert references.run_popularity(*events, k=1)["hr"] == 0.25


def test_cooccurrence_recommends_what_followed_the_users_last_item() -> None:
    # C is popular (3 users); users 1 and 3 both do A, then B. At the last event user 3's history is [A]:
    # B co-occurred with A once and wins; popularity would put C first.
    # Hits at k=1: C twice (events 1, 2), and B at the end; event 5 (user 3, cold) gets C: a miss.
    events = stream([(9, C), (8, C), (7, C), (1, A), (1, B), (3, A), (3, B)])
    assert references.run_cooccurrence(*events, k=1)["hr"] == pytest.approx(3 / 7)
    assert references.run_cooccurrence_tuned(*events, k=1)["hr"] == pytest.approx(3 / 7)
    assert references.run_popularity(*events, k=1)["hr"] == pytest.approx(2 / 7)


def test_tuned_cooccurrence_weighs_recent_items_more() -> None:
    model = references.RecentCooccurrence(n_users=2, n_items=4, history=20, recency=0.5, exponent=0.0)
    # User 0 does 0 then 1 then 2, user 1 does 3 then 1: C[0,1]=1, C[0,2]=1, C[1,2]=1, C[3,1]=1 (+ symmetric).
    for user, item in [(0, 0), (0, 1), (0, 2), (1, 3), (1, 1)]:
        model.learn(user, item, 0.0)
    # User 0's history [0, 1, 2] weighs 0.25, 0.5, 1: score(3) = 0.5 * C[1, 3] = 0.5.
    scores = model.scores(0, 0.0)
    assert scores[3] == pytest.approx(0.5, abs=1e-6)
    assert scores[1] == pytest.approx(0.25 * 1 + 1.0 * 1, abs=1e-6)


def test_isgd_takes_the_papers_sgd_step() -> None:
    model = references.IncrementalSGD(
        n_users=1, n_items=1, factors=2, learning_rate=0.05, regularization=0.01
    )
    model.users[0], model.items[0] = [1.0, 0.0], [0.5, 0.0]
    model.user_started[0] = model.item_started[0] = True
    model.learn(0, 0, 0.0)
    # err = 1 - 0.5 = 0.5; a += 0.05 (0.5 b - 0.01 a); then b += 0.05 (0.5 a_new - 0.01 b).
    user = 1.0 + 0.05 * (0.5 * 0.5 - 0.01 * 1.0)
    np.testing.assert_allclose(model.users[0], [user, 0.0])
    np.testing.assert_allclose(model.items[0], [0.5 + 0.05 * (0.5 * user - 0.01 * 0.5), 0.0])
