"""Scale-out on Celery over Redis: stateless API replicas, one worker process per GPU.

- `celery_app`: the Celery app (acks late, prefetch 1; the visibility timeout only as a last resort).
- `jobstore`: job records, requests, progress and results in Redis, with atomic start/finish (credits
  settled once, only the current run ends a job).
- `lease`: each worker's lease, renewed every heartbeat, naming the job it runs.
- `recovery`: the reaper that requeues the job of a lapsed lease at the front of its queue, and hand-back.
- `queue`: `CeleryJobQueue`, the service's `JobQueue` on top of both.
- `keystore`: API keys, credits and rate limits in Redis, shared by every API replica.
- `worker`: the `sd3pose worker` process (models loaded once, the solo pool: no fork per task).
"""
