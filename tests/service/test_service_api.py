"""Routing, response shapes, auth, credits, limits and errors of the HTTP API (scripted generator)."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil
import sqlite3
import threading
import time
import zipfile

from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import IMAGE, REQUEST, ScriptedGenerator, colour, local_client, make_app, new_key, poll, wait_ready


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# --- responses ---------------------------------------------------------------------------------------


def test_sync_returns_jpeg_with_seed_and_credits(client: TestClient) -> None:
    key = new_key(client, credits=5)
    response = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert _image(response.content).format == "JPEG"
    assert response.headers["x-seed"] == "698845"  # the contract's default seed
    assert response.headers["x-remaining-credits"] == "4"


def test_random_seed_is_reported_and_used(client: TestClient, generator: ScriptedGenerator) -> None:
    response = client.post("/v1/sd3-med-pose", json={**REQUEST, "seed": -1})
    assert response.status_code == 200
    assert int(response.headers["x-seed"]) == generator.runs[-1].seed >= 0


def test_several_samples_come_as_zip_with_every_seed(client: TestClient) -> None:
    response = client.post("/v1/sd3-med-pose", json={**REQUEST, "samples": 3, "seed": 10, "output_format": "png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["x-seeds"] == "10,11,12"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["image_0_seed_10.png", "image_1_seed_11.png", "image_2_seed_12.png"]
    colours = [_image(archive.read(name)).getpixel((0, 0))[0] for name in archive.namelist()]
    assert colours == [colour(10), colour(11), colour(12)]  # each file is its own seed's image, in order


def test_base64_json_has_every_image_seed_and_pose(client: TestClient) -> None:
    response = client.post(
        "/v1/sd3-med-pose", json={**REQUEST, "samples": 2, "seed": 5, "base64": True, "return_pose": True}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["seeds"] == [5, 6] and body["seed"] == 5
    assert len(body["images"]) == 2 and body["image"] == body["images"][0]
    reds = [_image(base64.b64decode(i)).getpixel((0, 0))[0] for i in body["images"]]
    assert [abs(red - colour(seed)) <= 4 for red, seed in zip(reds, [5, 6], strict=True)] == [True, True]
    assert _image(base64.b64decode(body["pose_image"])).format == "PNG"
    assert body["keypoints"]["people"] == []
    assert body["metrics"]["inference_time"] >= 0


def test_async_flow_completes_and_serves_images(client: TestClient, generator: ScriptedGenerator) -> None:
    generator.step_s = 0.01
    key = new_key(client, credits=10)
    headers = {"Authorization": f"Bearer {key}"}
    submitted = client.post(
        "/v2/sd3-med-pose", json={**REQUEST, "samples": 2, "num_inference_steps": 10}, headers=headers
    )
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert body["status"] == "QUEUED" and body["poll_url"] == body["status_url"]
    seen_progress = []
    deadline = time.monotonic() + 30
    while True:
        status = client.get(body["status_url"], headers=headers).json()
        if status.get("progress"):
            seen_progress.append(status["progress"]["step"])
        if status["status"] == "COMPLETED":
            break
        assert status["status"] in ("QUEUED", "PROCESSING") and time.monotonic() < deadline
        time.sleep(0.005)
    assert all(0 <= s <= 10 for s in seen_progress)
    result = client.get(body["response_url"], headers=headers)
    assert result.headers["x-remaining-credits"] == "8"
    result_body = result.json()
    assert result_body["status"] == "COMPLETED" and result_body["seeds"] == [698845, 698846]
    assert result_body["metrics"]["inference_time"] > 0
    assert len(result_body["output"]) == 2
    for url, seed in zip(result_body["output"], result_body["seeds"], strict=True):
        image = client.get(url, headers=headers)
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert abs(_image(image.content).getpixel((0, 0))[0] - colour(seed)) <= 4  # JPEG: close, not exact
    # Another key cannot see it.
    other = new_key(client, name="bob")
    assert client.get(body["response_url"], headers={"x-api-key": other}).status_code == 404


def test_async_requests_can_be_cancelled_queued_or_running_and_cost_nothing(
    client: TestClient, generator: ScriptedGenerator
) -> None:
    generator.gate = threading.Event()
    key = new_key(client, credits=10)
    headers = {"x-api-key": key}
    running = client.post("/v2/sd3-med-pose", json={**REQUEST, "samples": 2}, headers=headers).json()
    assert generator.started.wait(10)
    queued = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
    assert client.get(queued["status_url"], headers=headers).json()["status"] == "QUEUED"

    # Another key's request looks unknown, and stays queued.
    other = new_key(client, name="bob")
    cancel_url = f"/v2/requests/{queued['request_id']}/cancel"
    assert client.post(cancel_url, headers={"x-api-key": other}).status_code == 404

    cancelled = client.post(cancel_url, headers=headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "FAILED"
    assert "cancelled" in cancelled.json()["error"]
    assert cancelled.headers["x-remaining-credits"] == "8"  # refunded; the running one still holds 2

    stopping = client.post(f"/v2/requests/{running['request_id']}/cancel", headers=headers)
    assert stopping.status_code == 202 and stopping.json()["status"] in ("PROCESSING", "FAILED")
    ended = poll(client, running["status_url"], headers, {"COMPLETED", "FAILED"})
    assert ended["status"] == "FAILED" and "cancelled" in ended["error"]
    result = client.get(running["response_url"], headers=headers)
    assert result.status_code == 504 and result.headers["x-remaining-credits"] == "10"
    assert len(generator.runs) == 1  # the queued one never ran

    again = client.post(cancel_url, headers=headers)
    assert again.status_code == 400 and "already ended (FAILED)" in again.json()["error"]


def test_async_results_expire(tmp_path, generator: ScriptedGenerator) -> None:
    with local_client(make_app(tmp_path, generator, result_ttl_s=0.5)) as client:
        body = client.post("/v2/sd3-med-pose", json=REQUEST).json()
        done = poll(client, body["status_url"], {}, {"COMPLETED"})
        assert done["status"] == "COMPLETED"
        image_url = client.get(body["response_url"]).json()["output"][0]
        time.sleep(0.6)
        for url in (body["status_url"], body["response_url"], image_url):
            response = client.get(url)
            assert response.status_code == 404 and "expired" in response.json()["error"]
        time.sleep(0.5)  # the janitor deletes the files too
        assert not any((tmp_path / "results").iterdir())


def test_pose_preview(client: TestClient) -> None:
    response = client.post("/v1/pose", json={"image": IMAGE, "pose_parts": ["body"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert _image(base64.b64decode(body["pose_image"])).format == "PNG"
    assert set(body) == {"pose_image", "keypoints", "width", "height", "detected"}


# --- errors ----------------------------------------------------------------------------------------------


def test_400_names_the_field_and_accepted_values(client: TestClient) -> None:
    response = client.post("/v1/sd3-med-pose", json={**REQUEST, "sampler": "nope", "num_inference_steps": 0})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "sampler" in error and "dpmpp_2m" in error and "num_inference_steps" in error
    missing = client.post("/v1/sd3-med-pose", json={"image": IMAGE})
    assert missing.status_code == 400 and missing.json() == {"error": "field 'prompt' is required"}
    not_json = client.post("/v1/sd3-med-pose", content=b"{oops", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    too_many = client.post("/v2/sd3-med-pose", json={**REQUEST, "samples": 5})
    assert too_many.status_code == 400 and "samples" in too_many.json()["error"]


def test_400_for_a_number_too_long_to_read_says_what_is_wrong(client: TestClient) -> None:
    body = json.dumps(REQUEST)[:-1] + ', "seed": ' + "9" * 5000 + "}"
    response = client.post("/v1/sd3-med-pose", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "5,000 digits" in error and "4294967295" in error
    assert "sys." not in error and "not valid JSON" not in error  # it is valid JSON; the fix is the client's


def test_400_from_the_worker_reaches_the_client(client: TestClient, generator: ScriptedGenerator) -> None:
    from sd3pose.errors import NoPersonFoundError

    generator.error = NoPersonFoundError()
    response = client.post("/v1/sd3-med-pose", json=REQUEST)
    assert response.status_code == 400 and "no person found" in response.json()["error"]


def test_401_missing_or_wrong_key(client: TestClient) -> None:
    key = new_key(client)
    missing = client.post("/v1/sd3-med-pose", json=REQUEST)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]
    wrong = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key[:-2] + "xx"})
    assert wrong.status_code == 401
    client.app.state.services.keys.revoke(key.split("_")[1])
    revoked = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]


def test_403_key_without_the_scope(client: TestClient) -> None:
    key = new_key(client, scopes=["pose"])
    response = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
    assert response.status_code == 403 and "generate" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "10"
    assert client.post("/v1/pose", json={"image": IMAGE}, headers={"x-api-key": key}).status_code == 200


def test_404_and_405_are_json(client: TestClient) -> None:
    missing = client.post("/v1/sd3-large-pose", json=REQUEST)
    assert missing.status_code == 404 and "/v1/sd3-large-pose" in missing.json()["error"]
    unknown_job = client.get("/v2/requests/0123456789abcdef/status")
    assert unknown_job.status_code == 404
    wrong_method = client.get("/v1/sd3-med-pose")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.json()["error"]


def test_406_when_short_of_credits_and_nothing_charged(client: TestClient, generator: ScriptedGenerator) -> None:
    key = new_key(client, credits=2)
    response = client.post("/v1/sd3-med-pose", json={**REQUEST, "samples": 3}, headers={"x-api-key": key})
    assert response.status_code == 406 and "costs 3" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "2"
    assert generator.runs == []


def test_failed_jobs_are_not_charged(client: TestClient, generator: ScriptedGenerator) -> None:
    from sd3pose.errors import ImageInputError

    key = new_key(client, credits=3)
    generator.error = ImageInputError("image is not a picture; send a JPEG")
    response = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
    assert response.status_code == 400
    assert response.headers["x-remaining-credits"] == "3"


def test_429_rate_limit_with_retry_after(client: TestClient) -> None:
    key = new_key(client, rate_limit=2)
    headers = {"x-api-key": key}
    assert [client.post("/v1/pose", json={"image": IMAGE}, headers=headers).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers)
    assert limited.status_code == 429 and "rate limit of 2" in limited.json()["error"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_429_when_the_queue_is_full(tmp_path) -> None:
    generator = ScriptedGenerator(gate=threading.Event())
    with local_client(make_app(tmp_path, generator, max_queue=1)) as client:
        wait_ready(client)
        key = new_key(client, credits=10)
        headers = {"x-api-key": key}
        first = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers).json()  # runs (held)
        assert generator.started.wait(10)
        second = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers)  # waits in the queue
        full = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers)
        assert second.status_code == 200
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        assert int(full.headers["retry-after"]) >= 1
        assert full.headers["x-remaining-credits"] == "8"  # the refused job's credit came back
        generator.gate.set()
        poll(client, first["status_url"], headers, {"COMPLETED"})


def test_a_job_the_store_cannot_record_is_refunded_and_explained(tmp_path, caplog) -> None:
    generator = ScriptedGenerator()
    with local_client(make_app(tmp_path, generator)) as client:
        wait_ready(client)
        headers = {"x-api-key": new_key(client, credits=10)}
        db = client.app.state.services.queue.db
        real_execute = db.execute

        def full_disk(sql: str, params: tuple = ()):
            if sql.startswith("INSERT INTO jobs"):
                raise sqlite3.OperationalError("database or disk is full")
            return real_execute(sql, params)

        db.execute = full_disk
        with caplog.at_level(logging.ERROR):
            for path in ("/v1/sd3-med-pose", "/v2/sd3-med-pose"):
                response = client.post(path, json=REQUEST, headers=headers)
                assert response.status_code == 500
                assert "could not record the job" in response.json()["error"]
                assert "disk is full" not in response.text  # the detail goes to the log, not to users
        assert any("disk is full" in r.getMessage() for r in caplog.records)
        db.execute = real_execute
        ok = client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers)
        assert ok.status_code == 200 and ok.headers["x-remaining-credits"] == "9"  # the two failures cost nothing


def test_a_result_that_cannot_be_written_fails_its_job_refunded_and_the_worker_goes_on(tmp_path) -> None:
    with local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        headers = {"x-api-key": new_key(client, credits=10)}
        results = tmp_path / "results"
        shutil.rmtree(results)
        results.write_text("the results volume is unusable")  # as a full or read-only disk would be
        lost = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
        status = poll(client, lost["status_url"], headers, {"COMPLETED", "FAILED"})
        assert status["status"] == "FAILED"
        assert "could not store the outcome" in client.get(lost["response_url"], headers=headers).json()["error"]
        results.unlink()
        results.mkdir()
        after = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
        assert poll(client, after["status_url"], headers, {"COMPLETED", "FAILED"})["status"] == "COMPLETED"
        assert client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers).headers["x-remaining-credits"] == "8"


def test_500_is_generic_logged_and_the_server_stays_up(
    client: TestClient, generator: ScriptedGenerator, caplog
) -> None:
    generator.error = KeyError("secret internal detail")
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/sd3-med-pose", json=REQUEST)
    assert response.status_code == 500
    assert "secret internal detail" not in response.text and "request id" in response.json()["error"]
    assert any("secret internal detail" in (r.exc_text or "") for r in caplog.records)
    generator.error = None
    assert client.post("/v1/sd3-med-pose", json=REQUEST).status_code == 200


def test_an_unexpected_error_in_the_http_layer_still_carries_the_request_id_and_credits(
    client: TestClient, generator: ScriptedGenerator, monkeypatch
) -> None:
    headers = {"x-api-key": new_key(client, credits=5)}

    def broken(request) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(generator, "preview_pose", broken)
    response = client.post("/v1/pose", json={"image": IMAGE}, headers=headers)
    assert response.status_code == 500 and "secret internal detail" not in response.text
    assert f"request id {response.headers['x-request-id']}" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "5"


def test_504_sync_timeout_cancels_and_refunds(tmp_path) -> None:
    generator = ScriptedGenerator(gate=threading.Event())
    with local_client(make_app(tmp_path, generator, sync_timeout_s=0.3)) as client:
        wait_ready(client)
        key = new_key(client, credits=1)
        response = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
        assert response.status_code == 504 and "async API" in response.json()["error"]
        # The worker stops the job at its next step; the answer waits for that, so it shows the refund.
        assert response.headers["x-remaining-credits"] == "1"


def test_failed_async_job_reports_its_error(client: TestClient, generator: ScriptedGenerator) -> None:
    from sd3pose.errors import UpstreamError

    generator.error = UpstreamError("the image host answered HTTP 503; try again later")
    body = client.post("/v2/sd3-med-pose", json=REQUEST).json()
    status = poll(client, body["status_url"], {}, {"FAILED"})
    assert "HTTP 503" in status["error"]
    result = client.get(body["response_url"])
    assert result.status_code == 502 and "HTTP 503" in result.json()["error"]


# --- auth modes, around it --------------------------------------------------------------------------------


def test_no_keys_means_open_only_on_loopback(tmp_path, generator: ScriptedGenerator) -> None:
    with local_client(make_app(tmp_path / "a", generator, host="0.0.0.0")) as client:
        assert client.post("/v1/pose", json={"image": IMAGE}).status_code == 401
    with local_client(make_app(tmp_path / "b", generator, host="0.0.0.0", insecure_no_auth=True)) as client:
        wait_ready(client)
        assert client.post("/v1/pose", json={"image": IMAGE}).status_code == 200
    with local_client(make_app(tmp_path / "c", generator, host="127.0.0.1")) as client:
        wait_ready(client)
        assert client.post("/v1/pose", json={"image": IMAGE}).status_code == 200
        new_key(client)  # once a key exists, loopback needs it too
        assert client.post("/v1/pose", json={"image": IMAGE}).status_code == 401


def test_health_ready_metrics_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "detail": None}
    assert client.get("/ready").status_code == 200
    client.post("/v1/sd3-med-pose", json=REQUEST)
    client.post("/v1/sd3-med-pose", json={"prompt": "x"})
    metrics = client.get("/metrics").text
    assert 'sd3pose_http_requests_total{method="POST",route="/v1/sd3-med-pose",status="200"} 1.0' in metrics
    assert 'sd3pose_http_requests_total{method="POST",route="/v1/sd3-med-pose",status="400"} 1.0' in metrics
    assert "sd3pose_queue_depth 0.0" in metrics
    assert "sd3pose_generation_seconds_count 1.0" in metrics and "sd3pose_pose_seconds_count 1.0" in metrics
    assert client.get("/docs").status_code == 200
    assert client.get("/").headers["content-type"].startswith("text/html")


def test_made_up_http_methods_cannot_grow_the_metrics(client: TestClient) -> None:
    for i in range(20):
        client.request(f"METHOD{i}", "/health")
    metrics = client.get("/metrics").text
    assert "METHOD" not in metrics
    assert 'sd3pose_http_requests_total{method="other",route="/health",status="405"} 20.0' in metrics


def test_openapi_documents_the_real_contract(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["GenerationRequest"]
    for name in (
        "image",
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "samples",
        "strength",
        "sampler",
        "scheduler",
        "base64",
        "width",
        "pose_mode",
        "return_pose",
    ):
        assert name in request["properties"], name
    assert request["properties"]["num_inference_steps"]["maximum"] == 100
    assert request["properties"]["num_inference_steps"]["default"] == 20
    assert len(request["properties"]["sampler"]["enum"]) == 27
    sync = schema["paths"]["/v1/sd3-med-pose"]["post"]
    assert sync["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/GenerationRequest")
    assert {"image/jpeg", "application/zip", "application/json"} <= set(sync["responses"]["200"]["content"])
    assert {"400", "401", "406", "429", "504"} <= set(sync["responses"])
    assert "422" not in json.dumps(schema["paths"])
    refs = {part.split('"')[0] for part in json.dumps(schema).split("#/components/schemas/")[1:]}
    assert refs <= set(schema["components"]["schemas"])  # every $ref resolves


def test_openapi_lists_the_url_and_storage_errors_of_both_submit_routes(client: TestClient) -> None:
    # Both routes fetch an image URL before queueing (502 when its host fails) and record the job
    # (503 when --max-disk is reached); a generated client must know both codes.
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/v1/sd3-med-pose", "/v2/sd3-med-pose"):
        responses = paths[route]["post"]["responses"]
        assert {"502", "503"} <= set(responses), route
        assert "storage" in responses["503"]["description"]


def test_access_log_names_the_key_never_the_secret(client: TestClient, caplog) -> None:
    key = new_key(client, name="mobile-app")
    with caplog.at_level(logging.INFO, logger="sd3pose.access"):
        client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": key})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sd3pose.access"]
    assert lines[-1]["key"] == "mobile-app" and lines[-1]["status"] == 200 and lines[-1]["ms"] > 0
    assert key not in caplog.text and key.split("_", 2)[2] not in caplog.text
