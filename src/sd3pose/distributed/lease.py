"""A worker's lease: how the rest of the deployment knows, within seconds, that a worker is alive.

Each worker process holds the key `lease:<instance>` (instance: its name plus a token unique to this
start of the process), whose value names the job it runs ('' when idle) and which expires after
LEASE_HEARTBEATS heartbeats unless renewed. Starting a job names it in the lease atomically (the job
store's start script); a plain thread with its own Redis connection renews it. That thread takes no
model lock and waits on nothing but Redis: torch releases the GIL in its kernels, and pure-Python work
yields the GIL to other threads every few milliseconds, so a long step, a compile or a slow GPU never
stops the renewals. (A single C call that holds the GIL for more than two heartbeats would.)

The same beat keeps the worker listed under its queue, scored with the time that listing expires, so
`GET /ready` counts the workers that are alive now.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from sd3pose.distributed.config import DEFAULT_HEARTBEAT_S, LEASE_HEARTBEATS, lease_key, workers_key

log = logging.getLogger(__name__)

# KEYS: the lease, the workers of its queue. ARGV: the job it runs ('' when idle), time-to-live in ms,
# worker name, the time its listing expires. The value is kept when the lease exists (the start script and
# the runner set it); it is written only to recreate a lease that lapsed (e.g. Redis was down). -> 1 when
# the lease was still there.
_RENEW = """
local kept = redis.call('PEXPIRE', KEYS[1], ARGV[2])
if kept == 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return kept
"""


class WorkerLease:
    """Who this worker process is, for the job store and the reaper: its name, its lease, what it runs."""

    def __init__(self, name: str, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        self.name = name
        self.instance = f"{name}:{uuid.uuid4().hex[:12]}"
        self.heartbeat_s = heartbeat_s
        self.ttl_s = heartbeat_s * LEASE_HEARTBEATS
        # The job this process runs now (set before its start, cleared after its end): a lease that has to
        # be recreated names it.
        self.job: str | None = None

    @property
    def key(self) -> str:
        return lease_key(self.instance)

    def release_job(self, client: Any) -> None:
        """Say in the lease that this worker is idle again (its time-to-live unchanged)."""
        client.set(self.key, "", keepttl=True, xx=True)


class Heartbeat:
    """Renews a worker's lease and its listing under its queue every heartbeat, from its own thread."""

    def __init__(self, client: Any, lease: WorkerLease, queue: str) -> None:
        self.client, self.lease, self.queue = client, lease, queue
        self._renew = client.register_script(_RENEW)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd3pose-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and drop the lease and listing: a job still marked as ours is requeued at once."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(workers_key(self.queue), self.lease.name)
            pipe.delete(self.lease.key)
            pipe.execute()
        except Exception:
            log.debug("could not remove the lease", exc_info=True)

    def beat(self) -> bool:
        """Renew now; False when the lease had lapsed (and was recreated)."""
        ttl_ms = int(self.lease.ttl_s * 1000)
        kept = self._renew(
            keys=[self.lease.key, workers_key(self.queue)],
            args=[self.lease.job or "", ttl_ms, self.lease.name, repr(time.time() + self.lease.ttl_s)],
        )
        return bool(kept)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease.heartbeat_s):
            try:
                if not self.beat() and self.lease.job:
                    log.warning(
                        "worker %s: its lease had lapsed while it ran job %s (Redis unreachable for over %g s?); "
                        "if another worker took the job, this run stops at its next step",
                        self.lease.name,
                        self.lease.job,
                        self.lease.ttl_s,
                    )
            except Exception as exc:  # Redis restarting: keep trying
                log.warning("heartbeat to Redis failed (%s); retrying", exc)
