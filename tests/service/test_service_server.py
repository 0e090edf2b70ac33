"""Behaviour that needs a real HTTP server: a client that disconnects cancels its queued job."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlparse

import httpx
from service_helpers import REQUEST, ScriptedGenerator, make_app, running_server


def test_disconnecting_client_cancels_its_queued_job(tmp_path) -> None:
    generator = ScriptedGenerator(gate=threading.Event())
    app = make_app(tmp_path, generator)
    services = app.state.services
    with running_server(app) as url:
        key = services.keys.create("alice", credits=5)[1]
        headers = {"x-api-key": key}
        blocker = httpx.post(f"{url}/v2/sd3-med-pose", json=REQUEST, headers=headers).json()
        assert generator.started.wait(30)  # the worker is busy: the next job waits in the queue

        host = urlparse(url)
        body = httpx.Request("POST", f"{url}/v1/sd3-med-pose", json=REQUEST, headers=headers).read()
        with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/sd3-med-pose HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"x-api-key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + 30
            while services.queue.depth() != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        # The socket is closed: the queued job must go away, and its credit come back.
        deadline = time.monotonic() + 30
        while services.queue.depth() != 0:
            assert time.monotonic() < deadline, "the queued job of a gone client was not cancelled"
            time.sleep(0.02)
        rows = services.db.query("SELECT status, error FROM jobs WHERE kind = 'sync'")
        assert [tuple(r) for r in rows] == [("FAILED", "the client disconnected before the image was ready")]
        assert services.keys.balance(key.split("_")[1]) == 4  # only the async job's credit is taken
        generator.gate.set()
        status = httpx.get(blocker["status_url"], headers=headers)
        assert status.status_code == 200
    assert len(generator.runs) == 1  # the cancelled job never ran
