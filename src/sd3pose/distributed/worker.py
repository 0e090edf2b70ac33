"""`sd3pose worker`: one process per GPU that loads the models once and runs jobs from its model's queue.

The Celery worker uses the solo pool: tasks run in this very process, one at a time, on the models
loaded at start (no fork per task, nothing reloaded). With late acknowledgement and prefetch 1, the
job a worker is running is the only message it holds. The worker's lease (`lease.py`) tells everyone
it is alive; if the process dies, a reaper requeues its job within seconds of the lease lapsing
(`recovery.py`). On SIGTERM the running job may finish within the grace period; then it is handed
back to the queue and the worker exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject
from pydantic import ValidationError
from redis.exceptions import RedisError

from sd3pose.distributed.celery_app import TASK_GENERATE, TASK_PREVIEW, make_celery, send_job
from sd3pose.distributed.config import connect, queue_name, redis_client
from sd3pose.distributed.jobstore import RedisJobStore
from sd3pose.distributed.lease import Heartbeat, WorkerLease
from sd3pose.distributed.queue import PREVIEW_TTL_S, preview_key
from sd3pose.distributed.recovery import Reaper, Recovery
from sd3pose.errors import Sd3PoseError
from sd3pose.jobs.contract import GeneratorLike, JobStatus
from sd3pose.jobs.executor import QueuedJob, execute
from sd3pose.jobs.inputs import referenced_input, with_image
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult
from sd3pose.service.metrics import JobMetrics
from sd3pose.settings import EngineSettings, WorkerSettings

log = logging.getLogger(__name__)

# Requests were validated by the API (with its own samples cap); the worker only re-reads them.
_NO_CAP = {"max_samples": 1 << 30}
# Why a run stops when its worker is shutting down.
HANDING_BACK = "this worker is stopping; the job goes back to the queue"


class RunSink:
    """The job store as one run of one job sees it (the executor's JobSink).

    It ends the job only while this run is the job's current one. Once the worker is stopping it asks the
    run to stop, and gives the job back to the queue instead of failing it.
    """

    def __init__(
        self, store: RedisJobStore, run: str, stopping: threading.Event, recovery: Recovery | None = None
    ) -> None:
        self.store, self.run, self.stopping, self.recovery = store, run, stopping, recovery
        self.handing_back = False
        self.hand_back_failed = False  # then the task's message goes back to the broker instead

    def report_step(self, job_id: str, step: int, total: int) -> None:
        self.store.report_step(job_id, step, total)

    def cancel_reason(self, job_id: str) -> str | None:
        if self.stopping.is_set() and self.recovery is not None:
            self.handing_back = True
            return HANDING_BACK
        return self.store.cancel_reason(job_id, run=self.run)

    def complete(self, job_id: str, result: GenerationResult) -> bool:
        return self.store.complete(job_id, result, run=self.run)

    def fail(self, job_id: str, error: str, error_code: int) -> bool:
        if self.handing_back:
            self.hand_back(job_id)
            return False
        return self.store.fail(job_id, error, error_code, run=self.run)

    def hand_back(self, job_id: str) -> None:
        """Give the job back to its queue, ahead of the waiting jobs."""
        assert self.recovery is not None
        try:
            if self.recovery.hand_back(job_id, self.run):
                log.info("job %s: handed back to the queue (this worker is stopping)", job_id)
        except Exception:
            log.exception("job %s: could not hand it back; its task message goes back to the broker", job_id)
            self.hand_back_failed = True


class JobRunner:
    """Runs the jobs of task messages through the shared executor, with Redis as the job store."""

    def __init__(
        self,
        generator: Any,
        store: RedisJobStore,
        lease: WorkerLease,
        metrics: JobMetrics | None = None,
        recovery: Recovery | None = None,
    ) -> None:
        self.generator = generator
        self.store = store
        self.lease = lease
        self.metrics = metrics or JobMetrics()
        self.recovery = recovery
        # Set once a stopping worker's grace has run out: the running job is handed back.
        self.stopping = threading.Event()

    def run(self, job_id: str, request_json: str | None = None) -> None:
        """One task: start a run of the job (a copy of a job that ended, or that a live worker runs, is
        dropped), run it, count its outcome. Messages carry the job id; older ones the request too."""
        self.lease.job = job_id  # before the start: a lease recreated meanwhile names this job
        try:
            started = self.store.start(
                job_id, self.lease.name, instance=self.lease.instance, lease_ttl_s=self.lease.ttl_s
            )
            if started is None:
                log.info("job %s: not run here (it ended, or another worker runs it)", job_id)
                return
            if started.redelivered:
                log.warning("job %s: started again (a worker that ran it before died)", job_id)
            self._run(
                job_id,
                request_json or self.store.request(job_id),
                RunSink(self.store, started.run, self.stopping, self.recovery),
            )
        finally:
            self.lease.job = None
            with contextlib.suppress(RedisError, OSError):  # the lease then names an ended job: harmless
                self.lease.release_job(self.store.redis)

    def _run(self, job_id: str, request_json: str | None, sink: RunSink) -> None:
        try:
            request = GenerationRequest.model_validate_json(request_json or "", context=_NO_CAP)
        except ValidationError:
            log.error("job %s: its stored request is missing or unreadable; failing it", job_id)
            sink.fail(job_id, f"the server lost the request of job {job_id}; submit it again", 500)
            return
        digest = referenced_input(request)
        if digest is not None:
            data = self.store.input_data(digest)
            if data is None:
                log.error("job %s: its input %s is gone from Redis", job_id, digest)
                sink.fail(job_id, "the server lost this request's input image; submit it again", 500)
                return
            request = with_image(request, data)
        try:
            outcome = execute(self.generator, QueuedJob(job_id, request), sink)
        except BaseException:  # a forced stop (SystemExit, KeyboardInterrupt) in the middle of the run
            if self.recovery is not None:
                sink.hand_back(job_id)
            raise
        if sink.hand_back_failed:  # not acknowledged: Celery returns the message to the queue
            raise Reject(f"job {job_id} could not be handed back", requeue=True)
        if outcome.status is not None:
            self.metrics.jobs.labels(outcome.status.value).inc()
        if outcome.status is JobStatus.COMPLETED and outcome.result is not None:
            self.metrics.observe_generation(outcome.result.timings, len(outcome.result.images))

    def preview(self, preview_id: str, request_json: str) -> None:
        key = preview_key(preview_id)
        try:
            request = GenerationRequest.model_validate_json(request_json, context=_NO_CAP)
            preview = self.generator.preview_pose(request)
            answer: dict[str, Any] = {
                "pose": preview.pose_png,
                "meta": json.dumps(
                    {
                        "keypoints": preview.keypoints,
                        "width": preview.width,
                        "height": preview.height,
                        "detected": preview.detected,
                    }
                ),
            }
        except Sd3PoseError as exc:
            answer = {"error": exc.message, "error_code": exc.status_code}
        except Exception as exc:
            log.exception("pose preview %s: unexpected error", preview_id)
            answer = {"error": f"internal server error in the pose preview: {type(exc).__name__}", "error_code": 500}
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=answer)
        pipe.expire(key, PREVIEW_TTL_S)
        pipe.execute()


def worker_name(device: str | None) -> str:
    return f"{socket.gethostname()}-{device or 'default'}-{os.getpid()}"


def run_worker(settings: WorkerSettings, engine: EngineSettings, load: Callable[[], GeneratorLike]) -> int:
    """Connect to Redis, `load` the models, then consume the queue of `engine`'s model until SIGTERM or
    SIGINT: the running job may finish within `settings.grace_s`, then it is handed back."""
    import warnings

    from celery import signals
    from celery.exceptions import CPendingDeprecationWarning

    # We keep running jobs across a broker reconnect on purpose (worker_cancel_long_running_tasks_on_connection_loss
    # = False): the solo pool could not interrupt them anyway, and a job whose ack is lost is dropped unrun when
    # redelivered (its record already ended). Celery warns about that choice on every reconnect.
    warnings.filterwarnings("ignore", category=CPendingDeprecationWarning)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    assert settings.broker is not None
    queue = queue_name(engine.model, engine.controlnet, engine.use_t5)
    lease = WorkerLease(settings.name or worker_name(engine.device), settings.heartbeat_s)
    name = lease.name
    client = connect(settings.broker)  # fail fast with a clear error when Redis is unreachable
    log.info("worker %s: loading models for queue %s", name, queue)
    start = time.perf_counter()
    generator = load()
    log.info("worker %s: models loaded in %.1f s", name, time.perf_counter() - start)

    metrics = JobMetrics()
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
        log.info("worker %s: metrics at http://%s:%d/metrics", name, settings.metrics_host, settings.metrics_port)
    store = RedisJobStore(client, result_ttl_s=settings.result_ttl_s)
    app = make_celery(
        settings.broker,
        visibility_timeout_s=settings.visibility_timeout_s,
        restore_interval_s=settings.restore_interval_s,
    )
    recovery = Recovery(store, lambda job_id, job_queue: send_job(app, job_id, job_queue, front=True))
    runner = JobRunner(generator, store, lease, metrics, recovery)
    app.task(name=TASK_GENERATE, ignore_result=True, acks_late=True)(runner.run)
    app.task(name=TASK_PREVIEW, ignore_result=True, acks_late=False)(runner.preview)

    def on_shutting_down(how: str = "Warm", **_: Any) -> None:
        # Celery stops taking messages and waits for the running task; past the grace, the run is asked to
        # stop (at its next step) and its job goes back to the queue. A second signal (cold) does that now.
        grace = 0.0 if how == "Cold" else settings.grace_s
        log.info("worker %s: stopping; a running job may finish within %g s, then it is handed back", name, grace)
        timer = threading.Timer(grace, runner.stopping.set)
        timer.daemon = True
        timer.start()

    signals.worker_shutting_down.connect(on_shutting_down, weak=False)
    # Its own connection: renewals never queue behind the job's Redis traffic.
    heartbeat_client = redis_client(settings.broker)
    heartbeat = Heartbeat(heartbeat_client, lease, queue)
    reaper = Reaper(recovery)
    worker = app.Worker(
        hostname=f"sd3pose-{os.getpid()}@{socket.gethostname()}",
        pool="solo",
        concurrency=1,
        queues=[queue],
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
        loglevel="INFO",
        quiet=True,
    )
    heartbeat.start()
    reaper.start()
    log.info(
        "worker %s: ready, consuming %s (lease renewed every %g s, presumed dead after %g s)",
        name,
        queue,
        lease.heartbeat_s,
        lease.ttl_s,
    )
    try:
        worker.start()
    finally:
        reaper.stop()
        heartbeat.stop()
        heartbeat_client.close()
        client.close()
    log.info("worker %s: stopped", name)
    return int(worker.exitcode or 0)
