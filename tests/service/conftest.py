"""Fixtures for the service tests (helpers live in service_helpers.py, a name unique in the suite)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from service_helpers import ScriptedGenerator, local_client, make_app, wait_ready


@pytest.fixture
def generator() -> ScriptedGenerator:
    return ScriptedGenerator()


@pytest.fixture
def client(tmp_path, generator) -> Iterator[TestClient]:
    with local_client(make_app(tmp_path, generator), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client
