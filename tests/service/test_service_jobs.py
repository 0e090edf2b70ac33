"""The embedded queue across a restart: queued jobs run, the one cut off is FAILED with a clear error."""

from __future__ import annotations

import sqlite3
import threading
import time

from service_helpers import ScriptedGenerator

from sd3pose.jobs.contract import JobStatus
from sd3pose.request import parse_request
from sd3pose.service.embedded_queue import EmbeddedJobQueue
from sd3pose.service.keys import KeyStore
from sd3pose.service.store import Database


def _queue(tmp_path, generator, on_finished=None) -> EmbeddedJobQueue:
    return EmbeddedJobQueue(
        Database(tmp_path / "db.sqlite"),
        lambda device: generator,
        results_dir=tmp_path / "results",
        on_finished=on_finished,
    )


def _wait(queue: EmbeddedJobQueue, job_id: str, status: JobStatus) -> None:
    deadline = time.monotonic() + 30
    while (info := queue.get(job_id)) is None or info.status is not status:
        assert time.monotonic() < deadline, info
        time.sleep(0.02)


def test_restart_resumes_queued_and_fails_interrupted_jobs(tmp_path) -> None:
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 2})
    keys = KeyStore(Database(tmp_path / "db.sqlite"))
    key, _ = keys.create("alice", credits=3)
    assert keys.reserve(key.id, 3)  # what the app reserves for three one-image jobs

    held = ScriptedGenerator(gate=threading.Event())
    first = _queue(tmp_path, held)
    first.start()
    running = first.submit(request, kind="async", key_id=key.id, reserved=1)
    assert held.started.wait(30)
    waiting = first.submit(request, kind="async", key_id=key.id, reserved=1)
    waiting_sync = first.submit(request, kind="sync", key_id=key.id, reserved=1)
    first._stopping.set()  # the process "dies": nothing more is recorded by it

    refunds: list[str] = []

    def settle(info) -> None:  # the queue refunds a FAILED job itself, as it ends it
        if info.status is JobStatus.FAILED:
            refunds.append(info.id)

    fresh = ScriptedGenerator()
    second = _queue(tmp_path, fresh, on_finished=settle)
    second.start()
    try:
        _wait(second, waiting.id, JobStatus.COMPLETED)
        interrupted = second.get(running.id)
        assert interrupted.status is JobStatus.FAILED and "restarted while this job was running" in interrupted.error
        orphan = second.get(waiting_sync.id)  # its HTTP client died with the old process
        assert orphan.status is JobStatus.FAILED and "submit it again" in orphan.error
        assert second.result(waiting.id).seeds == [request.seed]
        assert sorted(refunds) == sorted([running.id, waiting_sync.id])
        assert keys.balance(key.id) == 2  # only the delivered job is paid for
        assert len(fresh.runs) == 1
    finally:
        held.gate.set()
        first.stop()
        second.stop()
    # The old worker finishing late changes nothing: a job ends once.
    assert second.get(running.id).status is JobStatus.FAILED


def test_expired_results_are_deleted(tmp_path) -> None:
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 1})
    queue = _queue(tmp_path, ScriptedGenerator())
    queue.result_ttl_s = 0.2
    queue.start()
    try:
        job = queue.submit(request, kind="async", key_id=None, reserved=0)
        _wait(queue, job.id, JobStatus.COMPLETED)
        assert (tmp_path / "results" / job.id).is_dir()
        time.sleep(0.3)
        assert queue.get(job.id) is None and queue.result(job.id) is None
        assert queue.delete_expired() == 1
        assert not (tmp_path / "results" / job.id).exists()
    finally:
        queue.stop()


def test_a_job_cancelled_before_it_completes_is_never_completed(tmp_path) -> None:
    """The race of a sync timeout with the last step: cancel first means refunded and FAILED, not charged."""
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 2})
    settled: list[JobStatus] = []
    queue = _queue(tmp_path, ScriptedGenerator(), on_finished=lambda info: settled.append(info.status))
    job = queue.submit(request, kind="sync", key_id=None, reserved=1)
    assert [job_id for job_id, _ in queue.take(1)] == [job.id]  # a worker took it (nothing is started here)
    queue.cancel(job.id, "timed out after 1 s")
    # The worker checked for a cancel just before it, and now hands in its finished images.
    result = ScriptedGenerator().run(request)
    queue.complete(job.id, result)
    info = queue.get(job.id)
    assert info.status is JobStatus.FAILED and info.error == "timed out after 1 s" and info.error_code == 504
    assert settled == [JobStatus.FAILED]  # reported FAILED: the queue refunded it
    assert queue.result(job.id) is None


def test_a_stored_job_that_no_longer_validates_fails_alone_instead_of_stopping_the_restart(tmp_path) -> None:
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 1})
    keys = KeyStore(Database(tmp_path / "db.sqlite"))
    key, _ = keys.create("alice", credits=3)
    assert keys.reserve(key.id, 3)
    first = _queue(tmp_path, ScriptedGenerator(gate=threading.Event()))  # never started: the jobs stay queued
    broken = first.submit(request, kind="async", key_id=key.id, reserved=1)
    inconsistent = first.submit(request, kind="async", key_id=key.id, reserved=1)
    fine = first.submit(request, kind="async", key_id=key.id, reserved=1)
    # e.g. written by an older version whose rules differed: a field rule, and a whole-request rule
    first.db.execute("UPDATE jobs SET request_json = ? WHERE id = ?", ('{"prompt": ""}', broken.id))
    first.db.execute("UPDATE jobs SET request_json = ? WHERE id = ?", ('{"prompt": "x"}', inconsistent.id))

    second = _queue(tmp_path, ScriptedGenerator())  # it refunds the jobs it fails itself
    second.start()
    try:
        _wait(second, fine.id, JobStatus.COMPLETED)
        for job in (broken, inconsistent):
            failed = second.get(job.id)
            assert failed.status is JobStatus.FAILED and "could not resume this request" in failed.error
        assert keys.balance(key.id) == 2  # the two broken jobs' credits came back; the finished one is paid for
    finally:
        second.stop()


def test_a_job_store_hiccup_while_starting_a_job_delays_it_but_loses_nothing(tmp_path) -> None:
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 1})
    queue = _queue(tmp_path, ScriptedGenerator())
    real_execute, failures = queue.db.execute, []

    def busy_once(sql: str, params: tuple = ()):
        if sql.startswith("UPDATE jobs SET status = 'PROCESSING'") and not failures:
            failures.append(sql)
            raise sqlite3.OperationalError("database is locked")
        return real_execute(sql, params)

    queue.db.execute = busy_once
    queue.start()
    try:
        jobs = [queue.submit(request, kind="async", key_id=None, reserved=0) for _ in range(2)]
        for job in jobs:
            _wait(queue, job.id, JobStatus.COMPLETED)
        assert failures  # the hiccup happened, and both jobs still ran
    finally:
        queue.stop()


def test_a_store_error_recording_one_job_of_a_batch_leaves_the_others_recorded(tmp_path) -> None:
    from sd3pose.errors import NoPersonFoundError
    from sd3pose.service.worker import run_jobs

    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 1})
    queue = _queue(tmp_path, ScriptedGenerator())  # not started: this test plays the worker itself
    first, second = (queue.submit(request, kind="async", key_id=None, reserved=0) for _ in range(2))
    taken = queue.take(2)
    done = ScriptedGenerator().run(request)

    class Batch:
        def run_batch(self, requests, *, on_step, cancelled):
            return [NoPersonFoundError(), done]

    real_finish, hiccups = queue._finish, []

    def locked_once(job_id: str, status: JobStatus, **fields) -> None:
        if not hiccups:
            hiccups.append(job_id)
            raise sqlite3.OperationalError("database is locked")
        real_finish(job_id, status, **fields)

    queue._finish = locked_once
    run_jobs(queue, Batch(), taken)  # never raises
    assert hiccups
    assert queue.get(first.id).status is JobStatus.FAILED  # recorded on the second try
    assert queue.get(second.id).status is JobStatus.COMPLETED  # and its neighbour was not skipped
