"""Names shared by API replicas and workers: Redis key layout, queue per model, the Redis client."""

from __future__ import annotations

import hashlib
import urllib.parse
from pathlib import Path

from sd3pose.errors import InvalidRequestError, Sd3PoseError
from sd3pose.settings import WorkerSettings

PREFIX = "sd3pose"
# The defaults of sd3pose.settings, for code that builds a Celery app without a WorkerSettings. A task
# that stays unacknowledged for the visibility timeout is given to another worker (its worker is
# presumed dead): it must exceed the longest job, or a slow job runs twice (harmlessly: results and
# credits settle once). The restore interval is the time between the workers' sweeps for such tasks.
DEFAULT_VISIBILITY_TIMEOUT_S = WorkerSettings.model_fields["visibility_timeout_s"].default
DEFAULT_RESTORE_INTERVAL_S = WorkerSettings.model_fields["restore_interval_s"].default
DEFAULT_HEARTBEAT_S = WorkerSettings.model_fields["heartbeat_s"].default
# A worker's lease lives this many heartbeats: one or two lost renewals never make a live worker look dead.
LEASE_HEARTBEATS = 3
# How often each worker and API replica tries to sweep for jobs whose worker's lease lapsed (one sweeps at a time).
REAP_INTERVAL_S = 1.0


def lease_key(instance: str) -> str:
    """A worker process's lease: its value names the job it runs ('' when idle); it expires unless renewed."""
    return f"{PREFIX}:lease:{instance}"


def workers_key(queue: str) -> str:
    """The workers serving `queue`, each scored with the time its presence expires (GET /ready reads it)."""
    return f"{PREFIX}:workers:{queue}"


def running_key() -> str:
    """The jobs started by a lease-holding worker and not yet seen ended: where the reaper looks."""
    return f"{PREFIX}:running"


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


def connect(url: str):
    """A client for the Redis at `url` that answered a ping; Sd3PoseError (one clear line) when it does not."""
    import redis

    client = redis_client(url)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        raise Sd3PoseError(
            f"cannot reach Redis at --broker {redacted_url(url)} ({exc}); start redis-server or fix the URL"
        ) from None
    return client
