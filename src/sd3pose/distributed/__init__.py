"""Scale-out on Celery over Redis: stateless API replicas, one worker process per GPU.

- `celery_app`: the Celery app (acks late, prefetch 1, requeue on worker loss via the visibility timeout).
- `jobstore`: job records, progress and results in Redis, with atomic start/finish (credits settled once).
- `queue`: `CeleryJobQueue`, the service's `JobQueue` on top of both.
- `keystore`: API keys, credits and rate limits in Redis, shared by every API replica.
- `worker`: the `sd3pose worker` process (models loaded once, the solo pool: no fork per task).
"""
