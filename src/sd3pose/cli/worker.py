"""`sd3pose worker`: run one GPU worker of a Celery-over-Redis deployment."""

from __future__ import annotations

import typer

from sd3pose.cli.options import fail, settings_options
from sd3pose.errors import Sd3PoseError
from sd3pose.settings import EngineSettings, WorkerSettings


@settings_options(EngineSettings, into="engine", exclude=("data_dir",))
@settings_options(WorkerSettings, into="worker")
def worker_command(worker: WorkerSettings, engine: EngineSettings) -> None:
    """Run one worker process (one per GPU): load the models once, then run jobs from Redis."""
    from sd3pose.cli.loading import load_generator
    from sd3pose.distributed.worker import run_worker

    engine = engine.model_copy(update={"data_dir": worker.data_dir})
    try:
        if not worker.broker:
            raise Sd3PoseError("give --broker redis://HOST:6379/0 (or SD3POSE_BROKER): the Redis of `sd3pose serve`")
        if engine.model is not None and engine.controlnet is None:
            raise Sd3PoseError("--model needs --controlnet too (a ControlNet folder or hub id)")
        code = run_worker(worker, engine, load=lambda: load_generator(engine, warm_up=True))
    except Sd3PoseError as exc:
        fail(exc.message)
    raise typer.Exit(code=code)
