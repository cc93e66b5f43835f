import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.features.history import HistoryConfig, UserHistory


def naive_histories(batches, length):
    """Reference: walk the events one by one, keeping a list per user."""
    past: dict[int, list[tuple[int, float]]] = {}
    out = []
    for users, items, times in batches:
        rows_k, rows_t = [], []
        for u, i, t in zip(users.tolist(), items.tolist(), times.tolist(), strict=True):
            before = past.get(u, [])[-length:] if length else []
            pad = length - len(before)
            rows_k.append([0] * pad + [k for k, _ in before])
            rows_t.append([np.nan] * pad + [tt for _, tt in before])
            past.setdefault(u, []).append((i, t))
        out.append(
            (
                np.array(rows_k, dtype=np.uint64).reshape(len(users), length),
                np.array(rows_t).reshape(len(users), length),
            )
        )
    return out


events = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 30)), min_size=1, max_size=60)


@given(events=events, batch_size=st.integers(1, 17), length=st.integers(1, 5))
@settings(max_examples=150, deadline=None)
def test_matches_event_by_event_reference(events, batch_size, length):
    users = np.array([u for u, _ in events], dtype=np.uint64)
    items = np.array([i for _, i in events], dtype=np.uint64)
    times = np.arange(len(events), dtype=np.float64)
    batches = [
        (users[s : s + batch_size], items[s : s + batch_size], times[s : s + batch_size])
        for s in range(0, len(events), batch_size)
    ]
    history = UserHistory(HistoryConfig(length=length, capacity=64))
    for (u, i, t), (want_keys, want_times) in zip(batches, naive_histories(batches, length), strict=True):
        query = history.query_and_record(u, i, t)
        np.testing.assert_array_equal(query.history_keys, want_keys)
        np.testing.assert_array_equal(query.history_times, want_times)


def test_query_reads_without_recording():
    history = UserHistory(HistoryConfig(length=2, capacity=8))
    history.query_and_record(
        np.array([5, 5], dtype=np.uint64), np.array([1, 2], dtype=np.uint64), np.array([0.0, 1.0])
    )
    users = np.array([5, 6], dtype=np.uint64)
    first = history.query(users, np.array([2.0, 2.0]))
    second = history.query(users, np.array([3.0, 3.0]))
    assert first.history_keys.tolist() == [[1, 2], [0, 0]] == second.history_keys.tolist()
    assert len(history) == 1


def test_forgotten_user_starts_empty_when_capacity_is_reached():
    history = UserHistory(HistoryConfig(length=2, capacity=2))
    for t, user in enumerate([1, 2, 3]):  # user 3 takes the slot of user 1, the least recently active
        history.query_and_record(
            np.array([user], dtype=np.uint64), np.array([100 + user], dtype=np.uint64), np.array([float(t)])
        )
    assert len(history) == 2
    query = history.query_and_record(
        np.array([1], dtype=np.uint64), np.array([7], dtype=np.uint64), np.array([9.0])
    )
    assert query.history_keys.tolist() == [[0, 0]]


def test_zero_length_history_is_empty():
    history = UserHistory(HistoryConfig(length=0, capacity=4))
    query = history.query_and_record(
        np.array([1], dtype=np.uint64), np.array([2], dtype=np.uint64), np.array([0.0])
    )
    assert query.history_keys.shape == (1, 0)


def test_values_travel_with_the_history_when_asked_for():
    history = UserHistory(HistoryConfig(length=2, capacity=10, values=True))
    users = np.array([1, 1, 2, 1], dtype=np.uint64)
    items = np.array([10, 11, 20, 12], dtype=np.uint64)
    query = history.query_and_record(users, items, np.arange(4.0), np.array([4.0, np.nan, 2.0, 5.0]))
    assert np.array_equal(query.history_values[3], [4.0, np.nan], equal_nan=True)
    later = history.query(np.array([1], dtype=np.uint64), np.array([9.0]))
    assert np.array_equal(later.history_values[0], [np.nan, 5.0], equal_nan=True)
    without = UserHistory(HistoryConfig(length=2, capacity=10))
    assert without.query(users[:1], np.zeros(1)).history_values is None
