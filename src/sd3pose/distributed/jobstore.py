"""Job records, progress and results in Redis, shared by every API replica and worker.

Layout (all under `sd3pose:`): `job:<id>` a hash (status, times, progress, cancel reason, result
metadata; while it runs: its worker, that worker's lease and the run's token), `job:<id>:request` the
request, kept until the job ends so that any worker can run it again, `job:<id>:data` a hash of result
bytes (`image:<i>`, `pose`), `queued:<queue>` a sorted set of the jobs not yet started (the queue
depth), `running` the jobs started by a lease-holding worker, `job:<id>:waiter` a short-lived lease
that the API process waiting on a sync job keeps alive, `input:<sha256>` the bytes of an input image
(stored once however many jobs use it) and `input:<sha256>:jobs` the unfinished jobs that use it: the
last one to end deletes both.

Every state change is one Lua script, so it is atomic across processes: a job leaves QUEUED/PROCESSING
exactly once, and when it ends FAILED its reserved credits go back to its key in the same step. That
makes retries (a redelivered task, a replayed command after a Redis reconnect) harmless: a job is
charged once however many workers touched it. Each start is a run with its own token; only the job's
current run may end it, so a run whose worker was presumed dead can neither fail nor complete a job
that another worker now runs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sd3pose.distributed.config import DEFAULT_HEARTBEAT_S, LEASE_HEARTBEATS, PREFIX, lease_key, running_key
from sd3pose.jobs.contract import CANCELLED_CODE, JobInfo, JobStatus, result_from_meta, result_meta
from sd3pose.results import GenerationResult
from sd3pose.service.credits import from_micro, to_micro

log = logging.getLogger(__name__)

# A job no worker started within this time ends FAILED (refunded) at the next submit or depth check.
QUEUED_GRACE_S = 86400
# Records of unfinished jobs lapse after this long (a safety net for jobs nobody ever settles).
UNFINISHED_RECORD_S = 7 * 86400
WAITER_LEASE_S = 15.0
# A job whose worker dies this many times (crash, OOM kill) is not handed to yet another worker.
MAX_STARTS = 3

# KEYS: job, queued set, the job's request, and with an input: its bytes, its set of unfinished jobs.
# ARGV: max queue (0: no cap), record time-to-live, now, job id, request ('' for none), input bytes, then the
#       job's fields (name, value, ...).
# -> 1 when the job, its request and its hold on the input exist; 0 (nothing written) when the queue is full.
_CREATE = """
-- A replay of this script (the client retries when a reply is lost) must not count the job against itself.
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if tonumber(ARGV[1]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[2]) end
if #KEYS == 5 then
  -- The bytes are stored once whoever else uses them; the end of the last job using them deletes them (the
  -- time-to-live is a safety net).
  redis.call('SET', KEYS[4], ARGV[6], 'NX')
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  redis.call('SADD', KEYS[5], ARGV[4])
  redis.call('EXPIRE', KEYS[5], ARGV[2])
end
return 1
"""

# KEYS: job, queued set, the lease of the worker the job records as running it, this worker's lease, running set.
# ARGV: now, worker name, job id, max starts, the recorded holder (as read before), this worker's lease instance,
#       run token, lease time-to-live in ms.
# -> 'skip' (finished or unknown), 'retry' (its holder changed since it was read), 'running' (a live worker
#    runs it: this delivery is a stale copy), 'exhausted' (started ARGV[4] times, its workers died each
#    time), else how many times it had started before. Starting names the job in this worker's lease.
#    A replay of the script (the client retries when a reply is lost) answers as the first run did.
_START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'COMPLETED' or status == 'FAILED' then return 'skip' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if status == 'PROCESSING' then
  if redis.call('HGET', KEYS[1], 'run') == ARGV[7] then return tostring(attempts - 1) end
  if (redis.call('HGET', KEYS[1], 'lease') or '') ~= ARGV[5] then return 'retry' end
  if redis.call('GET', KEYS[3]) == ARGV[3] then return 'running' end
  if attempts >= tonumber(ARGV[4]) then return 'exhausted' end
end
redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'started_at', ARGV[1], 'worker', ARGV[2], 'lease', ARGV[6],
           'run', ARGV[7], 'lease_ttl', tonumber(ARGV[8]) / 1000)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[8])
redis.call('ZADD', KEYS[5], ARGV[1], ARGV[3])
return tostring(attempts)
"""

# KEYS: job, queued set, the job's API key hash, the job's done list, this attempt's staged result bytes,
#       the job's result bytes, the job's request, its input's bytes, its input's set of unfinished jobs.
# ARGV: status, finished_at, error, error_code, result_json, ttl, job id, the ending run's token ('' for
#       an ending that is not a run's: a cancel, an expiry), this call's one-off token.
# -> 1 when this call ended the job, 0 when it had already ended (or the run is no longer the job's
#    current one), -1 when unknown, 2 when a completion met a cancel recorded first (the job ends FAILED
#    and refunded: nobody is waiting for it). The step that ends a job also deletes its request and lets
#    go of its input, so no ending (nor a process killed right after one) leaves them behind. A replay of
#    the script (the client retries when a reply is lost) answers as the first run did.
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  redis.call('DEL', KEYS[7])
  return -1
end
if status == 'COMPLETED' or status == 'FAILED' then
  if redis.call('HGET', KEYS[1], 'ended_by') ~= ARGV[9] then return 0 end
  if ARGV[1] == 'COMPLETED' and status == 'FAILED' then return 2 end
  return 1
end
if ARGV[8] ~= '' and (status ~= 'PROCESSING' or redis.call('HGET', KEYS[1], 'run') ~= ARGV[8]) then return 0 end
local outcome = 1
if ARGV[1] == 'COMPLETED' then
  local cancel = redis.call('HGET', KEYS[1], 'cancel')
  if cancel then
    ARGV[1], ARGV[3], ARGV[4], ARGV[5], outcome = 'FAILED', cancel, '504', '{}', 2
  end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[2], 'error', ARGV[3], 'error_code', ARGV[4],
           'result_json', ARGV[5], 'ended_by', ARGV[9])
redis.call('HDEL', KEYS[1], 'progress')
redis.call('ZREM', KEYS[2], ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('DEL', KEYS[7])  -- no run needs the request or the input any more; the last job using it deletes it
if redis.call('HEXISTS', KEYS[1], 'input') == 1 then
  redis.call('SREM', KEYS[9], ARGV[7])
  if redis.call('SCARD', KEYS[9]) == 0 then redis.call('DEL', KEYS[8], KEYS[9]) end
end
if ARGV[1] == 'COMPLETED' and redis.call('EXISTS', KEYS[5]) == 1 then
  -- Only the run that ends the job publishes its bytes: a duplicate run never replaces delivered images.
  redis.call('RENAME', KEYS[5], KEYS[6])
  redis.call('EXPIRE', KEYS[6], ARGV[6])
end
if redis.call('HGET', KEYS[1], 'kind') == 'sync' then
  redis.call('RPUSH', KEYS[4], ARGV[1])  -- wakes the API process blocked on it (see wait_done)
  redis.call('EXPIRE', KEYS[4], 60)
end
if ARGV[1] == 'FAILED' then
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_micro') or '0')
  if reserved and reserved > 0 and redis.call('HEXISTS', KEYS[3], 'micro_credits') == 1 then
    redis.call('HINCRBY', KEYS[3], 'micro_credits', reserved)
  end
end
return outcome
"""

# Cancel: a queued job ends now (returns 'queued'); a running one gets a reason its worker reads.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'PROCESSING' then redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1]) end
return status or ''
"""


def job_key(job_id: str, part: str = "") -> str:
    """A job's hash, or one of its parts: "data" (its images), "request", "waiter", "done"."""
    return f"{PREFIX}:job:{job_id}:{part}" if part else f"{PREFIX}:job:{job_id}"


def input_key(digest: str, part: str = "") -> str:
    """A stored input's bytes, or with part "jobs" the set of jobs that still need them."""
    return f"{PREFIX}:input:{digest}:{part}" if part else f"{PREFIX}:input:{digest}"


def queued_key(queue: str) -> str:
    return f"{PREFIX}:queued:{queue}"


# The field of a key's hash that holds its balance, in whole micro-credits (absent: unlimited).
CREDITS_FIELD = "micro_credits"


def credits_key(key_id: str | None) -> str:
    # The key store keeps each key's hash here (see keystore.py); a job without a key points nowhere.
    return f"{PREFIX}:key:{key_id}" if key_id else f"{PREFIX}:key:-"


def as_text(value: Any) -> str | None:
    """A Redis reply (bytes) as str; None stays None."""
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    text = as_text(value)
    return float(text) if text not in (None, "") else None


# A lease lives this long unless its worker says otherwise (store-level callers that hold no Heartbeat).
DEFAULT_LEASE_TTL_S = DEFAULT_HEARTBEAT_S * LEASE_HEARTBEATS
# Why a run stops when its job was handed to another worker.
SUPERSEDED = "this job was handed to another worker (this one was presumed dead)"


@dataclass
class StartedJob:
    redelivered: bool
    kind: str
    run: str  # this run's token: only the job's current run may end it


class RedisJobStore:
    def __init__(self, client: Any, *, result_ttl_s: float = 3600.0) -> None:
        self.redis = client
        self.result_ttl_s = result_ttl_s
        self._create = client.register_script(_CREATE)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    @property
    def _record_ttl_s(self) -> int:
        return int(self.result_ttl_s + UNFINISHED_RECORD_S)

    # --- API side ------------------------------------------------------------------------------------

    def create(
        self,
        *,
        queue: str,
        kind: str,
        key_id: str | None,
        reserved: float,
        samples: int,
        max_queue: int,
        job_id: str | None = None,
        request_json: str | None = None,
        input_image: tuple[str, bytes] | None = None,
    ) -> JobInfo | None:
        """Record a QUEUED job, its request (None: its task message carries it) and its hold on `input_image`
        (its content hash and bytes, kept once for every job using them until the last one ends), all in one
        step; None, with nothing recorded, when `queue` already holds max_queue waiting jobs (0 = no cap)."""
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        fields = {
            "kind": kind,
            "status": JobStatus.QUEUED.value,
            "key_id": key_id or "",
            "reserved_micro": to_micro(reserved),
            "samples": samples,
            "created_at": repr(now),
            "queue": queue,
        }
        keys = [job_key(job_id), queued_key(queue), job_key(job_id, "request")]
        data = b""
        if input_image is not None:
            digest, data = input_image
            fields["input"] = digest
            keys += [input_key(digest), input_key(digest, "jobs")]
        flat = [item for pair in fields.items() for item in pair]
        self.expire_waiting(queue)
        if kind == "sync":
            self.touch_waiter(job_id)
        args = [max_queue, self._record_ttl_s, repr(now), job_id, request_json or "", data, *flat]
        if not self._create(keys=keys, args=args):
            return None
        return JobInfo(
            id=job_id,
            kind=kind,
            status=JobStatus.QUEUED,
            key_id=key_id,
            reserved=reserved,
            created_at=now,
            samples=samples,
        )

    def input_data(self, digest: str) -> bytes | None:
        return self.redis.get(input_key(digest))

    def used_bytes(self) -> int:
        """Memory Redis uses now (inputs, results and records all live there)."""
        return int(self.redis.info("memory")["used_memory"])

    def touch_waiter(self, job_id: str) -> None:
        """The API process waiting on a sync job is alive (a worker drops sync jobs nobody waits for)."""
        self.redis.set(job_key(job_id, "waiter"), b"1", px=int(WAITER_LEASE_S * 1000))

    def get(self, job_id: str) -> JobInfo | None:
        raw = self.redis.hgetall(job_key(job_id))
        if not raw or b"status" not in raw:
            return None
        row = {as_text(k): as_text(v) for k, v in raw.items()}
        progress = None
        if row.get("progress"):
            step, total = row["progress"].split("/")
            progress = (int(step), int(total))
        return JobInfo(
            id=job_id,
            kind=row["kind"],
            status=JobStatus(row["status"]),
            key_id=row.get("key_id") or None,
            reserved=from_micro(int(row.get("reserved_micro") or 0)),
            created_at=float(row["created_at"]),
            started_at=_float(row.get("started_at")),
            finished_at=_float(row.get("finished_at")),
            error=row.get("error") or None,
            error_code=int(row["error_code"]) if row.get("error_code") else None,
            progress=progress,
            result_meta=json.loads(row["result_json"]) if row.get("result_json") else {},
            samples=int(row.get("samples") or 1),
        )

    def wait_done(self, job_id: str, timeout_s: float) -> None:
        """Block until a sync job ends or timeout_s passes (no polling: the finish script wakes us)."""
        if timeout_s > 0:
            self.redis.blpop([job_key(job_id, "done")], timeout=timeout_s)

    def result(self, job_id: str) -> GenerationResult | None:
        info = self.get(job_id)
        if info is None or info.status is not JobStatus.COMPLETED:
            return None
        meta = info.result_meta
        data = self.redis.hgetall(job_key(job_id, "data"))
        try:
            images = [data[f"image:{i}".encode()] for i in range(meta["count"])]
        except KeyError:
            return None
        return result_from_meta(meta, images, data.get(b"pose"))

    def cancel(self, job_id: str, reason: str, error_code: int = CANCELLED_CODE) -> None:
        if as_text(self._cancel(keys=[job_key(job_id)], args=[reason])) == JobStatus.QUEUED.value:
            self.finish(job_id, JobStatus.FAILED, error=reason, error_code=error_code)

    def depth(self, queue: str) -> int:
        """Jobs waiting on `queue` for a worker."""
        self.expire_waiting(queue)
        return int(self.redis.zcard(queued_key(queue)))

    def expire_waiting(self, queue: str) -> None:
        """End the jobs that waited over QUEUED_GRACE_S for a worker: FAILED, and their credits refunded."""
        stale = self.redis.zrangebyscore(queued_key(queue), "-inf", f"({time.time() - QUEUED_GRACE_S!r}")
        error = (
            f"no worker took this job within {QUEUED_GRACE_S / 3600:g} h; submit it again once a worker "
            "serves this model"
        )
        for raw in stale:
            job_id = as_text(raw)
            self.finish(job_id, JobStatus.FAILED, error=error, error_code=503)
            self.redis.zrem(queued_key(queue), job_id)  # also when its record had already lapsed

    def forget(self, job_id: str) -> None:
        """Drop a delivered sync result's bytes (its client has them)."""
        self.redis.delete(job_key(job_id, "data"))

    # --- worker side ---------------------------------------------------------------------------------

    def start(
        self, job_id: str, worker: str, *, instance: str | None = None, lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    ) -> StartedJob | None:
        """Start a run of the job on `worker`, whose lease is `lease:<instance>` (default: its name), and name
        the job in that lease. None when this delivery must not run: the job ended, or the worker
        running it is alive (a stale copy of its message)."""
        instance = instance or worker
        run = uuid.uuid4().hex
        for _ in range(5):  # 'retry': another worker took the job between the read and the script
            queue, holder = (as_text(v) or "" for v in self.redis.hmget(job_key(job_id), ["queue", "lease"]))
            before = as_text(
                self._start(
                    keys=[job_key(job_id), queued_key(queue), lease_key(holder), lease_key(instance), running_key()],
                    args=[repr(time.time()), worker, job_id, MAX_STARTS, holder, instance, run, int(lease_ttl_s * 1e3)],
                )
            )
            if before != "retry":
                break
        if before == "exhausted":
            self.fail_exhausted(job_id)
            return None
        if before == "running":
            log.info("job %s: a stale copy of its message; its worker %s is alive and runs it: dropped", job_id, holder)
            return None
        if before in ("skip", "retry"):
            return None
        kind = as_text(self.redis.hget(job_key(job_id), "kind")) or "async"
        return StartedJob(redelivered=int(before) > 0, kind=kind, run=run)

    def fail_exhausted(self, job_id: str) -> None:
        """End a job whose workers died MAX_STARTS times running it: FAILED and refunded, not retried."""
        log.error("job %s: started %d times and its worker died each time; failing it", job_id, MAX_STARTS)
        self.finish(
            job_id,
            JobStatus.FAILED,
            error=f"the workers running this request stopped {MAX_STARTS} "
            "times without finishing it, so it is not retried; check the request, or tell the operator",
            error_code=500,
        )

    def request(self, job_id: str) -> str | None:
        """The request of a job that has not ended (None once it has, or for an unknown job)."""
        return as_text(self.redis.get(job_key(job_id, "request")))

    def report_step(self, job_id: str, step: int, total: int) -> None:
        self.redis.hset(job_key(job_id), "progress", f"{step}/{total}")

    def cancel_reason(self, job_id: str, run: str | None = None) -> str | None:
        """Why the job should stop now: cancelled by the API, already ended (a cancel or an expiry of the
        queued job that met its start), a sync job whose waiter is gone, or (given `run`) that run is no
        longer the job's current one."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(job_key(job_id), ["cancel", "kind", "run", "status", "error"])
        pipe.exists(job_key(job_id, "waiter"))
        (reason, kind, current, status, error), waiter = pipe.execute()
        if reason:
            return as_text(reason)
        if as_text(status) in (JobStatus.COMPLETED.value, JobStatus.FAILED.value):
            return as_text(error) or "this job has already ended"
        if run is not None and as_text(current) != run:
            return SUPERSEDED
        if as_text(kind) == "sync" and not waiter:
            return "the API process waiting for this request went away; submit it again"
        return None

    def complete(self, job_id: str, result: GenerationResult, run: str | None = None) -> bool:
        """Store the images, then end the job COMPLETED; False when a cancel recorded first ended it FAILED
        instead, or it had ended already (or `run` is no longer the job's current run)."""
        meta = result_meta(result)
        data: dict[str, bytes] = {f"image:{i}": image for i, image in enumerate(result.images)}
        if result.pose_png is not None:
            data["pose"] = result.pose_png
        staged = f"{job_key(job_id, 'data')}:{uuid.uuid4().hex}"  # this run's bytes, published by _FINISH if it wins
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(staged, mapping=data)
        pipe.expire(staged, int(self.result_ttl_s))
        pipe.execute()
        try:
            return self.finish(job_id, JobStatus.COMPLETED, meta=meta, staged=staged, run=run)
        finally:
            self.redis.delete(staged)  # gone already when published; otherwise another run ended the job

    def fail(self, job_id: str, error: str, error_code: int, run: str | None = None) -> bool:
        """End the job FAILED (its credits go back in the same step); False when it had ended already (or
        `run` is no longer the job's current run)."""
        return self.finish(job_id, JobStatus.FAILED, error=error, error_code=error_code, run=run)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        error_code: int | None = None,
        meta: dict[str, Any] | None = None,
        staged: str | None = None,
        run: str | None = None,
    ) -> bool:
        """End the job (refunding a failed job's credits in the same atomic step); False if already ended.

        `staged`: a key holding a completing run's result bytes, made the job's result if this call ends it.
        `run`: the ending run's token; the job ends only if that run is still its current one.
        """
        fields = self.redis.hmget(job_key(job_id), ["queue", "key_id", "input"])
        queue, key_id, digest = (as_text(v) or "" for v in fields)
        ended = self._finish(
            keys=[
                job_key(job_id),
                queued_key(queue),
                credits_key(key_id),
                job_key(job_id, "done"),
                staged or f"{job_key(job_id, 'data')}:none",
                job_key(job_id, "data"),
                job_key(job_id, "request"),
                input_key(digest or "-"),  # touched only when the job has an input
                input_key(digest or "-", "jobs"),
            ],
            args=[
                status.value,
                repr(time.time()),
                error or "",
                error_code or "",
                json.dumps(meta or {}),
                int(self.result_ttl_s),
                job_id,
                run or "",
                uuid.uuid4().hex,
            ],
        )
        return int(ended) == 1
