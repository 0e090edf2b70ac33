"""Failover of a killed worker: how soon its job runs again, and that nothing is lost, charged or run twice.

Starts a private redis-server, one API and two workers (one torch thread each, default heartbeat unless
--heartbeat) on the tiny model. First one job runs undisturbed: its run time is the reference. Then, for
each of --kills rounds, a sync client sends the same kind of job, the worker running it is sent SIGKILL
at a random point of the job (uniform over 5-95% of the reference run time), and the script waits for
the client's answer. Per kill it reports the time from the kill to the job's restart on the other worker
and to its completion, and checks that the client got its image, that the key paid exactly once and
that the job started exactly twice (once on each worker: a third start would be a second run beside a
live worker). The killed worker is restarted before the next round.

    .venv/bin/python bench/failover.py [--kills 10] [--size 640] [--steps 100] [--heartbeat S] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import threading
import time

import httpx
from local_cluster import LocalCluster, pose_request, wait_for


def field(client, job_id: str, name: str) -> str | None:
    from sd3pose.distributed.jobstore import job_key

    value = client.hget(job_key(job_id), name)
    return value.decode() if value is not None else None


def running_job(client) -> str:
    """The job now PROCESSING (one runs at a time here)."""
    from sd3pose.distributed.config import running_key

    found: list[str] = []

    def started() -> bool:
        found[:] = [
            raw.decode()
            for raw in client.zrange(running_key(), 0, -1)
            if field(client, raw.decode(), "status") == "PROCESSING"
        ]
        return bool(found)

    wait_for(started, "the job to start", timeout_s=300)
    return found[0]


def send(cluster: LocalCluster, secret: str, body: dict, answers: list[httpx.Response]) -> threading.Thread:
    """A sync client waiting for its image in a thread; its response lands in `answers`."""

    def wait() -> None:
        answers.append(
            httpx.post(f"{cluster.url}/v1/sd3-med-pose", json=body, headers={"x-api-key": secret}, timeout=600)
        )

    thread = threading.Thread(target=wait)
    thread.start()
    return thread


def starts(cluster: LocalCluster, job_id: str) -> int:
    """Runs of the job begun by any worker (the executor logs one line per run)."""
    return sum(
        cluster.log_path(name).read_text(errors="replace").count(f"job {job_id}: started (") for name in cluster.workers
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--size", type=int, default=640, help="image side in px (the job must outlast the kill)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--heartbeat", type=float, default=None, help="workers' --heartbeat (default: theirs)")
    parser.add_argument("--seed", type=int, default=0, help="for the kill points")
    args = parser.parse_args()
    chooser = random.Random(args.seed)

    from sd3pose.distributed.keystore import RedisKeyStore

    worker_args = ("--heartbeat", str(args.heartbeat)) if args.heartbeat else ()
    with LocalCluster(worker_args=worker_args) as cluster, cluster.redis() as client:
        keys = RedisKeyStore(client)
        key, secret = keys.create("failover", credits=1000)
        body = pose_request(args.size, args.steps)

        answers: list[httpx.Response] = []
        reference_thread = send(cluster, secret, body, answers)
        reference_id = running_job(client)
        reference_thread.join()
        reference_s = float(field(client, reference_id, "finished_at")) - float(
            field(client, reference_id, "started_at")
        )
        print(
            f"reference: the job runs {reference_s:.1f} s undisturbed ({args.size}x{args.size} px, {args.steps} steps)"
        )

        rows: list[dict] = []
        while len(rows) < args.kills:
            before = keys.balance(key.id)
            answers.clear()
            client_thread = send(cluster, secret, body, answers)
            job_id = running_job(client)
            started_at = float(field(client, job_id, "started_at"))
            point = chooser.uniform(0.05, 0.95)
            time.sleep(max(0.0, started_at + point * reference_s - time.time()))
            victim = field(client, job_id, "worker")
            cluster.workers[victim].send_signal(signal.SIGKILL)
            killed_at = time.time()
            cluster.workers[victim].wait()
            client_thread.join()

            response = answers[0]
            restarted = float(field(client, job_id, "started_at"))
            finished = float(field(client, job_id, "finished_at") or "nan")
            if restarted < killed_at:  # this run was faster than the reference: it ended before the kill
                print(f"(the job ended before the kill at {point:.0%}: not counted, once more)", flush=True)
                cluster.restart_worker(victim)
                continue
            row = {
                "point": point,
                "restart": restarted - killed_at,
                "complete": finished - killed_at,
                "rerun": finished - restarted,
                "lost": response.status_code != 200 or field(client, job_id, "status") != "COMPLETED",
                "paid": before - keys.balance(key.id),
                "starts": starts(cluster, job_id),
                "attempts": int(field(client, job_id, "attempts") or 0),
                "survivor": field(client, job_id, "worker"),
            }
            rows.append(row)
            print(
                f"kill {len(rows):2d} of {victim} at {point:4.0%} of the job: restarted on {row['survivor']} after "
                f"{row['restart']:5.1f} s, completed {row['complete']:5.1f} s after the kill "
                f"(rerun {row['rerun']:.1f} s); client got {response.status_code}, paid {row['paid']:g}, "
                f"runs begun {row['starts']}",
                flush=True,
            )
            cluster.restart_worker(victim)

        restart = [r["restart"] for r in rows]
        complete = [r["complete"] for r in rows]
        lost = sum(r["lost"] for r in rows)
        double_charges = sum(r["paid"] != 1 for r in rows)
        double_runs = sum(r["starts"] > 2 or r["attempts"] > 2 for r in rows)
        late = sum(r["complete"] > 30 + r["rerun"] for r in rows)
        print(f"\n{len(rows)} kills, reference job {reference_s:.1f} s:")
        print(
            f"  kill -> restart:    median {statistics.median(restart):.1f} s "
            f"(min {min(restart):.1f}, max {max(restart):.1f}; target median <= 20 s)"
        )
        print(
            f"  kill -> completion: median {statistics.median(complete):.1f} s "
            f"(min {min(complete):.1f}, max {max(complete):.1f}); over 30 s + the job's own run time: {late}"
        )
        print(f"  jobs lost {lost}, double charges {double_charges}, double runs on live workers {double_runs}")


if __name__ == "__main__":
    main()
