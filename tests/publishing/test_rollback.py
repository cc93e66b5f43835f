"""Rollback from any process: directly when no trainer holds the store, through the trainer when one does
(which must also reset its model, or it would republish what was rolled back)."""

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from freshrec.evaluation.gate import GateConfig
from freshrec.models.cooccurrence import CooccurrenceConfig, CooccurrenceModel
from freshrec.preprocess.validate import EventValidator
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.rollback import (
    ROLLBACK_REQUEST,
    RollbackTimeoutError,
    answer_rollback,
    pending_rollback,
    rollback,
)
from freshrec.publishing.store import ModelStore, StoreConfig, StoreError, VersionNotFoundError
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


def weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, np.float32)}


def request_files(directory: Path) -> list[str]:
    """Rollback requests waiting or claimed in a store directory."""
    return sorted(path.name for path in directory.glob("rollback-*"))


def test_without_a_trainer_the_store_is_rolled_back_directly(tmp_path: Path) -> None:
    with ModelStore(StoreConfig(tmp_path, fsync=False)) as store:
        for value in (1.0, 2.0, 3.0):
            store.publish_snapshot(weights(value))
    outcome = rollback(tmp_path, to=2, reason="bad update")
    assert (outcome.version, outcome.previous, outcome.via) == (2, 3, "store")
    reader = ModelStore.open(tmp_path)
    assert reader.current_version() == 2 and reader.load()[0]["w"].tolist() == [2.0] * 3
    assert reader.history()[-1]["reason"] == "bad update"
    with pytest.raises(VersionNotFoundError, match="kept"):
        rollback(tmp_path, to=9)


def test_with_a_writer_the_request_waits_for_its_answer(tmp_path: Path) -> None:
    store = ModelStore(StoreConfig(tmp_path, fsync=False))
    for value in (1.0, 2.0, 3.0):
        store.publish_snapshot(weights(value))

    answered: list[int] = []

    def writer() -> None:  # what the trainer's publisher does between batches
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(answered) < 2:
            request = pending_rollback(tmp_path)
            if request is not None:
                answered.append(request.to)
                answer_rollback(store, request)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        outcome = rollback(tmp_path, to=1, reason="ops", timeout=5)
        assert (outcome.version, outcome.previous, outcome.via) == (1, 3, "trainer")
        with pytest.raises(VersionNotFoundError):
            rollback(tmp_path, to=42, timeout=5)  # refused by the writer, and the asker hears why
    finally:
        thread.join()
        store.close()
    assert answered == [1, 42]
    assert ModelStore.open(tmp_path).current_version() == 1
    assert request_files(tmp_path) == []


def test_an_unanswered_request_times_out_and_is_withdrawn(tmp_path: Path) -> None:
    with ModelStore(StoreConfig(tmp_path, fsync=False)) as store:
        store.publish_snapshot(weights(1.0))
        with pytest.raises(RollbackTimeoutError, match="withdrawn and not applied"):
            rollback(tmp_path, to=1, timeout=0.2)
        assert pending_rollback(tmp_path) is None  # it cannot take effect later by surprise
        assert request_files(tmp_path) == []


def test_a_rollback_reports_exactly_what_the_store_did_when_its_timeout_races_the_answer(
    tmp_path: Path,
) -> None:
    """Many short-timeout rollbacks against a writer that takes a moment between claiming a request and
    recording its answer: a request claimed just before its asker's deadline must be reported as it ended
    (applied), never as withdrawn; one withdrawn must never be applied."""
    store = ModelStore(StoreConfig(tmp_path, fsync=False))
    for value in (1.0, 2.0, 3.0):
        store.publish_snapshot(weights(value))
    stop = threading.Event()

    def writer() -> None:
        pace = random.Random(1)
        while not stop.is_set():
            request = pending_rollback(tmp_path)
            if request is not None:
                time.sleep(pace.choice([0.0, 0.001, 0.003, 0.006]))  # the claim-to-answer window
                answer_rollback(store, request)
            time.sleep(pace.random() * 0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    asked = random.Random(2)
    applied: dict[str, tuple[int, bool]] = {}  # request id -> (target, answered after its own deadline)
    withdrawn: list[str] = []
    try:
        for _ in range(150):
            target, timeout = asked.randint(1, 3), asked.choice([0.001, 0.005, 0.01, 0.02])
            started = time.monotonic()
            try:
                outcome = rollback(tmp_path, to=target, timeout=timeout)
            except RollbackTimeoutError as error:
                withdrawn.append(error.request_id)
                continue
            assert outcome.via == "trainer" and outcome.version == target
            applied[outcome.request] = (target, time.monotonic() - started > timeout)
    finally:
        stop.set()
        thread.join()
    recorded = {event["request"]: event for event in store.history() if "request" in event}
    store.close()
    assert set(recorded) == set(applied)  # nothing withdrawn was applied, nothing applied was withdrawn
    assert all(
        recorded[rid]["action"] == "rollback" and recorded[rid]["to"] == t for rid, (t, _) in applied.items()
    )
    assert not set(withdrawn) & set(recorded)
    # Both sides of the race happened, and the window that used to report "withdrawn" was hit.
    assert withdrawn and sum(late for _, late in applied.values()) > 0
    assert request_files(tmp_path) == []


def test_a_request_claimed_by_a_writer_that_died_is_reported_not_applied(tmp_path: Path) -> None:
    import subprocess
    import sys

    with ModelStore(StoreConfig(tmp_path, fsync=False)) as store:
        store.publish_snapshot(weights(1.0))
        store.publish_snapshot(weights(2.0))
    # A writer process that claims the request and dies (SIGKILL) before answering it.
    script = (
        "import os, signal, sys, time\n"
        "from freshrec.publishing.store import ModelStore, StoreConfig\n"
        "from freshrec.publishing.rollback import pending_rollback\n"
        f"store = ModelStore(StoreConfig({str(tmp_path)!r}))\n"
        "print('ready', flush=True)\n"
        f"while pending_rollback({str(tmp_path)!r}) is None: time.sleep(0.005)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with pytest.raises(RollbackTimeoutError, match="stopped before answering it; it was not applied"):
            rollback(tmp_path, to=1, timeout=30)  # claimed, so waited for; judged once the writer is gone
        assert writer.wait(timeout=20) == -9
    finally:
        writer.kill()
        writer.wait()
    assert ModelStore.open(tmp_path).current_version() == 2 and request_files(tmp_path) == []


def test_a_garbage_request_file_is_named_and_removed(tmp_path: Path) -> None:
    (tmp_path / f"{ROLLBACK_REQUEST}0.garbage.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a rollback request"):
        pending_rollback(tmp_path)
    assert pending_rollback(tmp_path) is None and request_files(tmp_path) == []


def test_the_trainer_resets_its_model_to_the_rolled_back_version(tmp_path: Path) -> None:
    model = CooccurrenceModel(CooccurrenceConfig(capacity=2048, max_neighbors=16))
    stream = SyntheticStream(SyntheticConfig(n_events=4000, n_users=300, n_items=400, seed=3))
    batches = [EventValidator().validate(raw).events for raw in stream.batches(500)]
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, rollback_poll_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata={"model": model.name},
        )
        loop = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=250)), publisher=publisher)
        for batch in batches[:4]:
            loop.feed_events(batch)
        target = 3
        assert store.current_version() > target + 1
        expected, _ = store.load(target)

        # Ask as another process would; the trainer answers at its next batch.
        from freshrec.publishing.rollback import _ask_writer

        asker = threading.Thread(target=_ask_writer, args=(tmp_path / "store", target, "test", 5.0))
        asker.start()
        while not request_files(tmp_path / "store"):  # waiting for the asker's request
            time.sleep(0.005)
        assert publisher.serve_rollback_request() == target
        asker.join()
        assert store.current_version() == target and publisher.version == target
        for name, array in model.state_dict().items():
            np.testing.assert_array_equal(array, expected[name], err_msg=name)

        # Learning continues from there, and the next version is a snapshot newer than everything.
        latest_before = max(v.version for v in store.versions())
        loop.feed_events(batches[4])
        after = [info for info in store.versions() if info.version > latest_before]
        assert after and after[0].kind == "snapshot" and store.current_version() == after[-1].version


def test_a_missing_store_is_named_and_not_created(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no model store"):
        rollback(tmp_path / "nowhere", to=1)
    assert not (tmp_path / "nowhere").exists()
