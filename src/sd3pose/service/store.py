"""The SQLite database of one machine: API keys with their credits, and jobs.

One connection shared by every thread behind a lock: writes are tiny, and SQLite serialises them anyway.
Credits are whole micro-credits (`sd3pose.service.credits`); a database written with credits as floats
is migrated when opened. Input images live in files beside it, never in a job row.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sd3pose.errors import Sd3PoseError

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    micro_credits INTEGER,       -- NULL: unlimited
    scopes TEXT NOT NULL,        -- comma-separated
    rate_limit INTEGER,          -- requests/minute; NULL: the server's default
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,          -- 'sync' | 'async'
    status TEXT NOT NULL,        -- QUEUED | PROCESSING | COMPLETED | FAILED
    key_id TEXT,
    reserved_micro INTEGER NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 1,
    request_json TEXT NOT NULL,  -- what a restart needs to run it (the image only by input_hash); '' once ended
    input_hash TEXT,             -- SHA-256 of its input image, a file of the input store
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    error_code INTEGER,
    result_json TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
"""
SCHEMA_VERSION = 2


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database of an earlier version up to SCHEMA_VERSION, in one transaction."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "credits" in _columns(conn, "api_keys"):  # floats: to whole micro-credits, rounded once here
            conn.execute("ALTER TABLE api_keys ADD COLUMN micro_credits INTEGER")
            conn.execute(
                "UPDATE api_keys SET micro_credits = CAST(ROUND(credits * 1000000) AS INTEGER) "
                "WHERE credits IS NOT NULL"
            )
            conn.execute("ALTER TABLE api_keys DROP COLUMN credits")
        jobs = _columns(conn, "jobs")
        if "reserved" in jobs:
            conn.execute("ALTER TABLE jobs ADD COLUMN reserved_micro INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE jobs SET reserved_micro = CAST(ROUND(reserved * 1000000) AS INTEGER)")
            conn.execute("ALTER TABLE jobs DROP COLUMN reserved")
        if "input_hash" not in jobs:
            conn.execute("ALTER TABLE jobs ADD COLUMN input_hash TEXT")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Database:
    """A thread-safe SQLite connection with the sd3pose schema."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
            _migrate(self._conn)
        except (OSError, sqlite3.Error) as exc:
            raise Sd3PoseError(
                f"cannot open the database {self.path} ({exc}); check --data-dir (a writable folder)"
            ) from None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically (BEGIN IMMEDIATE ... COMMIT), also across processes."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, params)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
