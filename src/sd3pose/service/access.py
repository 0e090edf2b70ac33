"""ASGI middleware: request ids, one structured log line per request, metrics, the credits header."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import anyio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sd3pose.service.credits import format_credits

log = logging.getLogger("sd3pose.access")

# Metric labels take only these: a client-chosen method name must not add a time series per request.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def tracing_headers(services: Any, state: dict[str, Any]) -> dict[str, str]:
    """x-request-id, and x-remaining-credits when the request came with a key."""
    headers = {"x-request-id": state.get("request_id", "-")}
    principal = state.get("principal")
    if principal is not None and principal.key is not None:
        # In a worker thread: with Redis this is a network call.
        balance = await anyio.to_thread.run_sync(services.keys.balance, principal.key.id)
        headers["x-remaining-credits"] = format_credits(balance)
    return headers


class AccessMiddleware:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).update(await tracing_headers(self.services, state))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.services.metrics.requests.labels(route, method, str(status)).inc()
            self.services.metrics.request_seconds.labels(route).observe(seconds)
            principal = state.get("principal")
            log.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "key": principal.name if principal is not None else None,
                        "job_id": state.get("job_id"),
                        "ms": round(seconds * 1000, 1),
                        "timings": state.get("timings"),
                    }
                )
            )
