"""Helpers for the scale-out tests: redis-server, `sd3pose worker` and `sd3pose serve --broker` processes, and
a lost Redis reply."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

REDIS_SERVER = shutil.which("redis-server")
SD3POSE = str(Path(sys.executable).parent / "sd3pose")
# Short heartbeats: a killed worker's job moves on within seconds (its lease lives 3 heartbeats). Every
# other worker option is the production default, the 600 s visibility timeout included: any recovery
# within seconds is the lease's.
HEARTBEAT_S = 0.5
LEASE_TTL_S = 3 * HEARTBEAT_S
# How long a SIGTERMed worker lets its job run before handing it back.
GRACE_S = 2.0
START_TIMEOUT_S = 180


def require_redis() -> None:
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: CI must install it (`make system-deps` does, as root)")
        pytest.skip("redis-server is not installed (apt-get install redis-server); skipping the scale-out tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pose_map_b64(size: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def body(steps: int = 2, size: int = 64, seed: int = 1) -> dict:
    """A request that skips pose detection (a ready, blank pose map) on the tiny model."""
    return {
        "image": pose_map_b64(),
        "pose_mode": "none",
        "prompt": "a dancer",
        "width": size,
        "height": size,
        "num_inference_steps": steps,
        "sampler": "euler",
        "seed": seed,
    }


class Proc:
    """A child process with its output in a log file; stopped (or killed) for sure by `stop`."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(30)
        self._log.close()

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} ---\n" + "\n".join(text[-lines:])


class RedisServer:
    """A private redis-server with append-only persistence (fsync on every write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = Proc(
            "redis",
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            self.directory / "redis.log",
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            assert self.proc.alive and time.monotonic() < deadline, self.proc.tail()
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self) -> None:
        """Shut down (SIGTERM: Redis flushes its append-only file) and start again on the same port and dir."""
        self.stop()
        self.start()

    def client(self):
        from sd3pose.distributed.config import redis_client

        return redis_client(self.url)


class Cluster:
    """Workers and API processes on one Redis, all on the tiny model at one torch thread each."""

    def __init__(self, redis: RedisServer, model_dir: Path, directory: Path) -> None:
        self.redis = redis
        self.model_args = ["--model", str(model_dir / "base"), "--controlnet", str(model_dir / "controlnet")]
        self.directory = directory
        self.workers: dict[str, Proc] = {}
        self.apis: dict[str, Proc] = {}
        self.urls: dict[str, str] = {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.env.pop("SD3POSE_BROKER", None)

    def start_worker(self, name: str) -> Proc:
        proc = Proc(
            name,
            [
                SD3POSE,
                "worker",
                "--broker",
                self.redis.url,
                *self.model_args,
                "--name",
                name,
                "--threads",
                "1",
                "--data-dir",
                str(self.directory / name),
                "--heartbeat",
                str(HEARTBEAT_S),
                "--grace",
                str(GRACE_S),
            ],
            self.directory / f"{name}.log",
            self.env,
        )
        self.workers[name] = proc
        return proc

    def start_api(self, name: str, *extra: str) -> str:
        port = free_port()
        proc = Proc(
            name,
            [
                SD3POSE,
                "serve",
                "--broker",
                self.redis.url,
                *self.model_args,
                "--port",
                str(port),
                "--data-dir",
                str(self.directory / name),
                *extra,
            ],
            self.directory / f"{name}.log",
            self.env,
        )
        self.apis[name] = proc
        self.urls[name] = f"http://127.0.0.1:{port}"
        return self.urls[name]

    def live_worker_names(self) -> set[str]:
        from sd3pose.distributed.config import queue_name, workers_key

        queue = queue_name(self.model_args[1], self.model_args[3], True)
        with self.redis.client() as client:
            fresh = client.zrangebyscore(workers_key(queue), time.time(), "+inf")
        return {name.decode() for name in fresh}

    def forget_worker(self, name: str) -> None:
        from sd3pose.distributed.config import queue_name, workers_key

        with self.redis.client() as client:
            client.zrem(workers_key(queue_name(self.model_args[1], self.model_args[3], True)), name)

    def wait_ready(self) -> None:
        """Every started worker is heartbeating and every API answers /ready with 200."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for name, api in self.apis.items():
            while True:
                assert api.alive and time.monotonic() < deadline, self.logs()
                try:
                    if httpx.get(f"{self.urls[name]}/ready", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        while not set(self.workers) <= self.live_worker_names():
            assert all(w.alive for w in self.workers.values()) and time.monotonic() < deadline, self.logs()
            time.sleep(0.1)

    def ensure_running(self) -> None:
        """Restart any worker or API killed by an earlier test."""
        for name, worker in list(self.workers.items()):
            if not worker.alive:
                worker.stop()
                self.forget_worker(name)  # its last heartbeat must not count for the new process
                self.start_worker(name)
        for name, api in list(self.apis.items()):
            if not api.alive:
                api.stop()
                self.start_api(name)
        self.wait_ready()

    def logs(self) -> str:
        return "\n".join(p.tail() for p in [*self.workers.values(), *self.apis.values()])

    def stop_all(self) -> None:
        for proc in [*self.apis.values(), *self.workers.values()]:
            proc.stop()


def replayed(script):
    """A Lua script as redis-py runs it when a reply is lost (Redis restarting): it runs, then runs again."""

    def twice(keys, args):
        script(keys=keys, args=args)
        return script(keys=keys, args=args)

    return twice


# --- what the tests ask of a running cluster --------------------------------------------------------

JOB_TIMEOUT_S = 120.0


def new_key(cluster, credits: float, rate_limit: int | None = 10_000) -> tuple[str, str]:
    from sd3pose.distributed.keystore import RedisKeyStore

    with cluster.redis.client() as client:
        key, secret = RedisKeyStore(client).create("client", credits=credits, rate_limit=rate_limit)
    return key.id, secret


def balance(cluster, key_id: str) -> float | None:
    from sd3pose.distributed.keystore import RedisKeyStore

    with cluster.redis.client() as client:
        return RedisKeyStore(client).balance(key_id)


def job_field(cluster, job_id: str, field: str) -> str | None:
    from sd3pose.distributed.jobstore import job_key

    with cluster.redis.client() as client:
        value = client.hget(job_key(job_id), field)
    return value.decode() if value is not None else None


def get_json(url: str, headers: dict, timeout_s: float = 10.0) -> dict:
    """GET with retries over transient failures (an API or Redis restarting)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(url, headers=headers, timeout=timeout_s)
            if response.status_code < 500:
                return response.json()
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} kept failing"
        time.sleep(0.2)


def wait_status(url: str, headers: dict, until: set[str], timeout_s: float = JOB_TIMEOUT_S, logs=None) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = get_json(url, headers)
        if status.get("status") in until:
            return status
        assert time.monotonic() < deadline, (status, logs() if logs else "")
        time.sleep(0.05)
