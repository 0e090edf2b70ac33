"""The shared state on a real Redis, without workers: atomic credits, once-only settlement, routing names."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from dist_cluster import replayed

from sd3pose.distributed.config import check_broker_url, lease_key, queue_name
from sd3pose.distributed.jobstore import QUEUED_GRACE_S, RedisJobStore
from sd3pose.distributed.keystore import RedisKeyStore, RedisRateLimiter
from sd3pose.distributed.lease import WorkerLease
from sd3pose.distributed.queue import CeleryJobQueue
from sd3pose.errors import InvalidRequestError, Sd3PoseError
from sd3pose.jobs.contract import JobNotRecordedError, JobStatus
from sd3pose.request import parse_request
from sd3pose.results import GenerationResult


def test_two_replicas_never_spend_the_same_credit(redis_server, client) -> None:
    key, _ = RedisKeyStore(client).create("shared", credits=15)
    replicas = [RedisKeyStore(redis_server.client()) for _ in range(2)]  # separate connections, like two APIs
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda i: replicas[i % 2].reserve(key.id, 1.0), range(40)))
    assert taken.count(True) == 15
    assert RedisKeyStore(client).balance(key.id) == 0


def test_a_failed_job_is_refunded_once_and_a_completed_one_never(client) -> None:
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=10)
    assert keys.reserve(key.id, 2.0) and keys.reserve(key.id, 2.0)
    failed = store.create(queue="q", kind="async", key_id=key.id, reserved=2.0, samples=2, max_queue=0)
    done = store.create(queue="q", kind="async", key_id=key.id, reserved=2.0, samples=2, max_queue=0)
    assert failed is not None and done is not None and store.depth("q") == 2

    assert store.finish(failed.id, JobStatus.FAILED, error="boom", error_code=500)
    assert not store.finish(failed.id, JobStatus.FAILED, error="again", error_code=500)  # e.g. a redelivered copy
    assert keys.balance(key.id) == 8  # 10 - 2 - 2 + 2

    assert store.start(done.id, "w1") is not None
    image = GenerationResult([b"jpeg"], "image/jpeg", [1], 64, 64, None, None, {})
    assert store.complete(done.id, image)
    assert store.start(done.id, "w2") is None  # a redelivered copy of an ended job does not run
    assert not store.finish(done.id, JobStatus.FAILED, error="late cancel", error_code=504)
    assert keys.balance(key.id) == 8
    assert store.get(done.id).status is JobStatus.COMPLETED and store.result(done.id).images == [b"jpeg"]
    assert store.get(failed.id).error == "boom" and store.depth("q") == 0


def test_a_job_redis_or_the_broker_refuses_costs_nothing_and_says_why(redis_server, client) -> None:
    keys = RedisKeyStore(client)
    key, _ = keys.create("payer", credits=3)
    queue = CeleryJobQueue(redis_server.url, "q", client=client)
    request = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "seed": 5})
    real_create = queue.store.create

    def unreachable(*args, **kwargs) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379")

    # Redis refuses the record: nothing of the job exists, so the caller (the app) returns the reservation.
    queue.store.create = unreachable
    with pytest.raises(JobNotRecordedError) as refused:
        queue.submit(request, kind="async", key_id=key.id, reserved=1.0)
    assert "store is unreachable" in refused.value.message and "10.0.0.7" not in refused.value.message

    # The record is made but its reply is lost: the queue finds and settles it, so the app must not refund.
    lost = []

    def reply_lost(**fields) -> None:
        lost.append(real_create(**fields))
        raise redis.exceptions.ConnectionError("Connection reset by peer")

    queue.store.create = reply_lost
    assert keys.reserve(key.id, 1.0)
    with pytest.raises(Sd3PoseError) as refused:
        queue.submit(request, kind="async", key_id=key.id, reserved=1.0)
    assert not isinstance(refused.value, JobNotRecordedError) and "store is unreachable" in refused.value.message
    assert keys.balance(key.id) == 3 and queue.get(lost[0].id).status is JobStatus.FAILED
    client.zadd("sd3pose:queued:q", {lost[0].id: 0})  # even if it were still listed as waiting a day later ...
    assert queue.depth() == 0 and keys.balance(key.id) == 3  # ... it is not refunded a second time

    # The record is made but the broker refuses the task: the queue ends the job FAILED and refunds it.
    created = []
    queue.store.create = lambda **fields: created.append(real_create(**fields)) or created[-1]
    queue.celery.send_task = unreachable
    assert keys.reserve(key.id, 1.0)  # what the app reserves before submitting
    with pytest.raises(Sd3PoseError) as refused:
        queue.submit(request, kind="async", key_id=key.id, reserved=1.0)
    assert not isinstance(refused.value, JobNotRecordedError)  # settled here: the app must not refund again
    assert "broker is unreachable" in refused.value.message and "10.0.0.7" not in refused.value.message
    assert keys.balance(key.id) == 3 and queue.depth() == 0
    assert queue.get(created[0].id).status is JobStatus.FAILED  # recorded and settled, not left QUEUED
    queue.stop()


def test_a_job_neither_sent_nor_settled_gets_a_clear_answer_and_is_refunded_when_its_wait_ends(
    redis_server, client
) -> None:
    """The broker refuses the task and Redis stays down while the queue tries to settle the job."""
    from sd3pose.jobs.contract import StoreUnavailableError

    keys = RedisKeyStore(client)
    key, _ = keys.create("payer", credits=3)
    queue = CeleryJobQueue(redis_server.url, "q", client=client)

    def unreachable(*args, **kwargs) -> None:
        raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379")

    queue.celery.send_task = unreachable
    real_finish, queue.store.finish = queue.store.finish, unreachable
    assert keys.reserve(key.id, 1.0)
    with pytest.raises(StoreUnavailableError, match="broker is unreachable") as refused:
        queue.submit(
            parse_request({"image": "x", "prompt": "a dancer", "seed": 5}), kind="async", key_id=key.id, reserved=1.0
        )
    assert "10.0.0.7" not in refused.value.message
    queue.store.finish = real_finish
    (waiting,) = client.zrange("sd3pose:queued:q", 0, -1)
    client.zadd("sd3pose:queued:q", {waiting: time.time() - QUEUED_GRACE_S - 1})
    assert queue.depth() == 0 and keys.balance(key.id) == 3  # its wait ended: FAILED and refunded
    queue.stop()


def test_queue_cap_and_cancel_of_a_queued_job(client) -> None:
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("capped", credits=5)
    assert keys.reserve(key.id, 1.0)
    first = store.create(queue="q", kind="async", key_id=key.id, reserved=1.0, samples=1, max_queue=1)
    assert first is not None
    assert store.create(queue="q", kind="async", key_id=key.id, reserved=1.0, samples=1, max_queue=1) is None
    store.cancel(first.id, "timed out")
    assert store.get(first.id).status is JobStatus.FAILED and keys.balance(key.id) == 5


def test_a_job_no_worker_takes_for_a_day_ends_refunded_and_frees_its_place(client) -> None:
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("patient", credits=5)
    assert keys.reserve(key.id, 2.0) and keys.reserve(key.id, 1.0)
    stale = store.create(queue="q", kind="async", key_id=key.id, reserved=2.0, samples=2, max_queue=2)
    lapsed = store.create(queue="q", kind="async", key_id=key.id, reserved=1.0, samples=1, max_queue=2)
    day_ago = time.time() - QUEUED_GRACE_S - 1
    client.zadd("sd3pose:queued:q", {stale.id: day_ago, lapsed.id: day_ago})  # a day with no worker
    client.delete(f"sd3pose:job:{lapsed.id}")  # ... and one whose record is gone by now
    assert client.ttl(f"sd3pose:job:{stale.id}") > QUEUED_GRACE_S  # the record outlives the wait
    assert store.depth("q") == 0
    ended = store.get(stale.id)
    assert ended.status is JobStatus.FAILED and "no worker took this job" in ended.error and ended.error_code == 503
    assert keys.balance(key.id) == 4  # the settled job's 2 credits are back (the lapsed record's 1 is lost)
    fresh = store.create(queue="q", kind="async", key_id=None, reserved=0.0, samples=1, max_queue=1)
    assert fresh is not None and store.depth("q") == 1
    assert store.start(stale.id, "late-worker") is None  # a worker arriving later does not run it


def test_sync_job_without_a_waiting_api_is_dropped_by_the_worker(client) -> None:
    store = RedisJobStore(client)
    job = store.create(queue="q", kind="sync", key_id=None, reserved=0.0, samples=1, max_queue=0)
    assert store.cancel_reason(job.id) is None  # the submitting API holds the waiter lease
    client.delete(f"sd3pose:job:{job.id}:waiter")  # ... until it dies and the lease lapses
    assert "went away" in store.cancel_reason(job.id)


def test_rate_limit_window_is_shared(redis_server, client) -> None:
    limiters = [RedisRateLimiter(redis_server.client()) for _ in range(2)]
    assert [limiters[i % 2].check("k", 3) for i in range(3)] == [0.0, 0.0, 0.0]
    wait = limiters[1].check("k", 3)
    assert 59 < wait <= 60
    assert limiters[0].check("other", 3) == 0.0 and limiters[0].check("k", 0) == 0.0


def test_keys_behave_like_the_sqlite_store(client) -> None:
    keys = RedisKeyStore(client)
    key, secret = keys.create("alice", credits=None, scopes=["generate"])
    assert keys.verify(secret) == key and key.unlimited and key.scopes == ("generate",)
    other_last = "y" if secret.endswith("x") else "x"  # a secret one character off (1 in 64 end in x)
    assert keys.verify(secret[:-1] + other_last) is None and keys.verify("nonsense") is None
    assert keys.find("alice") == key and keys.active_count() == 1
    keys.revoke(key.id)
    assert keys.verify(secret) is None and keys.active_count() == 0
    with pytest.raises(InvalidRequestError, match="unlimited"):
        keys.add_credits(key.id, 5)


def test_queue_names_route_by_model() -> None:
    assert queue_name("/m/base/", "/m/cn", True) == queue_name("/m/base", "/m/cn", True)
    assert queue_name("/m/base", "/m/cn", True) != queue_name("/m/base", "/m/cn", False)
    assert queue_name(None, None, True) != queue_name("/m/base", "/m/cn", True)
    with pytest.raises(InvalidRequestError, match="redis://"):
        check_broker_url("amqp://localhost")


def test_a_waiting_sync_request_wakes_when_its_job_ends(client) -> None:
    import threading
    import time

    store = RedisJobStore(client)
    job = store.create(queue="q", kind="sync", key_id=None, reserved=0.0, samples=1, max_queue=0)
    image = GenerationResult([b"png"], "image/png", [3], 64, 64, None, None, {})
    worker = threading.Timer(0.3, lambda: store.complete(job.id, image))
    worker.start()
    start = time.monotonic()
    store.wait_done(job.id, 10.0)
    assert 0.2 < time.monotonic() - start < 5.0  # woken by the finish, long before the 10 s timeout
    assert store.get(job.id).status is JobStatus.COMPLETED
    worker.join(10)  # it still tidies up after the finish; the connection closes after the test


class _OneImageGenerator:
    """Stands in for pipeline.Generator: one fixed image per sample, with stage timings."""

    def run(self, request, *, on_step=None, cancelled=None) -> GenerationResult:
        on_step(1, 1)
        return GenerationResult(
            [b"img"] * request.samples, "image/jpeg", request.seeds, 64, 64, None, None, {"generate": 0.3, "pose": 0.02}
        )


def test_a_worker_exports_job_timings_for_prometheus(client) -> None:
    from sd3pose.distributed.worker import JobRunner
    from sd3pose.request import parse_request

    store = RedisJobStore(client)
    runner = JobRunner(_OneImageGenerator(), store, WorkerLease("w1"))
    request = parse_request({"image": "x", "prompt": "a dancer", "samples": 2})
    job = store.create(queue="q", kind="async", key_id=None, reserved=0.0, samples=2, max_queue=0)
    runner.run(job.id, request.model_dump_json(by_alias=True))
    runner.run(job.id, request.model_dump_json(by_alias=True))  # a redelivered copy: skipped, not counted

    assert store.get(job.id).status is JobStatus.COMPLETED
    text = runner.metrics.render().decode()
    assert 'sd3pose_jobs_finished_total{status="COMPLETED"} 1.0' in text
    assert "sd3pose_images_generated_total 2.0" in text
    assert "sd3pose_generation_seconds_count 1.0" in text and "sd3pose_generation_seconds_sum 0.3" in text


def test_an_unanswered_pose_preview_expires_instead_of_running_later(redis_server, client, monkeypatch) -> None:
    """No worker answered in time and the client got its 429: a worker that comes up later must not
    still run the preview (downloading the image, detecting the pose) for nobody."""
    import json

    from sd3pose.distributed import queue as queue_module
    from sd3pose.distributed.queue import CeleryJobQueue
    from sd3pose.jobs.contract import NoWorkerAnsweredError
    from sd3pose.request import parse_request

    monkeypatch.setattr(queue_module, "PREVIEW_TIMEOUT_S", 0.2)
    jobs = CeleryJobQueue(redis_server.url, "sd3pose.gen.preview-test", client=client)
    try:
        with pytest.raises(NoWorkerAnsweredError, match="no worker answered"):
            jobs.preview_pose(parse_request({"image": "aGVsbG8=", "prompt": "pose preview"}))
        messages = [json.loads(m) for m in client.lrange("sd3pose.gen.preview-test", 0, -1)]
        assert len(messages) == 1 and messages[0]["headers"]["task"] == "sd3pose.preview_pose"
        assert messages[0]["headers"]["expires"] is not None  # a worker discards it once this passes
    finally:
        jobs.stop()


def test_a_job_cancelled_before_it_completes_is_refunded_not_completed(client) -> None:
    """The race of a sync timeout with the last step, on Redis: the cancel recorded first wins."""
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = store.create(queue="q", kind="sync", key_id=key.id, reserved=1.0, samples=1, max_queue=0)
    assert store.start(job.id, "w1") is not None
    store.cancel(job.id, "timed out after 1 s")  # the API gave up while the last step ran
    finished = GenerationResult([b"jpeg"], "image/jpeg", [1], 64, 64, None, None, {})
    assert not store.complete(job.id, finished)
    info = store.get(job.id)
    assert info.status is JobStatus.FAILED and info.error == "timed out after 1 s" and info.error_code == 504
    assert keys.balance(key.id) == 3 and store.result(job.id) is None


def test_a_job_cancelled_as_a_worker_starts_it_stops_that_run(client) -> None:
    """The cancel of a queued job and a worker's start of it can interleave: the run must not go on for a
    job that has ended."""
    store = RedisJobStore(client)
    job = store.create(queue="q", kind="async", key_id=None, reserved=0.0, samples=1, max_queue=0)
    runs = []
    real_cancel = store._cancel

    def cancel_as_a_worker_starts(keys, args):
        answer = real_cancel(keys=keys, args=args)  # read QUEUED ...
        runs.append(store.start(job.id, "w1"))  # ... a worker starts it ...
        return answer  # ... and the cancel ends it

    store._cancel = cancel_as_a_worker_starts
    store.cancel(job.id, "timed out after 300 s")
    assert store.get(job.id).status is JobStatus.FAILED
    assert store.cancel_reason(job.id, run=runs[0].run) == "timed out after 300 s"


def test_a_replayed_create_does_not_count_the_job_against_itself(client) -> None:
    # redis-py retries a script whose reply was lost; the first run may already have recorded the job.
    store = RedisJobStore(client)
    store._create = replayed(store._create)
    job = store.create(queue="q", kind="async", key_id=None, reserved=0.0, samples=1, max_queue=1)
    assert job is not None  # not "queue full" (max_queue 1, the job itself)
    assert store.depth("q") == 1


def test_a_duplicate_run_never_replaces_or_revives_delivered_images(client) -> None:
    store = RedisJobStore(client)
    job = store.create(queue="q", kind="sync", key_id=None, reserved=0.0, samples=1, max_queue=0)
    assert store.start(job.id, "w1") is not None
    client.delete(lease_key("w1"))  # w1 looked dead (its lease lapsed) ...
    assert store.start(job.id, "w2").redelivered  # ... so the job runs a second time

    def image(data: bytes) -> GenerationResult:
        return GenerationResult([data], "image/jpeg", [1], 64, 64, None, None, {})

    assert store.complete(job.id, image(b"first"))
    assert store.result(job.id).images == [b"first"]
    assert not store.complete(job.id, image(b"second"))  # the later run loses ...
    assert store.result(job.id).images == [b"first"]  # ... and its bytes are not published
    store.forget(job.id)  # the sync client has its image
    assert not store.complete(job.id, image(b"third"))
    assert client.keys(f"sd3pose:job:{job.id}:data*") == []  # nothing revived, nothing staged left behind


def test_a_job_whose_worker_keeps_dying_is_failed_and_refunded_not_retried_forever(client) -> None:
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = store.create(queue="q", kind="async", key_id=key.id, reserved=1.0, samples=1, max_queue=0)
    for worker in ("w1", "w2", "w3"):  # each run kills its worker; the broker redelivers the job
        assert store.start(job.id, worker) is not None
        client.delete(lease_key(worker))
    assert store.start(job.id, "w4") is None
    ended = store.get(job.id)
    assert ended.status is JobStatus.FAILED and "stopped 3 times" in ended.error
    assert keys.balance(key.id) == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:Sup3rSecret@10.0.0.7:6379/0", "redis://10.0.0.7:6379/0"),
        ("redis://user:pa@ss-Sup3rSecret@10.0.0.7:6379/0", "redis://10.0.0.7:6379/0"),  # '@' inside the password
        ("redis://10.0.0.7:6379/0?password=Sup3rSecret", "redis://10.0.0.7:6379/0"),
        ("rediss://[::1]:6380/2", "rediss://[::1]:6380/2"),
        ("redis://:Sup3rSecret@[::1:6379/0", "redis://..."),  # unparseable: the scheme only, never a traceback
    ],
)
def test_broker_passwords_never_reach_logs_or_answers(url: str, shown: str) -> None:
    from sd3pose.distributed.config import redacted_url

    assert redacted_url(url) == shown


def test_readiness_with_redis_down_says_so_without_hosts_or_passwords(caplog) -> None:
    url = "redis://:Sup3rSecret@127.0.0.1:1/0"  # nothing listens on port 1
    queue = CeleryJobQueue(url, "q", client=redis.Redis.from_url(url))  # no reconnect retries: fails at once
    ready, detail = queue.readiness()
    assert not ready and "job store" in detail and "127.0.0.1" not in detail and "Sup3rSecret" not in detail
    assert "Sup3rSecret" not in caplog.text and "127.0.0.1:1" in caplog.text  # the operator's log has the host
    queue.stop()


def test_redis_credit_changes_check_the_floor_atomically_and_stay_finite(client) -> None:
    keys = RedisKeyStore(client)
    key, _ = keys.create("bob", credits=5)
    real_load = keys._load

    def load_then_a_request_reserves(key_id: str):
        found = real_load(key_id)
        assert keys.reserve(key_id, 3)
        return found

    keys._load = load_then_a_request_reserves
    with pytest.raises(InvalidRequestError, match="has 2 credits; removing 5 would leave it below 0"):
        keys.add_credits(key.id, -5)
    keys._load = real_load
    assert keys.balance(key.id) == 2
    # Balances are whole micro-credits (HINCRBY): a billion credits at most, never a float that could reach inf.
    keys.add_credits(key.id, 999_999_990)
    with pytest.raises(InvalidRequestError, match="cannot hold more than 1000000000 credits"):
        keys.add_credits(key.id, 1e308)
    assert keys.balance(key.id) == 999_999_992


def test_a_replayed_credit_change_is_applied_once_and_reported_as_applied(client) -> None:
    # redis-py replays a script whose reply was lost: the replay must neither apply it again nor, now
    # that the balance is lower, report the change as refused.
    keys = RedisKeyStore(client)
    key, _ = keys.create("bob", credits=5)
    call = {"keys": [f"sd3pose:key:{key.id}", "sd3pose:op:replayed"], "args": [str(-5 * 10**6), 60]}  # micro
    assert keys._add(**call) == 1
    assert keys._add(**call) == 1
    assert keys.balance(key.id) == 0


def test_queue_depth_with_redis_down_is_an_error_not_zero() -> None:
    from sd3pose.jobs.contract import StoreUnavailableError

    url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    queue = CeleryJobQueue(url, "q", client=redis.Redis.from_url(url))
    with pytest.raises(StoreUnavailableError, match="job store"):
        queue.depth()
    queue.stop()


def test_a_worker_that_cannot_store_a_result_fails_the_job_instead_of_leaving_it_running(client) -> None:
    from sd3pose.distributed.worker import JobRunner

    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = store.create(queue="q", kind="async", key_id=key.id, reserved=1.0, samples=1, max_queue=0)
    request = parse_request({"image": "x", "prompt": "a dancer"})

    def full_disk(job_id, result) -> bool:
        raise redis.exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'")

    store.complete = full_disk
    JobRunner(_OneImageGenerator(), store, WorkerLease("w1")).run(job.id, request.model_dump_json(by_alias=True))
    ended = store.get(job.id)
    assert ended.status is JobStatus.FAILED and "could not store the outcome" in ended.error
    assert keys.balance(key.id) == 3  # refunded


def test_keys_written_with_float_credits_are_migrated_to_micro_credits_once(client) -> None:
    client.hset(
        "sd3pose:key:0123456789ab",
        mapping={"name": "old", "key_hash": "x", "credits": "4.9", "scopes": "generate", "created_at": "1"},
    )
    client.zadd("sd3pose:keys", {"0123456789ab": 1})
    keys = RedisKeyStore(client)
    assert keys.balance("0123456789ab") == 4.9 and client.hget("sd3pose:key:0123456789ab", "credits") is None
    for _ in range(49):
        assert keys.reserve("0123456789ab", 0.1)
    assert keys.balance("0123456789ab") == 0 and not keys.reserve("0123456789ab", 0.1)  # exactly, not -2.8e-17
    RedisKeyStore(client)  # a second replica starting: nothing converted twice
    assert keys.balance("0123456789ab") == 0


def test_an_input_is_stored_once_beside_its_jobs_and_deleted_when_the_last_ends(redis_server, client) -> None:
    queue = CeleryJobQueue(redis_server.url, "q", client=client)
    queue.celery.send_task = lambda *args, **kwargs: None  # no broker traffic: this test plays the worker
    request = parse_request({"image": "x", "prompt": "a dancer", "seed": 5})
    photo = b"\x89PNG" + b"p" * 100_000
    first = queue.submit(request, kind="async", key_id=None, reserved=0.0, image=photo)
    second = queue.submit(request, kind="async", key_id=None, reserved=0.0, image=photo)
    stored = [k for k in client.keys("sd3pose:input:*") if not k.endswith(b":jobs")]
    assert len(stored) == 1 and client.get(stored[0]) == photo
    assert client.hget(f"sd3pose:job:{first.id}", "input") == stored[0].split(b":")[-1]
    queue.store.fail(first.id, "no person found", 400)
    assert client.exists(stored[0])  # the second job still needs it
    queue.store.cancel(second.id, "timed out")
    assert client.keys("sd3pose:input:*") == []
    queue.stop()


def test_a_job_store_over_the_storage_cap_refuses_new_jobs_with_503(redis_server, client) -> None:
    from sd3pose.jobs.contract import StorageFullError

    queue = CeleryJobQueue(redis_server.url, "q", client=client, max_disk_bytes=queue_used(client) + 50_000)
    queue.celery.send_task = lambda *args, **kwargs: None
    request = parse_request({"image": "x", "prompt": "a dancer", "seed": 5})
    with pytest.raises(StorageFullError, match="storage is full") as refused:
        queue.submit(request, kind="async", key_id=None, reserved=0.0, image=b"p" * 100_000)
    assert refused.value.status_code == 503 and client.keys("sd3pose:job:*") == []
    assert queue.submit(request, kind="async", key_id=None, reserved=0.0, image=b"p" * 1000) is not None
    assert queue.storage_used() > 0
    queue.stop()


def test_the_storage_cap_counts_the_stored_request_too(redis_server, client) -> None:
    """A request of OpenPose keypoints has no image, but it is stored whole until its job ends."""
    from sd3pose.jobs.contract import StorageFullError

    queue = CeleryJobQueue(redis_server.url, "q", client=client, max_disk_bytes=queue_used(client) + 200_000)
    queue.celery.send_task = lambda *args, **kwargs: None
    crowd = {"people": [{"pose_keypoints_2d": [123.456789] * 54} for _ in range(800)], "canvas_width": 512}
    request = parse_request({"pose_keypoints": crowd, "prompt": "a crowd", "seed": 5})
    assert len(request.model_dump_json()) > 400_000
    with pytest.raises(StorageFullError, match="storage is full"):
        queue.submit(request, kind="async", key_id=None, reserved=0.0)
    assert client.keys("sd3pose:job:*") == []
    queue.stop()


def queue_used(client) -> int:
    return int(client.info("memory")["used_memory"])
