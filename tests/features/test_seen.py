import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.features.seen import SeenConfig, SeenItems


@given(
    events=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 12)), min_size=1, max_size=50),
    batch_size=st.integers(1, 13),
)
@settings(max_examples=120, deadline=None)
def test_pairs_are_exactly_the_items_seen_before_each_event(events, batch_size):
    seen = SeenItems(SeenConfig(capacity=16))
    past: dict[int, set[int]] = {}
    for start in range(0, len(events), batch_size):
        part = events[start : start + batch_size]
        users = np.array([u for u, _ in part], dtype=np.uint64)
        items = np.array([i for _, i in part], dtype=np.uint64)
        rows, keys = seen.pairs_before_each_event(users, items)
        got = [set() for _ in part]
        for r, k in zip(rows.tolist(), keys.tolist(), strict=True):
            got[r].add(k)
        want = []
        for u, i in part:
            want.append(set(past.get(u, set())))
            past.setdefault(u, set()).add(i)
        assert got == want
        seen.record(users, items, np.zeros(len(part)))


def test_per_user_bound_keeps_most_recent_items():
    seen = SeenItems(SeenConfig(capacity=4, max_items_per_user=3))
    user = np.full(5, 1, dtype=np.uint64)
    seen.record(user, np.array([1, 2, 3, 4, 5], dtype=np.uint64), np.zeros(5))
    assert sorted(seen.items_of(1).tolist()) == [3, 4, 5]
    seen.record(user[:1], np.array([3], dtype=np.uint64), np.zeros(1))  # a repeat moves 3 to most recent
    seen.record(user[:1], np.array([9], dtype=np.uint64), np.zeros(1))
    assert sorted(seen.items_of(1).tolist()) == [3, 5, 9]
