"""What a loopback server running without API keys still refuses, so that only local programs can use it.

A web page the user visits can make the browser send requests to 127.0.0.1 too. Two rules keep it out:
a request must name a loopback host in its Host header (a DNS-rebinding page reaches us under its own
name), and a request body must be declared `application/json` (a form post or a `text/plain` fetch
from another site carries no such body unless the browser first asks, and we never say yes).
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from sd3pose.service.errors import error_response
from sd3pose.settings import is_loopback

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class LocalOnlyMiddleware:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not await self._open():
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not is_loopback(host_name(host)):
            response = error_response(
                403,
                f"this server runs without API keys, so it answers only requests addressed to a loopback name "
                f"(localhost, 127.0.0.1 or [::1]), not {host[:100]!r}; use http://127.0.0.1:<port>, or ask the "
                "operator for an API key",
            )
        elif scope["method"] in BODY_METHODS and not is_json(headers.get("content-type", "")):
            response = error_response(
                415,
                "this server runs without API keys, so it accepts request bodies only as JSON; send the header "
                "Content-Type: application/json",
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _open(self) -> bool:
        """Open on loopback: the mode these rules are for (an operator's --insecure-no-auth on another
        address has an authenticating proxy in front, which answers for its own Host names)."""
        if self.services.auth_on_for_good or not self.services.settings.loopback_only:
            return False  # the usual case: no store call at all
        return await anyio.to_thread.run_sync(self.services.open_access)  # a network call with Redis
