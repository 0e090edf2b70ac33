"""Names shared by API replicas and workers: Redis key layout, queue per model, the Redis client."""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

from sd3pose.errors import InvalidRequestError

PREFIX = "sd3pose"
# A task that stays unacknowledged this long is given to another worker (its worker is presumed dead).
# It must exceed the longest job, or a slow job runs twice (harmlessly: results and credits settle once).
DEFAULT_VISIBILITY_TIMEOUT_S = 600.0
# Seconds between the workers' sweeps that requeue such tasks.
DEFAULT_RESTORE_INTERVAL_S = 10.0
# A worker that has not refreshed its heartbeat for this long no longer counts as ready.
HEARTBEAT_S = 2.0
WORKER_STALE_S = 10.0


def check_broker_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidRequestError(
            f"--broker must be a Redis URL such as redis://HOST:6379/0 (got {redacted_url(url)!r}); sd3pose runs "
            "Celery over Redis"
        )
    return url


def redacted_url(url: str) -> str:
    """The URL without user info or query, where Redis URLs carry passwords: for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:  # e.g. a broken IPv6 host: show the scheme only
        return f"{url.split(':', 1)[0]}://..."
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: leave it out
        port = ""
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _normalise(location: str | Path | None) -> str:
    if location is None:
        return ""
    return str(location).rstrip("/")


def model_identity(model: str | Path | None, controlnet: str | Path | None, use_t5: bool) -> str:
    """What a worker can serve: the weights (as named on the command line) and the T5 setting."""
    if model is None:
        return f"demo|t5={int(use_t5)}"
    return f"{_normalise(model)}|{_normalise(controlnet)}|t5={int(use_t5)}"


def queue_name(model: str | Path | None, controlnet: str | Path | None, use_t5: bool) -> str:
    """The Celery queue of one model: only workers that loaded exactly these weights consume it."""
    digest = hashlib.sha256(model_identity(model, controlnet, use_t5).encode("utf-8")).hexdigest()[:12]
    return f"{PREFIX}.gen.{digest}"


def redis_client(url: str):
    """A Redis client that rides out a Redis restart (reconnects with backoff for about 30 s)."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=40)
    return redis.Redis.from_url(
        check_broker_url(url),
        retry=retry,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
    )
