"""A model store that heals: each way a file gets damaged leaves a reader and a restarted trainer on the
newest version intact files lead to, saying which; retention holds `keep_versions` over thousands of
publishes with every kept version loadable; a compaction that meets damage makes the trainer publish a
snapshot; the manifest's backup is the manifest before the last replace, and a writer heals from it."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from freshrec.publishing.store import (
    MANIFEST,
    MANIFEST_BACKUP,
    ModelStore,
    StoreConfig,
    StoreCorruptError,
)
from tests.publishing.store_damage import (
    DAMAGES,
    damaged_manifest,
    events,
    flip_a_byte,
    trainer,
    truncate,
    truncated_snapshot,
    write_store,
)

STORE_LOG = "freshrec.publishing.store"


def assert_states_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine") / "store"
    write_store(directory)
    return directory


@pytest.fixture(scope="module")
def intact_states(pristine: Path) -> dict[int, dict[str, np.ndarray]]:
    reader = ModelStore.open(pristine)
    return {info.version: reader.load(info.version)[0] for info in reader.versions()}


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    """A copy of the pristine store to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "store"))


def test_the_store_written_has_the_layout_the_damages_expect(pristine: Path) -> None:
    versions = ModelStore.open(pristine).versions()
    assert [info.version for info in versions] == list(range(11, 31))
    assert [info.version for info in versions if info.full is not None] == [11, 21]
    assert {info.kind for info in versions} == {"delta"}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_reader_loads_the_newest_intact_version_and_says_which_in_one_line(
    store: Path, damage, intact_states, caplog: pytest.LogCaptureFixture
) -> None:
    expected, named = damage(store)
    reader = ModelStore.open(store)
    with caplog.at_level(logging.WARNING, logger=STORE_LOG):
        state, loaded = reader.load()
        reader.load()  # a follower retries: the line is not repeated
    assert loaded.version == expected
    assert_states_equal(state, intact_states[expected])
    (line,) = [record.getMessage() for record in caplog.records]
    assert named in line and f"version {expected}" in line, line
    if damage not in (truncated_snapshot, damaged_manifest):  # the current version itself is lost
        with pytest.raises(StoreCorruptError, match=re.escape(named)):
            reader.load(expected + 1)


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_restarted_trainer_adopts_the_newest_intact_version_and_publishes_on(
    store: Path, damage, intact_states
) -> None:
    expected, _ = damage(store)
    with ModelStore(StoreConfig(store, keep_versions=20, fsync=False)) as writer:
        publisher, loop = trainer(writer)
        assert publisher.version == expected
        assert_states_equal(publisher.model.state_dict(), intact_states[expected])
        loop.feed_events(events(128, seed=2))
        newest = writer.versions()[-1]
        # Numbering goes on after every number given out (even by a damaged manifest); the first version
        # after a restart is a snapshot, so nothing that follows needs a damaged file.
        assert newest.version == 32 and writer.versions()[-2].kind == "snapshot"
    state, loaded = ModelStore.open(store).load()
    assert loaded.version == 32 and loaded.damaged == ()
    assert_states_equal(state, publisher.shadow.state_dict())


def test_with_no_intact_full_state_a_load_fails_naming_every_damaged_file(store: Path) -> None:
    reader = ModelStore.open(store)
    fulls = [info.full.file for info in reader.versions() if info.full is not None]
    for name in fulls:
        truncate(store / name)
    with pytest.raises(StoreCorruptError, match="no kept version up to the current one") as error:
        reader.load()
    assert all(name in str(error.value) for name in fulls)


def test_retention_holds_keep_versions_over_5000_publishes_and_every_kept_version_loads(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    state = {"w": np.zeros((64, 4), np.float32), "step": np.array([0])}
    expected = {1: {name: array.copy() for name, array in state.items()}}
    most_versions = most_files = 0
    with ModelStore(StoreConfig(tmp_path, keep_versions=20, fsync=False)) as store:
        store.publish_snapshot(state)
        for version in range(2, 5001):
            rows = rng.choice(64, size=3, replace=False)
            values = rng.normal(size=(3, 4)).astype(np.float32)
            state["w"][rows] = values
            state["step"] = np.array([version])
            store.publish_delta({"w": (rows, values)}, {"step": state["step"]}, base=version - 1)
            expected[version] = {name: array.copy() for name, array in state.items()}
            expected.pop(version - 25, None)
            # Measured on disk: version numbers any file carries (temporary files of a compaction too).
            names = [name for name in os.listdir(tmp_path) if name.startswith(("v", ".v"))]
            on_disk = {int(re.search(r"v(\d{10})\.", name).group(1)) for name in names}  # type: ignore[union-attr]
            most_versions, most_files = max(most_versions, len(on_disk)), max(most_files, len(names))
            kept = [info.version for info in store.versions()]
            assert kept[-11:] == list(range(max(1, version - 10), version + 1))  # 20 - 10 + 1, always
        store.wait_for_compaction()
        kept = [info.version for info in store.versions()]
        named = {name for info in store.versions() for name in info.files}
    assert most_versions <= 20 and len(kept) <= 20, (most_versions, kept)
    assert most_files <= 20 + 3  # a delta each, and a full state every 10 versions
    assert set(os.listdir(tmp_path)) == named | {MANIFEST, MANIFEST_BACKUP, "writer.lock"}
    reader = ModelStore.open(tmp_path)
    for version in kept:
        assert_states_equal(reader.load(version)[0], expected[version])


def test_a_compaction_that_meets_damage_makes_the_trainer_publish_a_snapshot(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ModelStore(StoreConfig(store, keep_versions=20, fsync=False)) as writer:
        publisher, loop = trainer(writer)
        loop.feed_events(events(64 * 3, seed=2))  # 31 (a snapshot: the trainer restarted), 32, 33
        damaged = writer.versions()[-1]
        assert damaged.version == 33 and damaged.kind == "delta"
        flip_a_byte(store / damaged.file)  # on disk, after the manifest named it
        with caplog.at_level(logging.WARNING, logger=STORE_LOG):
            loop.feed_events(events(64 * 8, seed=3))  # 41 = 31 + 10: its compaction needs 33
            writer.wait_for_compaction()
        assert writer.snapshot_wanted is not None and damaged.file in writer.snapshot_wanted
        assert any(damaged.file in record.getMessage() for record in caplog.records)
        loop.feed_events(events(64, seed=4))
        newest = writer.versions()[-1]
        assert newest.version == 42 and newest.kind == "snapshot" and writer.snapshot_wanted is None
        assert writer.read_status()["store"]["compaction_failures"] == 1
    state, loaded = ModelStore.open(store).load()
    assert loaded.version == 42 and loaded.damaged == ()
    assert_states_equal(state, publisher.shadow.state_dict())


def test_the_manifest_backup_is_a_link_to_the_manifest_before_the_last_replace(tmp_path: Path) -> None:
    with ModelStore(StoreConfig(tmp_path, fsync=False)) as store:
        store.publish_snapshot({"w": np.zeros(3, np.float32)})
        assert not (tmp_path / MANIFEST_BACKUP).exists()  # nothing came before the first
        first = (tmp_path / MANIFEST).stat()
        store.publish_delta({}, {"w": np.ones(3, np.float32)}, base=1)
        backup = (tmp_path / MANIFEST_BACKUP).stat()
        assert (backup.st_ino, backup.st_size) == (first.st_ino, first.st_size)  # no bytes written
        store.rollback(1, "test")
        assert json.loads((tmp_path / MANIFEST_BACKUP).read_text())["current"] == 2


def test_a_writer_opening_a_damaged_manifest_heals_it_from_the_backup(store: Path) -> None:
    expected, _ = damaged_manifest(store)
    with ModelStore(StoreConfig(store, fsync=False)) as writer:
        assert writer.current_version() == expected == 29
        # manifest.json is whole again, and version 30 (which only the damaged manifest named) is gone.
        document = json.loads((store / MANIFEST).read_text())
        assert document["current"] == 29 and document["latest"] == 30
        assert not (store / "v0000000030.delta.safetensors").exists()
        assert ModelStore.open(store).health()["manifest_from_backup"] is False


def test_with_both_manifests_damaged_reading_fails_naming_both(store: Path) -> None:
    truncate(store / MANIFEST)
    truncate(store / MANIFEST_BACKUP)
    with pytest.raises(StoreCorruptError, match=f"{MANIFEST}.*{MANIFEST_BACKUP}"):
        ModelStore.open(store).current_version()
    with pytest.raises(StoreCorruptError, match="backup is damaged too"):
        ModelStore(StoreConfig(store, fsync=False))
