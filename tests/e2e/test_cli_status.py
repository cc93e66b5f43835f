"""`freshrec status`: what an operator reads of a store while its trainer holds it (the writer's lock stays
taken throughout these tests: status must only read)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from freshrec.events import Event, EventBatch
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.sources.eventlog import EventLog, EventLogConfig, EventLogReader
from freshrec.training.checkpoint import CheckpointStore

pytestmark = pytest.mark.e2e


def _status(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", "status", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _events(start: int, n: int) -> EventBatch:
    return EventBatch.from_events(
        Event(f"e{i}", 1_700_000_000.0 + i, f"u{i % 7}", f"i{i % 5}") for i in range(start, start + n)
    )


def test_status_reports_version_lag_learning_gate_and_rollbacks_beside_a_running_trainer(
    tmp_path, live_trainer
):
    store_dir = tmp_path / "store"
    with ModelStore(StoreConfig(store_dir, keep_versions=10, fsync=False)) as store:
        trainer = live_trainer("popularity", store, 4)
        log = EventLog.open(EventLogConfig(directory=tmp_path / "log"))
        log.append(_events(0, 12))
        log.close()
        trainer.run(EventLogReader(tmp_path / "log", start_offset="earliest"))
        published = store.current_version()
        assert published >= 3
        store.rollback(published - 1, reason="drill")
        learned = store.versions()[-2].metadata["events_trained"]
        # The trainer's newest checkpoint is ahead of what is served.
        CheckpointStore(store_dir / "checkpoints", fsync=False).write({"w": np.zeros(2)}, 40, {"model": "x"})

        result = _status("--store", str(store_dir), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["published"] and status["current"] == published - 1
        assert status["latest"] == published and status["lag_versions"] == 1
        assert status["events_trained"] == learned
        assert status["versions_kept"] == len(store.versions()) and status["keep_versions"] == 10
        assert 0 <= status["age_seconds"] < 60
        assert status["trainer"]["log_offset"] == 40
        assert 0 < status["log_offset"] <= 12 and status["lag_events"] == 40 - status["log_offset"]
        assert status["gate"]["published"] >= 2 and status["gate"]["recent"]
        assert status["rollbacks"]["count"] == 1 and status["rollbacks"]["recent"][0]["reason"] == "drill"

        text = _status("--store", str(store_dir))
        assert text.returncode == 0, text.stderr
        assert f"current version  {published - 1} " in text.stdout
        assert f"{published - 1} <- " not in text.stdout
        assert f"  {published} -> {published - 1}: drill" in text.stdout
        assert "events behind the trainer's checkpoint" in text.stdout
        assert "1 versions behind the newest (a rollback)" in text.stdout


def test_status_of_an_empty_or_missing_store(tmp_path):
    missing = _status("--store", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert f"no model store at {tmp_path / 'nowhere'}" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _status("--store", str(tmp_path / "empty"), "--json")
    assert empty.returncode == 0, empty.stderr
    status = json.loads(empty.stdout)
    assert status["published"] is False and status["trainer"] is None and status["lag_events"] is None
    assert "nothing published yet" in _status("--store", str(tmp_path / "empty")).stdout
