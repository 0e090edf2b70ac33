"""No request stalls the others: large bodies are parsed off the event loop with bounded memory, and a
client that hangs up mid-upload is a logged 499, not a 500 with tracebacks. (A slow image host is in
test_service_e2e.py, on the real pipeline.)"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from service_helpers import REQUEST, ScriptedGenerator, make_app, running_server

from sd3pose.service.keys import KeyStore
from sd3pose.service.store import Database

HERE = Path(__file__).resolve().parent
GIB = 2**30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@contextmanager
def server_process(data_dir: Path, generator: dict | None = None, **settings) -> Iterator[tuple[str, int]]:
    """The service in its own process (so its memory and its event loop are its own), its scripted
    generator made with `generator`'s fields; (base URL, pid). Always stopped."""
    port = _free_port()
    log = (data_dir / "server.log").open("w")
    arguments = [str(data_dir), str(port), json.dumps(settings), json.dumps(generator or {})]
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server_process.py"), *arguments],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (data_dir / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, server.pid
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()


def _flood(num_bytes: int) -> bytes:
    """A request of `num_bytes` whose pose_keypoints hold millions of tiny objects: as JSON it is small,
    as Python objects it is twenty times larger."""
    head = b'{"prompt": "x", "pose_keypoints": {"canvas_width": 64, "canvas_height": 64, "people": ['
    tail = b"{}]}}"
    return head + b"{}," * ((num_bytes - len(head) - len(tail)) // 3) + tail


def test_health_stays_fast_and_memory_bounded_while_three_30_mb_bodies_are_parsed(tmp_path: Path) -> None:
    secret = KeyStore(Database(tmp_path / "sd3pose.db")).create("flooder", credits=100)[1]
    body = _flood(30 * 2**20)
    with server_process(tmp_path) as (url, pid):
        rss_before = _memory_kib(pid, "VmRSS")
        latencies: list[float] = []
        answers: list[httpx.Response] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=30) as probe_client:
                while not done.is_set():
                    started = time.perf_counter()
                    assert probe_client.get(f"{url}/health").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.02)

        def flood() -> None:
            answers.append(
                httpx.post(
                    f"{url}/v1/sd3-med-pose",
                    content=body,
                    headers={"x-api-key": secret, "content-type": "application/json"},
                    timeout=120,
                )
            )

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        flooders = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
        for thread in flooders:
            thread.start()
        for thread in flooders:
            thread.join(120)
        time.sleep(0.2)  # a few probes after the last answer
        done.set()
        prober.join(30)
        peak = _memory_kib(pid, "VmHWM")
    assert len(latencies) >= 10, latencies
    figures = f"/health up to {max(latencies):.3f} s; server memory {rss_before / 2**20:.2f} -> {peak / 2**20:.2f} GiB"
    print(figures)
    assert max(latencies) < 0.2, figures
    assert peak < 1.5 * GIB / 1024, figures
    assert peak - rss_before < 0.5 * GIB / 1024, figures
    assert [a.status_code for a in answers] == [400, 400, 400], [a.text[:200] for a in answers if a.status_code != 400]
    assert "too many JSON values" in answers[0].json()["error"]


def test_a_key_that_cannot_pay_is_refused_before_its_body_is_read(tmp_path: Path, monkeypatch) -> None:
    from sd3pose.service import body as body_module

    parsed = []
    real_parse = body_module.parse_json
    monkeypatch.setattr(body_module, "parse_json", lambda raw: parsed.append(len(raw)) or real_parse(raw))
    app = make_app(tmp_path, ScriptedGenerator())
    with running_server(app) as url:
        secret = app.state.services.keys.create("broke", credits=0)[1]
        refused = httpx.post(
            f"{url}/v2/sd3-med-pose",
            content=_flood(8 * 2**20),
            headers={"x-api-key": secret, "content-type": "application/json"},
            timeout=60,
        )
        assert refused.status_code == 406 and "not enough credits" in refused.json()["error"]
        assert refused.headers["x-remaining-credits"] == "0"
    assert parsed == []


def test_a_client_that_hangs_up_mid_upload_is_a_logged_499_not_a_500(tmp_path: Path, caplog) -> None:
    app = make_app(tmp_path, ScriptedGenerator())
    with caplog.at_level(logging.DEBUG), running_server(app) as url:
        secret = app.state.services.keys.create("flaky", credits=5)[1]
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/sd3-med-pose HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"x-api-key: {secret}\r\nContent-Length: {10 * 2**20}\r\n\r\n".encode()
                + b'{"prompt": "a dancer", "image": "'
                + b"A" * 200_000
            )
            time.sleep(0.3)  # the server is reading the body when the client goes
        deadline = time.monotonic() + 10
        while '"status": 499' not in caplog.text:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.05)
        metrics = httpx.get(f"{url}/metrics").text
        assert app.state.services.keys.balance(secret.split("_")[1]) == 5
    assert 'status="500"' not in metrics
    assert 'sd3pose_http_requests_total{method="POST",route="/v1/sd3-med-pose",status="499"} 1.0' in metrics
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text[-2000:]
    assert "Traceback" not in caplog.text
    gone = [r for r in caplog.records if r.name == "sd3pose.access" and '"status": 499' in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO


def test_the_api_still_serves_while_a_large_photo_is_read(tmp_path: Path) -> None:
    """A 26 MB body (a 19 MB file as base64) is read, parsed and decoded in threads, the decoding in
    slices: other requests go on. (Parsing its one long string is a single ~0.1 s step of the standard
    library's json, which holds the interpreter meanwhile: hence the looser bound than for floods.)"""
    import base64

    app = make_app(tmp_path, ScriptedGenerator())
    big = {**REQUEST, "image": base64.b64encode(b"\x89PNG" + os.urandom(19 * 2**20)).decode()}
    with running_server(app) as url:
        secret = app.state.services.keys.create("big", credits=5)[1]
        answer: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{url}/v1/sd3-med-pose", json=big, headers={"x-api-key": secret}, timeout=120)
            )
        )
        sender.start()
        slowest = 0.0
        while sender.is_alive():
            started = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
        sender.join()
    assert answer[0].status_code == 400 and "could not be decoded" in answer[0].json()["error"]
    assert slowest < 0.5, slowest


def test_the_api_still_serves_while_a_large_base64_answer_is_written(tmp_path: Path) -> None:
    """Four large images as base64 JSON (about 84 MB, the first image twice) are encoded in a thread,
    without a serialiser that holds the interpreter for the whole answer, and sent in pieces."""
    secret = KeyStore(Database(tmp_path / "sd3pose.db")).create("big", credits=50)[1]
    image_bytes = 12 * 2**20
    with server_process(tmp_path, generator={"image_bytes": image_bytes}) as (url, _):
        body = {**REQUEST, "samples": 4, "base64": True}
        answer: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{url}/v1/sd3-med-pose", json=body, headers={"x-api-key": secret}, timeout=120)
            )
        )
        sender.start()
        slowest = 0.0
        with httpx.Client(timeout=10) as prober:
            while sender.is_alive():
                started = time.perf_counter()
                assert prober.get(f"{url}/health").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                time.sleep(0.01)
        sender.join()
    assert answer[0].status_code == 200, answer[0].text[:300]
    images = answer[0].json()["images"]
    assert len(images) == 4 and all(len(image) == 4 * -(-image_bytes // 3) for image in images)
    assert slowest < 0.2, slowest


def test_an_inline_image_does_not_wait_for_image_downloads(tmp_path: Path, monkeypatch) -> None:
    """Every download thread held by slow image hosts: a request with a base64 image is still answered
    at once (only URLs wait for a download thread)."""
    import anyio

    from sd3pose import images

    fetching, release = threading.Event(), threading.Event()

    def stuck_fetch(url: str, **limits) -> None:
        fetching.set()
        release.wait(30)
        raise AssertionError("released")

    monkeypatch.setattr(images, "fetch_url", stuck_fetch)
    app = make_app(tmp_path, ScriptedGenerator())
    app.state.services.fetch_limiter = anyio.CapacityLimiter(1)  # one slot: the slow URL takes it
    with running_server(app) as url:
        secret = app.state.services.keys.create("busy", credits=5)[1]
        headers = {"x-api-key": secret}
        slow = threading.Thread(
            target=lambda: httpx.post(
                f"{url}/v1/pose", json={"image": "https://images.example/photo.png"}, headers=headers, timeout=60
            )
        )
        slow.start()
        assert fetching.wait(10), "the download did not start"
        try:
            inline = httpx.post(f"{url}/v1/sd3-med-pose", json=REQUEST, headers=headers, timeout=5)
            previewed = httpx.post(f"{url}/v1/pose", json={"image": REQUEST["image"]}, headers=headers, timeout=5)
        finally:
            release.set()
            slow.join(30)
    assert inline.status_code == 200 and previewed.status_code == 200
