"""Two `freshrec serve --source URL` replicas on one store and one stream (Kafka through tansu, Redis
Streams through redis-server), with `freshrec train --source URL`: events posted to one replica are learned
by the trainer and show in the other replica's answers, and both serve the newest version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from freshrec.live import free_port
from freshrec.sources.streams import open_sink
from tests.e2e.test_stream_training import drill_events

pytestmark = pytest.mark.e2e

HISTORY = 5_000


@pytest.fixture(params=["kafka", "redis"])
def url(request, kafka_topic, redis_server) -> str:
    if request.param == "kafka":
        return kafka_topic(2)
    return f"{redis_server}/serve{free_port()}?partitions=2"


def wait_for(condition: Callable[[], bool], seconds: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass  # a server still starting
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
            raise AssertionError(f"no {what} within {seconds} s\n{tails}")
        time.sleep(0.1)


def test_two_replicas_follow_one_stream_and_serve_the_same_version(url, tmp_path):
    history = drill_events().take(slice(0, HISTORY))
    sink = open_sink(url)
    sink.send(history)
    sink.close()
    store = tmp_path / "store"
    cli = [sys.executable, "-m", "freshrec.cli"]
    commands = {
        "train": [*cli, "train", "--source", url, "--store", str(store), "--publish-ms", "200"],
        **{
            f"serve{n}": [*cli, "serve", "--source", url, "--store", str(store), "--port", str(free_port())]
            for n in (1, 2)
        },
    }
    commands["train"] += ["--set", "checkpoints.interval_seconds=1"]
    logs = [tmp_path / f"{name}.log" for name in commands]
    processes = []
    try:
        for (name, command), log in zip(commands.items(), logs, strict=True):
            if name == "serve1":  # a server starts once the store holds a version
                wait_for(lambda: (store / "manifest.json").exists(), 120, "first version", logs)
            processes.append(
                subprocess.Popen(
                    command,
                    stdout=log.open("wb"),
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                    start_new_session=True,
                )
            )
        one, two = (
            httpx.Client(base_url=f"http://127.0.0.1:{commands[n][-1]}", timeout=10)
            for n in commands
            if n != "train"
        )
        for server in (one, two):
            wait_for(lambda s=server: s.get("/readyz").status_code == 200, 120, "ready server", logs)
        cold: list = []

        def catalogue_followed() -> bool:  # the replica has read the stream's items
            cold[:] = two.get("/recommend", params={"user_id": "cold-user", "k": 10}).json()["items"]
            return len(cold) == 10

        wait_for(catalogue_followed, 60, "a full answer for a cold user", logs)
        top = cold[0]["item_id"]
        clicks = [
            {
                "event_id": f"new-{i}",
                "timestamp": float(history.timestamp[-1]) + 1 + i,
                "user_id": "newcomer",
                "item_id": top,
                "kind": "click",
            }
            for i in range(3)
        ]
        answer = one.post("/events", json=clicks)
        assert answer.status_code == 202 and answer.json()["accepted"] == 3, answer.text
        assert answer.json()["offsets"] == [None, None]  # a stream has no log offsets

        def the_other_replica_saw_the_clicks() -> bool:
            items = two.get("/recommend", params={"user_id": "newcomer", "k": 10}).json()["items"]
            return all(item["item_id"] != top for item in items)  # seen: excluded by the other replica

        wait_for(the_other_replica_saw_the_clicks, 30, "the clicks in the other replica's answer", logs)

        def learned_and_served_everywhere() -> bool:
            versions = [server.get("/versions").json() for server in (one, two)]
            newest = versions[0]["versions"][-1]["metadata"]
            return (
                newest.get("events_trained") == HISTORY + 3
                and versions[0]["serving"]
                == versions[1]["serving"]
                == versions[0]["current"]
                == versions[0]["versions"][-1]["version"]
            )

        wait_for(learned_and_served_everywhere, 60, "the newest version learned all and served by both", logs)
        answers = [s.get("/recommend", params={"user_id": "newcomer", "k": 10}).json() for s in (one, two)]
        assert answers[0]["model_version"] == answers[1]["model_version"]
        assert answers[0]["items"] == answers[1]["items"]  # same version, same feature state: same answer
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
