"""Who is calling: API key lookup (x-api-key or Bearer), scopes, per-key rate limits."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from sd3pose.service.errors import AuthenticationError, PermissionDeniedError, TooManyRequestsError
from sd3pose.service.keys import ApiKey

api_key_header = APIKeyHeader(name="x-api-key", auto_error=False, description="Your sd3pose API key.")
bearer_header = HTTPBearer(auto_error=False, description="The same API key as `Authorization: Bearer <key>`.")


@dataclass(frozen=True)
class Principal:
    """The caller: a key, or None when the server runs without keys (loopback only by default)."""

    key: ApiKey | None

    @property
    def name(self) -> str:
        return self.key.name if self.key else "anonymous"

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


def require(scope: str, *, rate_limited: bool = False, charged: bool = False):
    """A dependency that authenticates the caller, checks `scope` and (optionally) the rate limit.

    `charged` routes are rate limited, and also refuse (406) a key that cannot pay for one image. All of
    this runs before the route reads the body: the key is in a header, so a caller who may not or cannot
    use the route never gets a large body read or parsed.
    """
    rate_limited = rate_limited or charged

    # A plain `def`: FastAPI runs it in its thread pool, so the key store (Redis in a scaled-out
    # deployment) never blocks the event loop.
    def dependency(
        request: Request,
        x_api_key: str | None = Security(api_key_header),
        authorization: HTTPAuthorizationCredentials | None = Security(bearer_header),
    ) -> Principal:
        services = request.app.state.services
        secret = x_api_key or (authorization.credentials if authorization else None)
        if not secret:
            if services.open_access():
                return Principal(None)
            services.note_refused_without_keys()
            raise AuthenticationError(
                "missing API key: send it in the x-api-key header (or Authorization: Bearer <key>); "
                "an operator creates keys with `sd3pose keys create`"
            )
        key = services.keys.verify(secret)
        if key is None:
            raise AuthenticationError("invalid or revoked API key; check the x-api-key header")
        request.state.principal = Principal(key)  # read by the access log and the credits header
        if scope not in key.scopes:
            raise PermissionDeniedError(
                f"this API key may not use {scope!r} routes (its scopes: {', '.join(key.scopes) or 'none'}); "
                f"ask the operator for a key with --scope {scope}"
            )
        if rate_limited:
            limit = key.rate_limit if key.rate_limit is not None else services.settings.rate_limit_per_minute
            wait_s = services.limiter.check(key.id, limit)
            if wait_s > 0:
                raise TooManyRequestsError(
                    f"rate limit of {limit} requests per minute reached for this key; retry after "
                    f"{max(1, int(wait_s + 0.999))} s",
                    wait_s,
                )
        if charged:
            services.check_can_pay(request.state.principal)
        return Principal(key)

    return dependency
