"""A scale-out deployment on this machine for the benchmarks: a private redis-server, `sd3pose worker`s and
one `sd3pose serve --broker`, all on the tiny model at one torch thread per process.

Everything listens on free loopback ports and lives in a temporary directory; every process started is
stopped when the `with` block ends.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx
from PIL import Image

SD3POSE = str(Path(sys.executable).parent / "sd3pose")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def pose_request(size: int, steps: int) -> dict:
    """A request that skips pose detection (a ready, blank pose map): all its time is the model's."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return {
        "image": base64.b64encode(buffer.getvalue()).decode(),
        "pose_mode": "none",
        "prompt": "a dancer",
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "sampler": "euler",
    }


class LocalCluster:
    """Redis, `workers` (names) started with `worker_args`, and one API; ready when the `with` block starts."""

    def __init__(self, workers: tuple[str, ...] = ("w1", "w2"), worker_args: tuple[str, ...] = ()) -> None:
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.redis_bin = redis_bin
        self.worker_names, self.worker_args = workers, worker_args
        self._tmp = tempfile.TemporaryDirectory(prefix="sd3pose-bench-")
        self.work = Path(self._tmp.name)
        self.broker = f"redis://127.0.0.1:{free_port()}/0"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.env.pop("SD3POSE_BROKER", None)
        self.model: list[str] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self._others: list[subprocess.Popen] = []

    def __enter__(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def queue(self) -> str:
        from sd3pose.distributed.config import queue_name

        return queue_name(self.model[1], self.model[3], True)

    def log_path(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - the child holds it; closed with the temp dir
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def _start(self) -> None:
        from sd3pose.cli.tiny_model import write_tiny_model

        port = self.broker.rsplit(":", 1)[1].split("/")[0]
        self._others.append(
            self._spawn(
                "redis",
                [self.redis_bin, "--port", port, "--bind", "127.0.0.1", "--dir", str(self.work), "--save", ""],
            )
        )
        print("building the tiny model ...", flush=True)
        write_tiny_model(self.work / "model")
        self.model = ["--model", str(self.work / "model/base"), "--controlnet", str(self.work / "model/controlnet")]
        for name in self.worker_names:
            self.start_worker(name)
        api_port = self.url.rsplit(":", 1)[1]
        api = [SD3POSE, "serve", "--broker", self.broker, *self.model, "--port", api_port, "--rate-limit", "0"]
        self._others.append(self._spawn("api", [*api, "--data-dir", str(self.work / "api")]))
        print(f"starting 1 API and {len(self.worker_names)} worker(s) ...", flush=True)
        self.wait_ready()

    def start_worker(self, name: str) -> subprocess.Popen:
        args = [SD3POSE, "worker", "--broker", self.broker, *self.model, "--name", name, "--threads", "1"]
        self.workers[name] = self._spawn(name, [*args, "--data-dir", str(self.work / name), *self.worker_args])
        return self.workers[name]

    def restart_worker(self, name: str) -> None:
        """Start a worker again under its name (after it was killed) and wait until it is ready."""
        from sd3pose.distributed.config import workers_key

        with self.redis() as client:  # the dead process's listing must not count for the new one
            client.zrem(workers_key(self.queue), name)
        self.start_worker(name)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Until the API answers /ready and counts every worker."""
        wanted = f"{len(self.worker_names)} worker(s)"

        def ready() -> bool:
            try:
                return wanted in httpx.get(f"{self.url}/ready", timeout=5).text
            except httpx.HTTPError:
                return False

        wait_for(ready, f"the API and {wanted}")

    def redis(self):
        from sd3pose.distributed.config import redis_client

        return redis_client(self.broker)

    def close(self) -> None:
        procs = [*self.workers.values(), *self._others]
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._tmp.cleanup()
