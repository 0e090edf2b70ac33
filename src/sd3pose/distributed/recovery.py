"""Recovery: a job whose worker died or stopped goes back to the front of its model's queue within seconds.

Two ways back, both ending in the same state (QUEUED, its run cleared, listed as waiting) and a new task
message ahead of the waiting jobs:
- the reaper finds a PROCESSING job whose worker's lease lapsed (the worker was killed, its machine lost);
- a worker that must stop (SIGTERM past its grace) hands its running job back itself.

The reaper runs in every worker and API replica; a Redis lock lets one sweep at a time. It sends the new
message before it marks the job QUEUED: a worker that takes the message first starts the job anyway (its
holder is dead), and a send that fails changes nothing, so the next sweep tries again. The job's
attempt count, its charge-once settlement and the rule that only its current run ends it are the job
store's, unchanged: a job whose workers died MAX_STARTS times ends FAILED and refunded instead.

The Celery message of the dead run stays unacknowledged; when Redis hands it out again after the
visibility timeout, the job has ended or a live worker runs it, and the start script drops it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import LockError

from sd3pose.distributed.config import PREFIX, REAP_INTERVAL_S, lease_key, running_key
from sd3pose.distributed.jobstore import MAX_STARTS, RedisJobStore, as_text, job_key, queued_key

log = logging.getLogger(__name__)

# The sweep lock lives this many sweep intervals. A process killed mid-sweep holds it that long, so it must
# be short next to a lease lifetime (a 30 s lock once delayed a failover by 30 s). A sweep that outlives it
# (Redis very slow) lets another process sweep too: harmless, as each requeue is one atomic script that acts
# only while the job is still with its dead worker.
LOCK_INTERVALS = 2

# KEYS: job, its queued set, running set. ARGV: job id, now. Puts a job that lost its run back in its queue.
_BACK_TO_QUEUE = """
redis.call('HSET', KEYS[1], 'status', 'QUEUED')
redis.call('HDEL', KEYS[1], 'lease', 'run', 'progress')
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
"""

# KEYS: job, its queued set, running set, the lease of the worker it records. ARGV: job id, now, that worker's
# lease instance. -> 1 when requeued; 0 when it ended, moved to another worker, or its worker's lease is back.
_REQUEUE_LAPSED = (
    """
if redis.call('HGET', KEYS[1], 'status') ~= 'PROCESSING' then return 0 end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[3] then return 0 end
if redis.call('GET', KEYS[4]) == ARGV[1] then return 0 end
"""
    + _BACK_TO_QUEUE
    + "return 1"
)

# KEYS: job, its queued set, running set. ARGV: job id, now, the run's token. A stop is not a failed start,
# so the attempt does not count. -> 1 when handed back (also when replayed after a lost reply); 0 when that
# run is no longer the job's current one.
_HAND_BACK = (
    """
if redis.call('HGET', KEYS[1], 'handed_back') == ARGV[3] then return 1 end
if redis.call('HGET', KEYS[1], 'status') ~= 'PROCESSING' or redis.call('HGET', KEYS[1], 'run') ~= ARGV[3] then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HSET', KEYS[1], 'handed_back', ARGV[3])
"""
    + _BACK_TO_QUEUE
    + "return 1"
)

SendJob = Callable[[str, str], None]  # (job id, queue): send its task ahead of the waiting jobs


@dataclass(frozen=True)
class Running:
    """A job in the running set, as the reaper read it."""

    job_id: str
    worker: str
    holder: str  # the lease instance of the worker running it
    queue: str
    attempts: int
    lease_ttl_s: float
    lease_value: str | None  # what the holder's lease names now (None: it lapsed)

    @property
    def lapsed(self) -> bool:
        return self.lease_value != self.job_id


class Recovery:
    """The job store's recovery steps: find jobs whose worker's lease lapsed, requeue them, hand jobs back."""

    def __init__(self, store: RedisJobStore, send: SendJob) -> None:
        self.store, self.redis, self.send = store, store.redis, send
        self._requeue_lapsed = self.redis.register_script(_REQUEUE_LAPSED)
        self._hand_back = self.redis.register_script(_HAND_BACK)

    def running(self) -> list[Running]:
        """The PROCESSING jobs of the running set, with their holder's lease; ended ones leave the set (for
        good: unlike a QUEUED job, an ended one is never started again)."""
        ids = [as_text(raw) for raw in self.redis.zrange(running_key(), 0, -1)]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(job_key(job_id), ["status", "lease", "queue", "attempts", "lease_ttl", "worker"])
        rows = [[as_text(v) or "" for v in row] for row in pipe.execute()]
        pipe = self.redis.pipeline(transaction=False)
        for _, holder, *_ in rows:
            pipe.get(lease_key(holder))
        leases = pipe.execute()
        found, ended = [], []
        for job_id, (status, holder, queue, attempts, ttl, worker), lease in zip(ids, rows, leases, strict=True):
            if status in ("COMPLETED", "FAILED", ""):  # "": its record lapsed
                ended.append(job_id)
            if status != "PROCESSING":
                continue
            found.append(Running(job_id, worker, holder, queue, int(attempts or 0), float(ttl or 0), as_text(lease)))
        if ended:
            self.redis.zrem(running_key(), *ended)
        return found

    def sweep(self) -> list[str]:
        """Requeue (or, after MAX_STARTS, fail) every job whose worker's lease lapsed; the ids requeued."""
        lapsed = [job for job in self.running() if job.lapsed]
        if not lapsed:
            return []
        # After a Redis restart, leases that expired while it was down are not deaths: each worker gets one
        # lease time-to-live to renew its own before its job counts as abandoned.
        uptime = float(self.redis.info("server")["uptime_in_seconds"])
        requeued = []
        for job in lapsed:
            if uptime < job.lease_ttl_s:
                continue
            if job.attempts >= MAX_STARTS:
                self.store.fail_exhausted(job.job_id)
            elif self._requeue(job):
                requeued.append(job.job_id)
        return requeued

    def _requeue(self, job: Running) -> bool:
        self.send(job.job_id, job.queue)
        moved = self._requeue_lapsed(
            keys=[job_key(job.job_id), queued_key(job.queue), running_key(), lease_key(job.holder)],
            args=[job.job_id, repr(time.time()), job.holder],
        )
        if moved:
            log.warning(
                "job %s: worker %s stopped renewing its lease (presumed dead); sent again, ahead of the waiting "
                "jobs (it has started %d of at most %d times)",
                job.job_id,
                job.worker,
                job.attempts,
                MAX_STARTS,
            )
        return bool(moved)

    def hand_back(self, job_id: str, run: str) -> bool:
        """Give a job this worker's run is stopping back to its queue, ahead of the waiting jobs; False when the
        run was no longer the job's current one (nothing to give back)."""
        queue = as_text(self.redis.hget(job_key(job_id), "queue")) or ""
        if not self._hand_back(
            keys=[job_key(job_id), queued_key(queue), running_key()], args=[job_id, repr(time.time()), run]
        ):
            return False
        self.send(job_id, queue)
        return True


class Reaper:
    """Sweeps for abandoned jobs every interval, from its own thread, one process at a time (a Redis lock)."""

    def __init__(self, recovery: Recovery, interval_s: float = REAP_INTERVAL_S) -> None:
        self.recovery, self.interval_s = recovery, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd3pose-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def sweep_once(self) -> list[str] | None:
        """One sweep under the lock; None when another process holds it."""
        lock = self.recovery.redis.lock(f"{PREFIX}:reaper", timeout=LOCK_INTERVALS * self.interval_s, blocking=False)
        if not lock.acquire():
            return None
        try:
            return self.recovery.sweep()
        finally:
            with contextlib.suppress(LockError):  # it expired during a very slow sweep; another process may hold it
                lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception as exc:  # Redis restarting: the next sweep tries again
                log.warning("sweep for jobs of dead workers failed (%s); retrying", exc)
