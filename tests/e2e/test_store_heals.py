"""A model store that heals, with real processes: `freshrec serve` over a store damaged in each way starts
on the newest intact version and says which; `freshrec train` over one adopts that version and publishes
on; a server serving version N while a damaged N + 1 is published keeps serving N, and serves the snapshot
the trainer publishes once its store finds the damage."""

from __future__ import annotations

import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from freshrec.live import LiveLoop, LiveLoopConfig
from freshrec.publishing.store import StoreConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from tests.e2e.test_live_loop import post_stream
from tests.publishing.store_damage import (
    DAMAGES,
    DamagingStore,
    events,
    trainer,
    truncated_delta,
    write_store,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 11-30 of a small co-occurrence model, as a trainer leaves them (see `write_store`)."""
    directory = tmp_path_factory.mktemp("pristine") / "store"
    write_store(directory)
    return directory


def damaged_copy(pristine: Path, directory: Path, damage) -> tuple[int, str]:
    shutil.copytree(pristine, directory / "store")
    return damage(directory / "store")


def served_version(loop: LiveLoop) -> int:
    return int(loop.get("/recommend?user_id=42&k=5")["model_version"])


def metrics(loop: LiveLoop) -> str:
    with urllib.request.urlopen(loop.base_url + "/metrics", timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def servers(pristine, tmp_path_factory: pytest.TempPathFactory):
    """One `freshrec serve` per damage, each over its own damaged copy of the store, started two at a time
    (a server spends its start importing, on one core: six in a row took most of a minute)."""
    cases = {}
    for name, damage in DAMAGES.items():
        directory = tmp_path_factory.mktemp(name.replace(" ", "-"))
        expected, named = damaged_copy(pristine, directory, damage)
        cases[name] = (LiveLoop(LiveLoopConfig(directory)), expected, named)
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda case: _started(case[0]), cases.values()))
    try:
        yield cases
    finally:
        for loop in started:
            if loop is not None:
                loop.stop()
        for loop, _, _ in cases.values():
            loop.stop()


def _started(loop: LiveLoop) -> LiveLoop | None:
    try:
        return loop.start(trainer=False)
    except Exception:  # noqa: BLE001 - the test of that damage reports it
        return None


@pytest.mark.parametrize("name", DAMAGES)
def test_a_server_starts_on_the_newest_intact_version_and_says_which(servers, name) -> None:
    loop, expected, named = servers[name]
    assert loop.server is not None, f"freshrec serve did not start:\n{loop.output_tail()}"
    loop.wait_until(lambda: loop.get("/readyz")["ready"], 30, "the server ready")
    assert loop.get("/readyz")["model_version"] == expected == served_version(loop)
    lines = [line for line in loop.output_tail(200).splitlines() if named in line]
    assert lines and f"version {expected}" in lines[0], loop.output_tail()


def test_a_trainer_over_a_damaged_store_adopts_the_newest_intact_version_and_publishes_on(
    pristine, tmp_path
) -> None:
    expected, named = damaged_copy(pristine, tmp_path, truncated_delta)
    same_model = ("--set", "model.capacity=1024", "--set", "model.max_neighbors=16")
    config = LiveLoopConfig(tmp_path, publish_ms=200, batch_size=64, train_args=same_model)
    with LiveLoop(config) as loop:
        loop.wait_until(lambda: f"version={expected}" in loop.output_tail(), 60, "the trainer adopting")
        assert named in loop.output_tail()
        post_stream(loop, SyntheticStream(SyntheticConfig(n_events=500, n_users=50, n_items=80, seed=7)))
        # Numbering goes on after the damaged version 30; the trainer's first version is a snapshot.
        loop.wait_until(lambda: served_version(loop) > 30, 30, "a version after the damaged one served")
        assert loop.get("/versions")["store"]["degraded"] is False


def test_a_server_keeps_serving_through_a_damaged_version_until_an_intact_one_comes(tmp_path) -> None:
    with DamagingStore(StoreConfig(tmp_path / "store", keep_versions=20, fsync=False)) as store:
        _, training = trainer(store)  # this test is the trainer: it decides when a file goes bad
        training.feed_events(events(64 * 2))  # versions 1-3
        loop = LiveLoop(LiveLoopConfig(tmp_path)).start(trainer=False)
        try:
            loop.wait_until(lambda: served_version(loop) == 3, 30, "version 3 served")
            store.damage_next = True
            training.feed_events(events(64, seed=2))  # version 4, damaged on disk
            loop.wait_until(lambda: loop.get("/versions")["store"]["degraded"], 10, "the damage seen")
            health = loop.get("/versions")["store"]
            assert health["failed_version"] == 4 and "v0000000004.delta" in health["problem"]
            assert served_version(loop) == 3 and "freshrec_store_degraded 1.0" in metrics(loop)
            training.feed_events(events(64 * 7, seed=3))  # 5-11: the compaction due at 11 meets version 4
            store.wait_for_compaction()
            assert store.snapshot_wanted is not None and served_version(loop) == 3
            training.feed_events(events(64, seed=4))  # 12: the snapshot the store asked for
            loop.wait_until(lambda: served_version(loop) == 12, 10, "version 12 served")
            assert loop.get("/versions")["store"]["degraded"] is False
            assert "freshrec_store_degraded 0.0" in metrics(loop)
        finally:
            loop.stop()
        log = loop.output_tail(200)
        assert "version 4 cannot be loaded" in log and "v0000000004.delta.safetensors" in log, log
