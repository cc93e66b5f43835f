"""The model store: roundtrips, delta chains, retention, rollback, refusal of bad input, damaged files, one
writer, readers in other processes, and random operation sequences against an in-memory model."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
import tempfile
import threading
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from freshrec.errors import ConfigError, FreshrecError
from freshrec.publishing.store import (
    Delta,
    DeltaBaseError,
    ModelStore,
    NonFiniteValueError,
    StoreConfig,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    VersionNotFoundError,
    apply_delta,
)


def make_state(seed: int, rows: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "users.weights": rng.normal(size=(rows, 4)).astype(np.float32),
        "users.index.slot_keys": rng.integers(0, 2**63, size=rows, dtype=np.uint64),
        "items.momentum": rng.random(rows).astype(np.float32),
        "counters": np.array([seed, 2, 3], dtype=np.int64),
        "clock": np.array(float(seed)),  # 0-d
        "empty": np.zeros((0, 3), dtype=np.float64),
    }


def assert_states_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def by_hand(state: dict[str, np.ndarray], rows: dict, replaced: dict) -> dict[str, np.ndarray]:
    """The expected result of a delta, computed without the store."""
    result = {name: array.copy() for name, array in state.items()}
    for name, (row_ids, values) in rows.items():
        for row, value in zip(row_ids.tolist(), values, strict=True):
            result[name][row] = value
    result.update({name: array.copy() for name, array in replaced.items()})
    return result


def writer(path: Path, keep: int = 20) -> ModelStore:
    return ModelStore(StoreConfig(path, keep_versions=keep, fsync=True))


def test_snapshot_roundtrip_keeps_dtypes_shapes_and_metadata(tmp_path: Path) -> None:
    state = make_state(1)
    with writer(tmp_path) as store:
        version = store.publish_snapshot(state, {"model": "bpr-mf", "config": {"dim": 4}, "events": 10})
    assert version == 1
    reader = ModelStore.open(tmp_path)
    loaded, info = reader.load()
    assert_states_equal(loaded, state)
    assert (info.version, info.snapshot, info.deltas) == (1, 1, ())
    assert info.metadata == {"model": "bpr-mf", "config": {"dim": 4}, "events": 10}
    assert info.bytes_read == (tmp_path / info.info.file).stat().st_size == info.info.size
    # The file describes itself too: the metadata travels in its safetensors header.
    with safe_open(str(tmp_path / info.info.file), framework="numpy") as file:
        header = json.loads(file.metadata()["freshrec"])
    assert header["metadata"]["model"] == "bpr-mf" and header["version"] == 1 and header["kind"] == "snapshot"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["current"] == 1 and manifest["versions"][0]["metadata"]["events"] == 10
    assert (
        manifest["versions"][0]["sha256"]
        == hashlib.sha256((tmp_path / info.info.file).read_bytes()).hexdigest()
    )


def test_delta_roundtrip_equals_applying_the_changes_by_hand(tmp_path: Path) -> None:
    state = make_state(2)
    rows = {
        "users.weights": (np.array([4, 0]), np.full((2, 4), 7.5, np.float32)),
        "users.index.slot_keys": (np.array([1], dtype=np.int32), np.array([2**64 - 1], dtype=np.uint64)),
    }
    replaced = {"counters": np.array([9, 9, 9]), "new.bias": np.array([0.5], dtype=np.float32)}
    with writer(tmp_path) as store:
        base = store.publish_snapshot(state, {})
        version = store.publish_delta(rows, replaced, {"events": 20}, base=base)
        expected = by_hand(state, rows, replaced)
        assert_states_equal(store.load()[0], expected)  # the writer reads too
    reader = ModelStore.open(tmp_path)
    loaded, info = reader.load()
    assert_states_equal(loaded, expected)
    assert (info.version, info.snapshot, info.deltas) == (2, 1, (2,))
    delta = reader.read_delta(version)
    assert (delta.version, delta.base, delta.metadata) == (2, 1, {"events": 20})
    assert sorted(delta.rows) == sorted(rows) and sorted(delta.replaced) == sorted(replaced)
    # A server holding version 1 gets to version 2 by applying only the delta.
    assert_states_equal(apply_delta(reader.load(1)[0], delta), expected)
    assert reader.versions()[1].tensors["new.bias"] == ("float32", (1,))
    with pytest.raises(StoreError, match="is a snapshot"):
        reader.read_delta(1)


def test_a_chain_of_deltas_loads_every_version(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    expected = {1: make_state(3)}
    with writer(tmp_path) as store:
        store.publish_snapshot(expected[1], {})
        for version in range(2, 8):
            touched = rng.choice(6, size=3, replace=False)
            rows = {"users.weights": (touched, rng.normal(size=(3, 4)).astype(np.float32))}
            replaced = {"clock": np.array(float(version))}
            assert store.publish_delta(rows, replaced, {}, base=version - 1) == version
            expected[version] = by_hand(expected[version - 1], rows, replaced)
    reader = ModelStore.open(tmp_path)
    for version, state in expected.items():
        loaded, info = reader.load(version)
        assert_states_equal(loaded, state)
        assert info.deltas == tuple(range(2, version + 1))


def test_retention_keeps_every_kept_version_loadable_and_deletes_old_files(tmp_path: Path) -> None:
    expected: dict[int, dict[str, np.ndarray]] = {}
    with writer(tmp_path, keep=4) as store:  # compacts every 2 versions
        assert store.config.compaction_interval == 2
        for version in range(1, 21):
            if version in (1, 9):  # snapshots of the trainer at 1 and 9; deltas otherwise
                expected[version] = make_state(version)
                store.publish_snapshot(expected[version], {})
            else:
                rows = {"items.momentum": (np.array([version % 6]), np.array([version], np.float32))}
                store.publish_delta(rows, {}, {}, base=version - 1)
                expected[version] = by_hand(expected[version - 1], rows, {})
            kept = [info.version for info in store.versions()]
            # At most 4 versions; whole chains go, so the newest 4 - 2 + 1 are always there.
            assert len(kept) <= 4 and kept[-3:] == list(range(max(1, version - 2), version + 1)), kept
            assert store.versions()[0].full is not None  # the oldest kept loads from kept files alone
        store.wait_for_compaction()
        kinds = {info.version: (info.kind, info.compacted is not None) for info in store.versions()}
    assert kept == [17, 18, 19, 20]
    # Versions keep their kind: a server following deltas applies them and never reloads for a compaction.
    assert [kinds[v] for v in kept] == [("delta", True), ("delta", False), ("delta", True), ("delta", False)]
    reader = ModelStore.open(tmp_path)
    for version in kept:
        assert_states_equal(reader.load(version)[0], expected[version])
    assert reader.load()[1].snapshot == 19  # a server starting now reads two files
    files = sorted(p.name for p in tmp_path.iterdir())
    named = [name for info in reader.versions() for name in info.files]
    assert files == sorted(["manifest.json", "manifest.json.prev", "writer.lock", *named])
    with pytest.raises(VersionNotFoundError, match=r"kept versions: \[17, 18, 19, 20\]"):
        reader.load(16)


def test_rollback_then_load_and_a_delta_after_it_is_refused(tmp_path: Path) -> None:
    states = {1: make_state(1)}
    with writer(tmp_path) as store:
        store.publish_snapshot(states[1], {})
        rows = {"users.weights": (np.array([0]), np.zeros((1, 4), np.float32))}
        store.publish_delta(rows, {}, {}, base=1)
        states[2] = by_hand(states[1], rows, {})
        states[3] = make_state(3)
        store.publish_snapshot(states[3], {})

        store.rollback(2, reason="hit rate dropped")
        reader = ModelStore.open(tmp_path)
        assert reader.current_version() == 2
        loaded, info = reader.load()
        assert info.version == 2
        assert_states_equal(loaded, states[2])
        assert_states_equal(reader.load(3)[0], states[3])  # rolled-back-from versions stay kept
        (event,) = reader.history()
        assert (event["from"], event["to"], event["reason"]) == (3, 2, "hit rate dropped")
        assert event["time"] > 0

        for base in (2, 3):  # neither the current (rolled back) version nor the newest one is a valid base
            with pytest.raises(DeltaBaseError, match="publish a snapshot"):
                store.publish_delta(rows, {}, {}, base=base)
        with pytest.raises(VersionNotFoundError, match=r"kept versions: \[1, 2, 3\]"):
            store.rollback(7)
        assert store.publish_snapshot(make_state(4), {}) == 4  # numbering goes on, never reuses
        assert reader.current_version() == 4
        store.publish_delta(rows, {}, {}, base=4)  # deltas are allowed again on the new snapshot


def test_non_finite_values_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    with writer(tmp_path) as store:
        bad = make_state(1)
        bad["items.momentum"][2] = np.nan
        with pytest.raises(NonFiniteValueError, match=r"'items.momentum' holds 1 non-finite"):
            store.publish_snapshot(bad, {})
        assert store.current_version() == 0
        store.publish_snapshot(make_state(1), {})
        bad_rows = {"users.weights": (np.array([1]), np.array([[0, np.inf, 0, 0]], np.float32))}
        with pytest.raises(NonFiniteValueError, match="users.weights"):
            store.publish_delta(bad_rows, {}, {}, base=1)
        with pytest.raises(NonFiniteValueError, match="clock"):
            store.publish_delta({}, {"clock": np.array(-np.inf)}, {}, base=1)
        assert [i.version for i in store.versions()] == [1]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == [
        "v0000000001.snapshot.safetensors"
    ]


def test_a_delta_that_does_not_fit_the_state_is_refused(tmp_path: Path) -> None:
    with writer(tmp_path) as store:
        store.publish_snapshot(make_state(1), {})
        weights = np.zeros((1, 4), np.float32)
        cases = [
            ({"nope": (np.array([0]), weights)}, {}, "'nope', which version 1 lacks"),
            ({"users.weights": (np.array([6]), weights)}, {}, r"outside \[0, 6\)"),
            ({"users.weights": (np.array([0]), weights.astype(np.float64))}, {}, "expected float32"),
            ({"users.weights": (np.array([0, 1]), weights)}, {}, r"expected float32 \(2, 4\)"),
            ({"clock": (np.array([0]), np.array([1.0]))}, {}, "is a scalar"),
            ({"counters": (np.array([0]), np.array([1]))}, {"counters": np.array([1])}, "both in rows"),
            ({}, {"strings": np.array(["a"])}, "dtype <U1"),
        ]
        for rows, replaced, message in cases:
            with pytest.raises(StoreError, match=message):
                store.publish_delta(rows, replaced, {}, base=1)
        assert store.current_version() == 1
        with pytest.raises(DeltaBaseError):
            store.publish_delta({}, {}, {}, base=0)
    # apply_delta checks the whole delta before touching the state
    state = make_state(1)
    before = {k: v.copy() for k, v in state.items()}
    bad = Delta(
        2,
        1,
        rows={
            "users.weights": (np.array([0]), weights),
            "items.momentum": (np.array([99]), np.ones(1, np.float32)),
        },
    )
    with pytest.raises(StoreError, match="items.momentum"):
        apply_delta(state, bad)
    assert_states_equal(state, before)


def test_a_damaged_version_file_is_detected_and_never_applied(tmp_path: Path) -> None:
    state = make_state(5, rows=50)
    rows = {"users.weights": (np.array([3]), np.ones((1, 4), np.float32))}
    with writer(tmp_path) as store:
        store.publish_snapshot(state, {})
        store.publish_delta(rows, {}, {}, base=1)
        store.publish_snapshot(make_state(6, rows=50), {})
    reader = ModelStore.open(tmp_path)
    snapshot, delta, latest = (tmp_path / i.file for i in reader.versions())
    good = delta.read_bytes()

    delta.write_bytes(good[: len(good) // 2])  # cut mid-write
    with pytest.raises(StoreCorruptError, match="version 2 .* damaged"):
        reader.load(2)
    with pytest.raises(StoreCorruptError, match="version 2"):
        reader.read_delta(2)

    flipped = bytearray(latest.read_bytes())
    flipped[-5] ^= 0x01  # one bit of the tensor data, header intact: only the hash can tell
    latest.write_bytes(bytes(flipped))
    with pytest.raises(StoreCorruptError, match="version 3"):
        reader.load(3)
    # Loading the current version falls back to the newest version intact files lead to: 2 is cut, so 1.
    loaded_state, loaded = reader.load()
    assert loaded.version == 1 and len(loaded.damaged) == 2
    assert "v0000000003.snapshot" in loaded.damaged[0] and "v0000000002.delta" in loaded.damaged[1]
    assert_states_equal(loaded_state, state)
    # The healthy version still loads, and a server holding it keeps it.
    assert_states_equal(reader.load(1)[0], state)
    delta.write_bytes(good)
    assert_states_equal(reader.load(2)[0], by_hand(state, rows, {}))

    snapshot.unlink()
    with pytest.raises(StoreCorruptError, match="missing"):
        reader.load(2)


def test_a_version_file_not_in_the_manifest_is_ignored(tmp_path: Path) -> None:
    state = make_state(1)
    with writer(tmp_path) as store:
        store.publish_snapshot(state, {})
    # A writer that died between renaming its file and replacing the manifest leaves such a file.
    stray = tmp_path / "v0000000002.snapshot.safetensors"
    stray.write_bytes((tmp_path / "v0000000001.snapshot.safetensors").read_bytes())
    (tmp_path / ".manifest.json.123.tmp").write_text("{half")
    reader = ModelStore.open(tmp_path)
    assert [i.version for i in reader.versions()] == [1] and reader.current_version() == 1
    assert reader.load()[1].version == 1
    with pytest.raises(VersionNotFoundError, match=r"kept versions: \[1\]"):
        reader.load(2)
    with writer(tmp_path) as store:  # the next writer clears the leftovers and publishes version 2 properly
        assert not stray.exists() and not (tmp_path / ".manifest.json.123.tmp").exists()
        assert store.publish_snapshot(make_state(2), {}) == 2
    assert_states_equal(reader.load()[0], make_state(2))


def test_a_second_writer_is_refused_in_this_and_another_process(tmp_path: Path) -> None:
    first = writer(tmp_path)
    with pytest.raises(StoreLockedError, match="already has a writer"):
        writer(tmp_path)
    script = (
        "import sys\n"
        "from freshrec.errors import FreshrecError\n"
        "from freshrec.publishing.store import ModelStore, StoreConfig\n"
        "try:\n"
        f"    ModelStore(StoreConfig({str(tmp_path)!r}))\n"
        "except FreshrecError as error:\n"
        "    print(type(error).__name__, error); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("StoreLockedError") and "ModelStore.open" in result.stdout
    first.close()
    with writer(tmp_path) as second:  # released: the next writer gets it
        assert second.writable
    reader = ModelStore.open(tmp_path)
    with pytest.raises(StoreError, match="opened read-only"):
        reader.publish_snapshot(make_state(1), {})


def test_readers_of_an_empty_store_and_bad_config(tmp_path: Path) -> None:
    reader = ModelStore.open(tmp_path / "not-yet")
    assert reader.current_version() == 0 and reader.versions() == []
    assert reader.wait_for_change(0, timeout=0.05) is None
    with pytest.raises(VersionNotFoundError, match="nothing published"):
        reader.load()
    with pytest.raises(ConfigError, match="keep_versions=0"):
        StoreConfig(tmp_path, keep_versions=0)
    with pytest.raises(ConfigError, match=r"compact_every=21: between 1 and keep_versions \(20\)"):
        StoreConfig(tmp_path, compact_every=21)
    assert issubclass(StoreLockedError, FreshrecError)


def test_wait_for_change_wakes_on_publish_and_rollback(tmp_path: Path) -> None:
    store = writer(tmp_path)
    reader = ModelStore.open(tmp_path)
    store.publish_snapshot(make_state(1), {})
    assert reader.wait_for_change(0, timeout=1.0) == 1
    assert reader.wait_for_change(1, timeout=0.1) is None
    timer = threading.Timer(0.1, lambda: store.publish_snapshot(make_state(2), {}))
    timer.start()
    assert reader.wait_for_change(1, timeout=5.0, poll_interval=0.01) == 2
    timer.join()
    store.rollback(1, "test")
    assert reader.wait_for_change(2, timeout=1.0) == 1
    store.close()


# ---------------------------------------------------------------------- a reader in another process
def state_digest(state: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].tobytes())
    return digest.hexdigest()


def read_in_a_loop(directory: str, ready: Event, stop: Event, loads: Synchronized, results: Queue) -> None:
    """Child process: load the current version over and over; every state must match its version's
    digest (published in its metadata) and versions must never go backwards."""
    reader = ModelStore.open(directory)
    seen, problems, last = set(), [], 0
    ready.set()
    while not stop.is_set():
        try:
            state, info = reader.load()
        except VersionNotFoundError:  # nothing published yet
            continue
        except Exception as error:  # noqa: BLE001 - any error is a failure of the test
            problems.append(repr(error))
            continue
        loads.value += 1
        seen.add(info.version)
        if state_digest(state) != info.metadata["digest"]:
            problems.append(f"torn state at version {info.version}")
        if info.version < last:
            problems.append(f"version went back from {last} to {info.version}")
        last = info.version
    results.put((len(seen), problems))


def test_a_reader_in_another_process_never_sees_an_error_or_a_torn_state(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    ready, stop, loads, results = context.Event(), context.Event(), context.Value("i", 0), context.Queue()
    child = context.Process(target=read_in_a_loop, args=(str(tmp_path), ready, stop, loads, results))
    child.start()
    rng = np.random.default_rng(0)
    try:
        assert ready.wait(timeout=60), "the reader process did not start"
        with writer(tmp_path, keep=2) as store:  # small retention: files vanish under the reader's feet
            version = 0
            # Publish until the reader has loaded many times (bounded, should the reader be starved).
            while (version < 60 or loads.value < 50) and version < 3000:
                version += 1
                if version % 4 == 1:
                    state = make_state(version, rows=2000)
                    store.publish_snapshot(state, {"digest": state_digest(state)})
                else:
                    touched = rng.choice(2000, size=200, replace=False)
                    rows = {"users.weights": (touched, rng.normal(size=(200, 4)).astype(np.float32))}
                    state["users.weights"][touched] = rows["users.weights"][1]
                    store.publish_delta(rows, {}, {"digest": state_digest(state)}, base=version - 1)
    finally:
        stop.set()
        versions_seen, problems = results.get(timeout=60)
        child.join(timeout=30)
    assert problems == [], problems[:5]
    assert loads.value >= 50 and versions_seen >= 5, (loads.value, versions_seen)
    assert child.exitcode == 0


# ---------------------------------------------------------------------- random operation sequences
operations = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), st.integers(0, 1000)),
        st.tuples(st.just("delta"), st.integers(0, 1000)),
        st.tuples(st.just("rollback"), st.integers(0, 12)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, keep=st.integers(1, 4))
def test_random_snapshot_delta_rollback_sequences_match_an_in_memory_model(ops: list, keep: int) -> None:
    expected: dict[int, dict[str, np.ndarray]] = {}  # version -> state, for every version ever published
    current = latest = 0
    kept: list[int] = []
    with tempfile.TemporaryDirectory() as folder:
        store = ModelStore(StoreConfig(folder, keep_versions=keep, fsync=False))
        reader = ModelStore.open(folder)
        for kind, seed in ops:
            rng = np.random.default_rng(seed)
            if kind == "snapshot":
                state = make_state(seed, rows=int(rng.integers(1, 5)))
                latest = current = store.publish_snapshot(state, {"seed": seed})
                expected[current] = state
            elif kind == "delta":
                if current == 0:
                    continue
                base = expected[current]
                size = len(base["users.weights"])
                touched = rng.integers(0, size, size=int(rng.integers(0, 3)))
                touched = np.unique(touched)  # repeated rows in one delta would make "by hand" ambiguous
                rows = {"users.weights": (touched, rng.normal(size=(len(touched), 4)).astype(np.float32))}
                replaced = {"counters": rng.integers(0, 9, size=3)} if seed % 2 else {}
                if current != latest:
                    with pytest.raises(DeltaBaseError):
                        store.publish_delta(rows, replaced, {}, base=current)
                    continue
                latest = current = store.publish_delta(rows, replaced, {}, base=current)
                expected[current] = by_hand(base, rows, replaced)
            else:
                kept = {i.version for i in store.versions()}
                if seed not in kept:
                    with pytest.raises(VersionNotFoundError):
                        store.rollback(seed)
                    continue
                store.rollback(seed)
                current = seed
            store.wait_for_compaction()  # deterministic examples: a compaction commits before the checks
            kept = [i.version for i in reader.versions()]
            assert reader.current_version() == current and current in kept
            # Whole chains go: at most `keep` versions, the newest `keep - compact_every + 1` always.
            depth = min(keep - store.config.compaction_interval + 1, latest)
            assert len(kept) <= keep and kept[-depth:] == list(range(latest - depth + 1, latest + 1))
            assert_states_equal(reader.load()[0], expected[current])
        for version in kept:
            assert_states_equal(reader.load(version)[0], expected[version])
        names = {name for info in reader.versions() for name in info.files}
        assert {p.name for p in Path(folder).glob("*.safetensors")} == names
        store.close()


@settings(max_examples=30, deadline=None)
@given(
    live=st.integers(0, 5000),
    capacity=st.integers(1, 6000),
    width=st.integers(1, 3),
    fill=st.sampled_from([0.0, -0.0, -1e30, 7.5]),
)
def test_snapshots_store_free_trailing_rows_once_and_load_them_exactly(live, capacity, width, fill) -> None:
    live = min(live, capacity)
    rng = np.random.default_rng(live)
    weights = np.full((capacity, width), fill, dtype=np.float32)
    weights[:live] = rng.normal(size=(live, width))
    keys = np.zeros(capacity, dtype=np.uint64)
    keys[:live] = np.arange(1, live + 1)
    state = {"weights": weights, "keys": keys, "clock": np.array([3.0])}
    with tempfile.TemporaryDirectory() as folder:
        with ModelStore(StoreConfig(folder, fsync=False)) as store:
            version = store.publish_snapshot(state)
            delta_rows = np.array([capacity - 1])  # a row past the trimmed part
            store.publish_delta({"keys": (delta_rows, np.array([99], dtype=np.uint64))}, {}, base=version)
        info = ModelStore.open(folder).versions()[0]
        loaded, _ = ModelStore.open(folder).load(version)
        latest, _ = ModelStore.open(folder).load()
    for name, array in state.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert loaded[name].tobytes() == array.tobytes(), name  # bit for bit, -0.0 included
    assert (
        latest["keys"][capacity - 1] == 99 and latest["keys"][: capacity - 1].tobytes() == keys[:-1].tobytes()
    )
    if capacity - live > 2048:
        assert info.size < (live + 1100) * (width * 4 + 8) + 4096  # the free rows were not written out


def test_repeated_metadata_is_stored_once_in_the_manifest_and_read_back_whole(tmp_path: Path) -> None:
    """Every version records the model's spec and the whole configuration; the manifest holds each
    distinct value once, so it does not grow by kilobytes per version."""
    config = {
        "trainer": {"batch_size": 256, "negatives": 4},
        "model": {"name": "x", "dim": 64} | {f"key{n}": n for n in range(100)},
    }
    with ModelStore(StoreConfig(tmp_path, fsync=False, keep_versions=50)) as store:
        store.publish_snapshot({"w": np.zeros(4, np.float32)}, metadata={"config": config, "events": 0})
        for n in range(1, 30):
            rows = {"w": (np.array([n % 4]), np.full((1,), float(n), np.float32))}
            store.publish_delta(rows, {}, metadata={"config": config, "events": n}, base=n)
    document = json.loads((tmp_path / "manifest.json").read_text())
    assert len(document["shared"]) == 1 and document["format"] == 3
    assert all(set(entry["metadata"]["config"]) == {"shared"} for entry in document["versions"])
    reader = ModelStore.open(tmp_path)
    assert all(info.metadata["config"] == config for info in reader.versions())
    assert [info.metadata["events"] for info in reader.versions()] == list(range(30))


def test_a_manifest_of_the_first_format_still_reads(tmp_path: Path) -> None:
    with ModelStore(StoreConfig(tmp_path, fsync=False)) as store:
        store.publish_snapshot({"w": np.ones(2, np.float32)}, metadata={"model": {"name": "popularity"}})
    path = tmp_path / "manifest.json"
    document = json.loads(path.read_text())
    shared = document.pop("shared")
    for entry in document["versions"]:  # format 1 wrote every value inline
        entry["metadata"] = {
            k: shared[v["shared"]] if isinstance(v, dict) and "shared" in v else v
            for k, v in entry["metadata"].items()
        }
    document["format"] = 1
    path.write_text(json.dumps(document))
    state, loaded = ModelStore.open(tmp_path).load()
    assert loaded.metadata["model"] == {"name": "popularity"} and state["w"].tolist() == [1.0, 1.0]
