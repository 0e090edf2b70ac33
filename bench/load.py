"""Throughput of the scale-out: K concurrent clients against 1 API and 1 vs 2 workers on one Redis.

Starts a private redis-server (free loopback port, temp dir), one `sd3pose serve --broker` and two
`sd3pose worker` processes (one torch thread each) on the tiny model, then alternates rounds with one
worker consuming (the other's consumer cancelled through Celery's remote control) and with both, after a
warm-up of each. Every round sends N sync requests from K client threads. Prints per round and median
throughput and p50/p95 latency, and the ratio of median throughputs 2 workers / 1 worker (target >= 1.6).

    .venv/bin/python bench/load.py [--clients 8] [--requests 24] [--rounds 3] [--steps 12] [--size 256]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_round(url: str, key: str, body: dict, clients: int, requests: int) -> tuple[float, list[float]]:
    """(throughput in requests/s, latencies in s) of `requests` sync requests from `clients` threads."""

    local = threading.local()

    def one(_: int) -> float:
        if not hasattr(local, "client"):  # one keep-alive connection per client thread
            local.client = httpx.Client(headers={"x-api-key": key}, timeout=300)
        start = time.perf_counter()
        response = local.client.post(f"{url}/v1/sd3-med-pose", json=body)
        if response.status_code != 200:
            raise SystemExit(f"request failed with {response.status_code}: {response.text}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    return requests / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (K)")
    parser.add_argument("--requests", type=int, default=24, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per configuration")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")

    from sd3pose.cli.tiny_model import write_tiny_model
    from sd3pose.distributed.celery_app import make_celery
    from sd3pose.distributed.config import queue_name, redis_client
    from sd3pose.distributed.keystore import RedisKeyStore

    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="sd3pose-load-") as tmp:
        work = Path(tmp)
        try:
            port = free_port()
            broker = f"redis://127.0.0.1:{port}/0"
            procs.append(
                subprocess.Popen(
                    [
                        redis_bin,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        tmp,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            print("building the tiny model ...", flush=True)
            write_tiny_model(work / "model")
            model = ["--model", str(work / "model/base"), "--controlnet", str(work / "model/controlnet")]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            log = open(work / "processes.log", "ab")  # noqa: SIM115 - closed with the temp dir
            workers = []
            for name in ("w1", "w2"):
                workers.append(
                    subprocess.Popen(
                        [
                            SD3POSE,
                            "worker",
                            "--broker",
                            broker,
                            *model,
                            "--name",
                            name,
                            "--threads",
                            "1",
                            "--data-dir",
                            str(work / name),
                        ],
                        stdout=log,
                        stderr=log,
                        env=env,
                    )
                )
            procs.extend(workers)
            api_port = free_port()
            url = f"http://127.0.0.1:{api_port}"
            procs.append(
                subprocess.Popen(
                    [
                        SD3POSE,
                        "serve",
                        "--broker",
                        broker,
                        *model,
                        "--port",
                        str(api_port),
                        "--data-dir",
                        str(work / "api"),
                        "--rate-limit",
                        "0",
                    ],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
            print("starting 1 API and 2 workers ...", flush=True)

            def ready() -> bool:
                try:
                    return "2 worker(s)" in httpx.get(f"{url}/ready", timeout=5).text
                except httpx.HTTPError:
                    return False

            wait_for(ready, "the API and both workers")
            with redis_client(broker) as client:
                key = RedisKeyStore(client).create("load", credits=None)[1]
            queue = queue_name(model[1], model[3], True)
            celery = make_celery(broker)
            second = f"sd3pose-{workers[1].pid}@{socket.gethostname()}"

            def consumers(n: int) -> None:
                # Celery remote control: the second worker stops (or resumes) taking from the queue.
                if n == 1:
                    replies = celery.control.cancel_consumer(queue, destination=[second], reply=True, timeout=10)
                else:
                    replies = celery.control.add_consumer(queue, destination=[second], reply=True, timeout=10)
                if not replies:
                    raise SystemExit(f"worker {second} did not answer the remote-control command")

            def tasks_done() -> dict[str, int]:
                # Jobs run so far by each worker (Celery's own counters), to show who took the round's jobs.
                stats = celery.control.inspect(timeout=5).stats() or {}
                return {name.split("@")[0]: s.get("total", {}).get("sd3pose.generate", 0) for name, s in stats.items()}

            buffer = io.BytesIO()
            Image.new("RGB", (64, 64)).save(buffer, format="PNG")
            body = {
                "image": base64.b64encode(buffer.getvalue()).decode(),
                "pose_mode": "none",
                "prompt": "a dancer",
                "width": args.size,
                "height": args.size,
                "num_inference_steps": args.steps,
                "sampler": "euler",
            }

            results: dict[int, list[tuple[float, list[float]]]] = {1: [], 2: []}
            for n in (1, 2):  # warm-up of each configuration
                consumers(n)
                run_round(url, key, body, args.clients, args.clients)
            for round_index in range(args.rounds):
                for n in (1, 2):
                    consumers(n)
                    before = tasks_done()
                    throughput, latencies = run_round(url, key, body, args.clients, args.requests)
                    results[n].append((throughput, latencies))
                    after = tasks_done()
                    shares = ", ".join(f"{w} ran {after.get(w, 0) - before.get(w, 0)}" for w in sorted(after))
                    print(
                        f"round {round_index + 1}, {n} worker(s): {throughput:.2f} req/s, p50 "
                        f"{percentile(latencies, 0.5):.3f} s, p95 {percentile(latencies, 0.95):.3f} s ({shares})",
                        flush=True,
                    )

            print(
                f"\n{args.clients} clients, {args.requests} requests per round, {args.size}x{args.size} px, "
                f"{args.steps} steps, median of {args.rounds} rounds:"
            )
            medians = {}
            for n in (1, 2):
                medians[n] = statistics.median(t for t, _ in results[n])
                latencies = [lat for _, lats in results[n] for lat in lats]
                print(
                    f"  {n} worker(s): {medians[n]:.2f} req/s, p50 {percentile(latencies, 0.5):.3f} s, "
                    f"p95 {percentile(latencies, 0.95):.3f} s"
                )
            print(f"throughput ratio 2 workers / 1 worker: {medians[2] / medians[1]:.2f}x (target >= 1.6x)")
        finally:
            for proc in reversed(procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    main()
