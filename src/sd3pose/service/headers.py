"""Security headers on every response: no framing, no MIME sniffing, no referrer leaks, and a Content
Security Policy that lets a page run only what this server serves.

API answers (JSON, images) get a policy that allows nothing at all; the playground may also show images
from any http(s) URL (a user's image URL is previewed straight from its host) and data:/blob: ones it
makes; the API docs page (Swagger UI, from the installed package) additionally needs inline styles.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: http: https:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}


def security_headers(path: str, content_type: str) -> dict[str, str]:
    """The headers for a response to `path` with this Content-Type."""
    if not content_type.startswith("text/html"):
        policy = API_POLICY
    elif path == "/docs" or path.startswith("/docs/"):
        policy = DOCS_POLICY
    else:
        policy = PAGE_POLICY
    return {**COMMON, "content-security-policy": policy}


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(security_headers(scope["path"], headers.get("content-type", "")))
            await send(message)

        await self.app(scope, receive, send_with_headers)
