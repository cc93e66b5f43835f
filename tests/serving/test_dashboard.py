"""The dashboard's routes: the page and its assets (all local), the status document, the SSE stream (over a
real uvicorn server: a test client cannot read an endless response), the trainer's figures in /metrics,
the documentation pages without a CDN, and the read token guarding all of it through a cookie."""

import contextlib
import json
import re
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from freshrec.live import free_port
from freshrec.serving.app import create_app
from freshrec.serving.auth import DASHBOARD_COOKIE, AccessTokens
from freshrec.serving.dashboard import DashboardFeed, reason_key
from freshrec.serving.runtime import ServingConfig
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

READ_TOKEN = "read-token-0123456789"
EVENT = {"event_id": "e1", "timestamp": 1_700_000_000, "user_id": "u1", "item_id": "i1"}


@pytest.fixture
def trained(tmp_path, popularity_store):
    """The store after its trainer learned a small stream (a status document with a series)."""
    store, trainer = popularity_store
    trainer.run(SyntheticStream(SyntheticConfig(n_events=600, n_users=50, n_items=40, n_clusters=4)))
    return store


def app_of(tmp_path, tokens=None):
    config = ServingConfig(user_capacity=100)
    return create_app(config, tmp_path / "store", tmp_path / "log", tokens=tokens or AccessTokens())


def wait_ready(client):
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "no version loaded"
        time.sleep(0.02)


def local_references(html: str) -> list[str]:
    """Every src / href of a page; each must be a path on this server."""
    return re.findall(r'(?:src|href)="([^"]*)"', html)


def test_the_status_document_carries_the_server_and_the_trainer_figures(tmp_path, trained):
    with TestClient(app_of(tmp_path)) as client:
        wait_ready(client)
        bad = {**EVENT, "event_id": "e2", "timestamp": "soon"}
        assert client.post("/events", json=[EVENT, bad]).status_code == 202
        assert client.get("/recommend?user_id=u1").status_code == 200
        client.app.state.dashboard.sample()
        document = client.get("/dashboard/status").json()
    server, trainer, gate = document["server"], document["trainer"], document["gate"]
    assert server["ready"] and server["serving"] == server["current"] >= 1
    sample = server["series"][-1]
    assert sample["events_accepted"] == 1 and sample["events_rejected"] == 1
    assert sample["recommend_p50_ms"] > 0 and sample["version_age_seconds"] >= 0
    assert sample["versions_behind"] == 0
    assert server["rejections"] == {"timestamp: unparseable timestamp": 1}
    assert trainer["events_trained"] == 600 and trainer["series"]["hr"] and 0 <= trainer["hr"] <= 1
    assert set(trainer["series"]) >= {"event_time", "wall_time", "hr", "window_hr", "events_per_second"}
    assert trainer["tables"]["items"]["live_rows"] > 0
    assert gate["published"] >= 1 and gate["decisions"]
    versions = document["versions"]
    assert versions[-1]["version"] == server["current"] and versions[-1]["events_trained"] == 600
    assert "gate_reason" in versions[-1] and document["history"] == []


def test_rejection_reasons_count_one_cause_once_and_stay_bounded():
    assert reason_key("user_id", "missing field") == "user_id: missing field"
    assert reason_key("timestamp", "timestamp out of range: 9e12 is after 2200-01-01 (ms?)") == (
        "timestamp: timestamp out of range"
    )
    feed = DashboardFeed(runtime=None)  # counting needs no runtime

    class Rejected:
        def __init__(self, n):
            self.field, self.reason = f"context{n}", "field name is not text"

    feed.note_ingest(0, [Rejected(n) for n in range(100)])
    assert len(feed._reasons) == 31 and feed._reasons["other"] == 70


def test_the_page_and_the_docs_load_only_assets_of_this_server(tmp_path, trained):
    with TestClient(app_of(tmp_path)) as client:
        for path in ("/", "/docs", "/redoc"):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html"), path
            references = local_references(answer.text)
            assert references, path
            for reference in references:
                assert reference.startswith("/") and not reference.startswith("//"), (path, reference)
                if reference.startswith("/static/"):
                    assert client.get(reference).status_code == 200, reference
            assert "cdn" not in answer.text.lower() and "https://" not in answer.text, path
        docs = client.get("/docs").text
        assert "/static/swagger-ui/swagger-ui-bundle.js" in docs
        assert "/static/swagger-ui/swagger-ui.css" in docs
        assert "/static/redoc/redoc.standalone.js" in client.get("/redoc").text
        # The vendored libraries ship with their licences.
        for licence in ("uplot/LICENSE", "swagger-ui/LICENSE", "redoc/LICENSE"):
            assert client.get(f"/static/{licence}").status_code == 200, licence
        # The dashboard's routes are not part of the API's schema; the Event body of POST /events is.
        schema = client.get("/openapi.json").json()
        assert "/" not in schema["paths"] and "/dashboard/login" not in schema["paths"]
        body = schema["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"event_id", "timestamp", "user_id", "item_id"} <= set(body["oneOf"][0]["properties"])


def test_metrics_carry_the_trainers_quality_and_speed(tmp_path, trained):
    with TestClient(app_of(tmp_path)) as client:
        text = client.get("/metrics").text
    figures = dict(re.findall(r"^(freshrec_trainer_\w+) (\S+)$", text, re.MULTILINE))
    assert 0 <= float(figures["freshrec_trainer_hr"]) <= 1
    assert float(figures["freshrec_trainer_events_trained"]) == 600
    assert float(figures["freshrec_trainer_learning_events_per_second"]) > 0
    assert "freshrec_trainer_events_per_second" in figures


def test_with_a_read_token_the_dashboard_wants_the_token_once_then_its_cookie(tmp_path, trained):
    with TestClient(app_of(tmp_path, AccessTokens(read=READ_TOKEN))) as client:
        page = client.get("/")
        assert page.status_code == 401 and '<form method="post" action="/dashboard/login">' in page.text
        assert client.get("/dashboard/status").status_code == 401
        wrong = client.post("/dashboard/login", data={"token": "not-the-read-token"}, follow_redirects=False)
        assert wrong.status_code == 403 and DASHBOARD_COOKIE not in wrong.cookies
        login = client.post("/dashboard/login", data={"token": READ_TOKEN}, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert READ_TOKEN not in cookie  # a digest of it, not the token
        assert client.get("/").status_code == 200 and "chart-hr" in client.get("/").text
        assert client.get("/dashboard/status").status_code == 200
        # The cookie opens the dashboard only; the read API still wants the bearer token.
        assert client.get("/recommend?user_id=u1").status_code == 401
        client.cookies.clear()
        bearer = {"authorization": f"Bearer {READ_TOKEN}"}
        assert client.get("/dashboard/status", headers=bearer).status_code == 200
        client.cookies.set(DASHBOARD_COOKIE, "0" * 64)  # forged
        assert client.get("/dashboard/status").status_code == 401


@contextlib.contextmanager
def uvicorn_server(application):
    """The app on a real uvicorn server in a thread, on a free port; stopped on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def read_events(answer, count: int) -> list[tuple[str, dict]]:
    """The first `count` server-sent events of a streamed answer (comments skipped)."""
    events, name = [], None
    for line in answer.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
            if len(events) == count:
                break
    return events


def test_the_stream_sends_a_snapshot_then_updates(tmp_path, trained):
    with (
        uvicorn_server(app_of(tmp_path)) as base,
        httpx.Client(base_url=base, timeout=10) as client,
        client.stream("GET", "/dashboard/stream") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-cache"
        (first, snapshot), (second, update) = read_events(answer, 2)
    assert first == "snapshot" and second == "update"
    assert snapshot["trainer"]["series"]["hr"] and snapshot["versions"] and "rejections" in snapshot["server"]
    # An update carries the new sample and only the trainer's points the snapshot did not have.
    assert len(update["server"]["series"]) == 1 and update["trainer"]["series"]["hr"] == []
    assert update["server"]["series"][0]["time"] >= snapshot["server"]["series"][-1]["time"]


def test_the_stream_authenticates_with_the_cookie(tmp_path, trained):
    application = app_of(tmp_path, AccessTokens(read=READ_TOKEN))
    with uvicorn_server(application) as base, httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/dashboard/stream").status_code == 401
        assert client.post("/dashboard/login", data={"token": READ_TOKEN}).status_code == 303
        with client.stream("GET", "/dashboard/stream") as answer:
            assert answer.status_code == 200
            [(name, _)] = read_events(answer, 1)
    assert name == "snapshot"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"token=" + b"x" * 5000, {}, 413),  # over the login form's limit, refused from Content-Length
        (b"\xff\xfe\x00token", {}, 403),  # not UTF-8: no token in it
        (b"", {}, 403),  # no token field
        (b"token=%ZZ&token=a&&&=", {}, 403),
        (b"token=1", {"content-length": "many"}, 400),
    ],
)
def test_a_malformed_login_is_a_4xx_and_sets_no_cookie(tmp_path, popularity_store, body, headers, status):
    with TestClient(app_of(tmp_path, AccessTokens(read=READ_TOKEN))) as client:
        headers = {"content-type": "application/x-www-form-urlencoded", **headers}
        answer = client.post("/dashboard/login", content=body, headers=headers, follow_redirects=False)
    assert answer.status_code == status and DASHBOARD_COOKIE not in answer.headers.get("set-cookie", "")
