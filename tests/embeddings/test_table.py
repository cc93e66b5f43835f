"""DynamicEmbeddingTable: random operation sequences checked against a model of admission, expiry and
row ownership (hypothesis), the fused Adagrad update against a hand computation, change tracking, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.embeddings import COLD_ROW, DynamicEmbeddingTable, EmbeddingTableConfig
from freshrec.errors import CapacityError, ConfigError
from freshrec.model_state import public_state

U = np.uint64
UNIVERSE = np.arange(1, 13, dtype=U)


def small_table(**overrides: object) -> DynamicEmbeddingTable:
    settings_ = {"dim": 4, "capacity": 4, "sketch_width": 4096, "init_std": 0.1, "seed": 3}
    settings_.update(overrides)
    return DynamicEmbeddingTable(EmbeddingTableConfig(**settings_))  # type: ignore[arg-type]


def check_invariants(table: DynamicEmbeddingTable) -> dict[int, int]:
    """The id -> row map, after checking the bookkeeping identities."""
    stats = table.stats()
    live = table.index.live_slots()
    assert stats.live_rows == len(live) == len(table)
    assert stats.live_rows + table.index._n_free == stats.capacity  # live + free == capacity
    assert stats.admitted - stats.evicted - stats.expired == stats.live_rows
    keys = table.index.keys_of(live)
    assert len(np.unique(keys)) == len(keys) and (keys != 0).all()  # no two live keys share a row
    rows = table.rows_for_serving(keys)
    np.testing.assert_array_equal(rows, live + 1)
    return dict(zip(keys.tolist(), rows.tolist(), strict=True))


step = st.tuples(
    st.lists(st.integers(1, 12), min_size=1, max_size=6),  # keys of a training call
    st.floats(0.0, 3.0),  # event-time advance
    st.booleans(),  # train the returned rows
    st.booleans(),  # drain changes afterwards
)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 5),
    admit_after=st.integers(1, 3),
    ttl=st.sampled_from([None, 2.0, 5.0]),
    eviction=st.sampled_from(["lru", "lfu"]),
    steps=st.lists(step, min_size=1, max_size=20),
)
def test_random_sequences_keep_rows_collisionless(
    capacity: int, admit_after: int, ttl: float | None, eviction: str, steps: list
) -> None:
    table = small_table(capacity=capacity, admit_after=admit_after, ttl_seconds=ttl, eviction=eviction)
    sightings: dict[int, int] = {}  # model of the sketch: sightings while not live (it never ages here)
    clock, next_expiry = 0.0, -np.inf  # model of the amortised expiry scan
    owner = check_invariants(table)
    reinitialised: set[int] = {COLD_ROW}
    trained: set[int] = set()
    for keys, advance, train, drain in steps:
        clock += advance
        arr = np.array(keys, dtype=U)
        counts = {k: keys.count(k) for k in set(keys)}
        # expiry runs first when due: ids unseen for more than ttl lose their rows before the lookup
        expired_now: set[int] = set()
        if ttl is not None and clock >= next_expiry:
            seen = table.index.last_seen
            expired_now = {k for k, row in owner.items() if seen[row - 1] < clock - ttl}
            next_expiry = clock + ttl / 16
        live_before = {k: r for k, r in owner.items() if k not in expired_now}
        for k, c in counts.items():
            if k not in live_before:
                sightings[k] = sightings.get(k, 0) + c
        admitted = {k for k in counts if k in live_before or sightings[k] >= admit_after}
        if len(admitted) > capacity:
            with pytest.raises(CapacityError):
                table.rows_for_training(arr, clock)
            return
        weights_before = table._weights.clone()
        stats_before = table.stats()
        rows = table.rows_for_training(arr, clock)
        after = check_invariants(table)
        assert {k for k in counts if k in after} == admitted
        for i, k in enumerate(keys):
            if k not in admitted:
                assert rows[i] == COLD_ROW
                continue
            assert rows[i] == after[k]  # the training row is the id's own row, never another id's
            if k in live_before:
                assert after[k] == live_before[k]  # a key keeps its row while live
            else:  # got a row in this call: fresh weights and zero optimizer state
                assert table._momentum[rows[i]].item() == 0.0
                assert not torch.equal(table._weights[rows[i]], weights_before[rows[i]])
                reinitialised.add(int(rows[i]))
        stats = table.stats()
        assert stats.expired - stats_before.expired == len(expired_now)
        assert stats.evicted - stats_before.evicted == len(set(live_before) - set(after))
        owner = after
        if train:
            w0 = table._weights.clone()
            target = torch.from_numpy(np.unique(rows))
            table.embed(rows).pow(2).sum().mul(-1).backward()  # pushes every row away from 0
            changed = (table._weights != w0).any(dim=1)
            assert changed[target].all()
            untouched = torch.ones(table.num_rows, dtype=torch.bool)
            untouched[target] = False
            assert not changed[untouched].any()  # exactly those rows
            trained.update(rows.tolist())
        if drain:
            changes = table.drain_changes()
            rows_sent = changes.rows["weights"][0]
            assert (reinitialised | trained) <= set(rows_sent.tolist())  # every row whose values moved
            slots, keys_sent = changes.rows["index.slot_keys"]
            np.testing.assert_array_equal(keys_sent, table.index.keys_of(slots))  # owners as they are now
            assert set(slots.tolist()) == {row - 1 for row in rows_sent.tolist() if row != COLD_ROW}
            reinitialised.clear()
            trained.clear()


def test_fused_rowwise_adagrad_matches_hand_computation_with_duplicates() -> None:
    table = small_table(learning_rate=0.5)
    rows = table.rows_for_training(np.array([5, 6, 5], dtype=U), 1.0)
    w = table.weights(rows[:2]).clone()
    coef = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, -1.0, 2.0]])
    (table.embed(rows) * coef).sum().backward()
    grad = torch.stack([coef[0] + coef[2], coef[1]])  # duplicate rows: gradients summed first
    momentum = grad.pow(2).mean(dim=1)
    expected = w - 0.5 * grad / (momentum.sqrt()[:, None] + 1e-8)
    torch.testing.assert_close(table.weights(rows[:2]), expected)
    torch.testing.assert_close(table._momentum[torch.from_numpy(rows[:2])], momentum)


def test_fused_sgd_option_has_no_state() -> None:
    table = small_table(optimizer="sgd", learning_rate=0.5)
    rows = table.rows_for_training(np.array([5, 5], dtype=U), 1.0)
    w = table.weights(rows[:1]).clone()
    table.embed(rows).sum().backward()
    torch.testing.assert_close(table.weights(rows[:1]), w - 0.5 * 2.0)  # two duplicate rows: gradient 2
    assert table.state_dict()["momentum"].shape == (0,)
    with pytest.raises(ConfigError, match="optimizer"):
        small_table().load_state_dict(table.state_dict())


def test_admission_after_n_sightings_and_cold_row() -> None:
    table = small_table(admit_after=3)
    key = np.array([42], dtype=U)
    assert table.rows_for_training(key, 1.0).tolist() == [0]
    assert table.rows_for_training(key, 2.0).tolist() == [0]
    assert table.rows_for_serving(key).tolist() == [0]
    row = table.rows_for_training(key, 3.0)[0]
    assert row != COLD_ROW and table.rows_for_serving(key).tolist() == [row]
    assert table.stats().admitted == 1


def test_ttl_frees_rows_by_event_time_and_reused_rows_are_fresh() -> None:
    table = small_table(capacity=2, ttl_seconds=16.0)
    old = table.rows_for_training(np.array([1, 2], dtype=U), 0.0)
    table.embed(old).sum().backward()
    assert (table._momentum[torch.from_numpy(old)] > 0).all()
    table.rows_for_training(np.array([2], dtype=U), 10.0)
    table.rows_for_training(np.array([2], dtype=U), 16.5)  # key 1 unseen for 16.5 > ttl: expired
    assert table.rows_for_serving(np.array([1, 2], dtype=U)).tolist() == [0, old[1]]
    assert table.stats().expired == 1
    # the scan is amortised: none before ttl/16 = 1s of event time has passed
    table.rows_for_training(np.array([2], dtype=U), 17.0)
    assert table.stats().expired == 1
    new = table.rows_for_training(np.array([3], dtype=U), 17.6)
    assert new.tolist() == [old[0]]  # the freed row, re-initialised
    assert table._momentum[old[0]].item() == 0.0
    slots, keys = table.drain_changes().rows["index.slot_keys"]
    owners = dict(zip(slots.tolist(), keys.tolist(), strict=True))
    assert owners[int(old[0]) - 1] == 3  # the freed row travels with its new owner: key 1 is gone


def test_eviction_at_capacity_and_none_raises() -> None:
    table = small_table(capacity=2, eviction="lru")
    table.rows_for_training(np.array([1, 2], dtype=U), np.array([1.0, 2.0]))
    table.rows_for_training(np.array([3], dtype=U), 3.0)
    assert table.rows_for_serving(np.array([1, 2, 3], dtype=U)).tolist() == [0, 2, 1]
    assert table.stats().evicted == 1
    strict = small_table(capacity=1, eviction="none")
    strict.rows_for_training(np.array([1], dtype=U), 1.0)
    with pytest.raises(CapacityError, match="eviction"):
        strict.rows_for_training(np.array([2], dtype=U), 2.0)


def test_change_tracking_stays_bounded_without_drains() -> None:
    """One flag per row: however many ids come and go between drains, a drain names each row once, with
    its latest owner, and is never incomplete."""
    table, replica = small_table(capacity=2), small_table(capacity=2)
    replica.apply_changes(table.drain_changes())
    for t in range(50):
        table.rows_for_training(np.array([100 + t], dtype=U), float(t))
    changes = table.drain_changes()
    assert changes.complete and changes.changed_rows <= table.num_rows
    replica.apply_changes(changes)
    np.testing.assert_array_equal(replica.rows_for_serving(UNIVERSE), table.rows_for_serving(UNIVERSE))
    assert sorted(replica.rows_for_serving(np.array([148, 149], dtype=U)).tolist()) == [1, 2]


def test_serving_and_weights_have_no_side_effects() -> None:
    table = small_table()
    table.rows_for_training(np.array([1], dtype=U), 1.0)
    table.drain_changes()
    state = table.state_dict()
    rows = table.rows_for_serving(UNIVERSE)
    table.weights(rows)
    with torch.no_grad():
        table.embed(rows)
    assert table.drain_changes().changed_rows == 0
    for name, array in table.state_dict().items():
        np.testing.assert_array_equal(array, state[name])


def test_state_round_trip_through_safetensors(tmp_path: pytest.TempPathFactory) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    table = small_table(admit_after=2, ttl_seconds=100.0)
    for t in range(5):
        rows = table.rows_for_training(np.array([1, 2, 3, t + 4], dtype=U), float(t))
        table.embed(rows).sum().backward()
    path = tmp_path / "table.safetensors"  # type: ignore[operator]
    safetensors_numpy.save_file(table.state_dict(), str(path))
    copy = small_table(admit_after=2, ttl_seconds=100.0)
    copy.load_state_dict(safetensors_numpy.load_file(str(path)))
    np.testing.assert_array_equal(copy.rows_for_serving(UNIVERSE), table.rows_for_serving(UNIVERSE))
    torch.testing.assert_close(copy._weights, table._weights)
    assert copy.stats() == table.stats()
    batch = np.array([2, 9, 9], dtype=U)
    np.testing.assert_array_equal(copy.rows_for_training(batch, 6.0), table.rows_for_training(batch, 6.0))
    with pytest.raises(ConfigError, match="capacity"):
        small_table(capacity=3).load_state_dict(table.state_dict())


def test_rejects_bad_rows_and_config() -> None:
    table = small_table()
    with pytest.raises(ConfigError, match="rows must lie"):
        table.weights(np.array([table.num_rows]))
    with pytest.raises(ConfigError, match="timestamps"):
        table.rows_for_training(np.array([1, 2], dtype=U), np.zeros(3))
    with pytest.raises(ConfigError, match="multiple of 4"):
        EmbeddingTableConfig(dim=6)
    with pytest.raises(ConfigError, match="admit_after"):
        EmbeddingTableConfig(admit_after=0)
    with pytest.raises(ConfigError, match="ttl_seconds"):
        EmbeddingTableConfig(ttl_seconds=0.0)


def test_state_changes_replay_expiry_admission_and_training_exactly() -> None:
    """drain_changes / apply_changes: freed rows travel (slot key 0), the sketch only when it changed, and
    the replica's public state equals the learner's after every batch."""
    settings_ = {"capacity": 3, "admit_after": 2, "ttl_seconds": 16.0}
    table, replica = small_table(**settings_), small_table(**settings_)
    replica.apply_changes(table.drain_changes())
    for t, keys in enumerate([[1, 2], [1, 2, 3], [3], [4, 4, 5], [5], [6, 6], [7]]):
        rows = table.rows_for_training(np.array(keys, dtype=U), 8.0 * t)
        table.embed(rows).sum().backward()
        changes = table.drain_changes()
        replica.apply_changes(changes)
        for name, array in public_state(table.state_dict()).items():
            np.testing.assert_array_equal(replica.state_dict()[name], array, err_msg=name)
        np.testing.assert_array_equal(replica.rows_for_serving(UNIVERSE), table.rows_for_serving(UNIVERSE))
    assert table.stats().expired > 0
    # Key 1 expired at some point: its freed row was sent with slot key 0.
    table.rows_for_training(np.array([8], dtype=U), 200.0)  # expires everything else
    changes = table.drain_changes()
    assert 0 in changes.rows["index.slot_keys"][1].tolist()
    assert "sketch.counters" in changes.replaced
    with torch.no_grad():
        table.embed(table.rows_for_serving(np.array([8], dtype=U)))
    assert table.drain_changes().changed_rows == 0  # nothing since: no rows, no sketch
