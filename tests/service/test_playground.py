"""The web playground at `/`, driven in headless Chromium (Debian's) with Playwright.

A real server (uvicorn on loopback, the tiny model, a temp data dir) serves the page; the tests use it
as a person would: upload a photo, see the skeleton, set parameters, generate, download, copy as curl.
A screenshot of the finished page is kept at artifacts/playground.png (CI keeps it as an artefact).
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image
from service_helpers import running_server

from sd3pose.request import DEFAULT_NEGATIVE_PROMPT, DEFAULT_SEED, GenerationRequest
from sd3pose.sampling.caveats import caveat
from sd3pose.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MAX_SAMPLES = 3  # not the default 4: proves the page reads the server's cap from /openapi.json
STEP_DELAY_S = 0.15  # per sampling step, so the page's polling sees intermediate progress
TIMEOUT_MS = 120_000
# Every request the server's generator ran, as it received it (ended jobs keep no request on record).
RUNS: list[GenerationRequest] = []


def _require_browser() -> None:
    """Skip without Chromium or Playwright locally; in CI (CI set) that is a failure, never a silent skip."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (Debian package chromium; `make system-deps` installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install -c constraints.txt -e '.[dev]')")
    if missing:
        message = "the playground browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run this test, not skip it")
        pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    _require_browser()
    return CHROMIUM


@pytest.fixture(scope="module")
def server(chromium, tiny_engine, tmp_path_factory) -> Iterator[tuple[str, str, object]]:
    """(base URL, an API key, the app's services) of a real server on the tiny model."""
    from sd3pose.pipeline import Generator
    from sd3pose.service.app import create_app
    from sd3pose.settings import ServiceSettings

    class SlowStepGenerator(Generator):
        """The real pipeline; each step also waits a little so progress is observable between polls."""

        def run(self, request, *, on_step=None, cancelled=None):
            RUNS.append(request)

            def slow_step(step: int, total: int) -> None:
                time.sleep(STEP_DELAY_S)
                if on_step is not None:
                    on_step(step, total)

            return super().run(request, on_step=slow_step, cancelled=cancelled)

    generator = SlowStepGenerator(tiny_engine)
    # Private URLs allowed: the URL test's image host runs on loopback.
    settings = ServiceSettings(
        data_dir=tmp_path_factory.mktemp("playground"), max_samples=MAX_SAMPLES, allow_private_urls=True
    )
    app = create_app(settings, generator_factory=lambda device: generator)
    with running_server(app) as url:
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        key = app.state.services.keys.create("playground", credits=100)[1]
        yield url, key, app.state.services


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def allowed_origins(server) -> list[str]:
    """Where the page may load from: the server only, unless a test adds a host (an image URL)."""
    return [server[0]]


@pytest.fixture
def page(browser, server, allowed_origins: list[str]) -> Iterator[object]:
    """A fresh page (own storage) on the playground, the form filled from the schema."""
    url, _, _ = server
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    foreign: list[str] = []
    # allowed_origins is read at each request: a test may add a host after the page opened.
    page.on("request", lambda r: r.url.startswith(("data:", "blob:", *allowed_origins)) or foreign.append(r.url))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    context.close()
    # The page works offline: everything it loads comes from this server.
    assert not foreign, f"the playground fetched from outside the server: {foreign}"


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=90)
    return path


def _upload_and_wait_for_skeleton(page, photo: Path) -> str:
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#pose-status[data-state=ready], #pose-status[data-state=error]")
    status = page.inner_text("#pose-status")
    assert page.get_attribute("#pose-status", "data-state") == "ready", status
    assert page.evaluate("document.querySelector('#pose-preview').naturalWidth") > 0
    return status


def _small_settings(page, steps: int) -> None:
    page.fill("#prompt", "an astronaut dancing")
    page.fill("#num_inference_steps", str(steps))
    page.select_option("#sampler", "euler")
    page.click("details.advanced > summary")
    page.fill("#width", "64")
    page.fill("#height", "64")


def test_playground_upload_generate_and_see_the_result(page, server, photo: Path) -> None:
    url, key, services = server
    page.fill("#api-key", key)
    status = _upload_and_wait_for_skeleton(page, photo)
    assert re.fullmatch(r"Detected 1 person · \d+×\d+", status), status
    assert page.evaluate("document.querySelector('#photo-preview').naturalWidth") == 512

    steps = 8
    _small_settings(page, steps)
    page.fill("#samples", "2")
    # Remember every progress text the page shows, to check it reported steps as they happened.
    page.evaluate("""() => {
        window.progressSeen = [];
        const label = document.querySelector('#progress-label');
        new MutationObserver(() => window.progressSeen.push(label.textContent))
            .observe(label, {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#generate")
    page.wait_for_selector("#gallery figure.result img")
    page.wait_for_function("() => document.querySelector('#progress-label').textContent.startsWith('Done')")

    images = page.query_selector_all("#gallery figure.result img")
    assert len(images) == 2
    for img in images:
        assert img.evaluate("(i) => i.complete && i.naturalWidth") == 64  # decoded, at the size asked for
    captions = page.locator("#gallery figcaption span").all_inner_texts()
    assert captions == [f"Seed {DEFAULT_SEED} · 64×64", f"Seed {DEFAULT_SEED + 1} · 64×64"]

    seen = page.evaluate("window.progressSeen")
    intermediate = [t for t in seen if (m := re.fullmatch(r"Step (\d+)/(\d+)", t)) and 0 < int(m[1]) < steps]
    assert intermediate and all(t.endswith(f"/{steps}") for t in intermediate), seen
    assert re.fullmatch(rf"Done: 2 images, {steps}/{steps} steps, [\d.]+ s", seen[-1]), seen
    assert page.evaluate("document.querySelector('#progress').value") == steps

    # The download link gives the very JPEG the API stored, named after its seed.
    with page.expect_download() as download_info:
        page.click(f"a[download='sd3pose_seed_{DEFAULT_SEED}.jpg']")
    downloaded = Path(download_info.value.path()).read_bytes()
    image = Image.open(io.BytesIO(downloaded))
    assert image.format == "JPEG" and image.size == (64, 64)
    (job,) = [r for r in services.db.query("SELECT id, status FROM jobs WHERE kind = 'async'")]
    assert job["status"] == "COMPLETED"
    assert downloaded == services.queue.result(job["id"]).images[0]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"playground screenshot: {shot}")
    # The same page with results at phone width: one column, nothing sticks out sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)


def test_playground_form_follows_the_contract(page, server) -> None:
    options = page.evaluate("(id) => [...document.getElementById(id).options].map(o => o.value)", "sampler")
    assert options == list(SAMPLER_NAMES)
    options = page.evaluate("(id) => [...document.getElementById(id).options].map(o => o.value)", "scheduler")
    assert options == list(SCHEDULER_NAMES)

    defaults = GenerationRequest.model_validate({"prompt": "x", "image": "x"})
    expected = {
        "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
        "num_inference_steps": defaults.num_inference_steps,
        "guidance_scale": defaults.guidance_scale,
        "seed": defaults.seed,
        "samples": defaults.samples,
        "strength": defaults.strength,
        "sampler": defaults.sampler,
        "scheduler": defaults.scheduler,
        "output_format": defaults.output_format.value,
        "pose_mode": defaults.pose_mode.value,
        "resize_mode": defaults.resize_mode.value,
        "control_start": defaults.control_start,
        "control_end": defaults.control_end,
        "width": "",
        "height": "",
    }
    for field, value in expected.items():
        shown = page.input_value(f"#{field}")
        assert (shown if isinstance(value, str) else float(shown)) == value, field
    parts = page.evaluate("[...document.querySelectorAll('input[name=pose_parts]')].map(b => [b.value, b.checked])")
    assert parts == [[p.value, True] for p in defaults.pose_parts]
    ranges = {
        "num_inference_steps": ("1", "100"),
        "guidance_scale": ("1", "20"),
        "strength": ("0", "1"),
        "samples": ("1", str(MAX_SAMPLES)),
        "seed": ("-1", str(2**32 - 1)),
        "width": ("64", "2048"),
    }
    for field, (low, high) in ranges.items():
        assert (page.get_attribute(f"#{field}", "min"), page.get_attribute(f"#{field}", "max")) == (low, high), field

    # Every control has a label a screen reader announces.
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
        .map(e => e.id || e.outerHTML)""")
    assert unlabelled == []

    # Phone width: nothing sticks out sideways.
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_playground_warns_about_a_pair_that_misbehaves(page, server) -> None:
    warning = page.locator("#pair-warning")
    assert warning.is_hidden()  # the defaults (dpmpp_2m, sgm_uniform) are fine
    page.select_option("#scheduler", "normal")  # dpmpp_2m + normal is one of caveats.CAVEATS
    assert warning.is_visible()
    assert warning.inner_text() == f"dpmpp_2m with normal: {caveat('dpmpp_2m', 'normal')}."
    page.select_option("#sampler", "euler")
    assert warning.is_hidden()


def test_playground_api_key_is_remembered_and_sent(page, server, photo: Path) -> None:
    url, key, _ = server
    page.fill("#api-key", "sd3_wrong_key")
    page.set_input_files("#file-input", str(photo))
    page.wait_for_selector("#pose-status[data-state=error]")
    expected = httpx.post(f"{url}/v1/pose", json={"image": "x"}, headers={"x-api-key": "sd3_wrong_key"}).json()
    # The API's own words, not a generic failure.
    assert page.inner_text("#pose-status") == expected["error"]

    page.fill("#prompt", "a dancer")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == expected["error"]

    page.fill("#api-key", key)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.input_value("#api-key") == key
    page.click("#forget-key")
    assert page.evaluate("localStorage.getItem('sd3pose.apiKey')") is None


def test_playground_reports_a_bad_request_in_the_api_words(page, server, tmp_path: Path) -> None:
    _, key, services = server
    page.fill("#api-key", key)
    # Dropped on the drop zone, as from a file manager: OpenPose JSON without canvas_height.
    page.evaluate(
        """(text) => {
        const files = new DataTransfer();
        files.items.add(new File([text], 'pose.json', {type: 'application/json'}));
        document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: files, bubbles: true, cancelable: true}));
    }""",
        json.dumps({"people": [], "canvas_width": 96}),
    )
    page.wait_for_selector("#pose-status[data-state=error]")
    assert "canvas_height" in page.inner_text("#pose-status")

    # Then chosen with the file picker, complete; the generation request itself is one the server refuses.
    keypoints = tmp_path / "pose.json"
    keypoints.write_text(json.dumps({"people": [], "canvas_width": 96, "canvas_height": 64}))
    page.set_input_files("#file-input", str(keypoints))
    page.wait_for_selector("#pose-status[data-state=ready]")
    assert page.inner_text("#pose-status").startswith("Skeleton from the keypoints")
    page.fill("#prompt", "a dancer")
    page.click("details.advanced > summary")
    page.fill("#control_start", "0.9")
    page.fill("#control_end", "0.2")
    page.click("#generate")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == "control_start must be smaller than control_end (got 0.9 and 0.2)"

    # Out of the contract's range: the page says so itself, naming the field, and sends nothing.
    jobs_before = len(services.db.query("SELECT id FROM jobs"))
    page.fill("#num_inference_steps", "500")
    page.click("#generate")
    assert page.inner_text("#error").startswith("Steps: ")
    assert "100" in page.inner_text("#error")
    assert page.evaluate("document.activeElement.id") == "num_inference_steps"
    assert len(services.db.query("SELECT id FROM jobs")) == jobs_before


@pytest.fixture
def image_host(photo: Path) -> Iterator[str]:
    """A loopback HTTP server that serves the photo, as a user's image URL would."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(photo.parent))
    host = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{host.server_address[1]}"
    finally:
        host.shutdown()
        host.server_close()
        thread.join(10)


def test_playground_image_url_shows_photo_and_skeleton(
    page, server, photo: Path, image_host: str, allowed_origins: list[str]
) -> None:
    allowed_origins.append(image_host)  # the browser shows the photo straight from its host
    page.fill("#api-key", server[1])
    page.fill("#image-url", f"{image_host}/{photo.name}")
    page.click("#url-form button[type=submit]")
    page.wait_for_selector("#pose-status[data-state=ready], #pose-status[data-state=error]")
    assert re.fullmatch(r"Detected 1 person · \d+×\d+", page.inner_text("#pose-status"))
    assert page.evaluate("document.querySelector('#photo-preview').naturalWidth") == 512

    page.fill("#image-url", "ftp://example.com/photo.jpg")
    page.click("#url-form button[type=submit]")
    assert page.inner_text("#error") == "Only http:// and https:// image URLs are accepted."


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl and base64")
def test_playground_copy_as_curl_runs(page, server, photo: Path, tmp_path: Path) -> None:
    url, key, services = server
    page.fill("#api-key", key)
    _upload_and_wait_for_skeleton(page, photo)
    _small_settings(page, steps=2)
    prompt = "it's $HOME `and` \\ quotes \""  # must reach the server untouched by the shell
    page.fill("#prompt", prompt)
    page.select_option("#output_format", "png")
    page.click("#copy-curl")
    command = page.input_value("#curl-text")
    assert command.startswith(f"curl -sS -X POST '{url}/v1/sd3-med-pose'")

    shutil.copy(photo, tmp_path / photo.name)
    env = {**os.environ, "SD3POSE_API_KEY": key}
    subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, check=True, timeout=120)
    headers = (tmp_path / "headers.txt").read_text()
    assert " 200" in headers.splitlines()[0], headers + (tmp_path / "out.png").read_text(errors="replace")
    assert f"x-seed: {DEFAULT_SEED}" in headers.lower()
    image = Image.open(tmp_path / "out.png")
    assert image.format == "PNG" and image.size == (64, 64)
    sent = RUNS[-1]
    assert (sent.prompt, sent.num_inference_steps, sent.width) == (prompt, 2, 64)


def test_playground_copy_as_comfyui_workflow(page, server, photo: Path) -> None:
    url, key, services = server
    page.fill("#api-key", key)
    _upload_and_wait_for_skeleton(page, photo)
    _small_settings(page, steps=3)
    page.fill("#prompt", "an (astronaut:1.3) dancing")
    page.fill("#samples", "2")
    jobs_before = len(services.db.query("SELECT id FROM jobs"))
    page.click("#copy-comfy")
    page.wait_for_function("() => document.querySelector('#comfy-status').textContent.includes('64×64')")
    workflow = json.loads(page.input_value("#comfy-text"))
    by_class = {}
    for node in workflow.values():
        by_class.setdefault(node["class_type"], []).append(node["inputs"])
    assert [n["text"] for n in by_class["CLIPTextEncode"]] == ["an (astronaut:1.3) dancing", DEFAULT_NEGATIVE_PROMPT]
    assert [(k["seed"], k["steps"], k["sampler_name"]) for k in by_class["KSampler"]] == [
        (DEFAULT_SEED, 3, "euler"),
        (DEFAULT_SEED + 1, 3, "euler"),
    ]
    (load,) = by_class["LoadImage"]
    assert page.get_attribute("#comfy-pose", "download") == load["image"]
    with page.expect_download() as download:
        page.click("#comfy-pose")
    pose = Image.open(download.value.path())
    assert pose.format == "PNG" and pose.size == (64, 64)  # the pose map the workflow loads, at its size
    with page.expect_download() as download:
        page.click("#comfy-download")
    assert json.loads(Path(download.value.path()).read_text()) == workflow
    assert len(services.db.query("SELECT id FROM jobs")) == jobs_before  # nothing was generated


def test_api_docs_render_offline_under_the_content_security_policy(browser, server) -> None:
    url = server[0]
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []
    foreign: list[str] = []
    page.on("console", lambda message: "Content Security Policy" in message.text and blocked.append(message.text))
    page.on("request", lambda r: r.url.startswith(("data:", "blob:", url)) or foreign.append(r.url))
    page.goto(url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path")
    assert "sd3pose" in page.inner_text(".swagger-ui .info")
    assert page.locator(".opblock-summary-path", has_text="/v1/sd3-med-pose").count() == 1
    assert blocked == [] and foreign == []
    context.close()
