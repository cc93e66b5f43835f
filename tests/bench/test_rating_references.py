"""The rating benchmark's reference loops (River, Vowpal Wabbit) and freshrec's own loop on small streams:
each predicts an event before learning it, learns, and a missing package is skipped with a note."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# bench/ is a folder of scripts next to src/, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import rating  # noqa: E402


def biased_stream(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    user_bias, item_bias = rng.normal(0, 0.7, 40), rng.normal(0, 0.7, 60)
    users, items = rng.integers(0, 40, n), rng.integers(0, 60, n)
    ratings = np.clip(np.round(3.5 + user_bias[users] + item_bias[items] + rng.normal(0, 0.3, n)), 1, 5)
    return users + 1, items + 1, ratings.astype(np.float64), np.arange(n, dtype=np.float64)


@pytest.mark.parametrize("label, package, run", rating.REFERENCES, ids=lambda v: str(v)[:20])
def test_each_reference_predicts_before_it_learns_and_then_learns(label, package, run) -> None:
    pytest.importorskip(package)
    # One rating of 4: asked before learning, every reference answers its empty-model guess (0, clipped
    # to 1), so the error is exactly 3. A loop that learned first would be closer.
    one = run(np.array([1]), np.array([1]), np.array([4.0]))
    assert one["rmse"] == pytest.approx(3.0)
    users, items, ratings, _ = biased_stream()
    figures = run(users, items, ratings)
    spread = float(np.std(ratings))  # the RMSE of always predicting the mean
    assert figures["rmse"] < spread and figures["mae"] <= figures["rmse"]
    assert figures["events_per_second"] > 0


def test_freshrec_loop_predicts_before_it_learns_and_beats_the_mean() -> None:
    users, items, ratings, times = biased_stream(1000)
    one = rating.run_freshrec_loop(users[:1], items[:1], np.array([5.0]), times[:1])
    assert one["rmse"] == pytest.approx(2.0)  # mid-scale 3 before any rating
    for batch_size in (1, 64):
        figures = rating.run_freshrec_loop(users, items, ratings, times, batch_size)
        assert figures["rmse"] < 0.8 * float(np.std(ratings))


def test_missing_reference_package_is_skipped_with_a_note() -> None:
    notes: list[str] = []
    users, items, ratings, _ = biased_stream(50)
    missing = [("absent", "freshrec_no_such_package", rating.run_river_baseline)]
    assert rating.run_references(users, items, ratings, references=missing, log=notes.append) == []
    assert notes and "freshrec_no_such_package" in notes[0] and "skipped" in notes[0]
