"""The HTTP API over a real model store and a real event log (ASGI test client, threads running)."""

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from freshrec.evaluation.gate import GateConfig
from freshrec.events import Event, EventBatch
from freshrec.models.registry import create_model
from freshrec.publishing.publisher import ModelPublisher, PublisherConfig
from freshrec.publishing.store import ModelStore, StoreConfig
from freshrec.serving.app import create_app
from freshrec.serving.runtime import ServingConfig
from freshrec.training.loop import TrainingLoop
from freshrec.training.online import OnlineTrainer, TrainerConfig


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def served(tmp_path):
    """A store with version 1 of a popularity model trained on item "hit" being popular, and a client."""
    model = create_model("popularity")  # the server builds the published model by its registry name
    store = ModelStore(StoreConfig(tmp_path / "store"))
    publisher = ModelPublisher(
        model,
        store,
        PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
        metadata={"model": "popularity"},
    )
    trainer = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=4)), publisher=publisher)
    config = ServingConfig(user_capacity=1000)
    with TestClient(create_app(config, tmp_path / "store", tmp_path / "log", max_body_bytes=4096)) as client:
        yield client, trainer, store
    store.close()


def post(client, events):
    return client.post("/events", json=events)


def test_health_readiness_and_versions(served):
    client, _, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == 1
    versions = client.get("/versions").json()
    assert versions["serving"] == versions["current"] == 1


def test_ingest_reports_each_rejection_and_keeps_the_good_events(served):
    client, _, _ = served
    now = time.time()
    answer = post(
        client,
        [
            {"event_id": "a", "timestamp": now, "user_id": "u1", "item_id": "x"},
            {"event_id": "b", "timestamp": now, "user_id": "u1"},
            {"event_id": "c", "timestamp": "yesterday", "user_id": "u2", "item_id": "y"},
            {"event_id": "d", "timestamp": now, "user_id": "u2", "item_id": "y", "kind": "click"},
        ],
    )
    assert answer.status_code == 202
    body = answer.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [(1, "item_id"), (2, "timestamp")]
    assert wait_for(lambda: client.app.state.runtime.events_applied == 2)


def test_malformed_and_oversized_bodies(served):
    client, _, _ = served
    bad = client.post(
        "/events", content=b'{"event_id": "a", "user_id": ', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and "line 1 column" in bad.json()["detail"]
    big = client.post("/events", content=b"[" + b" " * 5000 + b"]")
    assert big.status_code == 413


def test_json_lines_are_accepted(served):
    client, _, _ = served
    lines = (
        b'{"event_id": "l1", "timestamp": 1700000000, "user_id": 1, "item_id": 2}\n'
        b'{"event_id": "l2", "timestamp": 1700000001, "user_id": 1, "item_id": 3}\n'
    )
    answer = client.post("/events", content=lines)
    assert answer.status_code == 202 and answer.json()["accepted"] == 2


def test_recommendations_follow_new_versions_and_exclude_seen_items(served):
    client, trainer, store = served
    now = time.time()
    events = [
        {
            "event_id": f"e{n}",
            "timestamp": now + n,
            "user_id": f"u{n}",
            "item_id": "hit" if n % 2 else f"i{n}",
        }
        for n in range(12)
    ]
    assert post(client, events).json()["accepted"] == 12
    runtime = client.app.state.runtime
    assert wait_for(lambda: runtime.events_applied == 12)

    # The trainer learns the same events and publishes: the server follows, and "hit" comes first.
    trainer.feed_events(EventBatch.from_events(Event(**e) for e in events))
    assert store.current_version() > 1
    assert wait_for(lambda: runtime.version == store.current_version())
    answer = client.get("/recommend", params={"user_id": "newcomer", "k": 3}).json()
    assert answer["model_version"] == runtime.version
    assert answer["items"][0]["item_id"] == "hit" and len(answer["items"]) == 3
    # u1 acted on "hit": excluded for them unless asked otherwise.
    seen = client.get("/recommend", params={"user_id": "u1", "k": 3}).json()
    assert "hit" not in [item["item_id"] for item in seen["items"]]
    unfiltered = client.get("/recommend", params={"user_id": "u1", "k": 3, "exclude_seen": False}).json()
    assert unfiltered["items"][0]["item_id"] == "hit"
    metrics = client.get("/metrics").text
    assert f"freshrec_model_version {float(runtime.version)}" in metrics
    assert "freshrec_events_accepted_total 12.0" in metrics
    assert np.isfinite([item["score"] for item in answer["items"]]).all()


def test_admin_routes_refuse_a_remote_client_without_a_token(served):
    client, _, _ = served  # the test client is not on the loopback interface and no token is set
    answer = client.post("/admin/rollback", json={"to": 1})
    assert answer.status_code == 403 and "loopback" in answer.json()["detail"]


def test_admin_rollback_goes_through_the_trainer_and_the_server_follows(tmp_path):
    import threading

    model = create_model("popularity")
    store = ModelStore(StoreConfig(tmp_path / "store", fsync=False))
    publisher = ModelPublisher(
        model,
        store,
        PublisherConfig(interval_ms=0, rollback_poll_ms=0, gate=GateConfig(tolerance=1.0)),
        metadata={"model": "popularity"},
    )
    trainer = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=2)), publisher=publisher)
    trainer.feed_events(EventBatch.from_events(Event(f"e{n}", n, f"u{n % 3}", f"i{n % 4}") for n in range(8)))
    newest = store.current_version()
    assert newest >= 3
    config = ServingConfig(user_capacity=100)
    stop = threading.Event()

    def trainer_loop() -> None:  # the trainer's idle loop: answers rollback requests between batches
        while not stop.is_set():
            publisher.serve_rollback_request()
            time.sleep(0.01)

    answering = threading.Thread(target=trainer_loop)
    answering.start()
    try:
        application = create_app(config, tmp_path / "store", tmp_path / "log", admin_token="s3cret")
        with TestClient(application) as client:
            assert wait_for(lambda: client.get("/versions").json()["serving"] == newest)
            headers = {"authorization": "Bearer s3cret"}
            assert client.post("/admin/rollback", json={"to": 1}).status_code == 403  # no token
            answer = client.post("/admin/rollback", json={"to": 1, "reason": "test"}, headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"version": 1, "previous": newest, "via": "trainer"}
            assert wait_for(lambda: client.get("/versions").json()["serving"] == 1)
            assert client.get("/recommend?user_id=u1&k=2").json()["model_version"] == 1
            missing = client.post("/admin/rollback", json={"to": 999}, headers=headers)
            assert missing.status_code == 404 and "kept" in missing.json()["detail"]
            assert client.post("/admin/rollback", json={"to": 0}, headers=headers).status_code == 422

            gate = client.get("/versions").json()["gate"]
            assert gate["published"] == publisher.gate.published >= 3 and gate["held"] == 0
            metrics = client.get("/metrics").text
            assert f"freshrec_gate_published {float(publisher.gate.published)}" in metrics
    finally:
        stop.set()
        answering.join()
        store.close()


def test_the_server_rebuilds_a_model_with_the_config_the_trainer_used(tmp_path):
    from freshrec.models.registry import model_spec

    model = create_model("cooccurrence", {"max_neighbors": 7, "capacity": 512})  # not the defaults
    with ModelStore(StoreConfig(tmp_path / "store", fsync=False)) as store:
        publisher = ModelPublisher(
            model,
            store,
            PublisherConfig(interval_ms=0, gate=GateConfig(tolerance=1.0)),
            metadata=model_spec("cooccurrence", model),
        )
        trainer = TrainingLoop(OnlineTrainer(model, TrainerConfig(batch_size=4)), publisher=publisher)
        trainer.feed_events(
            EventBatch.from_events(Event(f"e{n}", n, f"u{n % 3}", f"i{n % 5}") for n in range(12))
        )
        config = ServingConfig(user_capacity=100)
        with TestClient(create_app(config, tmp_path / "store", tmp_path / "log")) as client:
            assert wait_for(lambda: client.get("/readyz").status_code == 200)
            answer = client.get("/recommend?user_id=u1&k=3").json()
            assert answer["model_version"] == store.current_version()
            served = client.app.state.runtime.served.model
            assert served.config.max_neighbors == 7 and served.config.capacity == 512


def test_admin_rollback_before_anything_was_published_is_a_conflict(tmp_path):
    config = ServingConfig(user_capacity=100)
    with TestClient(create_app(config, tmp_path / "store", tmp_path / "log", admin_token="t")) as client:
        answer = client.post("/admin/rollback", json={"to": 1}, headers={"authorization": "Bearer t"})
        assert answer.status_code == 409 and "no model store" in answer.json()["detail"]
