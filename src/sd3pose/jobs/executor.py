"""The one place a queued job is run and its outcome recorded, for every kind of worker.

The embedded worker threads and the Celery worker are loops around `execute` (one job) and
`execute_batch` (several, merged into one model batch by the generator). Cancellation has one rule:
the generator stops early when asked (`cancelled`), and the job store decides, atomically, how a job
that was cancelled ends: a completion that meets a recorded cancel ends FAILED (504) and refunded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sd3pose.errors import GenerationCancelledError, Sd3PoseError
from sd3pose.jobs.contract import CANCELLED_CODE, GeneratorLike, JobStatus
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedJob:
    id: str
    request: GenerationRequest


class JobSink(Protocol):
    """The job store as a worker sees it.

    `complete` is True when it ended the job COMPLETED; False when a cancel recorded first ended it
    FAILED instead, or the job had ended already (an expiry, another run of the same job). `fail` is
    True when it ended the job FAILED, False when the job had ended already.
    """

    def report_step(self, job_id: str, step: int, total: int) -> None: ...
    def cancel_reason(self, job_id: str) -> str | None: ...
    def complete(self, job_id: str, result: GenerationResult) -> bool: ...
    def fail(self, job_id: str, error: str, error_code: int) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    """How a run ended its job (None: otherwise, e.g. by a cancel or another run) and what it produced."""

    status: JobStatus | None
    result: GenerationResult | None = None


def execute(generator: GeneratorLike, job: QueuedJob, sink: JobSink) -> Outcome:
    """Run one job and record its outcome; never raises."""
    return execute_batch(generator, [job], sink)[0]


def execute_batch(generator: GeneratorLike, jobs: list[QueuedJob], sink: JobSink) -> list[Outcome]:
    """Run these jobs and record each one's outcome; never raises.

    With several jobs and a generator that has `run_batch` (pipeline.Generator), they run as one
    dynamic batch, each with its own images, progress, cancellation and error; otherwise one by one.
    """
    outcomes: dict[str, Outcome] = {}
    runnable = []
    for job in jobs:
        dropped = _drop_if_cancelled(job, sink)
        if dropped is None:
            runnable.append(job)
        else:
            outcomes[job.id] = dropped
    run_batch = getattr(generator, "run_batch", None)
    if len(runnable) > 1 and run_batch is not None:
        outcomes.update(_run_together(run_batch, runnable, sink))
    else:
        outcomes.update((job.id, _run_alone(generator, job, sink)) for job in runnable)
    return [outcomes[job.id] for job in jobs]


def _run_alone(generator: GeneratorLike, job: QueuedJob, sink: JobSink) -> Outcome:
    started = time.perf_counter()
    request = job.request
    log.info("job %s: started (%d step(s), %d sample(s))", job.id, request.num_inference_steps, request.samples)
    try:
        produced: GenerationResult | Exception = generator.run(
            request, on_step=_progress(sink, job.id), cancelled=_cancelled(sink, job.id)
        )
    except Exception as exc:
        produced = exc
    return record(job, produced, sink, started)


def _run_together(run_batch: Callable, jobs: list[QueuedJob], sink: JobSink) -> dict[str, Outcome]:
    started = time.perf_counter()
    log.info("jobs %s: started as one batch", ", ".join(job.id for job in jobs))
    try:
        produced = run_batch(
            [job.request for job in jobs],
            on_step=[_progress(sink, job.id) for job in jobs],
            cancelled=[_cancelled(sink, job.id) for job in jobs],
        )
    except Exception as exc:  # run_batch reports per job; this is only a safety net
        log.exception("batch of %d jobs: unexpected error", len(jobs))
        produced = [exc] * len(jobs)
    return {job.id: record(job, outcome, sink, started) for job, outcome in zip(jobs, produced, strict=True)}


def _progress(sink: JobSink, job_id: str) -> Callable[[int, int], None]:
    return lambda step, total: sink.report_step(job_id, step, total)


def _cancelled(sink: JobSink, job_id: str) -> Callable[[], bool]:
    return lambda: sink.cancel_reason(job_id) is not None


def _drop_if_cancelled(job: QueuedJob, sink: JobSink) -> Outcome | None:
    """A job cancelled before it ran is ended without running it."""
    try:
        reason = sink.cancel_reason(job.id)
        if reason is None:
            return None
        log.info("job %s: dropped before it ran (%s)", job.id, reason)
        return _failed(sink.fail(job.id, reason, CANCELLED_CODE))
    except Exception as exc:
        return record(job, exc, sink, time.perf_counter())


def record(job: QueuedJob, produced: GenerationResult | Exception, sink: JobSink, started: float) -> Outcome:
    """Record what a run produced; never raises. A store error fails the job where it can, so the
    other jobs of a batch still get their outcomes."""
    try:
        return _record(job, produced, sink, started)
    except Exception:
        log.exception("job %s: could not record its outcome", job.id)
    try:
        error = f"the server could not store the outcome of this request (request id {job.id}); submit it again"
        return _failed(sink.fail(job.id, error, 500))
    except Exception:  # the store itself is failing: its own recovery (restart, expiry) settles the job
        log.exception("job %s: could not record its failure either", job.id)
        return Outcome(None)


def _record(job: QueuedJob, produced: GenerationResult | Exception, sink: JobSink, started: float) -> Outcome:
    if not isinstance(produced, Exception):
        if sink.complete(job.id, produced):
            log.info("job %s: completed in %.2f s", job.id, time.perf_counter() - started)
            return Outcome(JobStatus.COMPLETED, produced)
        log.info("job %s: ended otherwise (cancelled, or by another run); this result is dropped", job.id)
        return Outcome(None, produced)
    if isinstance(produced, GenerationCancelledError):
        reason = sink.cancel_reason(job.id) or produced.message
        log.info("job %s: cancelled (%s)", job.id, reason)
        return _failed(sink.fail(job.id, reason, produced.status_code))
    if isinstance(produced, Sd3PoseError):
        log.info("job %s: failed with %d: %s", job.id, produced.status_code, produced.message)
        return _failed(sink.fail(job.id, produced.message, produced.status_code))
    log.error("job %s: unexpected error", job.id, exc_info=produced)
    error = f"internal server error while generating (request id {job.id}); the server logged the details"
    return _failed(sink.fail(job.id, error, 500))


def _failed(ended: bool) -> Outcome:
    return Outcome(JobStatus.FAILED if ended else None)
