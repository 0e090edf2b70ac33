"""Helpers for the input tests: real HTTP servers on loopback addresses that count every hit.

Nothing here talks to any address but 127.0.0.1 and ::1; every loop and sleep is bounded.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import ipaddress
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
from PIL import Image
from skimage import data as skdata

# A public address the tests pretend to fetch from; RemapTransport routes it to a loopback server,
# so it is never contacted.
PUBLIC_STAND_IN = "93.184.215.14"


def astronaut(width: int = 96, height: int = 64) -> Image.Image:
    """A real photo (scikit-image's astronaut), downscaled to a small non-square RGB image."""
    return Image.fromarray(skdata.astronaut()).resize((width, height), Image.Resampling.BILINEAR)


def encode(im: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class LoopbackServer:
    """An http.server in a thread; `hits` records (path, Host header) of every request it saw."""

    def __init__(self, host: str, image_bytes: bytes) -> None:
        self.image_bytes = image_bytes
        self.hits: list[tuple[str, str]] = []
        self.bytes_sent = 0
        self.accept_encoding: str | None = None
        self._lock = threading.Lock()
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
        self._server = server_class((host, 0), self._handler())
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str = "/img.png", host: str | None = None) -> str:
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}{path}"

    @property
    def hit_count(self) -> int:
        with self._lock:
            return len(self.hits)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits.append((self.path, self.headers.get("Host", "")))
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                name = url.path.strip("/").split("/")[0].replace("-", "_").replace(".", "_")
                route = getattr(self, "route_" + name, None)
                if route is None:
                    self.send_error(404)
                else:
                    route(url.path, query)

            def _send(self, body: bytes, content_type: str = "image/png") -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def route_img_png(self, path: str, query: dict[str, str]) -> None:
                self._send(owner.image_bytes)

            def route_fail(self, path: str, query: dict[str, str]) -> None:
                self.send_error(int(query.get("status", "500")))

            def route_page_html(self, path: str, query: dict[str, str]) -> None:
                self._send(b"<html><body>not an image</body></html>", "text/html; charset=utf-8")

            def route_redirect(self, path: str, query: dict[str, str]) -> None:
                self.send_response(int(query.get("status", "302")))
                self.send_header("Location", query["to"])
                self.send_header("Content-Length", "0")
                self.end_headers()

            def route_chain(self, path: str, query: dict[str, str]) -> None:
                # /chain/N redirects N times (relative Locations), then serves the image.
                remaining = int(path.rsplit("/", 1)[1])
                if remaining == 0:
                    self._send(owner.image_bytes)
                    return
                self.send_response(301)
                self.send_header("Location", f"/chain/{remaining - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def route_slow(self, path: str, query: dict[str, str]) -> None:
                time.sleep(float(query.get("delay", "2")))
                with contextlib.suppress(OSError):
                    self._send(owner.image_bytes)

            def route_stall(self, path: str, query: dict[str, str]) -> None:
                # Headers and one byte at once, then silence for `delay` seconds.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(float(query.get("delay", "3")))

            def route_drip(self, path: str, query: dict[str, str]) -> None:
                # Headers at once, then one byte every 50 ms: never idle long enough for a read timeout.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                try:
                    for _ in range(200):
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass

            def route_big(self, path: str, query: dict[str, str]) -> None:
                # No Content-Length (the body ends when the connection closes): the cap must be counted.
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = owner.image_bytes[:8] + b"\0" * (64 * 1024 - 8)
                try:
                    for _ in range(int(query.get("chunks", "1024"))):  # 64 MB at most
                        self.wfile.write(chunk)
                        with owner._lock:
                            owner.bytes_sent += len(chunk)
                except OSError:
                    pass

            def route_gzip_bomb(self, path: str, query: dict[str, str]) -> None:
                # 8 MB of zeros in an 8 KB gzip body, sent even though the client asked for identity.
                owner.accept_encoding = self.headers.get("Accept-Encoding", "")
                body = gzip.compress(owner.image_bytes[:8] + bytes(8 * 1024 * 1024))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)

            def route_big_declared(self, path: str, query: dict[str, str]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(owner.image_bytes)

        return Handler


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _ipv6_loopback_available()


class RemapTransport(httpx.BaseTransport):
    """Sends requests for PUBLIC_STAND_IN to a loopback server and loopback requests through unchanged.

    Loopback requests pass through so that a guard that wrongly lets one out is seen as a server
    hit; a request for any other address fails the test without touching the network.
    """

    def __init__(self, stand_in: LoopbackServer) -> None:
        self.stand_in = stand_in
        self.inner = httpx.HTTPTransport(retries=0)
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        ip = ipaddress.ip_address(request.url.host)
        if str(ip) == PUBLIC_STAND_IN:
            request.url = request.url.copy_with(host="127.0.0.1", port=self.stand_in.port)
        elif not (ip.is_loopback or ip.is_unspecified or (getattr(ip, "ipv4_mapped", None) or ip).is_loopback):
            raise AssertionError(f"the test tried to reach {ip}, which is not loopback")
        return self.inner.handle_request(request)

    def close(self) -> None:
        pass  # the httpx client closes its transport after each fetch; the fixture closes `inner` once


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)
