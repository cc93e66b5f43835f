"""The live loop with real processes: `freshrec serve` takes events over HTTP into the event log,
`freshrec train` learns from the log and publishes gated versions, the server follows them."""

import time
from collections import Counter

import numpy as np
import pytest

from freshrec.live import LiveLoop, LiveLoopConfig
from freshrec.publishing.store import ModelStore
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(tmp_path):
    config = LiveLoopConfig(tmp_path, model="cooccurrence", publish_ms=200, batch_size=256)
    with LiveLoop(config) as loop:
        yield loop


def post_stream(loop: LiveLoop, stream: SyntheticStream, id_prefix: str = "") -> int:
    """Post a stream in chunks of 1,000; event ids get `id_prefix` (the trainer drops repeated ids)."""
    posted = 0
    for raw in stream.batches(1000):
        events = [
            {"event_id": f"{id_prefix}{e}", "timestamp": float(t), "user_id": int(u), "item_id": int(i)}
            for e, t, u, i in zip(
                raw.columns["event_id"],
                raw.columns["timestamp"],
                raw.columns["user_id"],
                raw.columns["item_id"],
                strict=True,
            )
        ]
        assert loop.post_events(events)["accepted"] == len(events)
        posted += len(events)
    return posted


def test_a_new_users_interest_shows_in_recommendations_within_seconds(live):
    stream = SyntheticStream(
        SyntheticConfig(n_events=20_000, n_users=500, n_items=300, n_clusters=5, seed=11)
    )
    post_stream(live, stream)
    live.wait_until(lambda: live.get("/readyz")["ready"], 60, "a model loaded")
    live.wait_until(lambda: live.get("/versions")["serving"] > 2, 60, "version 3 served")

    # A new user acts on five items of one interest cluster.
    cluster = 2
    items = [int(i) for i in stream.items_of_cluster(cluster)[:5]]
    now = time.time()
    newcomer = [
        {"event_id": f"n{n}", "timestamp": now + n, "user_id": "newcomer", "item_id": item}
        for n, item in enumerate(items)
    ]
    assert live.post_events(newcomer)["accepted"] == 5
    posted_at = time.monotonic()

    def cluster_dominates() -> bool:
        ids = [item["item_id"] for item in live.get("/recommend?user_id=newcomer&k=10")["items"]]
        clusters = Counter(stream.cluster_of_item(np.array(ids, dtype=np.int64)).tolist()) if ids else {}
        return len(ids) == 10 and clusters.get(cluster, 0) >= 6 and not set(ids) & set(items)

    live.wait_until(cluster_dominates, 10, "the newcomer's cluster in their top 10")
    assert time.monotonic() - posted_at < 10


def test_killed_processes_restart_from_the_store_and_a_cut_file_is_never_applied(live):
    stream = SyntheticStream(SyntheticConfig(n_events=5_000, n_users=200, n_items=200, seed=3))
    post_stream(live, stream)
    live.wait_until(lambda: live.get("/versions")["serving"] >= 3, 60, "version 3 served")
    live.kill_server()  # SIGKILL: nothing of the server's clean-up runs

    # While it is down, leave what a writer killed mid-write would: a temporary file cut short, and a
    # version file the manifest does not name (cut mid-write under its final name by a faulty copy).
    store_dir = live.directory / "store"
    latest = ModelStore.open(store_dir).versions()[-1]
    data = (store_dir / latest.file).read_bytes()
    cut = data[: len(data) // 2]
    (store_dir / f".v{latest.version + 1:010d}.delta.safetensors.999.tmp").write_bytes(cut)
    (store_dir / f"v{latest.version + 1000:010d}.delta.safetensors").write_bytes(cut)

    live.start_server()
    live.wait_until(lambda: live.get("/readyz")["ready"], 30, "the restarted server ready")
    current = ModelStore.open(store_dir).current_version()
    answer = live.get("/recommend?user_id=42&k=5")
    assert answer["model_version"] >= current >= latest.version and len(answer["items"]) == 5

    # The server keeps following the trainer after the restart, and the event log kept every event.
    more = SyntheticStream(SyntheticConfig(n_events=2_000, n_users=200, n_items=200, seed=4))
    assert post_stream(live, more, id_prefix="after-") == 2_000

    def served_events_trained() -> int:
        versions = live.get("/versions")
        trained = {v["version"]: v["metadata"].get("events_trained", 0) for v in versions["versions"]}
        return trained.get(versions["serving"], 0)

    live.wait_until(lambda: served_events_trained() >= 7_000, 30, "a version trained on all 7,000 events")
    assert all(info.version < latest.version + 1000 for info in ModelStore.open(store_dir).versions())

    # A killed trainer restarts from its checkpoint (the first one is written after its first batch): it
    # learns again only what came after it, holds its versions until past the served one, and carries on.
    live.kill_trainer()
    live.start_trainer()
    live.wait_until(lambda: "resuming from checkpoint" in live.output_tail(), 30, "trainer resumed")
    again = SyntheticStream(SyntheticConfig(n_events=1_000, n_users=200, n_items=200, seed=5))
    assert post_stream(live, again, id_prefix="resumed-") == 1_000
    live.wait_until(lambda: served_events_trained() >= 8_000, 30, "a version trained on all 8,000 events")
    # From scratch it would count 7,000 + 8,000: each event is learned exactly once.
    assert served_events_trained() == 8_000

    # An operator rolls back over HTTP: the running trainer does it and resets its model; the server follows.
    target = ModelStore.open(store_dir).versions()[-3].version
    status, answer = live.request("/admin/rollback", {"to": target, "reason": "e2e"})
    assert status == 200 and answer["via"] == "trainer" and answer["version"] == target, answer
    live.wait_until(lambda: live.get("/versions")["serving"] == target, 10, f"version {target} served")
