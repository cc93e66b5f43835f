"""The live dashboard of `freshrec serve`: one page at ``GET /``, its figures as JSON
(``GET /dashboard/status``) and as a server-sent event stream (``GET /dashboard/stream``).

The server's own figures (events in, rejections by reason, request latency, freshness of the served
version) are sampled here once a second; the trainer's (prequential HR@K over event time, events learned
per second, table sizes, gate decisions) come from the store's status document, which the trainer
replaces atomically (`freshrec.publishing.progress`). The page and its charting library are files of this
package (``static/``): it works without a network. Never blocks the event loop on more than a file read,
and never holds more than a bounded history.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from freshrec.preprocess.validate import Rejection
from freshrec.publishing.progress import SERIES_FIELDS, series_rows
from freshrec.serving.auth import DASHBOARD_COOKIE, AccessControl
from freshrec.serving.runtime import ServingRuntime

__all__ = ["STATIC", "DashboardFeed", "dashboard_router"]

#: The page, its script and the vendored libraries (uPlot, Swagger UI, ReDoc), with their licences.
STATIC = Path(__file__).parent / "static"
#: Seconds between two samples of the server's figures (and two events of the stream).
SAMPLE_SECONDS = 1.0
#: Samples kept (and sent to a page that opens): ten minutes.
HISTORY = 600
#: Latencies of the last this many seconds make each sample's percentiles.
LATENCY_WINDOW_SECONDS = 10.0
#: Distinct rejection reasons counted; rarer ones add up under "other" (a reason quotes no value here,
#: yet a stream of odd input must not grow the page without bound).
MAX_REASONS = 30


class DashboardFeed:
    """Samples the server's figures and composes the dashboard's document.

    Parameters
    ----------
    runtime
        The server's runtime: its served version, its store (versions, history, the trainer's status).
    clock
        Unix time (tests pass their own).
    """

    def __init__(self, runtime: ServingRuntime, clock: Callable[[], float] = time.time) -> None:
        self._runtime = runtime
        self._clock = clock
        self._samples: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._latencies: dict[str, deque[tuple[float, float]]] = {
            "recommend": deque(maxlen=20_000),
            "events": deque(maxlen=20_000),
        }
        self._accepted = 0
        self._rejected = 0
        self._reasons: Counter[str] = Counter()
        self._requests = 0
        self._last: tuple[float, int, int] | None = None  # time, accepted, requests at the last sample
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ what routes report
    def note_ingest(self, accepted: int, rejections: list[Rejection]) -> None:
        """An answered ``POST /events``: events accepted, and each rejection (counted by field and reason)."""
        self._accepted += accepted
        self._rejected += len(rejections)
        for rejection in rejections:
            key = reason_key(rejection.field, rejection.reason)
            if key not in self._reasons and len(self._reasons) >= MAX_REASONS:
                key = "other"
            self._reasons[key] += 1

    def note_latency(self, route: str, seconds: float) -> None:
        """The time one request of `route` (``recommend`` or ``events``) took."""
        if route == "recommend":
            self._requests += 1
        self._latencies[route].append((time.monotonic(), seconds))

    # ------------------------------------------------------------------ sampling
    def sample(self) -> dict[str, Any]:
        """Take a sample of the server's figures now (rates since the previous sample) and keep it."""
        now = self._clock()
        runtime = self._runtime
        rate = requests = None
        if self._last is not None and now > self._last[0]:
            elapsed = now - self._last[0]
            rate = (self._accepted - self._last[1]) / elapsed
            requests = (self._requests - self._last[2]) / elapsed
        self._last = (now, self._accepted, self._requests)
        ready = runtime.ready
        current = runtime.store.current_version()
        point: dict[str, Any] = {
            "time": round(now, 3),
            "version": runtime.version,
            "versions_behind": max(current - runtime.version, 0) if ready else None,
            "version_age_seconds": _finite(now - runtime.served.version_created) if ready else None,
            "events_in_per_second": _finite(rate),
            "requests_per_second": _finite(requests),
            "events_accepted": self._accepted,
            "events_rejected": self._rejected,
        }
        for route in self._latencies:
            for name, value in self._percentiles(route).items():
                point[f"{route}_{name}_ms"] = value
        self._samples.append(point)
        self._changed.set()
        self._changed = asyncio.Event()
        return point

    def _percentiles(self, route: str) -> dict[str, float | None]:
        since = time.monotonic() - LATENCY_WINDOW_SECONDS
        recent = [seconds for at, seconds in self._latencies[route] if at >= since]
        if not recent:
            return {"p50": None, "p95": None, "p99": None}
        p50, p95, p99 = np.percentile(np.array(recent) * 1000.0, [50, 95, 99])
        return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3)}

    async def run(self, interval: float = SAMPLE_SECONDS) -> None:
        """Sample every `interval` seconds until cancelled (the app's lifespan runs it)."""
        while True:
            self.sample()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ the document
    def document(self, trainer_after: float | None = None, samples: int = HISTORY) -> dict[str, Any]:
        """Everything the page shows: the newest `samples` server samples, the trainer's figures (its
        series only after wall time `trainer_after`, when given: a stream sends each point once), the
        gate's counters and recent decisions, the kept versions and the rollback history."""
        store = self._runtime.store
        status = store.read_status()
        trainer = dict(status.get("trainer") or {})
        rows = series_rows(trainer["series"]) if isinstance(trainer.get("series"), dict) else []
        if trainer_after is not None:
            rows = [row for row in rows if (row["wall_time"] or 0) > trainer_after]
        trainer["series"] = {name: [row[name] for row in rows] for name in SERIES_FIELDS}
        gate = dict(status.get("gate") or {})
        return {
            "time": self._samples[-1]["time"] if self._samples else self._clock(),
            "server": {
                "ready": self._runtime.ready,
                "serving": self._runtime.version,
                "current": store.current_version(),
                "catalogue_items": self._runtime.catalogue_size,
                "rejections": dict(self._reasons.most_common()),
                "series": list(self._samples)[-samples:],
            },
            "trainer": trainer,
            "gate": gate,
            "versions": [
                _version_row(info.version, info.kind, info.created, info.metadata)
                for info in store.versions()
            ],
            "history": store.history(),
        }

    async def stream(self, is_disconnected: Callable[[], Any]) -> AsyncIterator[str]:
        """Server-sent events: first the whole document (``event: snapshot``), then one ``update`` per
        sample with the new server sample and the trainer's new points, until the client goes. The
        trainer's series is in columns (`SERIES_FIELDS`), the server's in rows."""
        document = self.document()
        yield _event("snapshot", document)
        trainer_after = _newest_wall_time(document)
        while not await is_disconnected():
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=15.0)
            except TimeoutError:
                yield ": keep-alive\n\n"  # a comment line: proxies keep the connection open
                continue
            document = self.document(trainer_after, samples=1)
            trainer_after = _newest_wall_time(document) or trainer_after
            yield _event("update", document)


def reason_key(field: str, reason: str) -> str:
    """A rejection's field and the reason's words before any quoted value, so that one cause with many
    values counts once.

    >>> reason_key("timestamp", "timestamp out of range: 7.3e+09 is after 2200-01-01 (milliseconds?)")
    'timestamp: timestamp out of range'
    >>> reason_key("timestamp", "unparseable timestamp 'soon'")
    'timestamp: unparseable timestamp'
    >>> reason_key("item_id", "missing field")
    'item_id: missing field'
    """
    words = re.split(r"[:(\'\"]", reason, maxsplit=1)[0].strip()
    return f"{field}: {words[:80]}"


def _version_row(version: int, kind: str, created: float, metadata: dict[str, Any]) -> dict[str, Any]:
    """A kept version as the page's table shows it: when, what kind, what it learned, the gate's word."""
    gate = metadata.get("gate") if isinstance(metadata.get("gate"), dict) else {}
    prequential = metadata.get("prequential") if isinstance(metadata.get("prequential"), dict) else {}
    return {
        "version": version,
        "kind": kind,
        "created": created,
        "events_trained": metadata.get("events_trained"),
        "hr": prequential.get("hr"),
        "gate_reason": gate.get("reason"),
        "candidate_hr": gate.get("candidate_hr"),
        "serving_hr": gate.get("serving_hr"),
        "rollback": metadata.get("rollback"),
    }


def _newest_wall_time(document: dict[str, Any]) -> float | None:
    times = [t for t in document["trainer"]["series"]["wall_time"] if t is not None]
    return float(max(times)) if times else None


def _event(name: str, document: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(_clean(document), allow_nan=False, separators=(',', ':'))}\n\n"


def _finite(value: float | None) -> float | None:
    return round(value, 6) if value is not None and math.isfinite(value) else None


#: Largest login form read (a token field and little else).
MAX_LOGIN_BYTES = 4096


def dashboard_router(
    feed: DashboardFeed,
    access: AccessControl,
    openapi_url: str,
    read_body: Callable[[Request, int], Awaitable[bytes]],
) -> APIRouter:
    """The dashboard's routes (the page, its status and stream, the login form) and the API's
    documentation pages, whose scripts and styles are served from ``/static`` (no CDN). `read_body`
    reads a request's body within a size limit, as the API's other routes do."""
    router = APIRouter()
    documentation = {"openapi_url": openapi_url, "title": "freshrec API"}
    guard = access.require("read", cookie=True)

    @router.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        try:
            guard(request)
        except HTTPException as error:
            if error.status_code != 401:
                raise
            return HTMLResponse(_login_page(), status_code=401, headers=error.headers)
        return HTMLResponse((STATIC / "dashboard" / "index.html").read_text(encoding="utf-8"))

    @router.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Exchange the read token, typed once into the page's form, for the dashboard's cookie."""
        value = access.cookie_value()
        if value is None:  # reads are open: nothing to sign in to
            return RedirectResponse("/", status_code=303)
        token = _form_token(await read_body(request, MAX_LOGIN_BYTES))
        if not access.read_token_matches(token):
            return HTMLResponse(_login_page("That is not the read token."), status_code=403)
        answer = RedirectResponse("/", status_code=303)
        answer.set_cookie(DASHBOARD_COOKIE, value, httponly=True, samesite="strict", path="/")
        return answer

    @router.get("/dashboard/status", dependencies=[Depends(guard)])
    def status() -> JSONResponse:
        """Everything the dashboard shows, as one JSON document (what the page polls without SSE)."""
        return JSONResponse(_clean(feed.document()))

    @router.get(
        "/dashboard/stream",
        dependencies=[Depends(guard)],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
    )
    def stream(request: Request) -> StreamingResponse:
        """The dashboard's figures as server-sent events: a ``snapshot`` event, then an ``update`` per
        second (the new server sample and the trainer's new points)."""
        return StreamingResponse(
            feed.stream(request.is_disconnected),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            **documentation,
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
            # The validator badge would ask validator.swagger.io about the schema.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @router.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            **documentation,
            redoc_js_url="/static/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    return router


def _form_token(body: bytes) -> str:
    """The ``token`` field of an urlencoded form ("" when absent or unreadable)."""
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    values = fields.get("token") or [""]
    return values[0].strip()


def _login_page(message: str = "") -> str:
    note = f'<p class="error">{message}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>freshrec: sign in</title>
<link rel="stylesheet" href="/static/dashboard/dashboard.css"></head>
<body class="login"><main><h1>freshrec dashboard</h1>
<p>Reads need a token on this server. Paste the read token once; the browser keeps a cookie for this
server (never the token itself).</p>{note}
<form method="post" action="/dashboard/login">
<input type="password" name="token" autocomplete="current-password" placeholder="read token" required>
<button type="submit">Sign in</button></form></main></body></html>"""


def _clean(value: Any) -> Any:
    """`value` with every non-finite float as None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value
