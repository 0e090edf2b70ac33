"""`CeleryJobQueue`: the service's `JobQueue` when API processes are stateless.

`submit` records the job and its request in Redis and sends a Celery task (the job id) to the queue
of the model it needs; any worker that loaded that model runs it and writes progress and the images
back to Redis, where any API replica reads them. Nothing about a job lives in the API process, so a
replica can die at any time. Every replica also runs a reaper (`recovery.py`) that requeues the jobs of
dead workers.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from sd3pose.distributed.celery_app import PRIORITY_FRONT, TASK_PREVIEW, make_celery, send_job
from sd3pose.distributed.config import (
    DEFAULT_RESTORE_INTERVAL_S,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    PREFIX,
    redacted_url,
    redis_client,
    workers_key,
)
from sd3pose.distributed.jobstore import QUEUED_GRACE_S, RedisJobStore
from sd3pose.distributed.recovery import Reaper, Recovery
from sd3pose.errors import Sd3PoseError
from sd3pose.jobs.contract import (
    JobInfo,
    JobNotRecordedError,
    JobStatus,
    NoWorkerAnsweredError,
    QueueFullError,
    StorageFullError,
    StoreUnavailableError,
)
from sd3pose.jobs.inputs import to_record
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult, PosePreview
from sd3pose.service.errors import ServiceError

log = logging.getLogger(__name__)

POLL_S = 0.02
PREVIEW_TIMEOUT_S = 60.0
PREVIEW_TTL_S = 120


def preview_key(preview_id: str) -> str:
    return f"{PREFIX}:preview:{preview_id}"


class CeleryJobQueue:
    def __init__(
        self,
        broker_url: str,
        queue: str,
        *,
        max_queue: int = 32,
        result_ttl_s: float = 3600.0,
        max_disk_bytes: int = 0,
        visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
        restore_interval_s: float = DEFAULT_RESTORE_INTERVAL_S,
        client: Any = None,
    ) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self.max_queue = max_queue
        self.max_disk_bytes = max_disk_bytes  # caps Redis's memory use (0: no cap)
        self.redis = client if client is not None else redis_client(broker_url)
        self.store = RedisJobStore(self.redis, result_ttl_s=result_ttl_s)
        self.celery = make_celery(
            broker_url, visibility_timeout_s=visibility_timeout_s, restore_interval_s=restore_interval_s
        )
        self.reaper = Reaper(Recovery(self.store, self._send_front))

    def _send_front(self, job_id: str, queue: str) -> None:
        send_job(self.celery, job_id, queue, front=True)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        log.info("jobs go to Celery queue %s on %s", self.queue, redacted_url(self.broker_url))
        self.reaper.start()

    def stop(self) -> None:
        self.reaper.stop()
        self.celery.close()
        self.redis.close()

    def live_workers(self) -> list[str]:
        """Workers on this queue whose listing has not expired (each renews it every heartbeat)."""
        now = time.time()
        self.redis.zremrangebyscore(workers_key(self.queue), "-inf", f"({now!r}")
        return [w.decode() for w in self.redis.zrangebyscore(workers_key(self.queue), now, "+inf")]

    def readiness(self) -> tuple[bool, str]:
        try:
            workers = self.live_workers()
        except Exception as exc:  # Redis down: not ready; the details (hosts) are for the log, not the public
            log.warning("readiness: cannot reach Redis at %s: %s", redacted_url(self.broker_url), exc)
            return False, "cannot reach the job store (Redis); the server log has the details"
        if not workers:
            return False, f"no worker serves this model yet (queue {self.queue}); start `sd3pose worker`"
        return True, f"{len(workers)} worker(s) ready on queue {self.queue}"

    # --- jobs ----------------------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        *,
        kind: str,
        key_id: str | None,
        reserved: float,
        image: bytes | None = None,
    ) -> JobInfo:
        job_id = uuid.uuid4().hex
        recorded_request, digest = to_record(request, image)
        # The request as stored: its image named by content hash (the bytes are kept once, beside it).
        stored = (digest, image) if digest is not None and image is not None else None
        recorded = recorded_request.model_dump_json(by_alias=True)
        try:
            self._check_storage(len(image or b"") + len(recorded))
        except (RedisError, OSError) as exc:  # nothing of the job exists yet
            log.error("could not read Redis's memory use for job %s: %s", job_id, exc)
            raise JobNotRecordedError(
                "the job store is unreachable; retry shortly, and tell the operator if this persists"
            ) from exc
        try:
            info = self.store.create(
                queue=self.queue,
                kind=kind,
                key_id=key_id,
                reserved=reserved,
                samples=request.samples,
                max_queue=self.max_queue,
                job_id=job_id,
                request_json=recorded,
                input_image=stored,
            )
        except (RedisError, OSError) as exc:  # the detail goes to the log
            log.error("could not record job %s in Redis: %s", job_id, exc)
            raise self._settle_unknown(job_id) from exc
        if info is None:
            raise QueueFullError(
                f"the queue is full ({self.max_queue} jobs waiting); retry after the Retry-After delay"
            )
        try:
            send_job(self.celery, info.id, self.queue)
        except Exception as exc:
            # Not delivered: end it (which refunds its credits) and tell the client; the detail is logged.
            log.error("could not send job %s to the broker: %s", info.id, exc)
            try:
                self.store.finish(
                    info.id, JobStatus.FAILED, error="the job broker is unreachable; retry shortly", error_code=500
                )
            except (RedisError, OSError) as settling:
                log.error(
                    "could not end job %s either (%s): it stays queued, unsent, until its wait of %g h runs out, "
                    "then ends FAILED and refunded",
                    info.id,
                    settling,
                    QUEUED_GRACE_S / 3600,
                )
            raise StoreUnavailableError(
                "the job broker is unreachable, so the job was not queued; retry shortly, and tell "
                "the operator if this persists"
            ) from exc
        return info

    def _check_storage(self, incoming: int) -> None:
        if not self.max_disk_bytes:
            return
        used = self.store.used_bytes()
        if used + incoming > self.max_disk_bytes:
            raise StorageFullError.at(used, self.max_disk_bytes)

    def storage_used(self) -> int:
        try:
            return self.store.used_bytes()
        except (RedisError, OSError) as exc:
            log.warning("storage: cannot reach Redis at %s: %s", redacted_url(self.broker_url), exc)
            raise StoreUnavailableError("cannot reach the job store (Redis); the server log has the details") from exc

    def _settle_unknown(self, job_id: str) -> Sd3PoseError:
        """After a failed create, whose script may have run with only its reply lost: a recorded job is
        ended and refunded here, atomically. The error to raise: JobNotRecordedError (the caller refunds)
        when none exists."""
        try:
            ended = self.store.finish(
                job_id,
                JobStatus.FAILED,
                error="the job store was unreachable while queuing this request; submit it again",
                error_code=500,
            )
        except (RedisError, OSError):
            # Still down: most likely nothing was recorded. (Were it recorded, its expiry would refund it
            # a second time; the alternative, keeping the credits, loses them in the likely case.)
            ended = False
        message = "the job store is unreachable; retry shortly, and tell the operator if this persists"
        return StoreUnavailableError(message) if ended else JobNotRecordedError(message)

    def get(self, job_id: str) -> JobInfo | None:
        return self.store.get(job_id)

    def wait(self, job_id: str, timeout_s: float) -> JobInfo | None:
        info = self.store.get(job_id)
        if info is None or info.done:
            return info
        if info.kind == "sync":
            self.store.touch_waiter(job_id)
            self.store.wait_done(job_id, timeout_s)
        else:  # async jobs push no wake-up (nobody blocks on them): poll
            deadline = time.monotonic() + timeout_s
            while not info.done and time.monotonic() < deadline:
                time.sleep(POLL_S * 5)
                info = self.store.get(job_id) or info
        return self.store.get(job_id)

    def result(self, job_id: str) -> GenerationResult | None:
        result = self.store.result(job_id)
        info = self.store.get(job_id) if result is not None else None
        if info is not None and info.kind == "sync":
            self.store.forget(job_id)  # delivered to its only reader
        return result

    def cancel(self, job_id: str, reason: str) -> None:
        self.store.cancel(job_id, reason)

    def depth(self) -> int:
        try:
            return self.store.depth(self.queue)
        except (RedisError, OSError) as exc:
            log.warning("queue depth: cannot reach Redis at %s: %s", redacted_url(self.broker_url), exc)
            raise StoreUnavailableError("cannot reach the job store (Redis); the server log has the details") from exc

    def preview_pose(self, request: GenerationRequest) -> PosePreview:
        """Run the pose step on a worker (API processes load no models) and wait for its answer."""
        preview_id = uuid.uuid4().hex
        # Expires with our wait: once we have given up, a worker must not run it for nobody.
        self.celery.send_task(
            TASK_PREVIEW,
            args=[preview_id, request.model_dump_json(by_alias=True)],
            queue=self.queue,
            task_id=f"preview-{preview_id}",
            expires=PREVIEW_TIMEOUT_S,
            priority=PRIORITY_FRONT,  # a user is watching: ahead of the generation jobs
        )
        deadline = time.monotonic() + PREVIEW_TIMEOUT_S
        while time.monotonic() < deadline:
            raw = self.redis.hgetall(preview_key(preview_id))
            if raw:
                self.redis.delete(preview_key(preview_id))
                if b"error" in raw:
                    raise ServiceError(raw[b"error"].decode(), int(raw[b"error_code"]))
                meta = json.loads(raw[b"meta"])
                return PosePreview(
                    pose_png=raw[b"pose"],
                    keypoints=meta["keypoints"],
                    width=meta["width"],
                    height=meta["height"],
                    detected=meta["detected"],
                )
            time.sleep(POLL_S * 5)
        raise NoWorkerAnsweredError(
            f"no worker answered the pose preview within {PREVIEW_TIMEOUT_S:g} s; the workers are "
            "busy or down: retry later"
        )
