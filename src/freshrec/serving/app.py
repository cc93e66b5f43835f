"""The HTTP API: thin routes over `ServingRuntime` (recommend, ingest, health, readiness, metrics, versions,
admin rollback), and the live dashboard with the API's documentation (`freshrec.serving.dashboard`).

Every recommendation carries the model version it was computed with. Ingest answers 202 only after the
accepted events are durable in the event log; a bad event is reported with its index, field and reason
and never costs the good events around it, and a body that cannot be read at all is a 4xx that stores
nothing (`freshrec.serving.body`). Routes are guarded per scope (`freshrec.serving.auth`); whatever fails
unexpectedly answers 500 with a request id and closes the connection (`freshrec.serving.failsafe`). No
request body is parsed on the event loop, nor read beyond its size limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from freshrec.errors import SourceError
from freshrec.events import EVENT_KINDS
from freshrec.preprocess.pipeline import PipelineConfig
from freshrec.publishing.rollback import RollbackOutcomeUnknownError, RollbackTimeoutError, rollback
from freshrec.publishing.store import StoreError, VersionNotFoundError
from freshrec.serving.auth import AccessControl, AccessTokens
from freshrec.serving.body import (
    JSON_LINES_TYPES,
    JSON_TYPES,
    BodyError,
    BodyLimits,
    body_format,
    parse_records,
    read_body,
)
from freshrec.serving.dashboard import STATIC, DashboardFeed, dashboard_router
from freshrec.serving.failsafe import InternalErrorMiddleware
from freshrec.serving.runtime import IngestResult, ServingConfig, ServingRuntime

#: Largest accepted request body for `POST /events` by default (`ServingConfig.max_body_bytes`).
MAX_BODY_BYTES = ServingConfig.max_body_bytes
#: Largest accepted body of an admin request (a version number and a reason).
MAX_ADMIN_BODY_BYTES = 64 * 1024


class RecommendedItem(BaseModel):
    item_id: str | int = Field(description="The item's id as clients sent it in events.")
    score: float = Field(description="The model's score; higher is better, comparable within one answer.")


class RecommendationBody(BaseModel):
    """``GET /recommend``: the top items for a user and the model version that ranked them."""

    user_id: str
    model_version: int
    items: list[RecommendedItem]


class RollbackBody(BaseModel):
    """``POST /admin/rollback``: which kept version to serve again, and why (recorded in the store)."""

    to: int = Field(ge=1)
    reason: str = Field("", max_length=500)
    timeout: float = Field(10.0, gt=0, le=60)


class EventRecord(BaseModel):
    """One event of ``POST /events``, as documented; the body is parsed and judged by freshrec itself
    (`freshrec.preprocess.validate`), never by this model. Any other key is a context field."""

    model_config = ConfigDict(extra="allow")

    event_id: str | int = Field(description="Unique id; a repeated id is dropped downstream.")
    timestamp: float | str = Field(
        description="Epoch seconds, or ISO 8601 text (naive means UTC); at most serving.future_tolerance_s "
        "(a day) past the server's clock."
    )
    user_id: str | int
    item_id: str | int
    kind: Literal[EVENT_KINDS] = Field("view", description="Any letter case.")  # type: ignore[valid-type]
    value: float | None = Field(None, description="A rating, price or watch time; NaN means absent.")
    context: dict[str, str | int | float | bool] | None = Field(None, description="Extra flat fields.")


class IngestRejection(BaseModel):
    index: int = Field(description="Position of the record in the request, from 0.")
    field: str
    reason: str


class IngestBody(BaseModel):
    """``POST /events`` 202: how many events are durable in the event log, their log offsets, and every
    rejected record."""

    accepted: int
    offsets: tuple[int | None, int | None]
    rejected: list[IngestRejection]


def _events_request_body() -> dict[str, Any]:
    """The OpenAPI request body of ``POST /events`` (documentation only: FastAPI does not parse it)."""
    event = EventRecord.model_json_schema()
    one_or_many = {"oneOf": [event, {"type": "array", "items": event}]}
    content = {media: {"schema": one_or_many} for media in JSON_TYPES}
    content |= {media: {"schema": event} for media in JSON_LINES_TYPES}  # one event per line
    return {"requestBody": {"required": True, "content": content}}


def _admin_request_body() -> dict[str, Any]:
    schema = RollbackBody.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    config: ServingConfig,
    store_dir: Path,
    log_dir: Path,
    pipeline: PipelineConfig | None = None,
    max_body_bytes: int | None = None,
    admin_token: str | None = None,
    tokens: AccessTokens | None = None,
    stream: str | None = None,
) -> FastAPI:
    """The FastAPI application; the runtime starts with the app and stops with it.

    `store_dir` and `log_dir` are the model store and event log it shares with the trainer, `pipeline`
    their ingest settings. `tokens` (default: `AccessTokens.resolve` of `config`, i.e. the
    ``FRESHREC_*_TOKEN`` environment variables and the ``*_token_file`` settings) guard the scopes;
    `admin_token` replaces the admin one. Raises `ConfigError` for an unusable token, before anything is
    opened. `max_body_bytes` overrides ``config.max_body_bytes``. With `stream` (a ``kafka://`` or
    ``redis://`` URL) accepted events are produced to that stream instead of the log, and the feature
    state follows it.
    """
    tokens = tokens if tokens is not None else AccessTokens.resolve(config)
    if admin_token is not None:
        tokens = AccessTokens(tokens.ingest, tokens.read, admin_token)
    access = AccessControl(tokens)
    limits = BodyLimits(
        max_bytes=config.max_body_bytes if max_body_bytes is None else max_body_bytes,
        max_depth=config.max_json_depth,
        max_records=config.max_events_per_request,
    )
    runtime = ServingRuntime(config, store_dir, log_dir, pipeline, stream=stream)
    registry = CollectorRegistry()
    latency = Histogram(
        "freshrec_request_seconds",
        "Request latency",
        ["route"],
        registry=registry,
        buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
    )
    accepted = Counter("freshrec_events_accepted_total", "Events accepted by POST /events", registry=registry)
    rejected = Counter("freshrec_events_rejected_total", "Events rejected by POST /events", registry=registry)
    Gauge("freshrec_model_version", "Model version served", registry=registry).set_function(
        lambda: runtime.version
    )
    Gauge("freshrec_version_lag_seconds", "Age of the served version", registry=registry).set_function(
        lambda: time.time() - runtime.served.version_created if runtime.ready else float("nan")
    )
    Gauge("freshrec_catalogue_items", "Items that can be recommended", registry=registry).set_function(
        lambda: runtime.catalogue_size
    )
    Gauge(
        "freshrec_store_degraded",
        "1 while a version the store names cannot be loaded (an older one is served) or the manifest is "
        "read from its backup",
        registry=registry,
    ).set_function(lambda: float(bool(runtime.store_health()["degraded"])))

    registry.register(TrainerFigures(runtime))
    feed = DashboardFeed(runtime)

    # Bounds the bodies being parsed at once, hence their memory; made on the app's own event loop.
    ingest_slots: list[asyncio.Semaphore] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        ingest_slots.append(asyncio.Semaphore(config.max_parallel_ingests))
        runtime.start()
        sampling = asyncio.create_task(feed.run())
        yield
        sampling.cancel()
        runtime.close()

    # The documentation pages are the dashboard router's: they load their scripts from /static, not a CDN.
    app = FastAPI(title="freshrec", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.tokens = tokens
    app.state.dashboard = feed
    app.add_middleware(InternalErrorMiddleware)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(dashboard_router(feed, access, app.openapi_url or "/openapi.json", _body))

    @app.exception_handler(BodyError)
    async def body_error(_: Request, error: BodyError) -> JSONResponse:
        return JSONResponse({"detail": error.detail}, status_code=error.status)

    read = [Depends(access.require("read"))]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = runtime.ready
        return JSONResponse(
            {"ready": ready, "model_version": runtime.version}, status_code=200 if ready else 503
        )

    @app.get("/recommend", response_model=RecommendationBody, dependencies=read)
    async def recommend(
        user_id: str = Query(..., min_length=1, max_length=256),
        k: int = Query(10, ge=1, le=1000),
        exclude_seen: bool = True,
    ) -> JSONResponse:
        started = time.perf_counter()
        if not runtime.ready:
            raise HTTPException(status_code=503, detail="no model version is loaded yet")
        result = runtime.recommend(user_id, k, exclude_seen)
        elapsed = time.perf_counter() - started
        latency.labels("recommend").observe(elapsed)
        feed.note_latency("recommend", elapsed)
        # A JSONResponse skips FastAPI's validation and re-serialisation of the return value through the
        # response model (a tenth of a request's CPU); the model stays declared for the OpenAPI schema.
        return JSONResponse(
            {
                "user_id": user_id,
                "model_version": result.model_version,
                "items": [
                    {"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)
                ],
            }
        )

    def ingest(body: bytes, form: Literal["json", "lines"]) -> tuple[IngestResult, bytes]:
        """Parse, validate, append, and write the answer (thousands of rejections are no small JSON)."""
        result = runtime.ingest(parse_records(body, form, limits))
        answer = {
            "accepted": result.accepted,
            "offsets": [result.first_offset, result.last_offset],
            "rejected": [
                {"index": r.position, "field": r.field, "reason": r.reason} for r in result.rejections
            ],
        }
        return result, json.dumps(answer, allow_nan=False, separators=(",", ":")).encode()

    @app.post(
        "/events",
        status_code=202,
        response_model=IngestBody,
        dependencies=[Depends(access.require("ingest"))],
        openapi_extra=_events_request_body(),
        responses={
            400: {"description": "The body is empty, not UTF-8, not JSON, or nested too deep"},
            413: {"description": "The body or its number of records exceeds the limit"},
            415: {"description": "The Content-Type is not JSON or JSON lines"},
            503: {"description": "The stream's broker did not acknowledge the events (none accepted)"},
        },
    )
    async def events(request: Request) -> JSONResponse:
        """Append events to the event log: one JSON object, an array of them, or JSON lines."""
        started = time.perf_counter()
        form = body_format(request.headers.get("content-type"))
        body = await _body(request, limits.max_bytes)
        async with ingest_slots[0]:
            # Off the event loop: parsing, validating and writing the answer take CPU, the append waits
            # for fsync, and /recommend answers on the loop meanwhile.
            try:
                result, answer = await run_in_threadpool(ingest, body, form)
            except SourceError as error:  # the stream's broker: the client may send the same body again
                raise HTTPException(status_code=503, detail=f"events not accepted: {error}") from None
        accepted.inc(result.accepted)
        rejected.inc(len(result.rejections))
        feed.note_ingest(result.accepted, result.rejections)
        elapsed = time.perf_counter() - started
        latency.labels("events").observe(elapsed)
        feed.note_latency("events", elapsed)
        return Response(answer, status_code=202, media_type="application/json")

    @app.get("/versions", dependencies=read)
    def versions() -> dict[str, object]:
        return {
            "serving": runtime.version,
            "current": runtime.store.current_version(),
            "versions": [info.metadata_json() for info in runtime.store.versions()],
            "gate": runtime.store.read_status().get("gate"),
            "store": runtime.store_health(),
        }

    @app.post(
        "/admin/rollback",
        dependencies=[Depends(access.require("admin"))],
        openapi_extra=_admin_request_body(),
    )
    async def admin_rollback(request: Request) -> dict[str, object]:
        """Serve a kept version again (through the running trainer if there is one, which then continues
        learning from that version); this server follows within its store poll interval. Answers once the
        outcome is known: 200 applied, 404 not a kept version, 504 not applied in time (withdrawn)."""
        body = _rollback_body(await _body(request, MAX_ADMIN_BODY_BYTES))
        try:
            outcome = await run_in_threadpool(rollback, store_dir, body.to, body.reason, body.timeout)
        except VersionNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except (RollbackTimeoutError, RollbackOutcomeUnknownError) as error:
            raise HTTPException(status_code=504, detail=str(error)) from None
        except StoreError as error:  # e.g. nothing published yet: there is no version to go back to
            raise HTTPException(status_code=409, detail=str(error)) from None
        return {"version": outcome.version, "previous": outcome.previous, "via": outcome.via}

    @app.get("/metrics", dependencies=read)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused past `max_bytes` (`read_body`); a client gone mid-body is a 400 that
    nobody reads, not an error of the server."""
    try:
        return await read_body(request.stream(), request.headers.get("content-length"), max_bytes)
    except ClientDisconnect:
        raise BodyError(400, "the client disconnected before sending the whole body") from None


def _rollback_body(body: bytes) -> RollbackBody:
    """The admin request, validated as FastAPI would (422 listing the errors), but read only after the
    client proved it may ask."""
    try:
        return RollbackBody.model_validate_json(body or b"{}")
    except ValidationError as error:
        # Without the input: it may be bytes that are not UTF-8, which the error answer could not carry.
        errors = error.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(errors) from None


class TrainerFigures(Collector):
    """The trainer's figures from the store's status file, read once per scrape: the gate's counters and
    level, the guardrail's rollbacks, loss spikes and input shifts (docs/operations.md, "Poisoned input").
    NaN before the trainer wrote them, or for a figure it cannot measure (no loss for a count model)."""

    def __init__(self, runtime: ServingRuntime) -> None:
        self._runtime = runtime

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, help_text) for name, help_text, _ in TRAINER_FIGURES]

    def collect(self) -> list[GaugeMetricFamily]:
        status = self._runtime.store.read_status()
        figures = {**status.get("gate", {}), **_prefixed(status.get("trainer", {}), "trainer_")}
        families = []
        for name, help_text, key in TRAINER_FIGURES:
            value = figures.get(key)
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
            families.append(GaugeMetricFamily(name, help_text, value=math.nan if number is None else number))
        return families


def _prefixed(document: object, prefix: str) -> dict[str, object]:
    return {prefix + key: value for key, value in document.items()} if isinstance(document, dict) else {}


#: (metric, help, key of the status file's ``gate`` document, or ``trainer_`` and a key of its ``trainer``
#: document) for every figure the trainer reports.
TRAINER_FIGURES = (
    ("freshrec_trainer_hr", "The trainer's prequential HR@K over the events it evaluated", "trainer_hr"),
    (
        "freshrec_trainer_ndcg",
        "The trainer's prequential NDCG@K over the events it evaluated",
        "trainer_ndcg",
    ),
    (
        "freshrec_trainer_events_trained",
        "Events the trainer learned since it started",
        "trainer_events_trained",
    ),
    (
        "freshrec_trainer_events_per_second",
        "Events the trainer learned per second between its last two gate decisions",
        "trainer_events_per_second",
    ),
    (
        "freshrec_trainer_learning_events_per_second",
        "The trainer's learning speed: events per second of feature updates and learning steps alone",
        "trainer_learning_events_per_second",
    ),
    (
        "freshrec_trainer_event_time",
        "Newest event time the trainer learned (Unix seconds)",
        "trainer_event_time",
    ),
    ("freshrec_gate_published", "Candidates the trainer's gate published", "published"),
    ("freshrec_gate_held", "Candidates the trainer's gate held back", "held"),
    ("freshrec_gate_level", "Running HR@K of published windows", "level"),
    ("freshrec_gate_quarantined", "Suspect windows the held candidate learned from", "quarantined"),
    ("freshrec_gate_rebases", "Quarantined candidates restarted from the serving version", "rebases"),
    ("freshrec_gate_top_item_share", "Share of the last window's events on its top item", "top_item_share"),
    (
        "freshrec_gate_top_item_share_level",
        "Running share of the top item on published windows",
        "top_item_share_level",
    ),
    ("freshrec_gate_rare_item_share", "Share of the last window's events on rare items", "rare_item_share"),
    (
        "freshrec_gate_rare_item_share_level",
        "Running share of rare items on published windows",
        "rare_item_share_level",
    ),
    ("freshrec_guardrail_rollbacks", "Automatic rollbacks by the guardrail", "rollbacks"),
    ("freshrec_guardrail_trusted_version", "The version the guardrail trusts", "trusted_version"),
    (
        "freshrec_guardrail_serving_hr",
        "HR@K of the serving version on the last watch",
        "guardrail_serving_hr",
    ),
    (
        "freshrec_guardrail_trusted_hr",
        "HR@K of the trusted version on the last watch",
        "guardrail_trusted_hr",
    ),
    ("freshrec_trainer_loss", "The trainer's last training loss", "loss_last"),
    ("freshrec_trainer_loss_mean", "Running mean of the training loss", "loss_mean"),
    ("freshrec_trainer_loss_spikes", "Training losses far above their running mean", "loss_spikes"),
    ("freshrec_input_event_rate", "Events per second of event time in the last window", "event_rate"),
    ("freshrec_input_event_rate_mean", "Running mean of the event rate", "event_rate_mean"),
    (
        "freshrec_input_unknown_user_share",
        "Share of the last window's events by new users",
        "unknown_user_share",
    ),
    (
        "freshrec_input_unknown_user_share_mean",
        "Running share of events by new users",
        "unknown_user_share_mean",
    ),
    (
        "freshrec_input_unknown_item_share",
        "Share of the last window's events on new items",
        "unknown_item_share",
    ),
    (
        "freshrec_input_unknown_item_share_mean",
        "Running share of events on new items",
        "unknown_item_share_mean",
    ),
)
