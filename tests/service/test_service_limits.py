"""What the service refuses before it does real work: oversized or pathological bodies, and the
event loop staying free while the job backend is slow."""

from __future__ import annotations

import base64
import json
import threading
import time

from fastapi.testclient import TestClient
from service_helpers import IMAGE, REQUEST, ScriptedGenerator, local_client, make_app, new_key, wait_ready

from sd3pose.errors import NoPersonFoundError

LIMIT = 4096


def test_a_body_over_the_limit_is_refused_with_400_before_parsing(tmp_path, generator: ScriptedGenerator) -> None:
    with local_client(make_app(tmp_path, generator, max_body_bytes=LIMIT)) as client:
        wait_ready(client)
        big = {**REQUEST, "image": base64.b64encode(b"x" * LIMIT).decode()}
        declared = client.post("/v1/sd3-med-pose", json=big)
        assert declared.status_code == 400, declared.text
        assert "request body" in declared.json()["error"] and "limit" in declared.json()["error"]

        # Chunked upload (no Content-Length): cut off while streaming, same answer.
        def chunks():
            payload = json.dumps(big).encode()
            for start in range(0, len(payload), 1000):
                yield payload[start : start + 1000]

        streamed = client.post("/v2/sd3-med-pose", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 400 and "limit" in streamed.json()["error"]
        pose = client.post("/v1/pose", json=big)
        assert pose.status_code == 400 and "limit" in pose.json()["error"]
        assert generator.runs == []
        # Under the limit, the same routes work.
        assert client.post("/v1/sd3-med-pose", json=REQUEST).status_code == 200


def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient) -> None:
    response = client.post("/v1/sd3-med-pose", content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "nested" in response.json()["error"]


def _sync_request_whose_job_ends_just_before_the_timeout_cancel(tmp_path, monkeypatch, generator: ScriptedGenerator):
    """POST a sync request (1 credit) whose held job is released and ends between the route's last wait
    and its cancel at the 0.3 s timeout: the race. Returns the response and the queue."""
    with local_client(make_app(tmp_path, generator, sync_timeout_s=0.3)) as client:
        wait_ready(client)
        key = new_key(client, credits=1)
        queue = client.app.state.services.queue
        real_cancel = queue.cancel

        def cancel_too_late(job_id: str, reason: str) -> None:
            generator.gate.set()
            deadline = time.monotonic() + 10
            while not queue.get(job_id).done:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            real_cancel(job_id, reason)

        monkeypatch.setattr(queue, "cancel", cancel_too_late)
        return client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key}), queue


def test_a_job_that_completes_as_the_sync_timeout_fires_is_delivered_not_charged_for_nothing(
    tmp_path, monkeypatch
) -> None:
    response, queue = _sync_request_whose_job_ends_just_before_the_timeout_cancel(
        tmp_path, monkeypatch, ScriptedGenerator(gate=threading.Event())
    )
    # The credit was spent on this image, so the client gets it (not a 504 for a paid image).
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-remaining-credits"] == "0"
    assert queue._sync_results == {}  # nothing left behind in memory


def test_a_job_that_fails_as_the_sync_timeout_fires_reports_its_own_error(tmp_path, monkeypatch) -> None:
    response, _ = _sync_request_whose_job_ends_just_before_the_timeout_cancel(
        tmp_path, monkeypatch, ScriptedGenerator(gate=threading.Event(), error=NoPersonFoundError())
    )
    # Its real error (a retry would never help), not "not ready in time".
    assert response.status_code == 400 and "no person found" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "1"


def test_a_slow_key_store_or_job_backend_never_stalls_other_requests(tmp_path, generator, monkeypatch) -> None:
    """With Redis behind them these calls are network round trips (retried for ~30 s while Redis restarts):
    made on the event loop, one slow call would freeze every request, /health included."""
    import httpx
    from service_helpers import running_server

    app = make_app(tmp_path, generator)
    services = app.state.services
    with running_server(app) as url:
        headers = {"x-api-key": services.keys.create("alice", credits=50)[1]}
        job = httpx.post(f"{url}/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
        status_url = job["status_url"]
        probes = {
            "key check": (services.keys, "verify", lambda: httpx.get(status_url, headers=headers)),
            "credits header": (services.keys, "balance", lambda: httpx.get(status_url, headers=headers)),
            "job lookup": (services.queue, "get", lambda: httpx.get(status_url, headers=headers)),
            "job images": (
                services.queue,
                "result",
                lambda: httpx.post(f"{url}/v1/sd3-med-pose", json=REQUEST, headers=headers, timeout=30),
            ),
            "credit reservation": (
                services.keys,
                "reserve",
                lambda: httpx.post(f"{url}/v2/sd3-med-pose", json=REQUEST, headers=headers),
            ),
            "readiness": (services.queue, "readiness", lambda: httpx.get(f"{url}/ready")),
            "queue depth": (services.queue, "depth", lambda: httpx.get(f"{url}/metrics")),
        }
        for name, (owner, attribute, call) in probes.items():
            entered, release = threading.Event(), threading.Event()
            real = getattr(owner, attribute)

            def slow(*args, real=real, entered=entered, release=release, **kwargs):
                entered.set()
                release.wait(10)
                return real(*args, **kwargs)

            monkeypatch.setattr(owner, attribute, slow)
            caller = threading.Thread(target=call, daemon=True)
            caller.start()
            try:
                assert entered.wait(10), f"{name}: the probe did not reach the slow call"
                try:
                    health = httpx.get(f"{url}/health", timeout=2)
                except httpx.TimeoutException:
                    raise AssertionError(f"{name}: /health hung while the {attribute}() call was slow") from None
                assert health.status_code == 200, name
            finally:
                release.set()
                caller.join(30)
                monkeypatch.undo()


def test_a_burst_of_pose_previews_cannot_take_the_threads_that_generation_needs(tmp_path, generator) -> None:
    """With Redis a preview waits up to a minute for a worker, holding a thread: 40 of them in the shared
    pool would leave sync requests unable to renew their waiting lease, and they would be dropped."""
    import httpx
    from service_helpers import running_server

    from sd3pose.service.app import PREVIEW_THREADS

    app = make_app(tmp_path, generator, rate_limit_per_minute=0)
    queue = app.state.services.queue
    held, running, most = threading.Event(), [], [0]
    real_preview = queue.preview_pose

    def slow_preview(request):
        running.append(1)
        most[0] = max(most[0], len(running))
        held.wait(20)
        running.pop()
        return real_preview(request)

    queue.preview_pose = slow_preview
    with running_server(app) as url:
        previews = [
            threading.Thread(
                target=httpx.post,
                args=(f"{url}/v1/pose",),
                kwargs={"json": {"image": IMAGE}, "timeout": 60},
                daemon=True,
            )
            for _ in range(45)
        ]
        for thread in previews:
            thread.start()
        try:
            deadline = time.monotonic() + 10
            while len(running) < PREVIEW_THREADS:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            answer = httpx.post(f"{url}/v1/sd3-med-pose", json=REQUEST, timeout=20)
            assert answer.status_code == 200  # while 45 previews wait
            assert most[0] == PREVIEW_THREADS
        finally:
            held.set()
            for thread in previews:
                thread.join(30)
