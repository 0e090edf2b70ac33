"""Storage bounded by what was paid for: refused requests leave nothing behind, an input image is kept
once per content hash while its jobs run, --max-disk caps the rest, and old databases are migrated."""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import threading

from PIL import Image
from service_helpers import REQUEST, ScriptedGenerator, local_client, make_app, poll, wait_ready
from typer.testing import CliRunner

from sd3pose.service.disk import folder_size


def _image_of(num_bytes: int) -> str:
    """Base64 of a real PNG padded to `num_bytes` (decoders ignore what follows the image)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "PNG")
    png = buffer.getvalue()
    return base64.b64encode(png + os.urandom(num_bytes - len(png))).decode("ascii")


def test_large_invalid_requests_from_a_one_credit_key_leave_no_trace(tmp_path) -> None:
    with local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        keys = client.app.state.services.keys
        key, secret = keys.create("prober", credits=1)
        before = folder_size(tmp_path)
        not_an_image = base64.b64encode(os.urandom(20 * 2**20 - 4096)).decode("ascii")  # a 28 MB body
        answers = [
            client.post("/v1/sd3-med-pose", json={**REQUEST, "image": not_an_image}, headers={"x-api-key": secret})
            for _ in range(5)
        ]
        assert [a.status_code for a in answers] == [400] * 5
        assert "could not be decoded" in answers[0].json()["error"]
        assert keys.balance(key.id) == 1
        grown = folder_size(tmp_path) - before
        assert grown < 2**20, f"the data folder grew by {grown / 2**20:.1f} MB"
        assert client.app.state.services.db.query("SELECT COUNT(*) FROM jobs")[0][0] == 0


def test_an_input_is_kept_once_while_its_jobs_run_and_deleted_when_they_end(tmp_path) -> None:
    generator = ScriptedGenerator(gate=threading.Event())
    with local_client(make_app(tmp_path, generator)) as client:
        wait_ready(client)
        photo = _image_of(2**20)
        jobs = [client.post("/v2/sd3-med-pose", json={**REQUEST, "image": photo}).json() for _ in range(3)]
        inputs = tmp_path / "inputs"
        assert len(list(inputs.iterdir())) == 1  # three jobs, one stored copy
        db = client.app.state.services.db
        rows = db.query("SELECT request_json, input_hash FROM jobs")
        assert all(len(row["request_json"]) < 2000 and row["input_hash"] for row in rows)  # the image is not in them
        generator.gate.set()
        for job in jobs:
            poll(client, job["status_url"], {}, {"COMPLETED"})
        assert list(inputs.iterdir()) == []
        assert [row["request_json"] for row in db.query("SELECT request_json FROM jobs")] == ["", "", ""]
        assert generator.runs[0].image == base64.b64encode(base64.b64decode(photo)).decode()  # the worker's copy


def test_max_disk_refuses_new_jobs_with_503_and_metrics_report_the_use(tmp_path) -> None:
    generator = ScriptedGenerator(gate=threading.Event())
    with local_client(make_app(tmp_path, generator, max_disk_gb=1 / 1024)) as client:  # 1 MiB
        wait_ready(client)
        keys = client.app.state.services.keys
        key, secret = keys.create("filler", credits=5)
        headers = {"x-api-key": secret}
        held = client.post("/v2/sd3-med-pose", json={**REQUEST, "image": _image_of(600_000)}, headers=headers)
        assert held.status_code == 200
        full = client.post("/v2/sd3-med-pose", json={**REQUEST, "image": _image_of(600_000)}, headers=headers)
        assert full.status_code == 503 and "storage is full" in full.json()["error"]
        assert "--max-disk" in full.json()["error"] and full.headers["x-remaining-credits"] == "4"
        metrics = client.get("/metrics").text
        gauges = dict(line.split() for line in metrics.splitlines() if line.startswith("sd3pose_storage"))
        assert float(gauges["sd3pose_storage_limit_bytes"]) == 2**20
        assert 600_000 < float(gauges["sd3pose_storage_bytes"]) < 2**20
        generator.gate.set()
        poll(client, held.json()["status_url"], headers, {"COMPLETED"})
        small = client.post("/v1/sd3-med-pose", json=REQUEST, headers=headers)  # its input is gone: room again
        assert small.status_code == 200


def test_an_input_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    from sd3pose.service import disk

    def disk_full(source, target) -> None:
        raise OSError(28, "No space left on device")

    with local_client(make_app(tmp_path, ScriptedGenerator())) as client:
        wait_ready(client)
        monkeypatch.setattr(disk.os, "replace", disk_full)  # the input's file is written, not put in place
        refused = client.post("/v2/sd3-med-pose", json={**REQUEST, "image": _image_of(300_000)})
        assert refused.status_code == 500 and "could not record the job" in refused.json()["error"]
        assert list((tmp_path / "inputs").iterdir()) == []
        assert client.app.state.services.queue.storage_used() < 300_000


LEGACY_SCHEMA = """
CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL, credits REAL,
    scopes TEXT NOT NULL, rate_limit INTEGER, created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, key_id TEXT,
    reserved REAL NOT NULL DEFAULT 0, samples INTEGER NOT NULL DEFAULT 1, request_json TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT, error_code INTEGER, result_json TEXT);
"""


def test_a_database_with_float_credits_is_migrated_to_micro_credits(tmp_path) -> None:
    from sd3pose.cli import app
    from sd3pose.service.keys import KeyStore, hash_key
    from sd3pose.service.store import Database

    legacy = sqlite3.connect(tmp_path / "sd3pose.db")
    legacy.executescript(LEGACY_SCHEMA)
    secret = "sd3p_0123456789ab_secret"
    legacy.execute(
        "INSERT INTO api_keys VALUES ('0123456789ab', 'old', ?, 4.9, 'generate,async,pose', NULL, 1, NULL)",
        (hash_key(secret),),
    )
    legacy.execute("INSERT INTO api_keys VALUES ('ffffffffffff', 'ops', 'x', NULL, 'generate', NULL, 2, NULL)")
    legacy.execute(
        "INSERT INTO jobs (id, kind, status, key_id, reserved, request_json, created_at) "
        "VALUES ('j1', 'async', 'FAILED', '0123456789ab', 0.3, '', 1)"
    )
    legacy.commit()
    legacy.close()

    keys = KeyStore(Database(tmp_path / "sd3pose.db"))
    assert keys.balance("0123456789ab") == 4.9 and keys.verify(secret).credits == 4.9
    assert keys.get("ffffffffffff").unlimited
    for _ in range(49):
        assert keys.reserve("0123456789ab", 0.1)
    assert keys.balance("0123456789ab") == 0 and not keys.reserve("0123456789ab", 0.1)
    assert Database(tmp_path / "sd3pose.db").query("SELECT reserved_micro FROM jobs")[0][0] == 300_000
    listed = CliRunner().invoke(app, ["keys", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "old" in listed.output and "unlimited" in listed.output
