"""The embedded worker: one thread per device loads a Generator, then runs queued jobs until stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from sd3pose.jobs.contract import GeneratorLike
from sd3pose.jobs.executor import JobSink, QueuedJob, execute_batch
from sd3pose.request import GenerationRequest

log = logging.getLogger(__name__)

# Jobs taken per loop turn: queued jobs are handed to the generator's `run_batch` together, which
# merges compatible ones (same size, steps, sampler, scheduler) into one model batch.
MAX_JOBS_PER_TURN = 4


class WorkSource(JobSink, Protocol):
    """The embedded queue as its workers see it."""

    devices: list[str | None]

    @property
    def stopping(self) -> bool: ...

    def take(self, max_jobs: int = 1, timeout_s: float = 0.5) -> list[tuple[str, GenerationRequest]]: ...


class Worker:
    def __init__(self, queue: WorkSource, factory: Callable[[str | None], GeneratorLike], device: str | None) -> None:
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


def jobs_per_turn(queue: WorkSource) -> int:
    """MAX_JOBS_PER_TURN with one device; with several, an equal share, so a burst of jobs spreads
    over the devices instead of one device batching them while the others idle."""
    return max(1, MAX_JOBS_PER_TURN // len(queue.devices))


def run_jobs(queue: WorkSource, generator: GeneratorLike, jobs: list[tuple[str, GenerationRequest]]) -> None:
    """Run these taken jobs (as one dynamic batch where the generator can) and record each outcome."""
    execute_batch(generator, [QueuedJob(job_id, request) for job_id, request in jobs], queue)
