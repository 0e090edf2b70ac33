"""HTTP-level errors and the handlers that turn every failure into `{"error": "..."}`.

FastAPI's default 422 shape is replaced: clients of the hosted API expect `error` and its codes.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sd3pose.errors import Sd3PoseError
from sd3pose.jobs.contract import RetryLaterError
from sd3pose.service.access import tracing_headers
from sd3pose.service.headers import security_headers

log = logging.getLogger(__name__)


class ServiceError(Sd3PoseError):
    """An error with a status code chosen by the HTTP layer, and optional extra headers."""

    def __init__(self, message: str, status_code: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or {}


class AuthenticationError(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 401, {"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


class NotFoundError(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


class InsufficientCreditsError(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 406)


class TooManyRequestsError(ServiceError):
    """Rate limited or queue full; `Retry-After` says when to try again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, 429, {"Retry-After": str(max(1, int(retry_after_s + 0.999)))})


class ServiceTimeoutError(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 504)


def error_response(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Sd3PoseError)
    async def _sd3pose_error(request: Request, exc: Sd3PoseError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if isinstance(exc, RetryLaterError):
            headers = TooManyRequestsError(exc.message, exc.retry_after_s).headers
        return error_response(exc.status_code, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such route: {request.method} {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = (
                f"method {request.method} is not allowed on {request.url.path}; "
                f"allowed: {(exc.headers or {}).get('Allow', 'see /docs')}"
            )
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "path", "query"))
            parts.append(f"{where or 'request'}: {error.get('msg', 'invalid value')}")
        return error_response(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        state = request.scope.get("state", {})
        request_id = state.get("request_id", "-")
        log.exception("unexpected error handling %s %s (request id %s)", request.method, request.url.path, request_id)
        # This answer is made outside our middleware (Starlette's outermost layer), so it adds the headers.
        try:
            headers = await tracing_headers(request.app.state.services, state)
        except Exception:  # the key store may be what failed
            headers = {"x-request-id": request_id}
        headers.update(security_headers(request.url.path, "application/json"))
        return error_response(
            500, f"internal server error (request id {request_id}); the server logged the details", headers
        )
