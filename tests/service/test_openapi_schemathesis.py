"""Schemathesis against `/openapi.json` of a live server on the tiny model: no 500, no hang, and every
response (status code, content type, body) as the schema documents it.

Fuzzing rarely produces a usable image, so a second test walks the success paths on purpose (sync,
base64, async submit -> status -> result -> image -> pose, pose preview) and validates each answer
against the same schema.
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.config import SchemathesisConfig
from service_helpers import running_server

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
REQUEST_TIMEOUT_S = 60  # a response slower than this is a hang
MAX_EXAMPLES = 25  # per operation and phase; the whole fuzz run stays within a couple of minutes on 2 cores
GENERATION_EXAMPLES = 12  # fuzzed generations with a usable pose map: each may run the model
SYNC_TIMEOUT_S = 8.0


def _documented_schema() -> dict:
    """The OpenAPI document the service publishes (built from an app that never starts its workers).

    Loaded at import so pytest sees one test per operation; the live server's /openapi.json is
    checked to be this very document.
    """
    from sd3pose.service.app import create_app
    from sd3pose.settings import ServiceSettings

    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app(ServiceSettings(data_dir=Path(data_dir)), generator_factory=_no_generator)
        document = app.openapi()
        app.state.services.db.close()
    return document


def _no_generator(device: str | None) -> None:
    raise AssertionError("the schema-only app never runs jobs")


CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20240611,  # the same cases every run: a failure here reproduces
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
)
DOCUMENT = _documented_schema()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


@pytest.fixture(scope="module")
def live(tiny_engine, tmp_path_factory) -> Iterator[tuple[str, str, object]]:
    """(base URL, API key, services) of the real app and pipeline on the tiny model."""
    from sd3pose.pipeline import Generator
    from sd3pose.service.app import create_app
    from sd3pose.settings import ServiceSettings

    settings = ServiceSettings(
        data_dir=tmp_path_factory.mktemp("schemathesis"),
        rate_limit_per_minute=0,  # fuzzing sends hundreds of requests a minute; 429 would hide the rest
        # A generation fuzzing made expensive (100 steps x 4 samples) answers 504, as documented, in bounded time.
        sync_timeout_s=SYNC_TIMEOUT_S,
        max_queue=4,
    )
    app = create_app(settings, generator_factory=lambda device: Generator(tiny_engine))
    with running_server(app) as url:
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/openapi.json").json() == DOCUMENT
        key = app.state.services.keys.create("schemathesis", credits=None)[1]  # unlimited
        yield url, key, app.state.services


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=MAX_EXAMPLES)
def test_openapi_fuzz_no_server_error_and_responses_match_the_schema(case, live) -> None:
    url, key, _ = live
    case.call_and_validate(base_url=url, headers={"x-api-key": key}, timeout=REQUEST_TIMEOUT_S)


# --- the success paths, validated against the same schema ------------------------------------------


def _photo_b64() -> str:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((128, 128)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_openapi_success_responses_match_the_schema(live) -> None:
    url, key, _ = live
    small = {
        "image": _photo_b64(),
        "prompt": "a dancer",
        "num_inference_steps": 2,
        "width": 64,
        "height": 64,
        "sampler": "euler",
    }
    headers = {"x-api-key": key}

    def call(path: str, method: str, **kwargs):
        case = schema[path][method].Case(headers=headers, **kwargs)
        return case.call_and_validate(base_url=url, timeout=REQUEST_TIMEOUT_S)

    response = call("/v1/sd3-med-pose", "POST", body=small)
    assert response.status_code == 200 and response.headers["content-type"][0] == "image/jpeg"
    response = call("/v1/sd3-med-pose", "POST", body={**small, "base64": True, "return_pose": True, "samples": 2})
    assert response.status_code == 200 and len(response.json()["images"]) == 2
    response = call("/v1/sd3-med-pose", "POST", body={**small, "samples": 2, "output_format": "png"})
    assert response.status_code == 200 and response.headers["content-type"][0] == "application/zip"

    response = call("/v1/pose", "POST", body={"image": small["image"], "width": 64, "height": 64})
    assert response.status_code == 200 and response.json()["detected"] is True
    response = call("/v1/comfy-workflow", "POST", body={**small, "samples": 2})
    assert response.status_code == 200 and response.json()["seeds"] == [698845, 698846]

    submitted = call("/v2/sd3-med-pose", "POST", body={**small, "return_pose": True}).json()
    request_id = {"request_id": submitted["request_id"]}
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while (status := call("/v2/requests/{request_id}/status", "GET", path_parameters=request_id).json())[
        "status"
    ] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    result = call("/v2/requests/{request_id}", "GET", path_parameters=request_id).json()
    assert result["seeds"] == [698845] and len(result["output"]) == 1
    response = call("/v2/requests/{request_id}/images/{index}", "GET", path_parameters={**request_id, "index": 0})
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    response = call("/v2/requests/{request_id}/pose", "GET", path_parameters=request_id)
    assert response.headers["content-type"][0] == "image/png"

    for path in ("/health", "/ready", "/metrics"):
        assert call(path, "GET").status_code == 200


def test_openapi_generation_fuzz_with_a_usable_pose_map(live) -> None:
    """Random valid parameters (sampler x scheduler x sizes x steps x ...) on an image the model can use."""
    url, key, _ = live
    headers = {"x-api-key": key}
    preview = httpx.post(
        f"{url}/v1/pose",
        json={"image": _photo_b64(), "width": 64, "height": 64},
        headers=headers,
        timeout=REQUEST_TIMEOUT_S,
    )
    assert preview.status_code == 200, preview.text
    pose_map = preview.json()["pose_image"]  # a rendered skeleton: a pose map, as a client would send
    statuses: list[int] = []

    @given(case=schema["/v1/sd3-med-pose"]["POST"].as_strategy())
    @settings(
        max_examples=GENERATION_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def generate(case) -> None:
        case.body["image"] = pose_map
        case.body.pop("pose_keypoints", None)
        response = case.call_and_validate(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S)
        statuses.append(response.status_code)

    generate()
    assert 200 in statuses, f"no fuzzed generation succeeded, so none was checked against the schema: {statuses}"
