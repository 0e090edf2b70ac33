"""The service end to end on the real pipeline and the tiny model, over real HTTP (uvicorn)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image
from service_helpers import running_server

from sd3pose.service.app import create_app
from sd3pose.settings import ServiceSettings


def _b64(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def photo_b64() -> str:
    from skimage import data

    return _b64(Image.fromarray(data.astronaut()), "JPEG")  # a local photo of a person


# A blank pose map (pose_mode=none): skips detection, so the load tests measure the service.
POSE_MAP = _b64(Image.new("RGB", (64, 64)), "PNG")
SMALL = {
    "image": POSE_MAP,
    "pose_mode": "none",
    "prompt": "a dancer",
    "width": 64,
    "height": 64,
    "num_inference_steps": 1,
    "sampler": "euler",
}


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory) -> Iterator[tuple[str, object]]:
    from sd3pose.pipeline import Generator

    generator = Generator(tiny_engine)
    # Private URLs allowed: the 502 test's failing image host runs on loopback.
    settings = ServiceSettings(data_dir=tmp_path_factory.mktemp("service"), result_ttl_s=600, allow_private_urls=True)
    app = create_app(settings, generator_factory=lambda device: generator)
    with running_server(app) as url:
        assert httpx.get(f"{url}/ready", timeout=30).status_code == 200
        yield url, app.state.services


def test_hosted_example_request_returns_a_jpeg(server, photo_b64: str) -> None:
    url, services = server
    key = services.keys.create("docs-example", credits=10)[1]
    # The hosted docs' example body, field for field, with a local photo instead of their URL.
    data = {
        "prompt": "Anime style illustration of a girl wearing a suit. A moon in sky. In the background we see "
        "a big rain approaching.",
        "negative_prompt": "low quality,less details",
        "image": photo_b64,
        "num_inference_steps": 20,
        "guidance_scale": 7,
        "seed": 698845,
        "samples": 1,
        "strength": 0.8,
        "sampler": "dpmpp_2m",
        "scheduler": "sgm_uniform",
        "base64": False,
    }
    response = httpx.post(f"{url}/v1/sd3-med-pose", json=data, headers={"x-api-key": key}, timeout=300)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (128, 128)  # square photo -> the tiny model's native size
    assert response.headers["x-seed"] == "698845" and response.headers["x-remaining-credits"] == "9"


def test_v2_flow_completes_and_serves_images(server, photo_b64: str) -> None:
    url, services = server
    headers = {"x-api-key": services.keys.create("async-client", credits=10)[1]}
    body = {
        **SMALL,
        "image": photo_b64,
        "pose_mode": "auto",
        "samples": 2,
        "return_pose": True,
        "num_inference_steps": 3,
    }
    with httpx.Client(headers=headers, timeout=60) as client:
        submitted = client.post(f"{url}/v2/sd3-med-pose", json=body).json()
        assert submitted["status"] == "QUEUED"
        for _ in range(1200):  # bounded: 60 s
            status = client.get(submitted["status_url"]).json()
            if status["status"] in ("COMPLETED", "FAILED"):
                break
            threading.Event().wait(0.05)
        assert status["status"] == "COMPLETED", status
        result = client.get(submitted["response_url"]).json()
        assert result["metrics"]["inference_time"] > 0 and result["seeds"] == [698845, 698846]
        images = [client.get(u) for u in result["output"]]
        assert [r.headers["content-type"] for r in images] == ["image/jpeg", "image/jpeg"]
        decoded = [Image.open(io.BytesIO(r.content)) for r in images]
        assert all(i.size == (64, 64) for i in decoded)
        assert decoded[0].tobytes() != decoded[1].tobytes()  # two seeds, two images
        pose = client.get(result["pose_url"])
        assert Image.open(io.BytesIO(pose.content)).format == "PNG"
        assert result["keypoints"]["people"], "the astronaut's pose was detected"


def test_twenty_concurrent_requests_exact_credits(server) -> None:
    url, services = server
    key = services.keys.create("load", credits=30)[1]
    bodies = [{**SMALL, "seed": i, "samples": 1 + i % 2, "base64": i % 3 == 0} for i in range(20)]

    def call(body: dict) -> httpx.Response:
        return httpx.post(f"{url}/v1/sd3-med-pose", json=body, headers={"x-api-key": key}, timeout=300)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(call, bodies))
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    for body, response in zip(bodies, responses, strict=True):
        assert response.headers["x-seed"] == str(body["seed"])
        if body["base64"]:
            assert len(response.json()["images"]) == body["samples"]
        else:
            expected = "image/jpeg" if body["samples"] == 1 else "application/zip"
            assert response.headers["content-type"] == expected
    assert services.keys.balance(key.split("_")[1]) == 0  # 10 x 1 + 10 x 2 = 30, charged exactly
    short = call(SMALL)
    assert short.status_code == 406 and short.headers["x-remaining-credits"] == "0"
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200
    assert services.queue.depth() == 0
    assert httpx.post(f"{url}/v1/sd3-med-pose", json=SMALL, timeout=60).status_code in (200, 401)


def test_failing_image_host_is_502(server) -> None:
    url, services = server
    key = services.keys.create("upstream", credits=1)[1]

    class Broken(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(503, "down for maintenance")

        def log_message(self, *args) -> None:
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        image_url = f"http://127.0.0.1:{host.server_address[1]}/photo.jpg"
        response = httpx.post(
            f"{url}/v1/sd3-med-pose", json={**SMALL, "image": image_url}, headers={"x-api-key": key}, timeout=60
        )
    finally:
        host.shutdown()
        thread.join(10)
    assert response.status_code == 502, response.text
    assert "503" in response.json()["error"]
    assert response.headers["x-remaining-credits"] == "1"


def test_pose_preview_detects_the_photo(server, photo_b64: str) -> None:
    url, services = server
    key = services.keys.create("playground", credits=0, scopes=["pose"])[1]
    response = httpx.post(
        f"{url}/v1/pose", json={"image": photo_b64, "pose_parts": ["body"]}, headers={"x-api-key": key}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detected"] and body["keypoints"]["people"]
    skeleton = Image.open(io.BytesIO(base64.b64decode(body["pose_image"])))
    assert skeleton.format == "PNG" and skeleton.getextrema() != ((0, 0), (0, 0), (0, 0))  # something drawn


@pytest.fixture
def dripping_host() -> Iterator[tuple[str, threading.Semaphore]]:
    """A loopback image host that sends its headers, then one byte a second; (URL, one release per
    request it has started answering)."""
    import time

    answering = threading.Semaphore(0)

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            answering.release()
            try:
                for _ in range(60):  # bounded: a minute at most
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(1.0)
            except OSError:
                pass  # the fetcher hung up, as it should

        def log_message(self, *args) -> None:
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    host.daemon_threads = True
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{host.server_address[1]}/photo.png", answering
    finally:
        host.shutdown()
        host.server_close()
        thread.join(10)


def test_a_slow_image_host_holds_only_its_own_request(tiny_engine, tmp_path, dripping_host) -> None:
    """A host sending 1 byte/s: another key's generation and pose preview are not delayed (the URL is
    fetched by the API, not by the one generation worker nor under the preview's lock), and the slow
    request ends at the fetch deadline with a 400 naming the host, its credit kept."""
    import time

    from sd3pose.pipeline import Generator

    image_url, answering = dripping_host
    generator = Generator(tiny_engine)
    settings = ServiceSettings(data_dir=tmp_path, allow_private_urls=True, fetch_timeout_s=4)
    app = create_app(settings, generator_factory=lambda device: generator)
    with running_server(app) as url:
        assert httpx.get(f"{url}/ready", timeout=60).status_code == 200
        keys = app.state.services.keys
        slow_key, other_key = (keys.create(name, credits=5)[1] for name in ("slow", "other"))
        preview = {"image": POSE_MAP, "pose_mode": "none"}

        def timed(path: str, body: dict, key: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = httpx.post(f"{url}{path}", json=body, headers={"x-api-key": key}, timeout=120)
            return response, time.monotonic() - started

        timed("/v1/sd3-med-pose", SMALL, other_key)  # warm: the first run pays for one-off setup
        _, alone = timed("/v1/sd3-med-pose", SMALL, other_key)
        _, preview_alone = timed("/v1/pose", preview, other_key)

        slow: dict[str, tuple[httpx.Response, float]] = {}
        callers = [
            threading.Thread(
                target=lambda: slow.update(sync=timed("/v1/sd3-med-pose", {**SMALL, "image": image_url}, slow_key))
            ),
            threading.Thread(target=lambda: slow.update(pose=timed("/v1/pose", {"image": image_url}, slow_key))),
        ]
        for caller in callers:
            caller.start()
        for _ in callers:
            assert answering.acquire(timeout=30), "the slow host was not reached"
        generated, during = timed("/v1/sd3-med-pose", SMALL, other_key)
        previewed, preview_during = timed("/v1/pose", preview, other_key)
        for caller in callers:
            caller.join(60)
        assert keys.balance(slow_key.split("_")[1]) == 5

    assert generated.status_code == 200 and previewed.status_code == 200
    assert during - alone < 1.0, f"delayed by {during - alone:.2f} s ({alone:.2f} s alone)"
    assert preview_during - preview_alone < 1.0, f"preview delayed by {preview_during - preview_alone:.2f} s"
    for name in ("sync", "pose"):
        response, seconds = slow[name]
        assert response.status_code == 400, response.text
        assert "'127.0.0.1' took longer than 4 s" in response.json()["error"]
        assert 3.5 < seconds < 7, seconds


@pytest.fixture
def image_host() -> Iterator[str]:
    """A loopback image host that answers at once with a blank 64x64 PNG; its URL."""
    png = base64.b64decode(POSE_MAP)

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args) -> None:
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    host.daemon_threads = True
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{host.server_address[1]}/pose.png"
    finally:
        host.shutdown()
        host.server_close()
        thread.join(10)


def test_one_keys_slow_image_hosts_take_only_its_share_of_the_download_threads(
    tiny_engine, tmp_path, dripping_host, image_host
) -> None:
    """A key sending more slow URLs than it has download slots: its extra requests wait for its own
    slots, and another key's URL is downloaded at once (it had waited for the slow host's deadline)."""
    import time

    from sd3pose.pipeline import Generator
    from sd3pose.service.inputs import FETCHES_PER_KEY

    slow_url, answering = dripping_host
    generator = Generator(tiny_engine)
    settings = ServiceSettings(data_dir=tmp_path, allow_private_urls=True, fetch_timeout_s=4)
    app = create_app(settings, generator_factory=lambda device: generator)
    services = app.state.services
    services.fetch_limiter.total_tokens = FETCHES_PER_KEY + 2  # the slow key alone could fill every thread
    with running_server(app) as url:
        assert httpx.get(f"{url}/ready", timeout=60).status_code == 200
        slow_key, other_key = (services.keys.create(name, credits=5)[1] for name in ("slow", "other"))

        def preview(image: str, key: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            body = {"image": image, "pose_mode": "none"}
            response = httpx.post(f"{url}/v1/pose", json=body, headers={"x-api-key": key}, timeout=120)
            return response, time.monotonic() - started

        preview(image_host, other_key)  # warm
        _, alone = preview(image_host, other_key)
        with ThreadPoolExecutor(FETCHES_PER_KEY + 2) as pool:
            slow = [pool.submit(preview, slow_url, slow_key) for _ in range(FETCHES_PER_KEY + 2)]
            for _ in range(FETCHES_PER_KEY):
                assert answering.acquire(timeout=30), "the slow host was not reached"
            time.sleep(0.3)  # the slow key's other requests reach their wait
            answered, during = preview(image_host, other_key)
            slow_answers = [future.result() for future in slow]
        assert services.key_fetch_slots.in_use() == 0

    assert answered.status_code == 200, answered.text
    assert during - alone < 1.0, f"delayed by {during - alone:.2f} s ({alone:.2f} s alone)"
    for response, _ in slow_answers:
        assert response.status_code == 400 and "took longer than 4 s" in response.json()["error"], response.text
    # The slow key's last two waited for its own slots: one deadline, then their own.
    assert sorted(seconds for _, seconds in slow_answers)[-1] > 7.0
