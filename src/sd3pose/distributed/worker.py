"""`sd3pose worker`: one process per GPU that loads the models once and runs jobs from its model's queue.

The Celery worker uses the solo pool: tasks run in this very process, one at a time, on the models
loaded at start (no fork per task, nothing reloaded). With late acknowledgement and prefetch 1, the
job a worker is running is the only message it holds, and it stays unacknowledged until the job has
ended; if the process dies, Redis gives the message to another worker after the visibility timeout.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd3pose.distributed.celery_app import TASK_GENERATE, TASK_PREVIEW, make_celery
from sd3pose.distributed.config import (
    DEFAULT_RESTORE_INTERVAL_S,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    HEARTBEAT_S,
    queue_name,
    redis_client,
)
from sd3pose.distributed.jobstore import RedisJobStore
from sd3pose.distributed.queue import PREVIEW_TTL_S, preview_key, workers_key
from sd3pose.errors import GenerationCancelledError, Sd3PoseError
from sd3pose.request import GenerationRequest
from sd3pose.service.embedded_queue import JobStatus
from sd3pose.service.metrics import JobMetrics

log = logging.getLogger(__name__)

# Requests were validated by the API (with its own samples cap); the worker only re-reads them.
_NO_CAP = {"max_samples": 1 << 30}


@dataclass
class WorkerOptions:
    broker_url: str
    model: str | None = None
    controlnet: str | None = None
    device: str | None = None
    dtype: str | None = None
    use_t5: bool = True
    compile: bool = False
    data_dir: Path = Path("var")
    name: str | None = None
    threads: int | None = None
    allow_private_urls: bool = False
    result_ttl_s: float = 3600.0
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S
    restore_interval_s: float = DEFAULT_RESTORE_INTERVAL_S
    metrics_port: int | None = None  # Prometheus /metrics of this worker (API replicas see no job timings)
    metrics_host: str = "127.0.0.1"
    queue: str = field(init=False)

    def __post_init__(self) -> None:
        self.queue = queue_name(self.model, self.controlnet, self.use_t5)
        if self.name is None:
            self.name = f"{socket.gethostname()}-{self.device or 'default'}-{os.getpid()}"


class JobRunner:
    """Runs one job from its task message and records the outcome in Redis; never raises."""

    def __init__(self, generator: Any, store: RedisJobStore, name: str, metrics: JobMetrics | None = None) -> None:
        self.generator = generator
        self.store = store
        self.name = name
        self.metrics = metrics or JobMetrics()

    def run(self, job_id: str, request_json: str) -> None:
        status = self._run(job_id, request_json)
        if status is not None:
            self.metrics.jobs.labels(status.value).inc()

    def _run(self, job_id: str, request_json: str) -> JobStatus | None:
        """Run the job; the status this worker ended it with (None: skipped, or another copy ended it)."""
        started = self.store.start(job_id, self.name)
        if started is None:
            log.info("job %s: already ended (a redelivered copy or an expired job); skipped", job_id)
            return None
        if started.redelivered:
            log.warning("job %s: redelivered (the worker running it stopped); running it again", job_id)
        request = GenerationRequest.model_validate_json(request_json, context=_NO_CAP)
        reason = self.store.cancel_reason(job_id)
        if reason is not None:
            log.info("job %s: dropped before it ran (%s)", job_id, reason)
            self.store.finish(job_id, JobStatus.FAILED, error=reason, error_code=GenerationCancelledError.status_code)
            return JobStatus.FAILED
        start = time.perf_counter()
        log.info("job %s: started (%d step(s), %d sample(s))", job_id, request.num_inference_steps, request.samples)
        try:
            output = self.generator.run(
                request,
                on_step=lambda step, total: self.store.report_step(job_id, step, total),
                cancelled=lambda: self.store.cancel_reason(job_id) is not None,
            )
        except GenerationCancelledError as exc:
            reason = self.store.cancel_reason(job_id) or exc.message
            log.info("job %s: cancelled (%s)", job_id, reason)
            self.store.finish(job_id, JobStatus.FAILED, error=reason, error_code=exc.status_code)
            return JobStatus.FAILED
        except Sd3PoseError as exc:
            log.info("job %s: failed with %d: %s", job_id, exc.status_code, exc.message)
            self.store.finish(job_id, JobStatus.FAILED, error=exc.message, error_code=exc.status_code)
            return JobStatus.FAILED
        except Exception:
            log.exception("job %s: unexpected error", job_id)
            self.store.finish(
                job_id,
                JobStatus.FAILED,
                error=f"internal server error while generating (request id {job_id}); the worker logged the details",
                error_code=500,
            )
            return JobStatus.FAILED
        reason = self.store.cancel_reason(job_id)
        if reason is not None:  # finished, but nobody will receive it: do not charge for it
            log.info("job %s: finished after it was cancelled (%s); result discarded", job_id, reason)
            self.store.finish(job_id, JobStatus.FAILED, error=reason, error_code=GenerationCancelledError.status_code)
            return JobStatus.FAILED
        if not self.store.complete(job_id, output):
            log.info("job %s: ended meanwhile (cancelled, or by another worker); this result is dropped", job_id)
            return None
        self.metrics.observe_generation(output.timings, len(output.images))
        log.info("job %s: completed in %.2f s", job_id, time.perf_counter() - start)
        return JobStatus.COMPLETED

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


class Heartbeat:
    """Tells API replicas that this worker is up and which queue it serves (GET /ready reads it)."""

    def __init__(self, client: Any, queue: str, name: str) -> None:
        self.client, self.queue, self.name = client, queue, name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sd3pose-heartbeat", daemon=True)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            self.client.zrem(workers_key(self.queue), self.name)
        except Exception:
            log.debug("could not remove the heartbeat", exc_info=True)

    def _beat(self) -> None:
        self.client.zadd(workers_key(self.queue), {self.name: time.time()})

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception as exc:  # Redis restarting: keep trying
                log.warning("heartbeat to Redis failed (%s); retrying", exc)


def load_generator(options: WorkerOptions) -> Any:
    from sd3pose.images import InputLimits
    from sd3pose.pipeline import EngineSettings, Generator

    return Generator.create(
        EngineSettings(
            model=options.model,
            controlnet=options.controlnet,
            device=options.device,
            dtype=options.dtype,
            use_t5=options.use_t5,
            compile=options.compile,
            data_dir=Path(options.data_dir),
            input_limits=InputLimits(allow_private_urls=options.allow_private_urls),
        ),
        warm_up=True,
    )


def run_worker(options: WorkerOptions, generator: Any = None) -> int:
    """Load the models, then consume this model's queue until SIGTERM/SIGINT (finishes the running job)."""
    import warnings

    from celery.exceptions import CPendingDeprecationWarning

    # We keep running jobs across a broker reconnect on purpose (worker_cancel_long_running_tasks_on_connection_loss
    # = False): the solo pool could not interrupt them anyway, and a job whose ack is lost is dropped unrun when
    # redelivered (its record already ended). Celery warns about that choice on every reconnect.
    warnings.filterwarnings("ignore", category=CPendingDeprecationWarning)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    client = redis_client(options.broker_url)
    client.ping()  # fail fast with a clear error when Redis is unreachable
    log.info("worker %s: loading models for queue %s", options.name, options.queue)
    start = time.perf_counter()
    generator = generator if generator is not None else load_generator(options)
    log.info("worker %s: models loaded in %.1f s", options.name, time.perf_counter() - start)

    metrics = JobMetrics()
    if options.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(options.metrics_port, addr=options.metrics_host, registry=metrics.registry)
        log.info("worker %s: metrics at http://%s:%d/metrics", options.name, options.metrics_host, options.metrics_port)
    store = RedisJobStore(client, result_ttl_s=options.result_ttl_s)
    runner = JobRunner(generator, store, options.name or "", metrics)
    app = make_celery(
        options.broker_url,
        visibility_timeout_s=options.visibility_timeout_s,
        restore_interval_s=options.restore_interval_s,
    )
    app.task(name=TASK_GENERATE, ignore_result=True, acks_late=True)(runner.run)
    app.task(name=TASK_PREVIEW, ignore_result=True, acks_late=False)(runner.preview)

    heartbeat = Heartbeat(client, options.queue, options.name or "")
    worker = app.Worker(
        hostname=f"sd3pose-{os.getpid()}@{socket.gethostname()}",
        pool="solo",
        concurrency=1,
        queues=[options.queue],
        without_gossip=True,
        without_mingle=True,
        optimization="fair",
        loglevel="INFO",
        quiet=True,
    )
    heartbeat.start()
    log.info("worker %s: ready, consuming %s", options.name, options.queue)
    try:
        worker.start()
    finally:
        heartbeat.stop()
        client.close()
    return int(worker.exitcode or 0)
