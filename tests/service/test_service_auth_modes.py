"""Auth modes: fixed when the server starts, never switched off by what happens to the keys; what an
open (keyless, loopback) server still refuses; security headers; the offline API docs."""

from __future__ import annotations

import logging

from service_helpers import IMAGE, REQUEST, ScriptedGenerator, local_client, make_app, poll, wait_ready

NO_KEY_LOG = "auth stays on although no active API key is left"


def test_revoking_the_last_key_leaves_auth_on_and_the_log_says_so(tmp_path, caplog) -> None:
    app = make_app(tmp_path, ScriptedGenerator())
    keys = app.state.services.keys
    key, secret = keys.create("solo", credits=5)  # `sd3pose keys create --name solo`, before the server starts
    with caplog.at_level(logging.INFO), local_client(app) as client:
        wait_ready(client)
        headers = {"x-api-key": secret}
        job = client.post("/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
        poll(client, job["status_url"], headers, {"COMPLETED"})
        image_url = client.get(job["response_url"], headers=headers).json()["output"][0]
        assert client.get(image_url, headers=headers).status_code == 200

        keys.revoke(key.id)  # `sd3pose keys revoke solo` while the server runs

        for response in (
            client.get(image_url),
            client.get(job["status_url"]),
            client.post("/v1/sd3-med-pose", json=REQUEST),
            client.post("/v1/pose", json={"image": IMAGE}),
            client.get(image_url, headers=headers),  # the revoked key itself
        ):
            assert response.status_code == 401, response.text
    assert "auth on" in caplog.text
    assert sum(NO_KEY_LOG in r.getMessage() for r in caplog.records) == 1  # said once, not per request


def test_a_loopback_server_started_without_keys_is_open_until_a_key_appears_and_says_so(tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO), local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        (said,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth off")]
        assert "keys create" in said and "restart" not in said  # a key turns auth on as it is created
        assert client.post("/v1/sd3-med-pose", json=REQUEST).status_code == 200
        keys = client.app.state.services.keys
        key, _ = keys.create("first", credits=1)
        assert client.post("/v1/sd3-med-pose", json=REQUEST).status_code == 401
        keys.revoke(key.id)
        assert client.post("/v1/sd3-med-pose", json=REQUEST).status_code == 401  # on for good


def test_an_open_loopback_server_takes_only_json_bodies_and_loopback_host_names(tmp_path) -> None:
    with local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        body = b'{"image": "%s", "prompt": "a dancer", "num_inference_steps": 2}' % IMAGE.encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            refused = client.post("/v1/sd3-med-pose", content=body, headers={"content-type": content_type})
            assert refused.status_code == 415 and "application/json" in refused.json()["error"], content_type
        for host in ("evil.example", "192.168.1.5:8000", "127.0.0.1.evil.example", "localhost.evil.example"):
            rebound = client.get("/v2/requests/0123/status", headers={"host": host})
            assert rebound.status_code == 403 and "loopback" in rebound.json()["error"], host
            assert client.get("/", headers={"host": host}).status_code == 403
        for host in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000", "127.0.0.2"):
            ok = client.post(
                "/v1/sd3-med-pose",
                content=body,
                headers={"host": host, "content-type": "application/json; charset=utf-8"},
            )
            assert ok.status_code == 200, (host, ok.text)


def test_an_authenticated_server_answers_any_host_name(tmp_path) -> None:
    """With keys, the Host rule does not apply: a reverse proxy may address the server by its public name."""
    with local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        secret = client.app.state.services.keys.create("app", credits=5)[1]
        answer = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": secret, "host": "api.example.com"})
        assert answer.status_code == 200


def test_every_response_carries_the_security_headers(client) -> None:
    responses = {
        "playground": client.get("/"),
        "docs": client.get("/docs"),
        "json": client.get("/health"),
        "image": client.post("/v1/sd3-med-pose", json=REQUEST),
        "error": client.post("/v1/sd3-med-pose", json={"prompt": "x"}),
        "404": client.get("/nope"),
        "static": client.get("/static/app.js"),
    }
    for name, response in responses.items():
        headers = response.headers
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["x-frame-options"] == "DENY", name
        assert headers["referrer-policy"] == "no-referrer", name
        assert "frame-ancestors 'none'" in headers["content-security-policy"], name
    page_policy = responses["playground"].headers["content-security-policy"]
    assert "script-src 'self'" in page_policy and "unsafe" not in page_policy
    assert responses["json"].headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src 'self'" in responses["docs"].headers["content-security-policy"]


def test_the_api_docs_come_from_this_server_not_a_cdn(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "<script>" not in page.text  # no inline script, nothing remote
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs.js"):
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 100, asset
        assert asset in page.text
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text


def test_a_tenth_of_a_credit_three_times_leaves_exactly_zero(tmp_path) -> None:
    with local_client(make_app(tmp_path, ScriptedGenerator(), price_per_image=0.1)) as client:
        wait_ready(client)
        keys = client.app.state.services.keys
        key, secret = keys.create("dime", credits=0.3)
        headers = {"x-api-key": secret}
        remaining = [client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers) for _ in range(3)]
        assert [r.status_code for r in remaining] == [200, 200, 200]
        assert [r.headers["x-remaining-credits"] for r in remaining] == ["0.2", "0.1", "0"]
        assert keys.balance(key.id) == 0
        short = client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers)
        assert short.status_code == 406 and "costs 0.1" in short.json()["error"]
        keys.add_credits(key.id, 4.9)
        assert client.get("/health", headers=headers).status_code == 200
        assert keys.get(key.id).credits == 4.9


def test_a_failed_sync_job_shows_the_refunded_balance_even_when_settling_is_slow(tmp_path, monkeypatch) -> None:
    """The refund is part of the step that ends the job: a waiter that wakes between the two would show
    the balance before the refund."""
    import threading
    import time

    from sd3pose.errors import NoPersonFoundError

    generator = ScriptedGenerator(error=NoPersonFoundError())
    with local_client(make_app(tmp_path, generator)) as client:
        wait_ready(client)
        services = client.app.state.services
        secret = services.keys.create("payer", credits=3)[1]
        real_refund = services.keys.refund

        def slow_refund(key_id: str, amount: float) -> None:
            time.sleep(0.6)  # longer than the route's wait slice
            real_refund(key_id, amount)

        monkeypatch.setattr(services.keys, "refund", slow_refund)
        real_transaction = services.db.transaction

        def slow_commit():  # the job store's own step may be slow too: its readers wait for all of it
            if threading.current_thread().name.startswith("sd3pose-worker"):
                return _SlowExit(real_transaction(), 0.4)
            return real_transaction()

        monkeypatch.setattr(services.db, "transaction", slow_commit)
        for _ in range(3):
            response = client.post("/v1/sd3-med-pose", json=REQUEST, headers={"x-api-key": secret})
            assert response.status_code == 400
            assert response.headers["x-remaining-credits"] == "3"


class _SlowExit:
    """A context manager that lingers before it leaves the one it wraps (a slow commit)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        import time

        time.sleep(self.delay_s)
        return self.inner.__exit__(*exc)
