"""What `serve --broker` plugs into the HTTP service: the Redis key store, rate limiter and job queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sd3pose.distributed.config import connect, queue_name
from sd3pose.distributed.keystore import RedisKeyStore, RedisRateLimiter
from sd3pose.distributed.queue import CeleryJobQueue

if TYPE_CHECKING:
    from sd3pose.settings import ServiceSettings


def key_store(broker_url: str) -> RedisKeyStore:
    """The shared key store, for `sd3pose keys ... --broker`."""
    return RedisKeyStore(connect(broker_url))


def distributed_backend(settings: ServiceSettings) -> tuple[RedisKeyStore, RedisRateLimiter, CeleryJobQueue]:
    """Keys, rate limiter and job queue of a stateless API replica, all on the Redis at `settings.broker`."""
    assert settings.broker is not None
    client = connect(settings.broker)
    queue = CeleryJobQueue(
        settings.broker,
        settings.broker_queue or queue_name(None, None, True),
        max_queue=settings.max_queue,
        result_ttl_s=settings.result_ttl_s,
        max_disk_bytes=int(settings.max_disk_gb * 2**30),
        client=client,
    )
    return RedisKeyStore(client), RedisRateLimiter(client), queue
