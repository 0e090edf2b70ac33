"""Scale-out on real processes: 2 workers + 2 API replicas over one Redis.

Workers and APIs are started once for the module (torch + diffusers start-up is the slow part); a
test that kills one restarts it for the next. Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from dist_cluster import JOB_TIMEOUT_S, SD3POSE, balance, body, get_json, job_field, new_key, wait_status


def on(url: str, other_url: str, path_url: str) -> str:
    """The same route on another API replica."""
    return path_url.replace(url, other_url, 1)


def test_two_apis_two_workers_serve_40_requests_from_8_clients_with_exact_credits(cluster) -> None:
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=100)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]

    def one(i: int) -> tuple[int, bytes]:
        seed = i % 4
        mine, other = (a, b) if i % 2 else (b, a)
        with httpx.Client(headers=headers, timeout=JOB_TIMEOUT_S) as client:
            if i % 4 < 2:  # sync on one replica
                response = client.post(f"{mine}/v1/sd3-med-pose", json=body(seed=seed))
                assert response.status_code == 200, response.text
                assert response.headers["x-seed"] == str(seed)
                return seed, response.content
            # async: submitted on one replica, followed and fetched on the other
            submitted = client.post(f"{mine}/v2/sd3-med-pose", json=body(seed=seed))
            assert submitted.status_code == 200, submitted.text
            done = wait_status(on(mine, other, submitted.json()["status_url"]), headers, {"COMPLETED", "FAILED"})
            assert done["status"] == "COMPLETED", done
            result = client.get(on(mine, other, submitted.json()["response_url"])).json()
            image = client.get(result["output"][0])
            assert image.status_code == 200 and image.headers["x-seed"] == str(seed)
            return seed, image.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(40)))

    assert len(answers) == 40
    # Same seed -> the same image whichever worker drew it; other seeds -> other images: no mix-ups.
    by_seed: dict[int, set[str]] = {}
    for seed, data in answers:
        by_seed.setdefault(seed, set()).add(hashlib.sha256(data).hexdigest())
    assert all(len(digests) == 1 for digests in by_seed.values()), {s: len(d) for s, d in by_seed.items()}
    assert len({next(iter(d)) for d in by_seed.values()}) == 4
    assert balance(cluster, key_id) == 60
    for url in (a, b):  # every replica reports the same, exact balance
        response = httpx.post(f"{url}/v2/sd3-med-pose", json={"prompt": ""}, headers=headers)
        assert response.status_code == 400 and response.headers["x-remaining-credits"] == "60"


def test_both_workers_take_jobs_and_progress_reaches_the_other_api(cluster) -> None:
    cluster.ensure_running()
    _, secret = new_key(cluster, credits=10)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]
    submitted = [
        httpx.post(f"{a}/v2/sd3-med-pose", json=body(steps=30, size=128, seed=i), headers=headers).json()
        for i in range(2)
    ]
    seen: list[dict] = []
    for job in submitted:
        url = on(a, b, job["status_url"])
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (status := get_json(url, headers))["status"] not in ("COMPLETED", "FAILED"):
            if status.get("progress"):
                seen.append(status["progress"])
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.01)
        assert status["status"] == "COMPLETED", status
    assert seen and all(p["total"] == 30 and 0 <= p["step"] <= 30 for p in seen), seen
    assert any(0 < p["step"] < 30 for p in seen), seen  # mid-run steps, not just start and end
    # Two jobs queued at once on two idle workers: each worker took one.
    assert {job_field(cluster, job["request_id"], "worker") for job in submitted} == {"w1", "w2"}


def test_rate_limit_is_shared_by_the_api_replicas(cluster) -> None:
    cluster.ensure_running()
    _, secret = new_key(cluster, credits=10, rate_limit=3)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]
    # Invalid bodies still count against the limit (checked first) and cost nothing.
    codes = [
        httpx.post(f"{url}/v1/sd3-med-pose", json={"prompt": ""}, headers=headers).status_code for url in (a, b, a)
    ]
    assert codes == [400, 400, 400]
    limited = httpx.post(f"{b}/v1/sd3-med-pose", json={"prompt": ""}, headers=headers)
    assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 60


def test_api_replica_killed_while_clients_wait_async_jobs_stay_retrievable(cluster) -> None:
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=10)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]
    jobs = [
        httpx.post(f"{a}/v2/sd3-med-pose", json=body(steps=10, size=128, seed=i), headers=headers).json()
        for i in range(4)
    ]
    sync_outcome: list[object] = []

    def sync_client() -> None:
        try:
            # Long enough (behind the 4 queued jobs) that it is surely still waiting when the API dies.
            sync_outcome.append(
                httpx.post(
                    f"{a}/v1/sd3-med-pose", json=body(steps=80, size=128), headers=headers, timeout=60
                ).status_code
            )
        except httpx.HTTPError as exc:
            sync_outcome.append(exc)

    waiter = threading.Thread(target=sync_client)
    waiter.start()
    time.sleep(0.3)  # the sync request is in, its client waiting
    cluster.apis["a"].kill9()
    waiter.join(60)
    assert sync_outcome and isinstance(sync_outcome[0], httpx.HTTPError)  # its connection died with the API

    for job in jobs:
        done = wait_status(on(a, b, job["status_url"]), headers, {"COMPLETED", "FAILED"}, logs=cluster.logs)
        assert done["status"] == "COMPLETED", done
        result = get_json(on(a, b, job["response_url"]), headers)
        image = httpx.get(result["output"][0], headers=headers)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    # The 4 async jobs are charged; the orphaned sync job at most once (it may have completed unseen).
    assert balance(cluster, key_id) in (5, 6)


def test_worker_killed_mid_job_the_job_completes_on_the_other_worker_charged_once(cluster) -> None:
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=5)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]
    job = httpx.post(f"{a}/v2/sd3-med-pose", json=body(steps=60, size=128, seed=7), headers=headers).json()
    job_id = job["request_id"]
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ((p := get_json(job["status_url"], headers).get("progress")) and p["step"] >= 2):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.01)
    first = job_field(cluster, job_id, "worker")
    assert first in ("w1", "w2")
    cluster.workers[first].kill9()  # mid-job: its message stays unacknowledged

    done = wait_status(on(a, b, job["status_url"]), headers, {"COMPLETED", "FAILED"}, logs=cluster.logs)
    assert done["status"] == "COMPLETED", done
    assert job_field(cluster, job_id, "worker") == ({"w1", "w2"} - {first}).pop()
    assert int(job_field(cluster, job_id, "attempts") or 0) == 2
    result = get_json(on(a, b, job["response_url"]), headers)
    assert httpx.get(result["output"][0], headers=headers).status_code == 200
    assert balance(cluster, key_id) == 4  # charged once


def test_redis_restart_with_queued_jobs_they_still_complete(cluster) -> None:
    cluster.ensure_running()
    key_id, secret = new_key(cluster, credits=20)
    headers = {"x-api-key": secret}
    a, b = cluster.urls["a"], cluster.urls["b"]
    jobs = [
        httpx.post(f"{(a, b)[i % 2]}/v2/sd3-med-pose", json=body(steps=30, size=128, seed=i), headers=headers).json()
        for i in range(8)
    ]
    with cluster.redis.client() as client:
        queued = sum(client.zcard(name) for name in client.scan_iter("sd3pose:queued:*"))
    assert queued >= 2, "the scenario needs jobs still waiting in the queue when Redis goes down"
    cluster.redis.restart()

    for job in jobs:
        done = wait_status(job["status_url"], headers, {"COMPLETED", "FAILED"}, logs=cluster.logs)
        assert done["status"] == "COMPLETED", done
        # Leases that lapsed while Redis was down are renewed, not taken for deaths: each job ran once.
        assert job_field(cluster, job["request_id"], "attempts") == "1"
    assert balance(cluster, key_id) == 12
    assert all(w.alive for w in cluster.workers.values()) and all(p.alive for p in cluster.apis.values())


def test_a_request_for_a_model_no_worker_loaded_is_not_taken(cluster) -> None:
    cluster.ensure_running()
    _, secret = new_key(cluster, credits=5)
    headers = {"x-api-key": secret}
    url = cluster.start_api("no-t5", "--no-t5")  # another model identity: no worker serves it
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{url}/ready", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.1)
        assert ready.status_code == 503 and "no worker serves this model" in ready.text
        job = httpx.post(f"{url}/v2/sd3-med-pose", json=body(), headers=headers).json()
        time.sleep(3)  # both workers idle all along
        assert get_json(job["status_url"], headers)["status"] == "QUEUED"
    finally:
        cluster.apis.pop("no-t5").stop()


def test_keys_cli_manages_the_shared_key_store(cluster) -> None:
    created = subprocess.run(
        [SD3POSE, "keys", "create", "--name", "cli-key", "--credits", "3", "--broker", cluster.redis.url],
        capture_output=True,
        text=True,
        timeout=120,
        env=cluster.env,
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    response = httpx.post(f"{cluster.urls['b']}/v2/sd3-med-pose", json={"prompt": ""}, headers={"x-api-key": secret})
    assert response.status_code == 400 and response.headers["x-remaining-credits"] == "3"
