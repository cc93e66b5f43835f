"""Access control: every protected route answers 401 without credentials, 403 with wrong ones, and its
success with its own token; probes stay open; unusable tokens are refused at start-up."""

import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from freshrec.errors import ConfigError
from freshrec.serving.app import create_app
from freshrec.serving.auth import AccessTokens
from freshrec.serving.config import ServingConfig

TOKENS = AccessTokens(
    ingest="ingest-token-0123456789", read="read-token-0123456789", admin="admin-0123456789"
)
EVENT = {"event_id": "e1", "timestamp": 1_700_000_000, "user_id": "u1", "item_id": "i1"}
#: (method, path, JSON body, scope, success status)
ROUTES = [
    ("post", "/events", [EVENT], "ingest", 202),
    ("get", "/recommend?user_id=u1&k=2", None, "read", 200),
    ("get", "/versions", None, "read", 200),
    ("get", "/metrics", None, "read", 200),
    ("post", "/admin/rollback", {"to": 1, "reason": "auth test"}, "admin", 200),
]


def call(client, method, path, body, token=None, authorization=None):
    headers = {}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["authorization"] = authorization
    return client.request(method, path, json=body, headers=headers)


@pytest.fixture
def guarded(tmp_path, popularity_store):
    """A server with a token for every scope over a store with one version and no trainer running (so
    that a rollback is done directly, not through a trainer)."""
    store, _ = popularity_store
    store.close()  # the trainer is gone
    application = create_app(
        ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log", tokens=TOKENS
    )
    with TestClient(application) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "no version loaded"
            time.sleep(0.02)
        yield client


@pytest.mark.parametrize(("method", "path", "body", "scope", "success"), ROUTES, ids=[r[1] for r in ROUTES])
def test_each_protected_route_wants_its_own_token(guarded, method, path, body, scope, success) -> None:
    for missing in (
        None,
        "",
        "Bearer",
        "Bearer   ",
        f"Basic {TOKENS.read}",
        f"Token {getattr(TOKENS, scope)}",
    ):
        answer = call(guarded, method, path, body, authorization=missing)
        assert answer.status_code == 401, (missing, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in answer.json()["detail"]
    for wrong in ("x" * 20, getattr(TOKENS, scope)[:-1] + "!", getattr(TOKENS, scope) + "x"):
        assert call(guarded, method, path, body, authorization=f"Bearer {wrong}").status_code == 403
    non_ascii = b"Bearer " + "é".encode() * 20  # header bytes that are no ASCII text at all
    assert call(guarded, method, path, body, authorization=non_ascii).status_code == 403
    for other in {"ingest", "read", "admin"} - {scope}:  # a token grants its own scope only
        assert call(guarded, method, path, body, token=getattr(TOKENS, other)).status_code == 403
    answer = call(guarded, method, path, body, token=getattr(TOKENS, scope))
    assert answer.status_code == success, answer.text
    answer = call(guarded, method, path, body, authorization=f"bearer  {getattr(TOKENS, scope)}")
    assert answer.status_code == success  # the scheme is case-insensitive


def test_probes_stay_open_and_a_refused_ingest_stores_nothing(guarded) -> None:
    assert guarded.get("/healthz").status_code == 200 and guarded.get("/readyz").status_code == 200
    assert call(guarded, "post", "/events", [EVENT], token="x" * 20).status_code == 403
    # An unauthenticated client is refused before its body is read: a 50 MB declaration gets 401, not 413.
    answer = guarded.post("/events", content=b"[]", headers={"content-length": "50000000"})
    assert answer.status_code == 401
    assert guarded.app.state.runtime.log.next_offset == 0


def test_without_tokens_ingest_and_reads_are_open_and_admin_answers_loopback_only(
    tmp_path, popularity_store, monkeypatch
) -> None:
    for variable in ("FRESHREC_INGEST_TOKEN", "FRESHREC_READ_TOKEN", "FRESHREC_ADMIN_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    store, _ = popularity_store
    store.close()
    application = create_app(ServingConfig(user_capacity=100), tmp_path / "store", tmp_path / "log")
    with TestClient(application) as remote:
        assert remote.post("/events", json=[EVENT]).status_code == 202
        assert remote.get("/versions").status_code == 200 and remote.get("/metrics").status_code == 200
        answer = remote.post("/admin/rollback", json={"to": 1})
        assert answer.status_code == 403 and "loopback" in answer.json()["detail"]
        for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            local = TestClient(application, client=(host, 50000))  # the same running app, another peer
            assert local.post("/admin/rollback", json={"to": 1}).status_code == 200, host
        assert (
            TestClient(application, client=("10.0.0.7", 1))
            .post("/admin/rollback", json={"to": 1})
            .status_code
            == 403
        )


def test_tokens_come_from_the_environment_or_a_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "read.token").write_text("read-token-from-a-file\n")  # as `echo token > file` leaves it
    config = ServingConfig(read_token_file=tmp_path / "read.token")
    monkeypatch.setenv("FRESHREC_INGEST_TOKEN", "ingest-token-from-env")
    monkeypatch.delenv("FRESHREC_ADMIN_TOKEN", raising=False)
    tokens = AccessTokens.resolve(config)
    assert (tokens.ingest, tokens.read, tokens.admin) == (
        "ingest-token-from-env",
        "read-token-from-a-file",
        None,
    )
    assert "from" not in repr(tokens)  # never shown
    assert tokens.open_scopes() == []


@pytest.mark.parametrize(
    ("environ", "file_text", "message"),
    [
        ({"FRESHREC_ADMIN_TOKEN": ""}, None, "FRESHREC_ADMIN_TOKEN is set but empty"),
        (
            {"FRESHREC_READ_TOKEN": "short"},
            None,
            "FRESHREC_READ_TOKEN is 5 characters long; a token needs at least 16",
        ),
        (
            {"FRESHREC_INGEST_TOKEN": "has a space in it!"},
            None,
            "holds a space, a control character or non-ASCII",
        ),
        ({"FRESHREC_INGEST_TOKEN": "ünïcödé-tökén-1234"}, None, "non-ASCII"),
        ({}, "\n", "serving.read_token_file"),
        ({}, "0123456789abcde", "is 15 characters long"),
        ({"FRESHREC_READ_TOKEN": "0123456789abcdef"}, "0123456789abcdef", "both FRESHREC_READ_TOKEN and"),
    ],
)
def test_unusable_tokens_are_refused_by_create_app_before_anything_opens(
    tmp_path, monkeypatch, environ, file_text, message
) -> None:
    for variable in ("FRESHREC_INGEST_TOKEN", "FRESHREC_READ_TOKEN", "FRESHREC_ADMIN_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    config = ServingConfig()
    if file_text is not None:
        (tmp_path / "token").write_text(file_text)
        config = ServingConfig(read_token_file=tmp_path / "token")
    with pytest.raises(ConfigError, match=message) as caught:
        create_app(config, tmp_path / "store", tmp_path / "log")
    assert "0123456789abcde" not in str(caught.value) and "short" not in str(caught.value)  # never echoed
    assert not (tmp_path / "log").exists()


def test_a_missing_token_file_is_named() -> None:
    with pytest.raises(ConfigError, match="token file /nonexistent/token cannot be read: No such file"):
        AccessTokens.resolve(ServingConfig(admin_token_file="/nonexistent/token"), environ={})


@pytest.mark.parametrize(
    ("environ", "options", "message"),
    [
        ({"FRESHREC_READ_TOKEN": ""}, [], "FRESHREC_READ_TOKEN is set but empty"),
        ({}, ["--admin-token-file", "TOKEN_FILE"], "serving.admin_token_file"),  # 10 characters
    ],
)
def test_the_serve_command_refuses_them_in_one_line_with_exit_2(tmp_path, environ, options, message) -> None:
    import os

    (tmp_path / "token").write_text("0123456789")
    options = [str(tmp_path / "token") if option == "TOKEN_FILE" else option for option in options]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHREC_")} | environ
    command = [sys.executable, "-m", "freshrec.cli", "serve", "--store", str(tmp_path / "s"), "--log"]
    done = subprocess.run(
        [*command, str(tmp_path / "l"), "--port", "1", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr
    assert not (tmp_path / "l").exists()
