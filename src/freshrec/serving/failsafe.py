"""The last answer of a request that fails unexpectedly: 500 with a request id (in the response and in the
log) and ``Connection: close``.

Without it an exception reaches the server, which answers 500 and then drops the keep-alive connection
without saying so, so that the client's next request on it fails too. Here the client is told to open a
new connection, and an operator finds the traceback by the id the client got. It never hides an error the
routes meant to answer (those are HTTP errors, answered before it sees them), and never swallows one
after the response began (the server must then cut the connection: the client cannot be told otherwise).
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "InternalErrorMiddleware"]

logger = logging.getLogger("freshrec.serving")
REQUEST_ID_HEADER = "x-request-id"


class InternalErrorMiddleware:
    """Pure ASGI middleware: an exception out of `app` before its response started becomes a 500 carrying
    a fresh request id (``{"detail": ..., "request_id": ...}`` and an ``X-Request-ID`` header), logged
    with its traceback under that id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            request_id = uuid.uuid4().hex[:16]
            logger.exception(
                "request %s (%s %s) failed unexpectedly", request_id, scope.get("method"), scope.get("path")
            )
            if started:
                raise
            detail = f"internal error (request id {request_id} in the server's log)"
            body = json.dumps({"detail": detail, "request_id": request_id}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
