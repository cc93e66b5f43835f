"""POST /events with a broker stream behind it: accepted events are produced to the stream (and read back by
the server's own feature state); a broker that goes away is a 503 naming it, never a 500."""

from __future__ import annotations

import shutil
import time

from fastapi.testclient import TestClient

from freshrec.live import free_port
from freshrec.serving.app import create_app
from freshrec.serving.config import ServingConfig
from freshrec.sources.streams import ConsumerSpec, open_stream
from tests.brokers import start_server, stop_server


def event(i: int) -> dict:
    return {"event_id": f"e{i}", "timestamp": 1.7e9 + i, "user_id": f"u{i % 3}", "item_id": i % 5}


def test_events_go_to_the_stream_and_a_lost_broker_is_a_503(tmp_path):
    port = free_port()
    command = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", ""]
    redis = start_server([*command, "--appendonly", "no"], port, "redis-server", tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{port}/door?partitions=2"
    try:
        application = create_app(ServingConfig(), tmp_path / "store", tmp_path / "log", stream=url)
        with TestClient(application) as client:
            answer = client.post("/events", json=[event(i) for i in range(20)] + [{"user_id": 1}])
            assert answer.status_code == 202, answer.text
            body = answer.json()
            assert body["accepted"] == 20 and body["offsets"] == [None, None]
            assert body["rejected"][0]["index"] == 20
            runtime = application.state.runtime
            deadline = time.monotonic() + 10
            while runtime.events_applied < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert runtime.events_applied == 20  # the feature state followed the stream
            assert not (tmp_path / "log").exists()  # no event log is opened beside a stream
            reader = open_stream(url, ConsumerSpec("check"))
            read = sum(batch.records_read for _ in range(20) for batch in reader.batches(100))
            reader.close()
            assert read == 20

            stop_server(redis)
            lost = client.post("/events", json=[event(99)])
            assert lost.status_code == 503
            assert (
                "events not accepted" in lost.json()["detail"] and url.split("?")[0] in lost.json()["detail"]
            )
    finally:
        if redis.poll() is None:
            stop_server(redis)
