"""KeyIndex against a dict model: random operation sequences (hypothesis), exact LRU/LFU victims, bounded
probing after many insert/delete cycles, and state round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import CapacityError, ConfigError
from freshrec.keyindex import KeyIndex
from freshrec.model_state import StateChanges, public_state

U = np.uint64


class DictModel:
    """The specification of KeyIndex written with a dict and Python loops."""

    def __init__(self, capacity: int, eviction: str) -> None:
        self.capacity = capacity
        self.eviction = eviction
        self.entries: dict[int, list] = {}  # key -> [slot, last_seen, count]

    def order(self, key: int) -> tuple:
        slot, seen, count = self.entries[key]
        return (seen, count, slot) if self.eviction == "lru" else (count, seen, slot)

    def expected_victims(self, keys: list[int]) -> set[int] | None:
        """Keys that must be evicted by assign(keys), or None if assign must raise."""
        distinct = set(keys)
        new = [k for k in distinct if k not in self.entries]
        need = len(new) - (self.capacity - len(self.entries))
        if len(distinct) > self.capacity or (need > 0 and self.eviction == "none"):
            return None
        if need <= 0:
            return set()
        candidates = sorted((k for k in self.entries if k not in distinct), key=self.order)
        return set(candidates[:need])


def check_consistent(index: KeyIndex, model: DictModel) -> None:
    assert len(index) == len(model.entries)
    live = index.live_slots()
    assert len(live) == len(model.entries)
    keys = index.keys_of(live)
    assert sorted(keys.tolist()) == sorted(model.entries)
    assert len(np.unique(live)) == len(live)  # no two live keys share a slot
    for key, (slot, seen, count) in model.entries.items():
        assert index.lookup(np.array([key], dtype=U))[0] == slot
        assert index.last_seen[slot] == seen
        assert index.counts[slot] == count
    free = np.setdiff1d(np.arange(index.capacity), live)
    assert (index.keys_of(free) == 0).all()


operation = st.one_of(
    st.tuples(
        st.just("assign"),
        st.lists(st.integers(1, 12), min_size=1, max_size=8),
        st.lists(st.floats(0, 5), min_size=1, max_size=8),
    ),
    st.tuples(st.just("remove"), st.lists(st.integers(0, 12), max_size=4), st.just([])),
    st.tuples(st.just("expire"), st.just([]), st.lists(st.floats(0, 40), min_size=1, max_size=1)),
)


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 8),
    eviction=st.sampled_from(["lru", "lfu", "none"]),
    min_pool=st.sampled_from([None, 1, 3]),
    ops=st.lists(operation, max_size=25),
)
def test_matches_dict_model(capacity: int, eviction: str, min_pool: int | None, ops: list) -> None:
    index = KeyIndex(capacity, eviction)  # type: ignore[arg-type]
    if min_pool is not None:
        index.min_pool = min_pool  # pools smaller than the index: reuse, staleness and merges across calls
    model = DictModel(capacity, eviction)
    clock = 0.0
    for kind, keys, times in ops:
        if kind == "assign":
            clock += 1.0
            now = np.array([clock + times[i % len(times)] for i in range(len(keys))])
            victims = model.expected_victims(keys)
            arr = np.array(keys, dtype=U)
            if victims is None:
                before = index.state_dict()
                with pytest.raises(CapacityError):
                    index.assign(arr, now)
                after = index.state_dict()
                assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing changed
                continue
            live_before = {k: v[0] for k, v in model.entries.items()}
            free_before = set(range(capacity)) - set(live_before.values())
            result = index.assign(arr, now)
            assert set(result.evicted_keys.tolist()) == victims
            assert sorted(result.evicted_slots.tolist()) == sorted(live_before[k] for k in victims)
            for k in victims:
                del model.entries[k]
            fresh: dict[int, int] = {}
            for i, k in enumerate(keys):
                slot = int(result.slots[i])
                if k in model.entries:
                    assert not result.new[i]
                    assert slot == model.entries[k][0]  # a key keeps its slot while live
                    entry = model.entries[k]
                    entry[1] = max(entry[1], now[i])
                    entry[2] += 1
                else:
                    assert result.new[i]
                    assert fresh.setdefault(k, slot) == slot  # duplicates of a new key share its slot
            for k, slot in fresh.items():
                # a new key only gets a slot that was free or was just evicted
                assert slot in free_before or slot in set(result.evicted_slots.tolist())
                times_k = [now[i] for i, kk in enumerate(keys) if kk == k]
                model.entries[k] = [slot, max(times_k), len(times_k)]
            assert len(set(fresh.values())) == len(fresh)
        elif kind == "remove":
            slots = index.remove(np.array(keys, dtype=U))
            for k, slot in zip(keys, slots.tolist(), strict=True):
                expected = model.entries[k][0] if k in model.entries else -1
                assert slot == expected
            for k in set(keys):
                model.entries.pop(k, None)
        else:
            cutoff = times[0]
            expected = {k for k, v in model.entries.items() if v[1] < cutoff}
            keys_out, slots_out = index.expire(cutoff)
            assert set(keys_out.tolist()) == expected
            assert sorted(slots_out.tolist()) == sorted(model.entries[k][0] for k in expected)
            for k in expected:
                del model.entries[k]
        check_consistent(index, model)


def test_lookup_has_no_side_effects_and_handles_absent_and_zero() -> None:
    index = KeyIndex(4)
    index.assign(np.array([5, 6], dtype=U), now=1.0)
    state = index.state_dict()
    assert index.lookup(np.array([6, 0, 7, 5], dtype=U)).tolist() == [1, -1, -1, 0]
    after = index.state_dict()
    assert all(np.array_equal(state[k], after[k]) for k in state)


def test_large_batch_matches_dict_and_time_is_max_per_key() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(1, 2**63, size=50_000, dtype=np.int64).view(U)
    keys = np.concatenate([keys, keys[:1000]])  # duplicates
    now = rng.random(len(keys))
    index = KeyIndex(60_000)
    result = index.assign(keys, now)
    reference: dict[int, int] = {}
    for k, s in zip(keys.tolist(), result.slots.tolist(), strict=True):
        assert reference.setdefault(k, s) == s
    assert len(set(reference.values())) == len(reference) == len(index)
    slot0 = result.slots[0]
    assert index.last_seen[slot0] == max(now[0], now[50_000])
    assert index.counts[slot0] == 2
    np.testing.assert_array_equal(index.lookup(keys), result.slots)


def test_probing_stays_bounded_after_many_insert_delete_cycles() -> None:
    capacity = 1000
    index = KeyIndex(capacity, eviction="none")
    rng = np.random.default_rng(1)
    live = np.zeros(0, dtype=U)
    for step in range(200):
        fresh = rng.integers(1, 2**63, size=100, dtype=np.int64).view(U)
        if len(live) + 100 > capacity:
            gone, live = live[:300], live[300:]
            index.remove(gone)
        index.assign(fresh, now=float(step))
        live = np.concatenate([live, fresh])
        assert index._used_cells <= index._max_used  # tombstones never pile up past the bound
    assert index.rehashes > 0
    np.testing.assert_array_equal(index.keys_of(index.lookup(live)), live)
    assert len(index) == len(live)


def test_lru_evicts_oldest_and_lfu_least_frequent() -> None:
    lru = KeyIndex(3, "lru")
    lru.assign(np.array([1, 1, 1, 2, 3], dtype=U), np.array([1.0, 1, 1, 2, 3]))
    assert lru.assign(np.array([4], dtype=U), 4.0).evicted_keys.tolist() == [1]
    lfu = KeyIndex(3, "lfu")
    lfu.assign(np.array([1, 1, 1, 2, 3], dtype=U), np.array([1.0, 1, 1, 2, 3]))
    assert lfu.assign(np.array([4], dtype=U), 4.0).evicted_keys.tolist() == [2]


def test_victim_pool_sees_keys_inserted_below_its_threshold() -> None:
    index = KeyIndex(6, "lru")
    index.min_pool = 4
    index.assign(np.arange(1, 7, dtype=U), np.arange(10.0, 16.0))
    assert index.assign(np.array([7], dtype=U), 20.0).evicted_keys.tolist() == [1]  # pool: keys 2, 3, 4
    index.remove(np.array([7], dtype=U))
    index.assign(np.array([8], dtype=U), 5.0)  # late event: older than every key in the pool
    assert index.assign(np.array([9], dtype=U), 21.0).evicted_keys.tolist() == [8]
    assert index.assign(np.array([10], dtype=U), 22.0).evicted_keys.tolist() == [2]


def test_keys_of_one_call_never_evict_one_another() -> None:
    index = KeyIndex(2, "lru")
    index.assign(np.array([1, 2], dtype=U), 1.0)
    result = index.assign(np.array([2, 3], dtype=U), 0.5)  # 2 is older by time of this call, but protected
    assert result.evicted_keys.tolist() == [1]
    with pytest.raises(CapacityError, match="capacity=2"):
        index.assign(np.array([7, 8, 9], dtype=U), 2.0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="capacity"):
        KeyIndex(0)
    with pytest.raises(ConfigError, match="eviction"):
        KeyIndex(4, "fifo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="key 0"):
        KeyIndex(4).assign(np.array([0, 1], dtype=U), 1.0)
    with pytest.raises(ConfigError, match="dtype"):
        KeyIndex(4).lookup(np.array([1.5]))


def test_state_round_trip() -> None:
    index = KeyIndex(8, "lfu")
    index.assign(np.array([3, 4, 4, 9], dtype=U), np.array([1.0, 2.0, 3.0, 4.0]))
    index.remove(np.array([3], dtype=U))
    copy = KeyIndex(8, "lfu")
    copy.load_state_dict(index.state_dict())
    probe = np.array([3, 4, 9, 11], dtype=U)
    np.testing.assert_array_equal(copy.lookup(probe), index.lookup(probe))
    a = index.assign(np.array([12, 13], dtype=U), 5.0)
    b = copy.assign(np.array([12, 13], dtype=U), 5.0)
    np.testing.assert_array_equal(a.slots, b.slots)
    np.testing.assert_array_equal(index.counts, copy.counts)
    with pytest.raises(ConfigError, match="capacity"):
        KeyIndex(4).load_state_dict(index.state_dict())


def test_signed_hashes_are_reinterpreted() -> None:
    index = KeyIndex(4)
    signed = np.array([-5, 7], dtype=np.int64)
    slots = index.assign(signed, 1.0).slots
    np.testing.assert_array_equal(index.lookup(signed.view(U)), slots)


def check_free_stack(index: KeyIndex) -> None:
    """The free stack holds exactly the free slots, once each, and `_free_pos` points into it."""
    stack = index._free[: index._n_free]
    free = np.flatnonzero(index.keys_of(np.arange(index.capacity)) == 0)
    assert sorted(stack.tolist()) == free.tolist()
    np.testing.assert_array_equal(index._free_pos[stack], np.arange(index._n_free))
    taken = np.setdiff1d(np.arange(index.capacity), stack)
    assert (index._free_pos[taken] == -1).all()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    capacity=st.integers(1, 9),
    eviction=st.sampled_from(["lru", "lfu"]),
    sync_every=st.integers(1, 5),
)
def test_set_slots_replays_another_index_row_by_row(
    seed: int, capacity: int, eviction: str, sync_every: int
) -> None:
    """A replica fed the rows that changed (set_slots) equals the source: state, lookups, free stack, and
    it then evicts the same keys as an index loaded in full."""
    rng = np.random.default_rng(seed)
    source, replica = KeyIndex(capacity, eviction), KeyIndex(capacity, eviction)  # type: ignore[arg-type]
    replica.min_pool = source.min_pool = 2  # small victim pools: the pool's invariant is exercised
    universe = np.arange(1, 3 * capacity + 3, dtype=U)
    previous = source.state_dict()
    for step in range(30):
        op = rng.integers(0, 4)
        if op <= 1:
            keys = rng.choice(universe, int(rng.integers(1, capacity + 1)), replace=False)
            source.assign(keys, float(step) + rng.uniform(-3, 0, len(keys)))  # late events too
        elif op == 2:
            source.remove(rng.choice(universe, 2))
        else:
            source.expire(float(step) - 4.0)
        if step % sync_every == 0:
            state = source.state_dict(finite=True)
            changed = np.flatnonzero(
                (state["slot_keys"] != previous["slot_keys"])
                | (source.last_seen != previous["last_seen"])
                | (state["counts"] != previous["counts"])
            )
            replica.apply_changes(source.slot_changes(changed, finite=True))
            previous = source.state_dict()
            # Public arrays agree; the private free-slot order is the learner's own (a replica never hands
            # out slots).
            for name, array in public_state(source.state_dict()).items():
                np.testing.assert_array_equal(replica.state_dict()[name], array, err_msg=name)
            np.testing.assert_array_equal(replica.lookup(universe), source.lookup(universe))
            check_free_stack(replica)
            assert len(replica) == len(source)
    # Eviction from the replica picks the same victims as a fully loaded index.
    loaded = KeyIndex(capacity, eviction)  # type: ignore[arg-type]
    loaded.load_state_dict(replica.state_dict())
    newcomers = np.arange(1000, 1000 + capacity, dtype=U)
    a, b = replica.assign(newcomers, 100.0), loaded.assign(newcomers, 100.0)
    assert sorted(a.evicted_keys.tolist()) == sorted(b.evicted_keys.tolist())
    assert sorted(replica.keys_of(replica.live_slots()).tolist()) == sorted(newcomers.tolist())
    check_free_stack(replica)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), capacity=st.integers(2, 12))
def test_a_loaded_index_hands_out_the_same_slots_as_the_saved_one(seed: int, capacity: int) -> None:
    """The private free-slot order is saved: after removals and expiries a loaded index places new keys
    exactly where the original would."""
    rng = np.random.default_rng(seed)
    universe = np.arange(1, 4 * capacity, dtype=U)
    index = KeyIndex(capacity)
    for step in range(12):
        index.assign(rng.choice(universe, int(rng.integers(1, capacity + 1)), replace=False), float(step))
        index.remove(rng.choice(universe, 2))
    loaded = KeyIndex(capacity)
    loaded.load_state_dict(index.state_dict())
    newcomers = rng.choice(np.arange(1000, 1100, dtype=U), capacity, replace=False)
    assert index.assign(newcomers, 50.0).slots.tolist() == loaded.assign(newcomers, 50.0).slots.tolist()


def test_set_slots_moves_a_key_and_frees_its_old_slot() -> None:
    index = KeyIndex(capacity=4)
    index.assign(np.array([10, 20, 30], dtype=U), now=1.0)  # slots 0, 1, 2
    index.set_slots(np.array([3]), np.array([10], dtype=U), np.array([7.0]), np.array([4]))
    assert index.lookup(np.array([10, 20, 30], dtype=U)).tolist() == [3, 1, 2]
    assert index.keys_of(np.array([0])).tolist() == [0] and index.counts[0] == 0
    assert np.isneginf(index.last_seen[0]) and index.last_seen[3] == 7.0
    check_free_stack(index)
    # The freed slot is handed out next, and nothing is handed out twice.
    assert index.assign(np.array([40], dtype=U), now=2.0).slots.tolist() == [0]
    check_free_stack(index)


def test_set_slots_stays_bounded_over_many_owner_changes() -> None:
    """Owner changes leave tombstones; the hash array is rebuilt before it fills, so lookups stay exact."""
    index = KeyIndex(capacity=64)
    rng = np.random.default_rng(0)
    for round_ in range(200):
        slots = rng.choice(64, 16, replace=False)
        keys = (np.arange(16) + 1 + 16 * round_).astype(U)
        index.set_slots(slots, keys, np.full(16, float(round_)), np.ones(16, np.int64))
        assert index.lookup(keys).tolist() == slots.tolist()
    assert index.rehashes > 0 and index._used_cells <= index._max_used
    check_free_stack(index)


def test_set_slots_rejects_inconsistent_rows() -> None:
    index = KeyIndex(capacity=4)
    with pytest.raises(ConfigError, match="twice"):
        index.set_slots(np.array([1, 1]), np.array([5, 6], dtype=U), np.zeros(2), np.ones(2, np.int64))
    with pytest.raises(ConfigError, match="same non-zero key"):
        index.set_slots(np.array([1, 2]), np.array([5, 5], dtype=U), np.zeros(2), np.ones(2, np.int64))
    with pytest.raises(ConfigError, match="slots must lie"):
        index.set_slots(np.array([4]), np.array([5], dtype=U), np.zeros(1), np.ones(1, np.int64))
    with pytest.raises(ConfigError, match="travel together"):
        index.apply_changes(StateChanges(rows={"slot_keys": (np.array([0]), np.array([5], dtype=U))}))


def test_finite_state_arrays_round_trip_never_seen() -> None:
    index = KeyIndex(capacity=3)
    index.assign(np.array([7], dtype=U), now=5.0)
    state = index.state_dict(finite=True)
    assert np.isfinite(state["last_seen"]).all()
    assert np.isneginf(index.state_dict()["last_seen"][1:]).all()  # the default is unchanged
    copy = KeyIndex(capacity=3)
    copy.load_state_dict(state)
    np.testing.assert_array_equal(copy.last_seen, index.last_seen)


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(4, 64),
    rounds=st.lists(
        st.tuples(st.lists(st.integers(1, 200), max_size=4), st.lists(st.integers(0, 200), max_size=10)),
        min_size=1,
        max_size=12,
    ),
)
def test_lookups_of_a_few_keys_agree_with_the_vectorised_probe(capacity: int, rounds: list) -> None:
    # Small tables, many removals: long probe sequences through deleted cells, where the Python-int path for
    # a handful of keys (a request's lookups) and the vectorised rounds must still agree key by key.
    index = KeyIndex(capacity, "lru")
    for clock, (assigned, removed) in enumerate(rounds):
        if assigned:
            index.assign(np.array(assigned, dtype=U), float(clock))
        index.remove(np.array(removed, dtype=U))
        probe = np.arange(0, 201, dtype=U)
        whole = index.lookup(probe)  # 201 keys: the vectorised rounds
        few = np.concatenate([index.lookup(probe[i : i + 3]) for i in range(0, len(probe), 3)])
        assert few.tolist() == whole.tolist()
        assert index._find(probe[:2])[0].tolist() == index._find(probe)[0][:2].tolist()
