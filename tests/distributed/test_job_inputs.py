"""What a job keeps in Redis to run again (its request and its input image) on a real Redis: kept while the
job may still run, found again by the next worker, and let go exactly once by every way a job ends."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest
import redis
from dist_cluster import replayed

from sd3pose.distributed.config import lease_key
from sd3pose.distributed.jobstore import QUEUED_GRACE_S, RedisJobStore, input_key, job_key
from sd3pose.distributed.keystore import RedisKeyStore
from sd3pose.distributed.lease import WorkerLease
from sd3pose.distributed.queue import CeleryJobQueue
from sd3pose.distributed.recovery import Recovery
from sd3pose.distributed.worker import JobRunner
from sd3pose.jobs.contract import JobInfo, JobNotRecordedError, JobStatus
from sd3pose.jobs.inputs import content_hash
from sd3pose.request import parse_request
from sd3pose.results import GenerationResult

PHOTO = b"\x89PNG" + b"p" * 10_000
DIGEST = content_hash(PHOTO)
REQUEST = parse_request({"image": "x", "prompt": "a dancer", "seed": 5})


def image() -> GenerationResult:
    return GenerationResult([b"jpeg"], "image/jpeg", [5], 64, 64, None, None, {})


@pytest.fixture
def queue(redis_server, client):
    jobs = CeleryJobQueue(redis_server.url, "q", client=client)
    jobs.celery.send_task = lambda *args, **kwargs: None  # no broker traffic: the tests play the worker
    yield jobs
    jobs.stop()


def submit(queue: CeleryJobQueue, key_id: str | None = None) -> JobInfo:
    return queue.submit(REQUEST, kind="async", key_id=key_id, reserved=1.0 if key_id else 0.0, image=PHOTO)


def users(client) -> set[str]:
    return {raw.decode() for raw in client.smembers(input_key(DIGEST, "jobs"))}


def wait_uptime(client, seconds: float) -> None:
    while client.info("server")["uptime_in_seconds"] < seconds:
        time.sleep(0.1)


def completed(store: RedisJobStore, job_id: str) -> None:
    started = store.start(job_id, "w1")
    assert store.complete(job_id, image(), run=started.run)


def failed(store: RedisJobStore, job_id: str) -> None:
    started = store.start(job_id, "w1")
    assert store.fail(job_id, "no person found", 400, run=started.run)


def cancelled_while_queued(store: RedisJobStore, job_id: str) -> None:
    store.cancel(job_id, "timed out after 300 s")


def cancelled_while_running(store: RedisJobStore, job_id: str) -> None:
    started = store.start(job_id, "w1")
    store.cancel(job_id, "the client disconnected")
    assert not store.complete(job_id, image(), run=started.run)  # the cancel recorded first wins


def expired_in_the_queue(store: RedisJobStore, job_id: str) -> None:
    store.redis.zadd("sd3pose:queued:q", {job_id: time.time() - QUEUED_GRACE_S - 1})
    store.depth("q")


def workers_died_three_times(store: RedisJobStore, job_id: str) -> None:
    for worker in ("w1", "w2", "w3"):
        assert store.start(job_id, worker) is not None
        store.redis.delete(lease_key(worker))
    assert store.start(job_id, "w4") is None  # the next copy of its message fails it instead


def reaped_after_three_deaths(store: RedisJobStore, job_id: str) -> None:
    wait_uptime(store.redis, 1)
    recovery = Recovery(store, lambda job_id, queue: None)
    for worker in ("w1", "w2", "w3"):
        assert store.start(job_id, worker, lease_ttl_s=0.5) is not None
        store.redis.delete(lease_key(worker))
        recovery.sweep()


def completed_with_its_reply_lost(store: RedisJobStore, job_id: str) -> None:
    store._finish = replayed(store._finish)
    completed(store, job_id)


ENDINGS: dict[str, Callable[[RedisJobStore, str], None]] = {
    "completed": completed,
    "failed": failed,
    "cancelled while queued": cancelled_while_queued,
    "cancelled while running": cancelled_while_running,
    "expired in the queue": expired_in_the_queue,
    "its workers died three times": workers_died_three_times,
    "reaped after three deaths": reaped_after_three_deaths,
    "completed, its reply lost": completed_with_its_reply_lost,
}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
def test_every_way_a_job_ends_lets_go_of_its_request_and_input_once(queue, client, end) -> None:
    job, other = submit(queue), submit(queue)  # two jobs on the same photo: its bytes are kept once
    assert client.exists(job_key(job.id, "request")) and users(client) == {job.id, other.id}

    end(queue.store, job.id)
    assert queue.get(job.id).done
    assert not client.exists(job_key(job.id, "request"))
    assert users(client) == {other.id} and client.get(input_key(DIGEST)) == PHOTO  # the other still needs it

    queue.store.cancel(other.id, "timed out")
    assert client.keys("sd3pose:input:*") == [] and client.keys("sd3pose:job:*:request") == []


class Recorder:
    """Stands in for pipeline.Generator: records the image each run was given."""

    def __init__(self) -> None:
        self.images: list[bytes] = []

    def run(self, request, *, on_step=None, cancelled=None) -> GenerationResult:
        self.images.append(base64.b64decode(request.image))
        return image()


def test_a_job_requeued_by_the_reaper_or_handed_back_finds_its_request_and_input(queue, client) -> None:
    wait_uptime(client, 1)
    store = queue.store
    job = submit(queue)
    recovery = Recovery(store, lambda job_id, queue: None)
    assert store.start(job.id, "w1", lease_ttl_s=0.5) is not None
    client.delete(lease_key("w1"))  # w1 dies
    assert recovery.sweep() == [job.id]
    started = store.start(job.id, "w2")
    assert recovery.hand_back(job.id, started.run)  # w2 is stopping
    assert client.exists(job_key(job.id, "request")) and users(client) == {job.id}

    generator = Recorder()
    JobRunner(generator, store, WorkerLease("w3")).run(job.id)
    assert generator.images == [PHOTO] and queue.get(job.id).status is JobStatus.COMPLETED
    assert client.keys("sd3pose:input:*") == [] and not client.exists(job_key(job.id, "request"))


def test_a_failing_finish_whose_reply_was_lost_is_answered_as_the_first_and_refunds_once(queue, client) -> None:
    keys = RedisKeyStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = submit(queue, key.id)
    store = queue.store
    store._finish = replayed(store._finish)
    started = store.start(job.id, "w1")
    assert store.fail(job.id, "out of memory", 500, run=started.run)  # the run ended it: not "ended already"
    assert keys.balance(key.id) == 3 and client.keys("sd3pose:input:*") == []
    assert not store.fail(job.id, "again", 500)  # another call is still told that the job had ended


def test_a_job_whose_record_and_settlement_replies_were_both_lost_is_refunded_once(queue, client) -> None:
    keys = RedisKeyStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)  # what the app reserves before submitting
    real_create = queue.store.create

    def reply_lost(**fields) -> None:
        real_create(**fields)
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    queue.store.create = reply_lost
    queue.store._finish = replayed(queue.store._finish)  # the settlement's reply is lost too
    with pytest.raises(Exception) as refused:
        submit(queue, key.id)
    # Settled (and refunded) by the queue: the app, which refunds a JobNotRecordedError, must not again.
    assert not isinstance(refused.value, JobNotRecordedError) and "store is unreachable" in str(refused.value)
    assert keys.balance(key.id) == 3 and client.keys("sd3pose:input:*") == []


def test_a_job_refused_by_a_full_queue_keeps_nothing(redis_server, client) -> None:
    queue = CeleryJobQueue(redis_server.url, "q", client=client, max_queue=1)
    queue.celery.send_task = lambda *args, **kwargs: None
    first = submit(queue)
    with pytest.raises(JobNotRecordedError, match="queue is full"):
        submit(queue)
    assert users(client) == {first.id}
    assert client.keys("sd3pose:job:*:request") == [job_key(first.id, "request").encode()]
    queue.stop()


def test_a_job_redis_never_recorded_keeps_no_input(queue, client) -> None:
    def unreachable(**fields) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379")

    queue.store.create = unreachable
    with pytest.raises(JobNotRecordedError):
        submit(queue)
    assert client.keys("sd3pose:input:*") == []
