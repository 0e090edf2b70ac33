"""The app on a backend it is handed (as `serve --broker` does), and the errors a backend's state gives."""

from __future__ import annotations

import threading

from service_helpers import REQUEST, ScriptedGenerator, local_client

from sd3pose.jobs.contract import StoreUnavailableError
from sd3pose.service.app import create_app
from sd3pose.service.keys import KeyStore
from sd3pose.service.ratelimit import RateLimiter
from sd3pose.service.store import Database
from sd3pose.settings import ServiceSettings


class UnreachableStoreQueue:
    """A job queue whose store cannot be reached (Redis down), as the routes see it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...

    def readiness(self) -> tuple[bool, str]:
        return False, "cannot reach the job store (Redis); the server log has the details"

    def depth(self) -> int:
        raise StoreUnavailableError("cannot reach the job store (Redis); the server log has the details")

    def storage_used(self) -> int:
        raise StoreUnavailableError("cannot reach the job store (Redis); the server log has the details")


def test_a_replica_handed_its_backend_opens_nothing_in_the_data_folder(tmp_path) -> None:
    data_dir = tmp_path / "data"
    settings = ServiceSettings(data_dir=data_dir)
    keys = KeyStore(Database(":memory:"))  # stands in for the Redis key store
    app = create_app(settings, queue=UnreachableStoreQueue(), keys=keys, limiter=RateLimiter())
    with local_client(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
    assert not data_dir.exists()  # no SQLite database, no results folder


def test_queue_depth_reads_unknown_not_zero_while_the_store_is_unreachable(tmp_path) -> None:
    keys = KeyStore(Database(":memory:"))
    app = create_app(ServiceSettings(data_dir=tmp_path), queue=UnreachableStoreQueue(), keys=keys)
    with local_client(app) as client:
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "sd3pose_queue_depth NaN" in metrics.text
    assert "sd3pose_storage_bytes NaN" in metrics.text


def test_a_pose_preview_while_the_models_load_says_so_and_when_to_retry(tmp_path) -> None:
    loaded = threading.Event()

    def slow_factory(device):
        loaded.wait(30)
        return ScriptedGenerator()

    app = create_app(ServiceSettings(data_dir=tmp_path), generator_factory=slow_factory)
    try:
        with local_client(app) as client:
            answer = client.post("/v1/pose", json={"image": REQUEST["image"]})
    finally:
        loaded.set()
    assert answer.status_code == 429 and int(answer.headers["retry-after"]) >= 1
    assert "still loading" in answer.json()["error"]
