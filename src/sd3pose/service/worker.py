"""The in-process worker: loads one Generator on its device, then runs queued jobs until stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sd3pose.errors import GenerationCancelledError, Sd3PoseError
from sd3pose.request import GenerationRequest
from sd3pose.service.embedded_queue import GeneratorLike

if TYPE_CHECKING:
    from sd3pose.service.embedded_queue import EmbeddedJobQueue

log = logging.getLogger(__name__)

# Jobs taken per loop turn: queued jobs are handed to the generator's `run_batch` together, which
# merges compatible ones (same size, steps, sampler, scheduler) into one model batch.
MAX_JOBS_PER_TURN = 4


class Worker:
    def __init__(
        self, queue: EmbeddedJobQueue, factory: Callable[[str | None], GeneratorLike], device: str | None
    ) -> None:
        self.queue = queue
        self.factory = factory
        self.device = device
        self.generator: GeneratorLike | None = None
        self.load_error: str | None = None

    def loop(self) -> None:
        name = self.device or "default device"
        log.info("worker on %s: loading models", name)
        start = time.perf_counter()
        try:
            self.generator = self.factory(self.device)
        except Exception as exc:
            self.load_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.exception("worker on %s: loading models failed; jobs stay queued", name)
            return
        log.info("worker on %s: ready after %.1f s", name, time.perf_counter() - start)
        while not self.queue.stopping:
            try:
                jobs = self.queue.take(jobs_per_turn(self.queue))
                if jobs:
                    run_jobs(self.queue, self.generator, jobs)
            except Exception:  # a failing job store must not end the worker: it would stop taking jobs for good
                log.exception("worker on %s: unexpected error; carrying on in a second", name)
                time.sleep(1.0)


def jobs_per_turn(queue: EmbeddedJobQueue) -> int:
    """MAX_JOBS_PER_TURN with one device; with several, an equal share, so a burst of jobs spreads
    over the devices instead of one device batching them while the others idle."""
    devices = len(getattr(queue, "_devices", None) or [None])
    return max(1, MAX_JOBS_PER_TURN // devices)


def run_jobs(queue: EmbeddedJobQueue, generator: GeneratorLike, jobs: list[tuple[str, GenerationRequest]]) -> None:
    """Run these jobs and record each one's outcome; never raises.

    Several jobs and a generator with `run_batch` (pipeline.Generator): one dynamic batch, each job
    still gets its own images, progress, cancellation and error. Otherwise one job after another.
    """
    run_batch = getattr(generator, "run_batch", None)
    if len(jobs) < 2 or run_batch is None:
        for job_id, request in jobs:
            _run_one(queue, generator, job_id, request)
        return
    log.info("jobs %s: started as one batch", ", ".join(job_id for job_id, _ in jobs))
    try:
        outcomes = run_batch(
            [request for _, request in jobs],
            on_step=[lambda step, total, j=job_id: queue.report_step(j, step, total) for job_id, _ in jobs],
            cancelled=[lambda j=job_id: queue.cancel_reason(j) is not None for job_id, _ in jobs],
        )
    except Exception as exc:  # run_batch reports per job; this is only a safety net
        log.exception("batch of %d jobs: unexpected error", len(jobs))
        outcomes = [exc] * len(jobs)
    for (job_id, request), outcome in zip(jobs, outcomes, strict=True):
        _run_one(queue, _Finished(outcome), job_id, request)


class _Finished:
    """Stands in for the generator so `_run_one` records an outcome a batch already computed."""

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    def run(self, request: GenerationRequest, **_: object) -> object:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _run_one(queue: EmbeddedJobQueue, generator: GeneratorLike, job_id: str, request: GenerationRequest) -> None:
    """Run one job and record its outcome. A job-store error (a full disk, a locked database) ends this
    job as failed where it can, and never escapes: the other jobs of a batch still get theirs."""
    try:
        _run_and_record(queue, generator, job_id, request)
    except Exception:
        log.exception("job %s: could not record its outcome", job_id)
        try:
            queue.fail(
                job_id,
                f"the server could not store the outcome of this request (request id {job_id}); submit it again",
                500,
            )
        except Exception:  # the store itself is failing: the restart recovery fails and refunds it
            log.exception("job %s: could not record its failure either", job_id)


def _run_and_record(queue: EmbeddedJobQueue, generator: GeneratorLike, job_id: str, request: GenerationRequest) -> None:
    start = time.perf_counter()
    log.info("job %s: started (%d step(s), %d sample(s))", job_id, request.num_inference_steps, request.samples)
    try:
        result = generator.run(
            request,
            on_step=lambda step, total: queue.report_step(job_id, step, total),
            cancelled=lambda: queue.cancel_reason(job_id) is not None,
        )
    except GenerationCancelledError as exc:
        reason = queue.cancel_reason(job_id) or exc.message
        log.info("job %s: cancelled (%s)", job_id, reason)
        queue.fail(job_id, reason, exc.status_code)
        return
    except Sd3PoseError as exc:
        log.info("job %s: failed with %d: %s", job_id, exc.status_code, exc.message)
        queue.fail(job_id, exc.message, exc.status_code)
        return
    except Exception:
        log.exception("job %s: unexpected error", job_id)
        queue.fail(
            job_id, f"internal server error while generating (request id {job_id}); the server logged the details", 500
        )
        return
    reason = queue.cancel_reason(job_id)
    if reason is not None:  # finished anyway, but nobody will receive it: do not charge for it
        log.info("job %s: finished after it was cancelled (%s); result discarded", job_id, reason)
        queue.fail(job_id, reason, GenerationCancelledError.status_code)
        return
    queue.complete(job_id, result)
    log.info("job %s: completed in %.2f s", job_id, time.perf_counter() - start)
