"""`sd3pose worker`: run one GPU worker of a Celery-over-Redis deployment."""

from __future__ import annotations

from pathlib import Path

import typer

from sd3pose.distributed.config import DEFAULT_RESTORE_INTERVAL_S, DEFAULT_VISIBILITY_TIMEOUT_S


def worker_command(
    broker: str = typer.Option(
        ...,
        "--broker",
        envvar="SD3POSE_BROKER",
        help="Redis URL shared with `sd3pose serve --broker` (redis://HOST:6379/0).",
    ),
    device: str = typer.Option(None, "--device", help="Device of this worker (cuda:0, cpu; default: best)."),
    model: str = typer.Option(None, "--model", help="Base model folder or hub id (default: the demo model)."),
    controlnet: str = typer.Option(None, "--controlnet", help="ControlNet folder or hub id."),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: by device)."),
    no_t5: bool = typer.Option(False, "--no-t5", help="Skip the T5 encoder (less memory)."),
    compile_models: bool = typer.Option(
        False,
        "--compile",
        envvar="SD3POSE_COMPILE",
        help="torch.compile the models at start-up (slower start, faster steps).",
    ),
    name: str = typer.Option(None, "--name", help="Worker name in logs and Flower (default: host-device-pid)."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)."),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls", help="Let image URLs point at private/loopback hosts (trusted LANs only)."
    ),
    result_ttl: float = typer.Option(3600.0, "--result-ttl", min=1.0, help="Seconds results are kept in Redis."),
    visibility_timeout: float = typer.Option(
        DEFAULT_VISIBILITY_TIMEOUT_S,
        "--visibility-timeout",
        help="Seconds after which the job of a dead worker goes to another one; keep it above the longest job.",
    ),
    restore_interval: float = typer.Option(
        DEFAULT_RESTORE_INTERVAL_S, "--restore-interval", help="Seconds between sweeps for jobs of dead workers."
    ),
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve this worker's Prometheus metrics (job timings) on this port.",
    ),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="Address of the metrics endpoint."),
    data_dir: Path = typer.Option(
        Path("var"),
        "--data-dir",
        envvar="SD3POSE_DATA_DIR",
        help="Where the demo model is built when no --model is given.",
    ),
) -> None:
    """Run one worker process (one per GPU): load the models once, then run jobs from Redis."""
    from sd3pose.distributed.worker import WorkerOptions, run_worker
    from sd3pose.errors import Sd3PoseError

    try:
        options = WorkerOptions(
            broker_url=broker,
            model=model,
            controlnet=controlnet,
            device=device,
            dtype=dtype,
            use_t5=not no_t5,
            compile=compile_models,
            data_dir=data_dir,
            name=name,
            threads=threads,
            allow_private_urls=allow_private_urls,
            result_ttl_s=result_ttl,
            visibility_timeout_s=visibility_timeout,
            restore_interval_s=restore_interval,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
        if model is not None and controlnet is None:
            raise Sd3PoseError("--model needs --controlnet too (a ControlNet folder or hub id)")
        code = run_worker(options)
    except Sd3PoseError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    except Exception as exc:
        import redis

        if isinstance(exc, redis.exceptions.ConnectionError):
            typer.secho(
                f"error: cannot reach Redis at --broker ({exc}); start redis-server or fix the URL",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(code=2) from None
        raise
    raise typer.Exit(code=code)
