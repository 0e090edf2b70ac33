"""The Celery app shared by API replicas (which send tasks) and workers (which run them)."""

from __future__ import annotations

from celery import Celery

from sd3pose.distributed.config import DEFAULT_RESTORE_INTERVAL_S, DEFAULT_VISIBILITY_TIMEOUT_S, check_broker_url

TASK_GENERATE = "sd3pose.generate"
TASK_PREVIEW = "sd3pose.preview_pose"

# Kombu's Redis transport keeps one list per priority step and a worker pops from the lowest step that
# holds a message (BRPOP over the lists in step order; within a list, first in, first out). New jobs go
# to step 3; a job handed back (its worker died or stopped) and pose previews, which a user is watching,
# go to step 0: ahead of every job that is waiting.
PRIORITY_FRONT = 0
PRIORITY_NEW = 3


def send_job(app: Celery, job_id: str, queue: str, *, front: bool = False) -> None:
    """Send a job's task to its model's queue (the request is in the job store); `front`: ahead of the
    jobs waiting there."""
    app.send_task(
        TASK_GENERATE, args=[job_id], queue=queue, task_id=job_id, priority=PRIORITY_FRONT if front else PRIORITY_NEW
    )


def make_celery(
    broker_url: str,
    *,
    visibility_timeout_s: float = DEFAULT_VISIBILITY_TIMEOUT_S,
    restore_interval_s: float = DEFAULT_RESTORE_INTERVAL_S,
) -> Celery:
    """A Celery app on Redis, configured for long GPU jobs that must survive a worker's death."""
    app = Celery("sd3pose", broker=check_broker_url(broker_url))
    app.conf.update(
        # Acknowledge after the task ran: a worker killed mid-job leaves the message unacknowledged, and
        # Redis hands it to another worker once the visibility timeout passes.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per worker process (one GPU): never hoard a second message while busy.
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            # How often idle workers look for abandoned messages (every interval; no extra throttle).
            "unacked_restore_interval": restore_interval_s,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # ride out a Redis restart
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in Redis under our own keys, with the result TTL
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_track_started=False,
        # Flower turns task events on when it starts (`celery ... flower`); sent events show queued tasks.
        task_send_sent_event=True,
    )
    return app
