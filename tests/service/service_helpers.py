"""Helpers for the service tests: an app on a temp data dir with a scriptable generator.

`ScriptedGenerator` stands in for pipeline.Generator where only routing, auth, credits and the queue
are under test; the end-to-end tests (test_service_e2e.py) run the real tiny model.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi.testclient import TestClient
from PIL import Image

from sd3pose.errors import GenerationCancelledError
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult, PosePreview
from sd3pose.service.app import create_app
from sd3pose.settings import ServiceSettings

FORMATS = {"jpeg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp")}


def colour(seed: int) -> int:
    """The red level the scripted generator draws for a seed: neighbours 32 apart, so JPEG keeps them apart."""
    return (seed % 8) * 32


def encode(color: tuple[int, int, int], fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=FORMATS[fmt][0])
    return buffer.getvalue()


@dataclass
class ScriptedGenerator:
    """Draws one flat colour per seed; `step_s` per step, `gate` (when set) holds every run until set;
    `image_bytes` (when set): each image is that many random bytes instead, for tests of large answers."""

    step_s: float = 0.0
    gate: threading.Event | None = None
    error: Exception | None = None
    image_bytes: int | None = None
    runs: list[GenerationRequest] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def run(self, request, *, on_step=None, cancelled=None) -> GenerationResult:
        self.runs.append(request)
        self.started.set()
        if self.gate is not None:
            deadline = time.monotonic() + 30
            while not self.gate.wait(0.02):
                if (cancelled and cancelled()) or time.monotonic() > deadline:
                    raise GenerationCancelledError("cancelled")
        if self.error is not None:
            raise self.error
        for step in range(request.num_inference_steps):
            if cancelled and cancelled():
                raise GenerationCancelledError("cancelled")
            time.sleep(self.step_s)
            if on_step:
                on_step(step + 1, request.num_inference_steps)
        fmt = request.output_format.value
        images = [encode((colour(seed), 0, 7), fmt) for seed in request.seeds]
        if self.image_bytes is not None:
            images = [os.urandom(self.image_bytes) for _ in images]
        pose = encode((0, 0, 0), "png") if request.return_pose else None
        keypoints = {"people": [], "canvas_width": 64, "canvas_height": 64} if request.return_pose else None
        return GenerationResult(
            images,
            FORMATS[fmt][1],
            request.seeds,
            64,
            64,
            pose,
            keypoints,
            {"pose": 0.001, "generate": 0.002, "total": 0.003},
        )

    def preview_pose(self, request) -> PosePreview:
        return PosePreview(encode((0, 0, 0), "png"), {"people": []}, 64, 64, False)


def make_app(tmp_path, generator: ScriptedGenerator, **overrides):
    settings = ServiceSettings(data_dir=tmp_path, cleanup_interval_s=0.2, **overrides)
    return create_app(settings, generator_factory=lambda device: generator)


# A loopback server without keys answers only requests that name a loopback host (TestClient's default
# Host is "testserver").
LOCAL_URL = "http://127.0.0.1"


def local_client(app, **kwargs) -> TestClient:
    """A TestClient that addresses the app as a local client does: http://127.0.0.1."""
    return TestClient(app, base_url=LOCAL_URL, **kwargs)


def wait_ready(test_client: TestClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while test_client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, test_client.get("/ready").json()
        time.sleep(0.02)


def new_key(test_client: TestClient, name: str = "alice", credits: float | None = 10, **kwargs) -> str:
    keys = test_client.app.state.services.keys
    return keys.create(name, credits=credits, **kwargs)[1]


def poll(test_client: TestClient, url: str, headers: dict, until: set[str], timeout_s: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        body = test_client.get(url, headers=headers).json()
        if body.get("status") in until:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


# A real (tiny) image: the API checks every input image's header before it queues a job.
IMAGE = base64.b64encode(encode((40, 40, 40), "png", (8, 8))).decode("ascii")
REQUEST = {"image": IMAGE, "prompt": "a dancer", "num_inference_steps": 2}


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; always stopped afterwards."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"
