"""`freshrec produce` and `freshrec train --source URL` against real brokers (tansu for Kafka, redis-server):
a trainer SIGKILLed three times while events keep arriving learns every event exactly once (popularity's
counts equal the stream's, item by item), and each restart resumes from its checkpoint's broker
positions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from freshrec.events import EventBatch, KindWeights
from freshrec.live import free_port
from freshrec.preprocess.pipeline import IngestPipeline
from freshrec.publishing.store import ModelStore
from freshrec.sources.streams import StreamAddress, open_sink
from freshrec.training.checkpoint import CheckpointStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.kill import drill_stream, miscounted_items, newest_checkpoint  # noqa: E402

pytestmark = pytest.mark.e2e

HISTORY, TOTAL, KILLS, RATE = 6_000, 18_000, 3, 1_000


def drill_events() -> EventBatch:
    """The kill drill's synthetic stream (bench/kill.py), as validated events."""
    validator = IngestPipeline().validator
    return EventBatch.concat([validator.validate(raw).events for raw in drill_stream(TOTAL, 7).batches(5000)])


def freshrec(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freshrec.cli", *args], capture_output=True, text=True, timeout=120, **kwargs
    )


def newest_version(store: Path) -> dict:
    if not (store / "manifest.json").exists():
        return {}
    with ModelStore.open(store) as opened:
        versions = opened.versions()
    return versions[-1].metadata if versions else {}


def wait_for(condition, seconds: float, what: str, trainer: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert trainer.poll() is None, f"the trainer exited waiting for {what}: {output.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {seconds} s: {output.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture(params=["kafka", "redis"])
def url(request, kafka_topic, redis_server) -> str:
    if request.param == "kafka":
        return kafka_topic(2)
    return f"{redis_server}/e2e{free_port()}?partitions=2"


def test_produce_then_train_killed_three_times_learns_every_event_once(url, tmp_path):
    everything = drill_events()
    history = everything.take(slice(0, HISTORY))
    rows = [
        {
            "event_id": e.event_id,
            "timestamp": e.timestamp,
            "user_id": e.user_id,
            "item_id": e.item_id,
            "kind": e.kind,
        }
        for e in history.to_events()
    ]
    file = tmp_path / "history.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = freshrec("produce", "--events", str(file), "--to", url, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert f"{HISTORY:,} events written to" in loaded.stderr

    failures: list[BaseException] = []

    def send_the_rest() -> None:  # live events while the trainer is killed and restarted
        sink, started = open_sink(url), time.monotonic()
        try:
            for first in range(HISTORY, TOTAL, 250):
                sink.send(everything.take(slice(first, min(first + 250, TOTAL))))
                time.sleep(max(0.0, started + (first + 250 - HISTORY) / RATE - time.monotonic()))
        except BaseException as error:
            failures.append(error)
        finally:
            sink.close()

    store = tmp_path / "store"
    checkpoints = CheckpointStore(store / "checkpoints")
    command = [sys.executable, "-m", "freshrec.cli", "train", "--source", url, "--store", str(store)]
    command += ["--model", "popularity", "--publish-ms", "200", "--set", "checkpoints.interval_seconds=0.5"]
    output = tmp_path / "train.log"
    sender = threading.Thread(target=send_the_rest)
    rng = np.random.default_rng(3)
    with output.open("ab") as log:
        for kill in range(KILLS + 1):
            written = newest_checkpoint(checkpoints)
            trainer = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                if kill == 0:
                    sender.start()
                if kill < KILLS:  # killed once it has checkpointed while events stream in
                    wait_for(
                        lambda w=written: newest_checkpoint(checkpoints) > w,
                        120,
                        "checkpoint",
                        trainer,
                        output,
                    )
                    time.sleep(rng.uniform(0.0, 1.5))
                    os.killpg(trainer.pid, signal.SIGKILL)
                    trainer.wait()
                    continue
                sender.join()
                assert not failures, failures
                wait_for(
                    lambda: (
                        output.read_text().count("freshrec train ") == KILLS + 1
                        and newest_version(store).get("log_offset") == TOTAL
                    ),
                    120,
                    "the last trainer's start and a version of all",
                    trainer,
                    output,
                )
            finally:
                if trainer.poll() is None:
                    os.killpg(trainer.pid, signal.SIGTERM)
                    trainer.wait(timeout=30)
    text = output.read_text()
    assert text.count("freshrec train ") == KILLS + 1
    assert text.count("resuming from checkpoint") == KILLS, text  # each restart took the checkpoint path
    served = newest_version(store)
    assert served["events_trained"] == TOTAL
    assert set(served["source_positions"]) == {"0", "1"}
    weights = KindWeights().table()
    counts: Counter = Counter()
    for item, kind in zip(everything.item_id.tolist(), everything.kind.tolist(), strict=True):
        counts[item] += weights[kind]
    assert miscounted_items(store, counts) == 0  # no event lost, none learned twice


def test_a_store_learned_from_one_stream_is_not_continued_from_another(redis_server, tmp_path):
    first, other = (f"{redis_server}/s{free_port()}" for _ in range(2))
    sink = open_sink(first)
    sink.send(drill_events().take(slice(0, 500)))
    sink.close()
    store = tmp_path / "store"
    command = [sys.executable, "-m", "freshrec.cli", "train", "--store", str(store), "--model", "popularity"]
    command += ["--publish-ms", "100"]
    log = tmp_path / "train.log"
    trainer = subprocess.Popen([*command, "--source", first], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        learned = lambda: newest_version(store).get("log_offset") == 500  # noqa: E731
        wait_for(learned, 120, "a version of all", trainer, log)
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=30)
    # Its checkpoint and its version both name the first stream: neither is used for the other.
    first, other = (str(StreamAddress.parse(url)) for url in (first, other))
    refused = freshrec(*command[3:], "--source", other)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, said
    assert f"is not used: it was learned from {first}, not {other}" in said
    assert f"was learned from {first}, not from {other}" in said
    from_log = freshrec(*command[3:], "--log", str(tmp_path))
    said = " ".join(from_log.stderr.split())
    assert from_log.returncode == 2, said
    assert f"is not used: it was learned from {first}, not the event log" in said
    assert f"was learned from {first}, not from the event log" in said
