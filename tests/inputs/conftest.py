"""Fixtures for the input tests: loopback HTTP servers that count hits (see input_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from input_helpers import HAS_IPV6, LoopbackServer, RemapTransport, astronaut, encode


@pytest.fixture(scope="session")
def image_png() -> bytes:
    return encode(astronaut())


@pytest.fixture
def server(image_png: bytes) -> Iterator[LoopbackServer]:
    srv = LoopbackServer("127.0.0.1", image_png)
    yield srv
    srv.close()


@pytest.fixture
def server6(image_png: bytes) -> Iterator[LoopbackServer]:
    if not HAS_IPV6:
        pytest.skip("this machine has no IPv6 loopback")
    srv = LoopbackServer("::1", image_png)
    yield srv
    srv.close()


@pytest.fixture
def stand_in(image_png: bytes) -> Iterator[LoopbackServer]:
    """The loopback server that plays the public host PUBLIC_STAND_IN (through RemapTransport)."""
    srv = LoopbackServer("127.0.0.1", image_png)
    yield srv
    srv.close()


@pytest.fixture
def remap(stand_in: LoopbackServer) -> Iterator[RemapTransport]:
    transport = RemapTransport(stand_in)
    yield transport
    transport.inner.close()
