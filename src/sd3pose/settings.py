"""Every default an operator can change, in one place, each also read from an `SD3POSE_*` variable.

The command line builds its options from these fields (`sd3pose.cli.options`): a default, its
environment variable, its range and its help text are written here once. Values given explicitly
(a CLI option, a keyword argument) win over the environment, which wins over the default.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SD3POSE_"
# Requests/minute: beyond this, no limit in practice (and SQLite integers stay in range).
MAX_RATE_LIMIT = 10**6


def is_loopback(host: str) -> bool:
    """True when binding `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_assignment=True)

    data_dir: Path = Field(Path("var"), description="Where keys, jobs, results and the demo model live.")


class EngineSettings(_Settings):
    """Which weights a worker loads, and how. `model=None` means the built-in random-weight demo model,
    which the command line builds under `data_dir` (product code never builds it)."""

    model: str | None = Field(None, description="Base model folder or hub id (default: the demo model).")
    controlnet: str | None = Field(None, description="ControlNet folder or hub id.")
    device: str | None = Field(None, description="cuda, cuda:1, cpu... (default: the best available).")
    dtype: str | None = Field(None, description="bf16, fp16 or fp32 (default: by device).")
    use_t5: bool = Field(True, description="Load the T5 text encoder (--no-t5 saves its memory).")
    compile: bool = Field(False, description="torch.compile the models (slow start, faster steps; pays off on GPUs).")
    offload: bool = Field(
        False, description="Keep models in main memory, each on the GPU only while it runs (GPUs < 16 GB)."
    )


class _JobStoreSettings(_Settings):
    """What API replicas and Celery workers must agree on."""

    broker: str | None = Field(
        None, description="Redis URL of a scaled-out deployment (redis://HOST:6379/0): jobs run on `sd3pose worker`s."
    )
    result_ttl_s: float = Field(3600.0, gt=0.0, description="Seconds finished results are kept, then 404.")


class ServiceSettings(_JobStoreSettings):
    """The HTTP service: where it listens, what it charges, how long requests wait."""

    host: str = Field("127.0.0.1", description="Address to bind (another than loopback needs keys).")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    price_per_image: float = Field(1.0, ge=0.0, description="Credits charged per delivered image.")
    rate_limit_per_minute: int = Field(
        60, ge=0, le=MAX_RATE_LIMIT, description="Requests/minute per key on the generation and pose routes (0 = none)."
    )
    max_queue: int = Field(32, ge=1, description="Jobs waiting to run (sync and async together) before 429.")
    sync_timeout_s: float = Field(300.0, ge=0.1, description="Seconds a sync request waits for its image before 504.")
    max_samples: int = Field(4, ge=1, le=64, description="Most images per request.")
    # A 20 MB image (the input cap) is ~27 MB as base64, plus the other fields.
    max_body_bytes: int = Field(32 * 2**20, ge=1, description="Largest JSON body read.")
    allow_private_urls: bool = Field(
        False, description="Let image URLs point at private/loopback hosts (trusted LANs only)."
    )
    fetch_timeout_s: float = Field(
        20.0, gt=0.0, description="Seconds an image URL may take to download, all told, before 400."
    )
    max_disk_gb: float = Field(
        10.0,
        ge=0.0,
        description="GiB that inputs, results and jobs may take (under --data-dir, or in Redis with --broker) "
        "before new jobs get 503; 0 = no cap.",
    )
    insecure_no_auth: bool = Field(
        False, description="Serve without keys on a non-loopback address (only behind your own auth proxy)."
    )
    devices: list[str | None] = Field(
        default_factory=lambda: [None],
        description="One in-process worker per device; each loads its own copy of the models.",
    )
    cleanup_interval_s: float = Field(60.0, gt=0.0, description="Seconds between deletions of expired results.")
    # The Celery queue of the model this API serves (sd3pose.distributed.config.queue_name).
    broker_queue: str | None = None

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "sd3pose.db"

    @property
    def results_dir(self) -> Path:
        return Path(self.data_dir) / "results"

    @property
    def inputs_dir(self) -> Path:
        return Path(self.data_dir) / "inputs"

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)


class WorkerSettings(_JobStoreSettings):
    """A Celery worker process (one per GPU) of a scaled-out deployment."""

    name: str | None = Field(None, description="Worker name in logs and Flower (default: host-device-pid).")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice).")
    heartbeat_s: float = Field(
        5.0,
        ge=0.1,
        description="Seconds between renewals of this worker's lease; a worker silent for 3 heartbeats is presumed "
        "dead and its job runs again on another worker.",
    )
    grace_s: float = Field(
        60.0,
        ge=0.0,
        description="On SIGTERM, seconds the running job may take to finish; then it is handed back to the queue "
        "and the worker exits.",
    )
    visibility_timeout_s: float = Field(
        600.0,
        gt=0.0,
        description="Last resort behind the lease: seconds after which Celery hands an unacknowledged job to "
        "another worker (a copy whose job is running or done is dropped).",
    )
    restore_interval_s: float = Field(
        10.0, gt=0.0, description="Seconds between Celery's sweeps for messages past the visibility timeout."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve this worker's Prometheus metrics (job timings) on this port."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics endpoint.")
