"""The embedded job queue: jobs recorded in SQLite, run by worker threads in the server process.

It implements `sd3pose.jobs.contract.JobQueue`. Every job ends exactly once in COMPLETED or FAILED, and
a FAILED job's reserved credits go back to its key in the same transaction (the keys live in the same
database), so whoever sees the job ended also sees its refund; `on_finished` is then called once (the
app counts outcomes there). A job's input image is a file of the
input store, named by its hash, from submit until the job ends; what the job row keeps is only what
a restart needs to run it again, and nothing of it once it has ended. Everything it writes under the
data folder counts against `max_disk_bytes`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sd3pose.errors import Sd3PoseError
from sd3pose.jobs.contract import (
    CANCELLED_CODE,
    GeneratorLike,
    JobInfo,
    JobNotRecordedError,
    JobStatus,
    ModelsLoadingError,
    QueueFullError,
    StorageFullError,
    result_from_meta,
    result_meta,
)
from sd3pose.jobs.inputs import referenced_input, to_record, with_image
from sd3pose.request import GenerationRequest
from sd3pose.results import MEDIA_EXTENSIONS, GenerationResult, PosePreview
from sd3pose.service.credits import from_micro, to_micro
from sd3pose.service.disk import DiskUsage, InputStore, folder_size
from sd3pose.service.store import Database
from sd3pose.service.worker import Worker

log = logging.getLogger(__name__)


INFO_COLUMNS = (
    "id, kind, status, key_id, reserved_micro, samples, created_at, started_at, finished_at, error, error_code, "
    "result_json"
)
UNFINISHED = "status IN ('QUEUED', 'PROCESSING')"


class EmbeddedJobQueue:
    """Jobs recorded in SQLite, run by one in-process worker thread per device."""

    def __init__(
        self,
        db: Database,
        generator_factory: Callable[[str | None], GeneratorLike],
        *,
        results_dir: Path,
        inputs_dir: Path | None = None,
        max_disk_bytes: int = 0,
        devices: list[str | None] | None = None,
        max_queue: int = 32,
        result_ttl_s: float = 3600.0,
        cleanup_interval_s: float = 60.0,
        on_finished: Callable[[JobInfo], None] | None = None,
        on_generated: Callable[[GenerationResult], None] | None = None,
    ) -> None:
        self.db = db
        self.results_dir = Path(results_dir)
        inputs_dir = Path(inputs_dir) if inputs_dir is not None else self.results_dir.parent / "inputs"
        db_files = [] if str(db.path) == ":memory:" else [Path(f"{db.path}{suffix}") for suffix in ("", "-wal", "-shm")]
        self.disk = DiskUsage(db_files, [self.results_dir, inputs_dir])
        self.inputs = InputStore(inputs_dir, self.disk)
        self.max_disk_bytes = max_disk_bytes  # 0: no cap
        # Held from an input's write to its job's record, and around each release: a file another job
        # has just been given is never deleted by the end of the last job that used it.
        self._inputs_lock = threading.Lock()
        self.max_queue = max_queue
        self.result_ttl_s = result_ttl_s
        self.cleanup_interval_s = cleanup_interval_s
        self.on_finished = on_finished
        self.on_generated = on_generated
        self._factory = generator_factory
        self.devices = devices or [None]
        self._cond = threading.Condition()
        # Held from a cancel's record to the end of a completion: a job either completes before the
        # cancel (and is delivered) or is cancelled (and refunded), never charged and answered 504.
        self._settle = threading.Lock()
        self._pending: deque[str] = deque()
        self._requests: dict[str, GenerationRequest] = {}
        self._progress: dict[str, tuple[int, int]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._events: dict[str, threading.Event] = {}
        self._sync_results: dict[str, GenerationResult] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[Worker] = []
        self._preview_lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._delete_unused_inputs()
        self.disk.scan()
        for device in self.devices:
            worker = Worker(self, self._factory, device)
            self._workers.append(worker)
            thread = threading.Thread(target=worker.loop, name=f"sd3pose-worker-{device or 'default'}", daemon=True)
            self._threads.append(thread)
            thread.start()
        janitor = threading.Thread(target=self._janitor, name="sd3pose-janitor", daemon=True)
        self._threads.append(janitor)
        janitor.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        with self._cond:
            for job_id in list(self._progress):
                self._cancel_reasons.setdefault(job_id, "the server is shutting down")
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout_s)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def readiness(self) -> tuple[bool, str]:
        if not self._workers:
            return False, "not started"
        errors = [w.load_error for w in self._workers if w.load_error]
        if errors:
            return False, f"model loading failed: {errors[0]}"
        loading = sum(1 for w in self._workers if w.generator is None)
        if loading:
            return False, f"loading models on {loading} of {len(self._workers)} workers"
        return True, f"{len(self._workers)} worker(s) ready"

    def _recover(self) -> None:
        """After a restart: re-queue waiting async jobs, fail the ones that were cut off."""
        rows = self.db.query(
            "SELECT kind, status, id, request_json FROM jobs "
            "WHERE status IN ('QUEUED', 'PROCESSING') ORDER BY created_at"
        )
        for row in rows:
            job_id = row["id"]
            if row["status"] == "PROCESSING":
                self._finish(
                    job_id,
                    JobStatus.FAILED,
                    error="the server restarted while this job was running; submit it again",
                    error_code=500,
                )
            elif row["kind"] == "sync":
                self._finish(
                    job_id,
                    JobStatus.FAILED,
                    error="the server restarted before this request ran and its client is gone; submit it again",
                    error_code=500,
                )
            else:
                try:
                    request = GenerationRequest.model_validate_json(
                        row["request_json"], context={"max_samples": 1 << 30}
                    )
                except (ValueError, Sd3PoseError) as exc:  # e.g. stored under other rules: fails alone
                    log.error("job %s cannot be resumed: %s", job_id, exc)
                    self._finish(
                        job_id,
                        JobStatus.FAILED,
                        error="the server restarted and could not resume this request; submit it again",
                        error_code=500,
                    )
                    continue
                with self._cond:
                    self._requests[job_id] = request
                    self._events[job_id] = threading.Event()
                    self._pending.append(job_id)
        if self._pending:
            log.info("resuming %d queued job(s) from before the restart", len(self._pending))

    # --- submit / inspect ----------------------------------------------------------------------------

    def depth(self) -> int:
        with self._cond:
            return len(self._pending)

    def storage_used(self) -> int:
        return self.disk.used()

    def submit(
        self,
        request: GenerationRequest,
        *,
        kind: str,
        key_id: str | None,
        reserved: float,
        image: bytes | None = None,
    ) -> JobInfo:
        recorded, digest = to_record(request, image)
        job_id = uuid.uuid4().hex
        now = time.time()
        with self._cond, self._inputs_lock:
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({self.max_queue} jobs waiting); retry after the Retry-After delay"
                )
            used = self.disk.used()
            if self.max_disk_bytes and used + len(image or b"") > self.max_disk_bytes:
                raise StorageFullError.at(used, self.max_disk_bytes)
            try:
                if digest is not None:
                    self.inputs.put(digest, image)  # type: ignore[arg-type]
                self.db.execute(
                    "INSERT INTO jobs (id, kind, status, key_id, reserved_micro, samples, request_json, input_hash, "
                    "created_at) VALUES (?, ?, 'QUEUED', ?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        kind,
                        key_id,
                        to_micro(reserved),
                        request.samples,
                        recorded.model_dump_json(by_alias=True),
                        digest,
                        now,
                    ),
                )
            except (sqlite3.Error, OSError) as exc:  # e.g. a full disk; the detail is for the operator's log
                log.error("could not record job %s: %s", job_id, exc)
                if digest is not None:
                    self._release_input_locked(digest)
                raise JobNotRecordedError(
                    "the server could not record the job (its storage failed); retry shortly, and tell the "
                    "operator if this persists"
                ) from exc
            self._requests[job_id] = recorded
            self._events[job_id] = threading.Event()
            self._pending.append(job_id)
            self._cond.notify()
        return JobInfo(
            id=job_id,
            kind=kind,
            status=JobStatus.QUEUED,
            key_id=key_id,
            reserved=reserved,
            created_at=now,
            samples=request.samples,
        )

    def get(self, job_id: str) -> JobInfo | None:
        rows = self.db.query(f"SELECT {INFO_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        info = self._row_to_info(rows[0])
        if info.done and info.finished_at is not None and time.time() > info.finished_at + self.result_ttl_s:
            return None  # expired; the janitor deletes it soon
        info.progress = self._progress.get(job_id)
        return info

    def wait(self, job_id: str, timeout_s: float) -> JobInfo | None:
        event = self._events.get(job_id)
        if event is not None:
            event.wait(timeout_s)
        return self.get(job_id)

    def result(self, job_id: str) -> GenerationResult | None:
        info = self.get(job_id)
        if info is None or info.status is not JobStatus.COMPLETED:
            return None
        if info.kind == "sync":
            return self._sync_results.pop(job_id, None)
        folder = self.results_dir / job_id
        meta = info.result_meta
        try:
            images = [(folder / name).read_bytes() for name in meta["files"]]
            pose_png = (folder / "pose.png").read_bytes() if meta.get("pose") else None
        except FileNotFoundError:
            return None
        return result_from_meta(meta, images, pose_png)

    def cancel(self, job_id: str, reason: str) -> None:
        """Drop a queued job now; ask a running one to stop at its next step."""
        with self._settle, self._cond:
            if job_id in self._pending:
                self._pending.remove(job_id)
                queued = True
            else:
                queued = False
                if job_id in self._progress:
                    self._cancel_reasons[job_id] = reason
        if queued:
            self._finish(job_id, JobStatus.FAILED, error=reason, error_code=CANCELLED_CODE)

    def preview_pose(self, request: GenerationRequest) -> PosePreview:
        generator = next((w.generator for w in self._workers if w.generator is not None), None)
        if generator is None:
            raise ModelsLoadingError("the models are still loading; retry in a few seconds (see GET /ready)")
        with self._preview_lock:
            preview = generator.preview_pose(request)
        return preview

    # --- used by the workers -------------------------------------------------------------------------

    def take(self, max_jobs: int = 1, timeout_s: float = 0.5) -> list[tuple[str, GenerationRequest]]:
        """Up to `max_jobs` queued jobs, now marked PROCESSING (waits up to timeout_s for the first)."""
        with self._cond:
            if not self._pending:
                self._cond.wait(timeout_s)
            taken = []
            while self._pending and len(taken) < max_jobs and not self._stopping.is_set():
                job_id = self._pending.popleft()
                self._progress[job_id] = (0, self._requests[job_id].num_inference_steps)
                taken.append((job_id, self._requests[job_id]))
        try:
            for job_id, _ in taken:
                self.db.execute(
                    "UPDATE jobs SET status = 'PROCESSING', started_at = ? WHERE id = ?", (time.time(), job_id)
                )
        except sqlite3.Error:
            with self._cond:  # not started after all: back to the front of the queue, in order
                for job_id, _ in reversed(taken):
                    self._progress.pop(job_id, None)
                    self._pending.appendleft(job_id)
            raise
        return [job for job in (self._with_input(job_id, request) for job_id, request in taken) if job is not None]

    def _with_input(self, job_id: str, request: GenerationRequest) -> tuple[str, GenerationRequest] | None:
        """A taken job as its worker runs it, with its stored input image; None (and the job failed) when
        the input is gone."""
        digest = referenced_input(request)
        if digest is None:
            return job_id, request
        data = self.inputs.read(digest)
        if data is None:
            log.error("job %s: its input %s is missing from %s", job_id, digest, self.inputs.folder)
            self.fail(job_id, "the server lost this request's input image; submit it again", 500)
            return None
        return job_id, with_image(request, data)

    def report_step(self, job_id: str, step: int, total: int) -> None:
        self._progress[job_id] = (step, total)

    def cancel_reason(self, job_id: str) -> str | None:
        return self._cancel_reasons.get(job_id)

    def complete(self, job_id: str, result: GenerationResult) -> bool:
        """End the job COMPLETED (True), or FAILED when a cancel was recorded first: nobody receives it,
        nobody pays (False, as when it had ended already)."""
        with self._settle:
            reason = self._cancel_reasons.get(job_id)
            if reason is not None:
                self.fail(job_id, reason, CANCELLED_CODE)
                return False
            return self._complete(job_id, result)

    def fail(self, job_id: str, error: str, error_code: int) -> bool:
        """End the job FAILED; False when it had ended already."""
        return self._finish(job_id, JobStatus.FAILED, error=error, error_code=error_code)

    def _complete(self, job_id: str, result: GenerationResult) -> bool:
        kind = self.db.query("SELECT kind FROM jobs WHERE id = ?", (job_id,))[0]["kind"]
        meta = result_meta(result)
        if kind == "sync":
            self._sync_results[job_id] = result
        else:
            folder = self.results_dir / job_id
            folder.mkdir(parents=True, exist_ok=True)
            extension = MEDIA_EXTENSIONS.get(result.media_type, "bin")
            meta["files"] = []
            for index, data in enumerate(result.images):
                name = f"image_{index}.{extension}"
                (folder / name).write_bytes(data)
                self.disk.add(len(data))
                meta["files"].append(name)
            if result.pose_png is not None:
                (folder / "pose.png").write_bytes(result.pose_png)
                self.disk.add(len(result.pose_png))
        if self.on_generated is not None:
            self.on_generated(result)
        return self._finish(job_id, JobStatus.COMPLETED, meta=meta)

    # --- internals -------------------------------------------------------------------------------------

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        error: str | None = None,
        error_code: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """End the job unless it has ended already (then nothing changes); True when this call ended it.

        Ending it FAILED refunds its reservation in the same transaction. Its row drops the request (a
        finished job never runs again), and its input image is released.
        """
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ?, error_code = ?, result_json = ?, "
                f"request_json = '' WHERE id = ? AND {UNFINISHED}",
                (status.value, time.time(), error, error_code, json.dumps(meta or {}), job_id),
            )
            changed = cursor.rowcount == 1
            if changed and status is JobStatus.FAILED:
                conn.execute(
                    "UPDATE api_keys SET micro_credits = micro_credits + "
                    "(SELECT reserved_micro FROM jobs WHERE id = ?) "
                    "WHERE id = (SELECT key_id FROM jobs WHERE id = ?) AND micro_credits IS NOT NULL",
                    (job_id, job_id),
                )
        if changed:
            self._release_input(job_id)
            info = self.get(job_id) if self.on_finished is not None else None
            if info is not None:
                try:
                    self.on_finished(info)  # type: ignore[misc]
                except Exception:  # a bug there must not kill the worker
                    log.exception("on_finished failed for job %s", job_id)
        with self._cond:
            self._progress.pop(job_id, None)
            self._cancel_reasons.pop(job_id, None)
            self._requests.pop(job_id, None)
            event = self._events.pop(job_id, None)
        if event is not None:
            event.set()
        return changed

    def _release_input(self, job_id: str) -> None:
        rows = self.db.query("SELECT input_hash FROM jobs WHERE id = ?", (job_id,))
        if rows and rows[0]["input_hash"]:
            with self._inputs_lock:
                self._release_input_locked(rows[0]["input_hash"])

    def _release_input_locked(self, digest: str) -> None:
        """Delete an input file no unfinished job uses any more (hold _inputs_lock)."""
        if not self.db.query(f"SELECT 1 FROM jobs WHERE input_hash = ? AND {UNFINISHED} LIMIT 1", (digest,)):
            try:
                self.inputs.delete(digest)
            except OSError as exc:  # the start-up clean-up retries it
                log.error("could not delete the input image %s: %s", digest, exc)

    def _delete_unused_inputs(self) -> None:
        """At start: drop input files that no unfinished job names (left by a crash)."""
        self.inputs.delete_partials()
        needed = {row[0] for row in self.db.query(f"SELECT input_hash FROM jobs WHERE {UNFINISHED}")}
        for digest in self.inputs.stored() - needed:
            self.inputs.delete(digest)

    def _row_to_info(self, row: Any) -> JobInfo:
        return JobInfo(
            id=row["id"],
            kind=row["kind"],
            status=JobStatus(row["status"]),
            key_id=row["key_id"],
            reserved=from_micro(row["reserved_micro"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            error_code=row["error_code"],
            result_meta=json.loads(row["result_json"]) if row["result_json"] else {},
            samples=row["samples"],
        )

    def _janitor(self) -> None:
        while not self._stopping.wait(self.cleanup_interval_s):
            try:
                self.delete_expired()
            except Exception:
                log.exception("cleaning expired results failed")

    def delete_expired(self) -> int:
        cutoff = time.time() - self.result_ttl_s
        rows = self.db.query("SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,))
        for row in rows:
            folder = self.results_dir / row["id"]
            self.disk.add(-folder_size(folder))
            shutil.rmtree(folder, ignore_errors=True)
            self._sync_results.pop(row["id"], None)
            self.db.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
        if rows:
            log.info("deleted %d expired job result(s)", len(rows))
        return len(rows)
