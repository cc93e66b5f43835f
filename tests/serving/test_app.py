"""The HTTP API over a real model store and a real event log (ASGI test client, threads running)."""

import contextlib
import threading
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

ADMIN_TOKEN = "admin-token-0123456789"


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def served(tmp_path, popularity_store):
    """A store with version 1 of a popularity model, its trainer, and a client."""
    store, trainer = popularity_store
    config = ServingConfig(user_capacity=1000)
    with TestClient(create_app(config, tmp_path / "store", tmp_path / "log", max_body_bytes=4096)) as client:
        yield client, trainer, store


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
        application = create_app(config, tmp_path / "store", tmp_path / "log", admin_token=ADMIN_TOKEN)
        with TestClient(application) as client:
            assert wait_for(lambda: client.get("/versions").json()["serving"] == newest)
            headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            assert client.post("/admin/rollback", json={"to": 1}).status_code == 401  # no token
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
            # The poison guard's and the stream's figures, read from the status file the trainer wrote.
            assert (
                "freshrec_gate_quarantined 0.0" in metrics and "freshrec_guardrail_rollbacks 0.0" in metrics
            )
            assert (
                f"freshrec_guardrail_trusted_version {float(publisher.guardrail.trusted_version)}" in metrics
            )
            for name in ("freshrec_input_unknown_item_share", "freshrec_input_event_rate_mean"):
                assert f"\n{name} " in metrics, name
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
    application = create_app(config, tmp_path / "store", tmp_path / "log", admin_token=ADMIN_TOKEN)
    with TestClient(application) as client:
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        answer = client.post("/admin/rollback", json={"to": 1}, headers=headers)
        assert answer.status_code == 409 and "no model store" in answer.json()["detail"]


# -- hardened ingest ------------------------------------------------------------------------------------


def test_faults_of_the_whole_body_are_4xx_and_store_nothing(served):
    client, _, _ = served
    good = b'[{"event_id": "g", "timestamp": 1700000000, "user_id": 1, "item_id": 2}]'
    cases = [
        (good, {"content-type": "text/plain"}, 415, "Content-Type 'text/plain' is not accepted"),
        (good, {"content-type": "application/x-www-form-urlencoded"}, 415, "send one of application/json"),
        (good, {"content-type": "application/json; charset=utf-16"}, 415, "charset"),
        (good[:-1] + b"\xff]", {}, 400, f"not valid UTF-8: byte 0xff at offset {len(good) - 1}"),
        (b"[" * 200 + b"]" * 200, {}, 400, "nests arrays and objects 200 deep"),
        (good[:40], {}, 400, "malformed JSON at line 1 column 41 (character 40)"),
        (b"", {}, 400, "empty body"),
        (b"[" + b" " * 5000 + b"]", {}, 413, "a body of 5,002 bytes exceeds the limit of 4,096 bytes"),
    ]
    for body, headers, status, detail in cases:
        answer = client.post("/events", content=body, headers=headers)
        assert answer.status_code == status and detail in answer.json()["detail"], (body[:50], answer.text)

    def streamed():  # no Content-Length: chunked, refused once past the limit
        for _ in range(100):
            yield b" " * 1000

    answer = client.post("/events", content=streamed(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "refused while reading" in answer.json()["detail"]
    assert client.app.state.runtime.log.next_offset == 0


def test_faults_of_one_event_reject_it_and_the_good_events_are_stored(tmp_path, popularity_store):
    from freshrec.sources.eventlog import EventLogReader

    head = b'"timestamp": 1700000000, "user_id": '
    records = [
        b'{"event_id": "good-1", ' + head + b'"u", "item_id": "i"}',
        b'{"event_id": "s", ' + head + b'"\\ud800", "item_id": "i"}',  # a lone surrogate, escaped
        b'{"event_id": "h", ' + head + b"1" + b"0" * 5000 + b', "item_id": "i"}',  # over 4,300 digits
        b'{"event_id": "c", ' + head + b'"u", "item_id": "i", "n": 2' + b"0" * 19 + b"}",  # over 64 bits
        b'{"event_id": "m", ' + head + b'"u"}',
        b'{"event_id": "v", "timestamp": NaN, "user_id": "u", "item_id": "i"}',
        b'{"event_id": "good-2", ' + head + b'"u", "item_id": "i", "value": NaN}',
    ]
    application = create_app(ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log")
    with TestClient(application) as client:
        answer = client.post("/events", content=b"[" + b",".join(records) + b"]")
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert result["accepted"] == 2
    assert [(r["index"], r["field"]) for r in result["rejected"]] == [
        (1, "user_id"),
        (2, "user_id"),
        (3, "n"),
        (4, "item_id"),
        (5, "timestamp"),
    ]
    reasons = [r["reason"] for r in result["rejected"]]
    assert "lone surrogate" in reasons[0] and "about 5,001 digits" in reasons[1] and "64 bits" in reasons[2]
    with EventLogReader(tmp_path / "log", start_offset="earliest") as reader:
        ids = [i for batch in reader.batches(1000) for i in batch.columns["event_id"].tolist()]
    assert ids == ["good-1", "good-2"]


def test_the_openapi_schema_documents_the_event_body_without_fastapi_parsing_it(served):
    client, _, _ = served
    operation = client.get("/openapi.json").json()["paths"]["/events"]["post"]
    content = operation["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson", "application/jsonl"} <= set(content)
    event = content["application/x-ndjson"]["schema"]
    assert {"event_id", "timestamp", "user_id", "item_id"} <= set(event["required"])
    assert "kind" in event["properties"] and event["additionalProperties"] is True
    assert {"202", "400", "413", "415"} <= set(operation["responses"])
    # FastAPI does not judge the body: what its schema would refuse is the validator's to report per event.
    answer = client.post(
        "/events", json=[{"event_id": "x", "timestamp": "yesterday", "user_id": 1, "item_id": 2}]
    )
    assert answer.status_code == 202 and answer.json()["rejected"][0]["field"] == "timestamp"


@contextlib.contextmanager
def uvicorn_serving(application):
    """`application` served by a real uvicorn on 127.0.0.1 (in a thread of this process, so that the test
    can reach into the app), its base URL yielded."""
    import uvicorn

    from freshrec.live import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, timeout=30), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


EVENTS = [{"event_id": "a", "timestamp": 1_700_000_000, "user_id": "u", "item_id": "i"}]


def test_an_unexpected_error_is_a_500_with_a_request_id_and_the_next_request_succeeds(
    tmp_path, popularity_store, caplog, monkeypatch
):
    import httpx

    application = create_app(ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log")
    runtime = application.state.runtime
    real_ingest = runtime.ingest
    failures = iter([RuntimeError("disk on fire")])

    def ingest_failing_once(records):
        for failure in failures:
            raise failure
        return real_ingest(records)

    monkeypatch.setattr(runtime, "ingest", ingest_failing_once)
    with uvicorn_serving(application) as base, httpx.Client(base_url=base) as client:
        assert client.get("/healthz").status_code == 200  # the connection the failure will close
        failed = client.post("/events", json=EVENTS)
        assert failed.status_code == 500 and failed.headers["connection"] == "close"
        request_id = failed.json()["request_id"]
        assert failed.headers["x-request-id"] == request_id and request_id in failed.json()["detail"]
        assert "disk on fire" not in failed.text  # the details are in the log, not in the answer
        again = client.post("/events", json=EVENTS)  # on a new connection, without the client noticing
        assert again.status_code == 202 and again.json()["accepted"] == 1
    [record] = [r for r in caplog.records if r.name == "freshrec.serving"]
    assert request_id in record.getMessage() and "disk on fire" in str(record.exc_info[1])


def test_bodies_are_parsed_off_the_event_loop(tmp_path, popularity_store, monkeypatch):
    import httpx

    import freshrec.serving.app as app_module

    parsing, release = threading.Event(), threading.Event()
    real_parse = app_module.parse_records

    def slow_parse(*args):
        parsing.set()
        assert release.wait(timeout=30)  # a parse that takes as long as the test wants
        return real_parse(*args)

    monkeypatch.setattr(app_module, "parse_records", slow_parse)
    application = create_app(ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log")
    with uvicorn_serving(application) as base:
        answers: list[httpx.Response] = []
        poster = threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/events", json=EVENTS)))
        poster.start()
        assert parsing.wait(timeout=30)
        try:
            # While that body is being parsed, the event loop answers other requests.
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{base}/versions", timeout=10).status_code == 200
        finally:
            release.set()
            poster.join(timeout=30)
    assert answers[0].status_code == 202
