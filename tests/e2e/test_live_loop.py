"""The live loop with real processes: `freshrec serve` takes events over HTTP into the event log,
`freshrec train` learns from the log and publishes gated versions, the server follows them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest

from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body: object | None = None, timeout: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    return False


@pytest.fixture
def live(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "freshrec.cli"]
    dirs = ["--store", str(tmp_path / "store"), "--log", str(tmp_path / "log")]
    with open(tmp_path / "processes.log", "w") as logs:
        server = subprocess.Popen([*cli, "serve", *dirs, "--port", str(port)], stdout=logs, stderr=logs)
        trainer = subprocess.Popen(
            [*cli, "train", *dirs, "--model", "cooccurrence", "--publish-ms", "200", "--batch-size", "256"],
            stdout=logs,
            stderr=logs,
        )
        try:
            assert wait_for(lambda: call(f"{base}/healthz")[0] == 200, 60), (
                tmp_path / "processes.log"
            ).read_text()
            yield base
        finally:
            for process in (trainer, server):
                process.send_signal(signal.SIGTERM)
            for process in (trainer, server):
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)


def test_a_new_users_interest_shows_in_recommendations_within_seconds(live):
    stream = SyntheticStream(
        SyntheticConfig(n_events=20_000, n_users=500, n_items=300, n_clusters=5, seed=11)
    )
    posted = 0
    for raw in stream.batches(1000):
        events = [
            {"event_id": int(e), "timestamp": float(t), "user_id": int(u), "item_id": int(i)}
            for e, t, u, i in zip(
                raw.columns["event_id"],
                raw.columns["timestamp"],
                raw.columns["user_id"],
                raw.columns["item_id"],
                strict=True,
            )
        ]
        status, body = call(f"{live}/events", events)
        assert status == 202 and body["accepted"] == len(events)
        posted += len(events)
    assert wait_for(lambda: call(f"{live}/readyz")[0] == 200, 60)
    assert wait_for(lambda: call(f"{live}/versions")[1]["serving"] > 2, 60)

    # A new user acts on five items of one interest cluster.
    cluster = 2
    items = [int(i) for i in stream.items_of_cluster(cluster)[:5]]
    now = time.time()
    newcomer = [
        {"event_id": f"n{n}", "timestamp": now + n, "user_id": "newcomer", "item_id": item}
        for n, item in enumerate(items)
    ]
    assert call(f"{live}/events", newcomer)[1]["accepted"] == 5
    posted_at = time.monotonic()

    def cluster_dominates() -> bool:
        status, body = call(f"{live}/recommend?user_id=newcomer&k=10")
        ids = [item["item_id"] for item in body.get("items", [])]
        clusters = Counter(stream.cluster_of_item(np.array(ids, dtype=np.int64)).tolist()) if ids else {}
        return (
            status == 200 and len(ids) == 10 and clusters.get(cluster, 0) >= 6 and not set(ids) & set(items)
        )

    assert wait_for(cluster_dominates, 10), call(f"{live}/recommend?user_id=newcomer&k=10")
    assert time.monotonic() - posted_at < 10
