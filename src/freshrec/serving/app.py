"""The HTTP API: thin routes over `ServingRuntime` (recommend, ingest, health, readiness, metrics, versions,
admin rollback).

Every recommendation carries the model version it was computed with. Ingest answers 202 only after the
accepted events are durable in the event log; a bad event is reported with its index, field and reason
and never costs the good events around it.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from freshrec.preprocess.pipeline import PipelineConfig
from freshrec.publishing.rollback import RollbackTimeoutError, rollback
from freshrec.publishing.store import StoreError, VersionNotFoundError
from freshrec.serving.runtime import ServingConfig, ServingRuntime

#: Largest accepted request body for `POST /events`.
MAX_BODY_BYTES = 1 << 20
#: Clients allowed to call /admin routes when no admin token is configured.
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


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


def create_app(
    config: ServingConfig,
    store_dir: Path,
    log_dir: Path,
    pipeline: PipelineConfig | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    admin_token: str | None = None,
) -> FastAPI:
    """The FastAPI application; the runtime starts with the app and stops with it.

    `store_dir` and `log_dir` are the model store and event log it shares with the trainer, `pipeline`
    their ingest settings. `admin_token` (default: the ``FRESHREC_ADMIN_TOKEN`` environment variable):
    /admin routes then need ``Authorization: Bearer <token>``; without one they answer only clients on
    the loopback interface.
    """
    runtime = ServingRuntime(config, store_dir, log_dir, pipeline)
    admin_token = admin_token if admin_token is not None else os.environ.get("FRESHREC_ADMIN_TOKEN")
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

    for name, help_text, field in (
        ("freshrec_gate_published", "Candidates the trainer's gate published", "published"),
        ("freshrec_gate_held", "Candidates the trainer's gate held back", "held"),
        ("freshrec_gate_level", "Running HR@K of published windows", "level"),
    ):
        Gauge(name, help_text, registry=registry).set_function(lambda f=field: _gate_figure(runtime, f))

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        runtime.start()
        yield
        runtime.close()

    app = FastAPI(title="freshrec", lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = runtime.ready
        return JSONResponse(
            {"ready": ready, "model_version": runtime.version}, status_code=200 if ready else 503
        )

    @app.get("/recommend", response_model=RecommendationBody)
    async def recommend(
        user_id: str = Query(..., min_length=1, max_length=256),
        k: int = Query(10, ge=1, le=1000),
        exclude_seen: bool = True,
    ) -> JSONResponse:
        started = time.perf_counter()
        if not runtime.ready:
            raise HTTPException(status_code=503, detail="no model version is loaded yet")
        result = runtime.recommend(user_id, k, exclude_seen)
        latency.labels("recommend").observe(time.perf_counter() - started)
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

    @app.post("/events", status_code=202)
    async def events(request: Request) -> JSONResponse:
        started = time.perf_counter()
        body = await request.body()
        if len(body) > max_body_bytes:
            raise HTTPException(status_code=413, detail=f"body of {len(body)} bytes exceeds {max_body_bytes}")
        records = _parse_records(body)
        # Off the event loop: the append waits for fsync, and /recommend answers on the loop meanwhile.
        result = await run_in_threadpool(runtime.ingest, records)
        accepted.inc(result.accepted)
        rejected.inc(len(result.rejections))
        latency.labels("events").observe(time.perf_counter() - started)
        return JSONResponse(
            {
                "accepted": result.accepted,
                "offsets": [result.first_offset, result.last_offset],
                "rejected": [
                    {"index": r.position, "field": r.field, "reason": r.reason} for r in result.rejections
                ],
            },
            status_code=202,
        )

    @app.get("/versions")
    def versions() -> dict[str, object]:
        return {
            "serving": runtime.version,
            "current": runtime.store.current_version(),
            "versions": [info.metadata_json() for info in runtime.store.versions()],
            "gate": runtime.store.read_status().get("gate"),
            "store": runtime.store_health(),
        }

    @app.post("/admin/rollback")
    def admin_rollback(body: RollbackBody, request: Request) -> dict[str, object]:
        """Serve a kept version again (through the running trainer if there is one, which then continues
        learning from that version); this server follows within its store poll interval."""
        if admin_token is not None:
            if request.headers.get("authorization") != f"Bearer {admin_token}":
                raise HTTPException(status_code=403, detail="admin routes need Authorization: Bearer <token>")
        elif request.client is None or request.client.host not in LOOPBACK:
            raise HTTPException(
                status_code=403,
                detail="admin routes answer loopback clients only unless an admin token is set",
            )
        try:
            outcome = rollback(store_dir, body.to, body.reason, timeout=body.timeout)
        except VersionNotFoundError as error:
            raise HTTPException(status_code=404, detail=str(error)) from None
        except RollbackTimeoutError as error:
            raise HTTPException(status_code=504, detail=str(error)) from None
        except StoreError as error:  # e.g. nothing published yet: there is no version to go back to
            raise HTTPException(status_code=409, detail=str(error)) from None
        return {"version": outcome.version, "previous": outcome.previous, "via": outcome.via}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _parse_records(body: bytes) -> list[object]:
    """One JSON object, a JSON array, or JSON lines; malformed JSON is a 400 naming the position."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
        return parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError as error:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) <= 1:
            raise HTTPException(
                status_code=400,
                detail=f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}",
            ) from None
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise HTTPException(
                    status_code=400,
                    detail=f"malformed JSON at line {number} column {error.colno}: {error.msg}",
                ) from None
        return records


def _gate_figure(runtime: ServingRuntime, name: str) -> float:
    """One figure of the trainer's gate from the store's status file (NaN before the trainer wrote one)."""
    value = runtime.store.read_status().get("gate", {}).get(name)
    return float(value) if isinstance(value, int | float) else float("nan")
