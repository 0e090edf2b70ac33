"""What `serve --broker` plugs into the HTTP service: the Redis key store, rate limiter and job queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd3pose.distributed.config import queue_name, redacted_url, redis_client
from sd3pose.distributed.keystore import RedisKeyStore, RedisRateLimiter
from sd3pose.distributed.queue import CeleryJobQueue
from sd3pose.errors import Sd3PoseError

if TYPE_CHECKING:
    from sd3pose.service.settings import ServiceSettings


def _connect(broker_url: str):
    import redis

    client = redis_client(broker_url)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        raise Sd3PoseError(
            f"cannot reach Redis at --broker {redacted_url(broker_url)} ({exc}); start redis-server or fix the URL"
        ) from None
    return client


def key_store(broker_url: str) -> RedisKeyStore:
    """The shared key store, for `sd3pose keys ... --broker`."""
    return RedisKeyStore(_connect(broker_url))


def distributed_backend(settings: ServiceSettings) -> tuple[RedisKeyStore, RedisRateLimiter, CeleryJobQueue]:
    """Keys, rate limiter and job queue of a stateless API replica, all on the Redis at `broker_url`."""
    assert settings.broker_url is not None
    client = _connect(settings.broker_url)
    queue = CeleryJobQueue(
        settings.broker_url,
        settings.broker_queue or queue_name(None, None, True),
        max_queue=settings.max_queue,
        result_ttl_s=settings.result_ttl_s,
        client=client,
    )
    return RedisKeyStore(client), RedisRateLimiter(client), queue
