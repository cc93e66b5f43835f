"""CountMinSketch: never under-counts within its window, over-counts rarely at its documented load, ages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.embeddings.sketch import MAX_COUNT, CountMinSketch
from freshrec.errors import ConfigError


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(1, 2**64 - 1), min_size=1, max_size=20), min_size=1, max_size=10))
def test_never_under_counts(batches: list[list[int]]) -> None:
    sketch = CountMinSketch(width=64, depth=3, aging_window=10**9)  # tiny: collisions are common
    truth: dict[int, int] = {}
    for batch in batches:
        keys, occurrences = np.unique(np.array(batch, dtype=np.uint64), return_counts=True)
        estimates = sketch.add(keys, occurrences)
        for key, occ in zip(keys.tolist(), occurrences.tolist(), strict=True):
            truth[key] = truth.get(key, 0) + occ
        assert (estimates >= [min(truth[k], MAX_COUNT) for k in keys.tolist()]).all()
    all_keys = np.array(sorted(truth), dtype=np.uint64)
    assert (sketch.estimate(all_keys) >= np.minimum([truth[k] for k in sorted(truth)], MAX_COUNT)).all()


def test_over_count_rate_at_full_window_is_below_the_documented_bound() -> None:
    width = 1 << 14
    sketch = CountMinSketch(width=width, depth=4)
    rng = np.random.default_rng(0)
    seen = rng.integers(1, 2**63, size=sketch.aging_window - 1, dtype=np.int64).view(np.uint64)
    sketch.add(seen, np.ones(len(seen), dtype=np.int64))  # one full window of once-seen ids
    over = (sketch.estimate(seen) >= 2).mean()
    assert over <= (1 - np.exp(-0.25)) ** 4  # 0.24%; conservative update does better
    fresh = rng.integers(1, 2**63, size=10_000, dtype=np.int64).view(np.uint64)
    assert (sketch.estimate(fresh) >= 1).mean() < 0.01


def test_halving_forgets_old_sightings_and_counts_saturate() -> None:
    sketch = CountMinSketch(width=1024, aging_window=10)
    key = np.array([5], dtype=np.uint64)
    sketch.add(key, np.array([4]))
    sketch.add(np.array([6], dtype=np.uint64), np.array([6]))  # 10 sightings: halve
    assert sketch.estimate(key).tolist() == [2]
    assert sketch.add(key, np.array([1000])).tolist() == [MAX_COUNT]


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        CountMinSketch(width=1000)
    with pytest.raises(ConfigError, match="depth"):
        CountMinSketch(width=1024, depth=0)
