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
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from local_cluster import LocalCluster, pose_request


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

    from sd3pose.distributed.celery_app import make_celery
    from sd3pose.distributed.keystore import RedisKeyStore

    with LocalCluster() as cluster:
        with cluster.redis() as client:
            key = RedisKeyStore(client).create("load", credits=None)[1]
        celery = make_celery(cluster.broker)
        second = f"sd3pose-{cluster.workers['w2'].pid}@{socket.gethostname()}"

        def consumers(n: int) -> None:
            # Celery remote control: the second worker stops (or resumes) taking from the queue.
            if n == 1:
                replies = celery.control.cancel_consumer(cluster.queue, destination=[second], reply=True, timeout=10)
            else:
                replies = celery.control.add_consumer(cluster.queue, destination=[second], reply=True, timeout=10)
            if not replies:
                raise SystemExit(f"worker {second} did not answer the remote-control command")

        def tasks_done() -> dict[str, int]:
            # Jobs run so far by each worker (Celery's own counters), to show who took the round's jobs.
            stats = celery.control.inspect(timeout=5).stats() or {}
            return {name.split("@")[0]: s.get("total", {}).get("sd3pose.generate", 0) for name, s in stats.items()}

        body = pose_request(args.size, args.steps)
        results: dict[int, list[tuple[float, list[float]]]] = {1: [], 2: []}
        for n in (1, 2):  # warm-up of each configuration
            consumers(n)
            run_round(cluster.url, key, body, args.clients, args.clients)
        for round_index in range(args.rounds):
            for n in (1, 2):
                consumers(n)
                before = tasks_done()
                throughput, latencies = run_round(cluster.url, key, body, args.clients, args.requests)
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
        celery.close()


if __name__ == "__main__":
    main()
