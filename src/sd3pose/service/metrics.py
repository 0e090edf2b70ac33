"""Prometheus metrics: per-job ones (exported by every process that runs jobs, API or Celery worker)
and HTTP ones (API processes). Each instance has its own registry, so several can live in one process."""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sd3pose.jobs.contract import StoreUnavailableError

TIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class JobMetrics:
    """What running jobs costs: generation and pose seconds, images made, jobs by outcome."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.generation_seconds = Histogram(
            "sd3pose_generation_seconds",
            "Time spent sampling and decoding images, per job.",
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.pose_seconds = Histogram(
            "sd3pose_pose_seconds",
            "Time spent detecting and drawing the pose, per job.",
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("sd3pose_images_generated", "Images generated.", registry=self.registry)
        self.jobs = Counter("sd3pose_jobs_finished", "Jobs finished, by outcome.", ["status"], registry=self.registry)

    def observe_generation(self, timings: dict[str, float], count: int) -> None:
        if "generate" in timings:
            self.generation_seconds.observe(timings["generate"])
        if "pose" in timings:
            self.pose_seconds.observe(timings["pose"])
        self.images.inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _known_or_nan(read: Callable[[], float]) -> Callable[[], float]:
    """`read`, or NaN (Prometheus' "unknown") while the job store cannot be reached: not a false 0."""

    def value() -> float:
        try:
            return float(read())
        except StoreUnavailableError:
            return math.nan

    return value


class Metrics(JobMetrics):
    """An API process: the job metrics (jobs it runs itself) plus requests and queue depth."""

    def __init__(self, queue_depth: Callable[[], float], storage_used: Callable[[], float], storage_limit: int) -> None:
        super().__init__()
        self.requests = Counter(
            "sd3pose_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "sd3pose_http_request_seconds",
            "Time to answer an HTTP request.",
            ["route"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("sd3pose_queue_depth", "Jobs waiting for a worker.", registry=self.registry)
        self.queue_depth.set_function(_known_or_nan(queue_depth))
        self.storage = Gauge(
            "sd3pose_storage_bytes",
            "Bytes the job store holds: inputs, results and job records (under --data-dir, or Redis's memory).",
            registry=self.registry,
        )
        self.storage.set_function(_known_or_nan(storage_used))
        self.storage_limit = Gauge(
            "sd3pose_storage_limit_bytes",
            "The --max-disk cap in bytes (0: none); new jobs get 503 above it.",
            registry=self.registry,
        )
        self.storage_limit.set(storage_limit)
