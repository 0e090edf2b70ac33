"""Liveness and recovery on a real Redis, without worker processes: leases, the reaper, stale copies of a
job's message, hand-back on stop. (test_failover.py does the same with real workers and SIGKILL.)"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis
from celery.exceptions import Reject
from dist_cluster import RedisServer, replayed, require_redis

from sd3pose.distributed.celery_app import make_celery, send_job
from sd3pose.distributed.config import lease_key, running_key
from sd3pose.distributed.jobstore import SUPERSEDED, RedisJobStore, job_key
from sd3pose.distributed.keystore import RedisKeyStore
from sd3pose.distributed.lease import Heartbeat, WorkerLease
from sd3pose.distributed.queue import CeleryJobQueue
from sd3pose.distributed.recovery import Reaper, Recovery
from sd3pose.distributed.worker import JobRunner
from sd3pose.errors import GenerationCancelledError
from sd3pose.jobs.contract import JobStatus
from sd3pose.request import parse_request
from sd3pose.results import GenerationResult

REQUEST = parse_request({"image": "aGVsbG8=", "prompt": "a dancer", "num_inference_steps": 2})


def image(data: bytes = b"jpeg") -> GenerationResult:
    return GenerationResult([data], "image/jpeg", [1], 64, 64, None, None, {})


def new_job(store: RedisJobStore, queue: str = "q", key_id: str | None = None, reserved: float = 0.0):
    return store.create(
        queue=queue,
        kind="async",
        key_id=key_id,
        reserved=reserved,
        samples=1,
        max_queue=0,
        request_json=REQUEST.model_dump_json(by_alias=True),
    )


def field(client, job_id: str, name: str) -> str | None:
    value = client.hget(f"sd3pose:job:{job_id}", name)
    return value.decode() if value is not None else None


def wait_uptime(client, seconds: float) -> None:
    """The reaper leaves a lapsed lease alone for one lease lifetime after Redis starts: let that pass."""
    while client.info("server")["uptime_in_seconds"] < seconds:
        time.sleep(0.1)


def queued_messages(app, queue: str) -> list[str]:
    """The job ids of the task messages waiting in `queue`, in the order a worker takes them (and takes them)."""
    taken = []
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(json.loads(message.body)[0][0])
    return taken


class StepGenerator:
    """Stands in for pipeline.Generator: `steps` steps of `step_s`, stopping at a step when cancelled."""

    def __init__(self, steps: int = 40, step_s: float = 0.01, at_step=None) -> None:
        self.steps, self.step_s, self.at_step, self.ran = steps, step_s, at_step, 0

    def run(self, request, *, on_step=None, cancelled=None) -> GenerationResult:
        for step in range(self.steps):
            if cancelled is not None and cancelled():
                raise GenerationCancelledError("the generation was cancelled")
            if self.at_step is not None:
                self.at_step(step)
            time.sleep(self.step_s)
            self.ran += 1
            on_step(step + 1, self.steps)
        return image()


def test_a_stale_copy_is_dropped_while_its_worker_lives_and_only_the_current_run_ends_the_job(client) -> None:
    store = RedisJobStore(client)
    job = new_job(store)
    first = store.start(job.id, "w1", instance="w1:a")
    assert first is not None and client.get(lease_key("w1:a")) == job.id.encode()  # the lease names the job
    assert store.start(job.id, "w2", instance="w2:b") is None  # a second copy of its message: w1 lives
    assert field(client, job.id, "attempts") == "1" and field(client, job.id, "worker") == "w1"

    client.delete(lease_key("w1:a"))  # w1 dies: its lease lapses
    second = store.start(job.id, "w2", instance="w2:b")
    assert second is not None and second.redelivered and field(client, job.id, "attempts") == "2"
    # The first run (were w1 only cut off, not dead) can no longer end the job in any way.
    assert store.cancel_reason(job.id, run=first.run) == SUPERSEDED
    assert store.cancel_reason(job.id, run=second.run) is None
    assert not store.fail(job.id, "out of memory", 500, run=first.run)
    assert not store.complete(job.id, image(b"first"), run=first.run)
    assert store.get(job.id).status is JobStatus.PROCESSING
    assert store.complete(job.id, image(b"second"), run=second.run)
    assert store.result(job.id).images == [b"second"]
    assert not client.exists(job_key(job.id, "request"))  # an ended job keeps no request


def test_a_start_whose_reply_was_lost_is_not_taken_for_a_stale_copy(client) -> None:
    store = RedisJobStore(client)
    job = new_job(store)
    store._start = replayed(store._start)
    started = store.start(job.id, "w1", instance="w1:a")
    assert started is not None and not started.redelivered
    assert field(client, job.id, "attempts") == "1" and field(client, job.id, "run") == started.run


def test_a_hand_back_whose_reply_was_lost_still_sends_the_job(client) -> None:
    store, sent = RedisJobStore(client), []
    job = new_job(store)
    started = store.start(job.id, "w1")
    recovery = Recovery(store, lambda job_id, queue: sent.append(job_id))
    recovery._hand_back = replayed(recovery._hand_back)
    assert recovery.hand_back(job.id, started.run)
    assert sent == [job.id] and store.get(job.id).status is JobStatus.QUEUED
    assert field(client, job.id, "attempts") == "0"


def test_the_reaper_sends_a_dead_workers_job_once_ahead_of_the_waiting_jobs(redis_server, client) -> None:
    wait_uptime(client, 1)
    app = make_celery(redis_server.url)
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    queue = "sd3pose.gen.front-test"
    job = new_job(store, queue, key.id, reserved=1.0)
    send_job(app, job.id, queue)
    assert queued_messages(app, queue) == [job.id]  # a worker took its message ...
    waiting = [new_job(store, queue) for _ in range(3)]
    for other in waiting:
        send_job(app, other.id, queue)
    assert store.start(job.id, "w1", instance="w1:a", lease_ttl_s=0.5) is not None
    client.delete(lease_key("w1:a"))  # ... and was killed

    recovery = Recovery(store, lambda job_id, job_queue: send_job(app, job_id, job_queue, front=True))
    assert recovery.sweep() == [job.id]
    assert recovery.sweep() == []  # requeued once, not at every sweep
    info = store.get(job.id)
    assert info.status is JobStatus.QUEUED and info.progress is None and store.depth(queue) == 4
    assert queued_messages(app, queue) == [job.id, *(other.id for other in waiting)]

    restarted = store.start(job.id, "w2", instance="w2:b")
    assert restarted is not None and field(client, job.id, "attempts") == "2"
    assert store.complete(job.id, image(), run=restarted.run)
    assert keys.balance(key.id) == 2  # charged once
    assert recovery.sweep() == [] and client.zscore(running_key(), job.id) is None  # ended: no longer watched
    app.close()


def test_one_process_sweeps_at_a_time(redis_server, client) -> None:
    wait_uptime(client, 1)
    store = RedisJobStore(client)
    job = new_job(store)
    store.start(job.id, "w1", lease_ttl_s=0.5)
    client.delete(lease_key("w1"))
    mine = Reaper(Recovery(store, lambda job_id, queue: None))
    other = Reaper(Recovery(RedisJobStore(redis_server.client()), lambda job_id, queue: None))
    held = redis_server.client().lock("sd3pose:reaper", timeout=10)
    assert held.acquire(blocking=False)  # another replica is sweeping
    assert mine.sweep_once() is None and store.get(job.id).status is JobStatus.PROCESSING
    held.release()
    assert mine.sweep_once() == [job.id] and other.sweep_once() == []


def test_a_process_stuck_mid_sweep_delays_the_others_by_two_intervals_at_most(redis_server, client) -> None:
    # A process killed (or frozen) mid-sweep never releases the sweep lock: the lock's own lifetime must
    # bound how long the other processes wait to requeue a dead worker's job.
    wait_uptime(client, 1)
    store = RedisJobStore(client)
    job = new_job(store)
    store.start(job.id, "w1", lease_ttl_s=0.5)
    client.delete(lease_key("w1"))
    interval_s, frozen, swept = 0.2, threading.Event(), threading.Event()

    class FrozenRecovery(Recovery):
        def sweep(self) -> list[str]:
            swept.set()
            frozen.wait(30)
            return []

    stuck = Reaper(FrozenRecovery(RedisJobStore(redis_server.client()), lambda job_id, queue: None), interval_s)
    threading.Thread(target=stuck.sweep_once, daemon=True).start()
    assert swept.wait(5)
    mine = Reaper(Recovery(store, lambda job_id, queue: None), interval_s=interval_s)
    assert mine.sweep_once() is None  # the stuck process holds the lock
    started = time.monotonic()
    while (requeued := mine.sweep_once()) is None:
        assert time.monotonic() - started < 2 * interval_s + 1.0, "the stuck sweep's lock outlived two intervals"
        time.sleep(0.02)
    frozen.set()
    assert requeued == [job.id] and store.get(job.id).status is JobStatus.QUEUED


def test_a_job_whose_workers_keep_dying_is_failed_and_refunded_by_the_reaper(redis_server, client) -> None:
    wait_uptime(client, 1)
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = new_job(store, key_id=key.id, reserved=1.0)
    sent: list[str] = []
    recovery = Recovery(store, lambda job_id, queue: sent.append(job_id))
    for worker in ("w1", "w2", "w3"):
        assert store.start(job.id, worker, lease_ttl_s=0.5) is not None
        client.delete(lease_key(worker))  # this run kills its worker
        recovery.sweep()
    ended = store.get(job.id)
    assert ended.status is JobStatus.FAILED and "stopped 3 times" in ended.error
    assert sent == [job.id, job.id]  # sent again after the first two deaths, not after the third
    assert keys.balance(key.id) == 3


def test_after_a_redis_restart_each_worker_gets_one_lease_lifetime_to_renew(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path)
    server.start()
    try:
        with server.client() as client:
            store, sent = RedisJobStore(client), []
            recovery = Recovery(store, lambda job_id, queue: sent.append(job_id))
            alive, dead = WorkerLease("alive", heartbeat_s=0.5), WorkerLease("dead", heartbeat_s=0.5)
            jobs = {}
            for lease in (alive, dead):
                jobs[lease.name] = new_job(store)
                lease.job = jobs[lease.name].id
                store.start(lease.job, lease.name, instance=lease.instance, lease_ttl_s=lease.ttl_s)
            server.restart()
            client.delete(alive.key, dead.key)  # both leases lapsed while Redis was down
            assert recovery.sweep() == []  # Redis just started: nobody has had the time to renew
            heartbeat = Heartbeat(server.client(), alive, "q")  # the live worker renews, every 0.5 s
            heartbeat.start()
            try:
                wait_uptime(client, alive.ttl_s)
                assert recovery.sweep() == [jobs["dead"].id] == sent
                assert store.get(jobs["alive"].id).status is JobStatus.PROCESSING
            finally:
                heartbeat.stop()
    finally:
        server.stop()


def test_a_pure_python_step_longer_than_three_lease_lifetimes_is_never_preempted(redis_server, client) -> None:
    """The lease is renewed from its own thread while the job's thread runs Python bytecode without pause."""
    wait_uptime(client, 1)
    store, sent = RedisJobStore(client), []
    lease = WorkerLease("busy", heartbeat_s=0.2)  # lives 0.6 s
    ghost = new_job(store)  # a job whose worker is dead: proves the reaper sweeps all along
    store.start(ghost.id, "ghost", lease_ttl_s=lease.ttl_s)
    client.delete(lease_key("ghost"))
    job = new_job(store)

    class PurePython:
        runs = 0

        def run(self, request, *, on_step=None, cancelled=None) -> GenerationResult:
            self.runs += 1
            end = time.monotonic() + 3 * lease.ttl_s + 0.5
            while time.monotonic() < end:
                total = 0
                for i in range(10_000):
                    total += i * i
            if cancelled():  # the next step boundary: a run whose job went to another worker stops here
                raise GenerationCancelledError("the generation was cancelled")
            return image()

    generator = PurePython()
    heartbeat = Heartbeat(redis_server.client(), lease, "q")
    reaper = Reaper(Recovery(store, lambda job_id, queue: sent.append(job_id)), interval_s=0.05)
    heartbeat.start()
    reaper.start()
    try:
        JobRunner(generator, store, lease).run(job.id)
    finally:
        reaper.stop()
        heartbeat.stop()
    assert generator.runs == 1 and store.get(job.id).status is JobStatus.COMPLETED
    assert field(client, job.id, "attempts") == "1" and sent == [ghost.id]


def test_a_stopping_worker_hands_its_job_back_at_the_next_step_and_the_next_worker_finishes_it(client) -> None:
    keys, store = RedisKeyStore(client), RedisJobStore(client)
    key, _ = keys.create("payer", credits=3)
    assert keys.reserve(key.id, 1.0)
    job = new_job(store, key_id=key.id, reserved=1.0)
    sent: list[tuple[str, str]] = []
    recovery = Recovery(store, lambda job_id, queue: sent.append((job_id, queue)))
    stopping_at = StepGenerator(at_step=lambda step: step == 5 and runner.stopping.set())
    runner = JobRunner(stopping_at, store, WorkerLease("w1"), recovery=recovery)
    runner.run(job.id)

    assert stopping_at.ran == 6  # stopped at the step after the grace ran out, not at the end
    info = store.get(job.id)
    assert info.status is JobStatus.QUEUED and store.depth("q") == 1 and sent == [(job.id, "q")]
    assert field(client, job.id, "attempts") == "0"  # a stop is not a failed start
    assert keys.balance(key.id) == 2  # still reserved: neither refunded nor charged yet

    finishing = StepGenerator()
    JobRunner(finishing, store, WorkerLease("w2"), recovery=recovery).run(job.id)
    assert finishing.ran == finishing.steps and store.get(job.id).status is JobStatus.COMPLETED
    assert keys.balance(key.id) == 2 and field(client, job.id, "attempts") == "1"


def test_a_hand_back_that_cannot_be_sent_returns_the_task_message_to_the_broker(client) -> None:
    store = RedisJobStore(client)
    job = new_job(store)

    def broker_down(job_id: str, queue: str) -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    runner = JobRunner(StepGenerator(), store, WorkerLease("w1"), recovery=Recovery(store, broker_down))
    runner.stopping.set()
    with pytest.raises(Reject) as rejected:
        runner.run(job.id)
    assert rejected.value.requeue  # Celery puts the original message back instead of acknowledging it
    assert store.get(job.id).status is JobStatus.QUEUED


def test_an_api_replica_alone_requeues_the_job_of_a_dead_worker(redis_server, client) -> None:
    wait_uptime(client, 1)
    store = RedisJobStore(client)
    queue = CeleryJobQueue(redis_server.url, "sd3pose.gen.api-reaper", client=redis_server.client())
    job = new_job(store, "sd3pose.gen.api-reaper")
    assert store.start(job.id, "w1", lease_ttl_s=0.5) is not None
    client.delete(lease_key("w1"))
    queue.start()  # what the app does at start-up
    try:
        deadline = time.monotonic() + 10
        while store.get(job.id).status is not JobStatus.QUEUED:
            assert time.monotonic() < deadline, "the API replica's reaper did not requeue the job"
            time.sleep(0.05)
        assert queued_messages(queue.celery, "sd3pose.gen.api-reaper") == [job.id]
    finally:
        queue.stop()
