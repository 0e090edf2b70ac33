"""Failover on real processes: a killed worker's job runs again within seconds, a live one's never twice.

The shared cluster: two workers on the tiny model with half-second heartbeats (a lease lives 1.5 s) and
the production visibility timeout (600 s), so any recovery within seconds here is the lease's.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from dist_cluster import GRACE_S, LEASE_TTL_S, Cluster, balance, body, get_json, job_field, new_key, wait_status

from sd3pose.distributed.celery_app import make_celery, send_job
from sd3pose.distributed.config import queue_name, running_key

REAPER_INTERVAL_S = 1.0
# Scheduling slack on a loaded test machine, on top of what failover itself takes.
SLACK_S = 3.0


def running_job(cluster: Cluster, min_step: int = 2, besides: str = "", timeout_s: float = 60.0) -> str:
    """The id of the job running in the cluster (other than `besides`), once it has reported `min_step` steps."""
    deadline = time.monotonic() + timeout_s
    with cluster.redis.client() as client:
        while True:
            for raw in client.zrange(running_key(), 0, -1):
                job_id = raw.decode()
                if job_id == besides:
                    continue
                progress = job_field(cluster, job_id, "progress") or "0/0"
                if job_field(cluster, job_id, "status") == "PROCESSING" and int(progress.split("/")[0]) >= min_step:
                    return job_id
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.02)


def wait_for_log(cluster: Cluster, worker: str, text: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in cluster.workers[worker].log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)


def other(worker: str) -> str:
    return ({"w1", "w2"} - {worker}).pop()


def test_a_live_worker_holding_a_job_for_three_lease_lifetimes_runs_it_once(cluster) -> None:
    cluster.ensure_running()
    _, secret = new_key(cluster, credits=5)
    headers = {"x-api-key": secret}
    for size in (640, 1024):  # the larger one only where the first runs too fast
        job = httpx.post(
            f"{cluster.urls['a']}/v2/sd3-med-pose", json=body(steps=100, size=size, seed=5), headers=headers
        ).json()
        job_id = running_job(cluster, min_step=1)
        holder = job_field(cluster, job_id, "worker")
        # A second copy of its message, as Redis hands out a message unacknowledged for the visibility
        # timeout: the idle worker takes it and must drop it.
        app = make_celery(cluster.redis.url)
        send_job(app, job_id, queue_name(cluster.model_args[1], cluster.model_args[3], True), front=True)
        app.close()
        wait_for_log(cluster, other(holder), f"job {job_id}: a stale copy of its message")

        done = wait_status(job["status_url"], headers, {"COMPLETED", "FAILED"}, logs=cluster.logs)
        assert done["status"] == "COMPLETED", done
        assert job_field(cluster, job_id, "attempts") == "1" and job_field(cluster, job_id, "worker") == holder
        assert f"job {job_id}: started" not in cluster.workers[other(holder)].log_path.read_text(errors="replace")
        held = float(job_field(cluster, job_id, "finished_at")) - float(job_field(cluster, job_id, "started_at"))
        if held >= 3 * LEASE_TTL_S:
            return
    pytest.fail(f"the premise: no job outlasted 3 lease lifetimes ({3 * LEASE_TTL_S:g} s) on this machine")


def test_worker_killed_mid_job_a_waiting_sync_client_gets_its_image_and_is_charged_once(cluster) -> None:
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=5)
    answer: list[httpx.Response] = []

    def sync_client() -> None:
        answer.append(
            httpx.post(
                f"{cluster.urls['a']}/v1/sd3-med-pose",
                json=body(steps=100, size=512, seed=3),
                headers={"x-api-key": secret},
                timeout=120,
            )
        )

    waiting = threading.Thread(target=sync_client)
    waiting.start()
    job_id = running_job(cluster)
    first = job_field(cluster, job_id, "worker")
    killed_at = time.time()
    cluster.workers[first].kill9()
    waiting.join(120)

    response = answer[0]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg" and response.headers["x-seed"] == "3"
    assert balance(cluster, key_id) == 4  # charged once
    assert job_field(cluster, job_id, "worker") == other(first) and job_field(cluster, job_id, "attempts") == "2"
    restarted = float(job_field(cluster, job_id, "started_at"))
    finished = float(job_field(cluster, job_id, "finished_at"))
    # Restarted one lease lifetime (and at most a reaper interval) after the kill, not after the visibility timeout.
    assert restarted - killed_at <= LEASE_TTL_S + REAPER_INTERVAL_S + SLACK_S, restarted - killed_at
    assert finished - killed_at <= 30 + (finished - restarted)


def test_sigterm_lets_a_job_finish_within_the_grace_and_hands_a_longer_one_back(cluster) -> None:
    """Both workers stop at once (a rolling restart): the short job finishes where it runs; the long one goes
    back to the queue when the grace runs out (not counted as a failed start) and runs on the next worker."""
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=5)
    headers = {"x-api-key": secret}
    url = f"{cluster.urls['a']}/v2/sd3-med-pose"
    long_job = httpx.post(url, json=body(steps=100, size=640, seed=9), headers=headers).json()
    long_id = running_job(cluster)
    short_job = httpx.post(url, json=body(steps=100, size=128, seed=8), headers=headers).json()
    short_id = running_job(cluster, min_step=1, besides=long_id)
    long_worker = cluster.workers[job_field(cluster, long_id, "worker")]
    short_worker = cluster.workers[job_field(cluster, short_id, "worker")]
    stopped_at = time.monotonic()
    for worker in (long_worker, short_worker):
        worker.popen.send_signal(signal.SIGTERM)
    assert short_worker.popen.wait(GRACE_S + 30) == 0 and long_worker.popen.wait(GRACE_S + 30) == 0
    # Handed back when the grace ran out (at the next step), not after a lease lifetime or a timeout.
    assert time.monotonic() - stopped_at <= GRACE_S + SLACK_S
    assert f"job {long_id}: handed back to the queue" in long_worker.log_path.read_text(errors="replace")

    short = get_json(short_job["status_url"], headers)
    assert short["status"] == "COMPLETED", short
    assert job_field(cluster, short_id, "worker") == short_worker.name
    assert get_json(long_job["status_url"], headers)["status"] == "QUEUED"
    assert job_field(cluster, long_id, "attempts") == "0"  # a stop is not a failed start

    cluster.ensure_running()  # the workers come back
    done = wait_status(long_job["status_url"], headers, {"COMPLETED", "FAILED"}, logs=cluster.logs)
    assert done["status"] == "COMPLETED", done
    assert job_field(cluster, long_id, "attempts") == "1"
    assert balance(cluster, key_id) == 3  # each job charged once
