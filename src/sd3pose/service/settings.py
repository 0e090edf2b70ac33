"""Everything an operator can tune about the service, with safe defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATA_DIR = Path("var")


def is_loopback(host: str) -> bool:
    """True when binding `host` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = DEFAULT_DATA_DIR
    # Credits charged per delivered image.
    price_per_image: float = 1.0
    # Requests per minute per key on the generation and pose routes (0 = no limit); a key may override it.
    rate_limit_per_minute: int = 60
    # Jobs waiting to run (sync and async together); one more is refused with 429.
    max_queue: int = 32
    # How long a sync request waits for its image before 504.
    sync_timeout_s: float = 300.0
    # How long finished async results stay retrievable, then 404.
    result_ttl_s: float = 3600.0
    max_samples: int = 4
    # Largest JSON body read: a 20 MB image (the input cap) is ~27 MB as base64, plus the other fields.
    max_body_bytes: int = 32 * 2**20
    # Serve without keys on a non-loopback address (only behind your own auth proxy).
    insecure_no_auth: bool = False
    # One in-process worker per device; each loads its own copy of the models.
    devices: list[str | None] = field(default_factory=lambda: [None])
    # How often expired results are deleted from disk.
    cleanup_interval_s: float = 60.0
    # `serve --broker redis://...`: a stateless API; jobs go to Celery workers, and jobs, results, keys,
    # credits and rate limits live in Redis (sd3pose.distributed).
    broker_url: str | None = None
    # The Celery queue of the model this API serves (sd3pose.distributed.config.queue_name).
    broker_queue: str | None = None

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "sd3pose.db"

    @property
    def results_dir(self) -> Path:
        return Path(self.data_dir) / "results"

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)
