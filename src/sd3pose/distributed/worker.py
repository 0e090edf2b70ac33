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
from collections.abc import Callable
from typing import Any

from sd3pose.distributed.celery_app import TASK_GENERATE, TASK_PREVIEW, make_celery
from sd3pose.distributed.config import HEARTBEAT_S, connect, queue_name
from sd3pose.distributed.jobstore import RedisJobStore
from sd3pose.distributed.queue import PREVIEW_TTL_S, preview_key, workers_key
from sd3pose.errors import Sd3PoseError
from sd3pose.jobs.contract import GeneratorLike, JobStatus
from sd3pose.jobs.executor import QueuedJob, execute
from sd3pose.jobs.inputs import referenced_input, with_image
from sd3pose.request import GenerationRequest
from sd3pose.service.metrics import JobMetrics
from sd3pose.settings import EngineSettings, WorkerSettings

log = logging.getLogger(__name__)

# Requests were validated by the API (with its own samples cap); the worker only re-reads them.
_NO_CAP = {"max_samples": 1 << 30}


class JobRunner:
    """Runs the jobs of task messages through the shared executor, with Redis as the job store."""

    def __init__(self, generator: Any, store: RedisJobStore, name: str, metrics: JobMetrics | None = None) -> None:
        self.generator = generator
        self.store = store
        self.name = name
        self.metrics = metrics or JobMetrics()

    def run(self, job_id: str, request_json: str) -> None:
        """One task: start the job (a copy of a job that ended is skipped), run it, count its outcome."""
        started = self.store.start(job_id, self.name)
        if started is None:
            log.info("job %s: already ended (a redelivered copy or an expired job); skipped", job_id)
            return
        if started.redelivered:
            log.warning("job %s: redelivered (the worker running it stopped); running it again", job_id)
        request = GenerationRequest.model_validate_json(request_json, context=_NO_CAP)
        digest = referenced_input(request)
        if digest is not None:
            data = self.store.input_data(digest)
            if data is None:
                log.error("job %s: its input %s is gone from Redis", job_id, digest)
                self.store.fail(job_id, "the server lost this request's input image; submit it again", 500)
                return
            request = with_image(request, data)
        outcome = execute(self.generator, QueuedJob(job_id, request), self.store)
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


def worker_name(device: str | None) -> str:
    return f"{socket.gethostname()}-{device or 'default'}-{os.getpid()}"


def run_worker(settings: WorkerSettings, engine: EngineSettings, load: Callable[[], GeneratorLike]) -> int:
    """Connect to Redis, `load` the models, then consume the queue of `engine`'s model until SIGTERM or
    SIGINT (the running job finishes first)."""
    import warnings

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
    name = settings.name or worker_name(engine.device)
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
    runner = JobRunner(generator, store, name, metrics)
    app = make_celery(
        settings.broker,
        visibility_timeout_s=settings.visibility_timeout_s,
        restore_interval_s=settings.restore_interval_s,
    )
    app.task(name=TASK_GENERATE, ignore_result=True, acks_late=True)(runner.run)
    app.task(name=TASK_PREVIEW, ignore_result=True, acks_late=False)(runner.preview)

    heartbeat = Heartbeat(client, queue, name)
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
    log.info("worker %s: ready, consuming %s", name, queue)
    try:
        worker.start()
    finally:
        heartbeat.stop()
        client.close()
    return int(worker.exitcode or 0)
