"""Fixtures for the scale-out tests: a private redis-server, and a cluster of real processes.

Every Redis here listens on a free loopback port in a temp dir (never the system one), and every
process started is killed at the end. Without redis-server the tests skip, except in CI (env CI set),
where a missing redis-server is a failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dist_cluster import Cluster, RedisServer, require_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(redis_server: RedisServer):
    """A client of the module's Redis, emptied for the test."""
    with redis_server.client() as connection:
        connection.flushdb()
        yield connection


@pytest.fixture(scope="session")
def cluster(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers and two API processes on the tiny model, on a Redis of their own (never emptied by a
    test), started once for every test that needs them: starting them is the slow part."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("cluster-redis"))
    server.start()
    cluster = Cluster(server, tiny_model_dir, tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        cluster.start_api("a")
        cluster.start_api("b")
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop_all()
        server.stop()
