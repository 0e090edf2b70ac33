"""`make serve` runs `sd3pose demo`: on a fresh data dir it builds the demo model, serves it, and the
README's curl example works against it. Runs the real command in a subprocess, always stopped after."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from PIL import Image

# The README's example, word for word apart from the port (keep the two in step).
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example(port: int) -> str:
    """The README's example block, as a user would paste it, pointed at this test's port."""
    text = README.read_text()
    block = text.split("<!-- example:start", 1)[1].split("<!-- example:end", 1)[0]
    script = block.split("```bash\n", 1)[1].split("```", 1)[0]
    bin_dir = Path(sys.executable).parent
    return script.replace(".venv/bin/", f"{bin_dir}/").replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def cli_server(arguments: list[str], tmp_path: Path, ready_timeout_s: float = 240) -> Iterator[int]:
    """`sd3pose ARGUMENTS --port P` in a subprocess of its own session, ready (GET /ready is 200); yields P.

    Always stopped after, with SIGINT so uvicorn shuts down cleanly. Its log is in tmp_path/server.log.
    """
    port = _free_port()
    cli = [sys.executable, "-c", "from sd3pose.cli import app; app()"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*cli, *arguments, "--port", str(port)],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGINT)  # the group we started: uvicorn shuts down cleanly
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()


def run_example(script: str, tmp_path: Path) -> str:
    """Run a README example script as a user would (bash, no key); return the printed response headers."""
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
        env={**os.environ, "SD3POSE_KEY": ""},
    )
    return done.stdout[done.stdout.index("HTTP/") :]


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl and base64")
def test_demo_server_answers_the_readme_curl_example(tmp_path: Path) -> None:
    with cli_server(["demo", "--data-dir", str(tmp_path / "var")], tmp_path) as port:
        headers = run_example(readme_example(port), tmp_path)
    assert " 200" in headers.splitlines()[0], headers
    assert "x-seed: 698845" in headers.lower()
    assert Image.open(tmp_path / "out.jpg").format == "JPEG"
