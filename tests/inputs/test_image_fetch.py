"""Downloading image URLs: the happy path, size caps, timeouts, redirect limits, wrong content.

What the user can fix is an ImageInputError (400); a failing image host an UpstreamError (502).

All against loopback servers with allow_private_urls=True (the SSRF guard has its own tests);
timeouts are a fraction of a second, and every test is bounded by them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from input_helpers import LoopbackServer, astronaut, pixels

from sd3pose.errors import ImageInputError, UpstreamError
from sd3pose.images import InputLimits, load_image
from sd3pose.images.net import fetch_url

LAN = InputLimits(allow_private_urls=True, connect_timeout=1.0, read_timeout=1.0)


def test_an_image_url_loads_as_the_served_image(server: LoopbackServer) -> None:
    image = load_image(server.url(), LAN)
    assert image.mode == "RGB" and image.size == (96, 64)
    assert np.array_equal(pixels(image), pixels(astronaut()))  # PNG: lossless
    assert server.hits == [("/img.png", f"127.0.0.1:{server.port}")]


def test_the_size_cap_holds_while_streaming_without_content_length(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, max_bytes=1024 * 1024, read_timeout=5.0)
    with pytest.raises(ImageInputError, match="image at the URL is larger than the 1 MB limit; send a smaller image"):
        load_image(server.url("/big?chunks=1024"), limits)  # the server would send 64 MB
    # The download stopped near the cap: the server got a broken pipe long before its 64 MB
    # (what it wrote beyond 1 MB sits in socket buffers, a few MB at most).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and server.bytes_sent == 0:
        time.sleep(0.01)
    time.sleep(0.2)
    assert 1024 * 1024 <= server.bytes_sent < 24 * 1024 * 1024


def test_a_declared_content_length_over_the_cap_is_refused_before_reading(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, max_bytes=20 * 1024 * 1024)
    with pytest.raises(ImageInputError) as info:
        load_image(server.url("/big-declared"), limits)
    assert info.value.message == "image is 50 MB; the limit is 20 MB: send a smaller image"


def test_a_gzip_bomb_is_capped_on_its_decoded_size(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, max_bytes=1024 * 1024)
    with pytest.raises(ImageInputError, match="image at the URL is larger than the 1 MB limit"):
        load_image(server.url("/gzip-bomb"), limits)
    assert server.accept_encoding == "identity"  # we never invite compression


def test_a_server_that_answers_too_slowly_hits_the_read_timeout(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"sent nothing for 0\.3 s"):
        load_image(server.url("/slow?delay=3"), limits)
    assert time.monotonic() - started < 2.5


def test_a_server_dripping_bytes_hits_the_total_timeout(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, read_timeout=1.0, total_timeout=0.5)
    started = time.monotonic()
    # A 400 naming the host: the user picked the URL, and a faster one (or base64) fixes it.
    with pytest.raises(ImageInputError, match=r"from '127\.0\.0\.1' took longer than 0\.5 s"):
        load_image(server.url("/drip"), limits)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", ["/slow?delay=3", "/stall?delay=3"])
def test_the_total_deadline_holds_while_a_host_is_silent(server: LoopbackServer, path: str) -> None:
    """Silent before its headers (the read timeout is capped at the time left) or in the middle of the
    body (the socket is shut at the deadline): either way the fetch ends at the deadline, not at the
    5 s read timeout."""
    limits = InputLimits(allow_private_urls=True, read_timeout=5.0, total_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ImageInputError, match=r"took longer than 0\.5 s"):
        load_image(server.url(path), limits)
    assert time.monotonic() - started < 2.0


@pytest.fixture
def unresponsive_port() -> Iterator[int]:
    """A loopback port whose listen queue is full, so a new connection attempt hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for sock in [*fillers, listener]:
        sock.close()


def test_a_host_that_does_not_accept_hits_the_connect_timeout(unresponsive_port: int) -> None:
    limits = InputLimits(allow_private_urls=True, connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"could not connect to the image URL host '127\.0\.0\.1' within 0\.3 s"):
        load_image(f"http://127.0.0.1:{unresponsive_port}/img.png", limits)
    assert time.monotonic() - started < 2.5


def test_a_closed_port_gives_a_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UpstreamError, match="could not connect to the image URL host '127.0.0.1'"):
        load_image(f"http://127.0.0.1:{port}/img.png", LAN)


@pytest.mark.parametrize("redirects", [0, 1, 3])
def test_up_to_three_redirects_are_followed(server: LoopbackServer, redirects: int) -> None:
    assert load_image(server.url(f"/chain/{redirects}"), LAN).size == (96, 64)
    assert server.hit_count == redirects + 1


def test_a_fourth_redirect_is_refused(server: LoopbackServer) -> None:
    with pytest.raises(ImageInputError, match="redirected more than 3 times; send the final URL of the image"):
        load_image(server.url("/chain/4"), LAN)
    assert server.hit_count == 4  # the first URL and three redirects; the fourth target is never fetched


def test_the_redirect_limit_is_configurable(server: LoopbackServer) -> None:
    limits = InputLimits(allow_private_urls=True, max_redirects=0)
    with pytest.raises(ImageInputError, match="redirected more than 0 times"):
        load_image(server.url("/chain/1"), limits)


def test_a_web_page_instead_of_an_image_is_named_as_such(server: LoopbackServer) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image(server.url("/page.html"), LAN)
    assert info.value.message == (
        "the image URL returned text/html, not an image; send a direct link to the image file"
    )


def test_an_http_client_error_is_the_users_400(server: LoopbackServer) -> None:
    with pytest.raises(ImageInputError, match="image URL answered HTTP 404") as info:
        load_image(server.url("/missing.png"), LAN)
    assert info.value.status_code == 400


def test_a_failing_image_host_is_a_502(server: LoopbackServer) -> None:
    with pytest.raises(UpstreamError) as info:
        load_image(server.url("/fail?status=503"), LAN)
    assert info.value.status_code == 502
    assert info.value.message == (
        "the image URL's server failed with HTTP 503; try again later or send the image as base64"
    )


def test_fetch_url_reports_content_type_and_final_url(server: LoopbackServer) -> None:
    body = fetch_url(server.url("/chain/2"), max_bytes=2**20, allow_private=True)
    assert body.content == server.image_bytes
    assert body.content_type == "image/png"
    assert body.url == server.url("/chain/0")


def test_an_unresolvable_host_name_is_reported() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UpstreamError, match="could not resolve the image URL host 'nowhere.invalid'"):
        fetch_url("http://nowhere.invalid/a.png", max_bytes=2**20, resolver=resolver)


def test_hanging_dns_lookups_hold_up_no_other_hosts_lookup() -> None:
    """A name server that never answers holds only the requests for its own names."""
    from concurrent.futures import ThreadPoolExecutor

    from sd3pose.images.net import resolve_host

    release = threading.Event()

    def resolver(host: str, port: int) -> list[str]:
        if host == "hanging.example":
            release.wait(10)
        return ["93.184.216.34"]

    try:
        with ThreadPoolExecutor(8) as callers:
            stuck = [
                callers.submit(resolve_host, "hanging.example", 80, timeout=0.2, resolver=resolver) for _ in range(8)
            ]
            for lookup in stuck:
                with pytest.raises(UpstreamError, match="took longer than 0.2 s"):
                    lookup.result()
        # Every one of those lookups still hangs; another host's is answered as usual.
        assert [str(ip) for ip in resolve_host("fast.example", 80, timeout=1.0, resolver=resolver)] == ["93.184.216.34"]
    finally:
        release.set()


def test_a_hanging_dns_lookup_is_bounded_by_the_connect_timeout() -> None:
    def resolver(host: str, port: int) -> list[str]:
        time.sleep(2)
        return ["127.0.0.1"]

    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"looking up the image URL host 'slow.example' took longer than 0\.2 s"):
        fetch_url("http://slow.example/a.png", max_bytes=2**20, connect_timeout=0.2, resolver=resolver)
    assert time.monotonic() - started < 1.5
