"""The job queue as the routes see it, and the promises every backend keeps.

Two backends implement `JobQueue`: the embedded one (SQLite and worker threads in the server process,
`sd3pose.service.embedded_queue`) and the Celery one (Redis and `sd3pose worker` processes,
`sd3pose.distributed.queue`). Every job ends exactly once, COMPLETED or FAILED; a FAILED job is not
paid for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from sd3pose.errors import Sd3PoseError
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult, PosePreview


class JobStatus(str, Enum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL = (JobStatus.COMPLETED, JobStatus.FAILED)
# The status code of a job that ended because it was cancelled (its client left, or it timed out).
CANCELLED_CODE = 504


@dataclass
class JobInfo:
    id: str
    kind: str  # "sync" | "async"
    status: JobStatus
    key_id: str | None
    reserved: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_code: int | None = None
    progress: tuple[int, int] | None = None
    result_meta: dict[str, Any] = field(default_factory=dict)
    samples: int = 1

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


def result_meta(result: GenerationResult) -> dict[str, Any]:
    """What a job record keeps about its images besides their bytes (the same in every backend)."""
    meta: dict[str, Any] = {
        "media_type": result.media_type,
        "seeds": list(result.seeds),
        "width": result.width,
        "height": result.height,
        "timings": result.timings,
        "count": len(result.images),
        "keypoints": result.keypoints,
    }
    if result.pose_png is not None:
        meta["pose"] = True
    return meta


def result_from_meta(meta: dict[str, Any], images: list[bytes], pose_png: bytes | None) -> GenerationResult:
    """The result a job record describes (`result_meta`), with its bytes read back from the store."""
    return GenerationResult(
        images=images,
        media_type=meta["media_type"],
        seeds=meta["seeds"],
        width=meta["width"],
        height=meta["height"],
        pose_png=pose_png,
        keypoints=meta.get("keypoints"),
        timings=meta.get("timings", {}),
    )


class RetryLaterError(Sd3PoseError):
    """Nothing is wrong with the request, but it cannot be served now (HTTP 429 with Retry-After)."""

    status_code = 429
    retry_after_s = 5.0


class JobNotRecordedError(Sd3PoseError):
    """The queue recorded nothing of the job (its store failed): the caller returns the reservation."""


class QueueFullError(JobNotRecordedError, RetryLaterError):
    """As many jobs wait as the queue holds; nothing of this one was recorded."""


class StorageFullError(JobNotRecordedError):
    """The job store holds as much as the operator allows (--max-disk); nothing of this job was recorded."""

    status_code = 503

    @classmethod
    def at(cls, used: int, limit: int) -> StorageFullError:
        return cls(
            f"the server's storage is full ({used / 2**30:.2f} of {limit / 2**30:.2f} GiB used); retry later, "
            "and tell the operator if this persists (sd3pose serve --max-disk)"
        )


class ModelsLoadingError(RetryLaterError):
    """No worker has finished loading its models yet."""


class NoWorkerAnsweredError(RetryLaterError):
    """A request for a worker (a pose preview) got no answer in time: the workers are busy or down."""


class StoreUnavailableError(Sd3PoseError):
    """The job store (Redis) cannot be reached; the operator's log has the details."""


class GeneratorLike(Protocol):
    """What a worker runs jobs on: `sd3pose.pipeline.Generator`, or a stand-in in tests."""

    def run(
        self,
        request: GenerationRequest,
        *,
        on_step: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult: ...

    def preview_pose(self, request: GenerationRequest) -> PosePreview: ...


class JobQueue(Protocol):
    """What the routes need from a job backend."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def readiness(self) -> tuple[bool, str]: ...
    def submit(
        self,
        request: GenerationRequest,
        *,
        kind: str,
        key_id: str | None,
        reserved: float,
        image: bytes | None = None,
    ) -> JobInfo:
        """Queue a job. `image`: the bytes the API resolved `request.image` to (stored once per content
        hash until the job ends; see sd3pose.jobs.inputs). JobNotRecordedError (QueueFullError and
        StorageFullError included): nothing of it exists, so the caller returns its reservation. Any other
        error: it was recorded, and ended FAILED and refunded."""
        ...

    def get(self, job_id: str) -> JobInfo | None: ...
    def wait(self, job_id: str, timeout_s: float) -> JobInfo | None: ...
    def result(self, job_id: str) -> GenerationResult | None: ...
    def cancel(self, job_id: str, reason: str) -> None:
        """End a queued job now; ask a running one to stop. Its store ends it FAILED unless it completed
        before the cancel was recorded."""
        ...

    def depth(self) -> int:
        """Jobs waiting for a worker; StoreUnavailableError when the backend cannot tell."""
        ...

    def storage_used(self) -> int:
        """Bytes the job store holds now (what --max-disk caps); StoreUnavailableError when it cannot tell."""
        ...

    def preview_pose(self, request: GenerationRequest) -> PosePreview: ...
