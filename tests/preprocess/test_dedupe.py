"""Dropping repeated deliveries within a bounded window: freshrec.preprocess.dedupe."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import ConfigError
from freshrec.events import Event, EventBatch
from freshrec.preprocess.dedupe import Deduplicator
from freshrec.preprocess.encode import encode_ids


def _reference(ids: list, window: int) -> list[bool]:
    """The specification: two generations of sets, the current one rotating once it holds `window` ids."""
    current: set = set()
    previous: set = set()
    keep = []
    for event_id in ids:
        if len(current) >= window:
            previous, current = current, set()
        if event_id in current or event_id in previous:
            keep.append(False)
        else:
            current.add(event_id)
            keep.append(True)
    return keep


def test_drops_repeats_within_and_across_batches_keeping_order() -> None:
    dedupe = Deduplicator(window=100)
    batch = EventBatch.from_events(
        [Event(e, float(i), "u", 1) for i, e in enumerate(["a", "b", "a", "c", "b"])]
    )
    kept, dropped = dedupe.filter(batch)
    assert kept.event_id.tolist() == ["a", "b", "c"] and dropped == 2
    assert kept.timestamp.tolist() == [0.0, 1.0, 3.0]  # the first delivery is the one kept
    again = EventBatch.from_events([Event("c", 9.0, "u", 1), Event("d", 10.0, "u", 1)])
    kept, dropped = dedupe.filter(again)
    assert kept.event_id.tolist() == ["d"] and dropped == 1
    assert dedupe.duplicates_dropped == 3


def test_batch_without_repeats_is_returned_as_is() -> None:
    batch = EventBatch.from_events([Event(i, float(i), "u", 1) for i in range(5)])
    kept, dropped = Deduplicator().filter(batch)
    assert kept is batch and dropped == 0
    empty = EventBatch.empty()
    assert Deduplicator().filter(empty) == (empty, 0)


def test_integer_and_decimal_text_ids_are_the_same_event() -> None:
    dedupe = Deduplicator(window=10)
    assert dedupe.first_sightings(encode_ids(np.array([42]))).tolist() == [True]
    assert dedupe.first_sightings(encode_ids(["42"])).tolist() == [False]


def test_memory_is_bounded_and_forgets_beyond_two_windows() -> None:
    dedupe = Deduplicator(window=1000)
    size = dedupe.nbytes
    for start in range(0, 50_000, 700):
        dedupe.first_sightings(encode_ids(np.arange(start, start + 700)))
    assert dedupe.nbytes == size
    # ids 0 .. 50,399 seen: the last 1,000 are surely remembered, the first ones surely forgotten
    assert dedupe.first_sightings(encode_ids(np.array([49_500]))).tolist() == [False]
    assert dedupe.first_sightings(encode_ids(np.array([5]))).tolist() == [True]  # long gone: forgotten


def test_measured_bytes_per_remembered_id() -> None:
    """The figure quoted in the module docstring: 2 tables x 8 B x (next power of two >= 2 x window)."""
    window = 1 << 20
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dedupe = Deduplicator(window=window)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert dedupe.nbytes == 2 * 8 * (1 << 21)
    assert dedupe.nbytes <= allocated <= dedupe.nbytes + 4096  # the tables and a few small objects
    per_id_full = allocated / (2 * window)  # remembering 2 x window ids just before a rotation
    per_id_fresh = allocated / window  # just after a rotation
    assert (round(per_id_full, 1), round(per_id_fresh, 1)) == (16.0, 32.0)


def test_window_of_one_and_bad_input() -> None:
    dedupe = Deduplicator(window=1)
    keys = encode_ids(np.array([1, 1, 2, 1, 3, 1]))
    assert dedupe.first_sightings(keys).tolist() == _reference([1, 1, 2, 1, 3, 1], 1)
    with pytest.raises(ConfigError):
        Deduplicator(window=0)
    with pytest.raises(ValueError, match="NO_KEY"):
        dedupe.first_sightings(np.array([0], dtype=np.uint64))


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=60), max_size=300),
    window=st.integers(min_value=1, max_value=40),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=8),
)
def test_matches_the_two_generation_specification(ids: list[int], window: int, cuts: list[int]) -> None:
    dedupe = Deduplicator(window=window)
    bounds = sorted({0, len(ids), *(c for c in cuts if c <= len(ids))})
    keep = [
        flag
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        for flag in dedupe.first_sightings(encode_ids(np.array(ids[lo:hi], dtype=np.int64))).tolist()
    ]
    assert keep == _reference(ids, window)


def test_large_table_with_collisions_in_slots() -> None:
    """Many keys, several rotations, string ids: still exactly the specification."""
    rng = np.random.default_rng(3)
    ids = [f"event-{v}" for v in rng.integers(0, 30_000, 60_000).tolist()]
    dedupe = Deduplicator(window=5_000)
    keep = np.concatenate(
        [
            dedupe.first_sightings(encode_ids(np.array(ids[i : i + 4096], dtype=object)))
            for i in range(0, 60_000, 4096)
        ]
    )
    assert keep.tolist() == _reference(ids, 5_000)
