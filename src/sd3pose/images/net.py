"""Fetching an image URL without letting a request reach the server's own networks (an SSRF guard).

What the user can fix raises ImageInputError (HTTP 400); a failing image host raises UpstreamError (502).

Every hop (the first URL and each redirect) is parsed, its host resolved once by us, every resolved
address checked, and the connection made to the checked address itself, never to a second
resolution (no DNS rebinding). The original host still goes out in the Host header and in TLS
SNI/certificate verification. The body is streamed and cut at the size cap, and the whole fetch at a
total deadline: every timeout is capped at the time left, and a body still arriving at the deadline has
its socket shut, so a host that drips bytes holds a request no longer than the deadline.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from sd3pose.errors import ImageInputError, UpstreamError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A resolver maps (host, port) to address strings; tests inject one, production uses getaddrinfo.
Resolver = Callable[[str, int], Sequence[str]]

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "sd3pose-image-fetcher/0.1"
PRIVATE_HINT = "only public addresses are allowed (start the server with --allow-private-urls on a trusted LAN)"

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


@dataclass(frozen=True)
class _Deadline:
    """When a whole fetch must have ended (time.monotonic), and the total it was given."""

    at: float
    total_s: float

    def left(self, host: str, cap: float) -> float:
        """Seconds a step may take: `cap`, or less when the deadline is nearer; the deadline error if passed."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise self.error(host)
        return min(cap, left)

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def error(self, host: str) -> ImageInputError:
        # A 400: the user chose the URL, and a faster one (or base64) fixes it.
        return ImageInputError(
            f"downloading the image from '{host}' took longer than {self.total_s:g} s; "
            "send a faster URL or the image as base64"
        )


@dataclass(frozen=True)
class FetchedBody:
    """What a URL returned: the body, its declared Content-Type, and the URL it finally came from."""

    content: bytes
    content_type: str | None
    url: str


def format_size(num_bytes: int) -> str:
    """Bytes in MB (2**20) for messages: '31 MB', '0.5 MB'."""
    mb = num_bytes / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


# --- addresses -------------------------------------------------------------------------------------

_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def _ipv4_number(part: str) -> int | None:
    """One inet_aton component: decimal, 0-prefixed octal or 0x-prefixed hex; None if malformed."""
    if not _NUMBER.match(part):
        return None
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host denotes if it is an IP literal, in any spelling a resolver accepts.

    Besides dotted quads this covers what inet_aton (and so getaddrinfo) and browsers accept:
    '127.1', '2130706433', '0x7f.1', '017700000001', a trailing dot. As in the WHATWG URL
    standard, a host whose last label is a number is an IPv4 literal or invalid, never a name.
    Returns None for a host name. Raises ImageInputError for a malformed literal.
    """
    if ":" in host:  # only IPv6 literals contain colons; the zone may come percent-encoded
        try:
            return ipaddress.IPv6Address(urllib.parse.unquote(host.strip("[]")))
        except ValueError:
            raise ImageInputError(f"image URL host '{host}' is not a valid IPv6 address; check the URL") from None
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not labels or not _NUMBER.match(labels[-1]):
        return None
    numbers = [_ipv4_number(label) for label in labels]
    invalid = ImageInputError(f"image URL host '{host}' is not a valid IPv4 address; check the URL")
    if len(numbers) > 4 or any(n is None for n in numbers):
        raise invalid
    *leading, last = numbers
    # inet_aton: each leading part is one byte, the last part fills the remaining bytes.
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise invalid
    value = last
    for index, n in enumerate(leading):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv6 address stands for when traffic to it reaches IPv4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:  # DNS64/NAT64: public hosts look like 64:ff9b::a.b.c.d on IPv6-only networks
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # deprecated ::a.b.c.d form
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def non_public_reason(ip: IPAddress) -> str | None:
    """None for a public address; otherwise a phrase naming its kind ('a loopback address')."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return non_public_reason(embedded)
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        # fec0::/10 was deprecated (RFC 3879) but some networks still route it internally; Python
        # counts it neither private nor reserved. IPv4Address has no such attribute.
        ("is_site_local", "a site-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(ip, attribute, False):
            return reason
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared address space of carrier-grade NAT
        return "a non-public address"
    return None


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _lookup_in_own_thread(lookup: Resolver, host: str, port: int, timeout: float) -> Sequence[str]:
    """`lookup(host, port)`, or TimeoutError after `timeout` seconds.

    getaddrinfo has no timeout of its own, so it runs in a thread that is left to finish alone when the
    time is up; a thread of its own, because in a shared pool lookups that hang (a name server that
    never answers) would hold up every other host's lookup queued behind them.
    """
    outcome: list[Sequence[str] | BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(lookup(host, port))
        except BaseException as exc:  # handed to the caller, which decides what it means
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="sd3pose-dns", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def resolve_host(host: str, port: int, *, timeout: float, resolver: Resolver | None = None) -> list[IPAddress]:
    """Every address `host` resolves to, IP literals in any spelling normalised, without duplicates."""
    literal = parse_ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        found = _lookup_in_own_thread(resolver or _getaddrinfo, host, port, timeout)
    except TimeoutError:
        raise UpstreamError(
            f"looking up the image URL host '{host}' took longer than {timeout:g} s; check the URL"
        ) from None
    except (OSError, UnicodeError) as exc:
        raise UpstreamError(f"could not resolve the image URL host '{host}' ({exc}); check the URL") from None
    addresses: list[IPAddress] = []
    for text in found:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # getaddrinfo may append an IPv6 zone
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UpstreamError(f"could not resolve the image URL host '{host}'; check the URL")
    return addresses


# --- URLs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hop:
    url: httpx.URL
    host: str  # ASCII (IDNA-encoded) host name or IP literal as written
    port: int
    addresses: list[IPAddress]


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError, TypeError) as exc:
        if str(exc).startswith("Invalid IPv4 address"):  # httpx refuses dotted quads with leading zeros
            host = urllib.parse.urlsplit(url).hostname
            raise ImageInputError(f"image URL host '{host}' is not a valid IPv4 address; check the URL") from None
        raise ImageInputError(f"image URL is not a valid URL ({exc}); check it") from None
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ImageInputError(
            f"image URL scheme '{scheme}' is not supported; send an http(s) URL, base64 or a data: URI"
        )
    if not parsed.raw_host:
        raise ImageInputError(f"image URL '{url[:100]}' has no host; send a full http(s) URL")
    if parsed.userinfo:
        raise ImageInputError("image URL must not contain a user name or password; send a public URL")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ImageInputError(f"image URL port {parsed.port} is not a valid port; check the URL")
    return parsed


def _check_hop(url: str, *, allow_private: bool, timeout: float, resolver: Resolver | None) -> _Hop:
    parsed = _parse_url(url)
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    addresses = resolve_host(host, port, timeout=timeout, resolver=resolver)
    if not allow_private:
        # Any non-public answer rejects the host: the check must not depend on which one we'd pick.
        for ip in addresses:
            reason = non_public_reason(ip)
            if reason is not None:
                raise ImageInputError(f"image URL resolves to {ip}, {reason}; {PRIVATE_HINT}")
    return _Hop(parsed, host, port, addresses)


# --- fetching ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle costs more than a small download.
    return httpx.create_ssl_context()


def _open(client: httpx.Client, hop: _Hop, deadline: _Deadline) -> httpx.Response:
    """Send GET to the hop's checked addresses in turn (the next one only if connecting fails)."""
    last_error: httpx.ConnectError | None = None
    for ip in hop.addresses:
        extensions = {}
        if hop.url.scheme.lower() == "https":
            # Verify the certificate against the name the user gave, not against the IP we dial.
            extensions["sni_hostname"] = hop.host if parse_ip_literal(hop.host) is None else str(ip)
        limits = client.timeout
        timeout = httpx.Timeout(
            connect=deadline.left(hop.host, limits.connect or math.inf),
            read=deadline.left(hop.host, limits.read or math.inf),
            write=deadline.left(hop.host, limits.write or math.inf),
            pool=deadline.left(hop.host, limits.pool or math.inf),
        )
        request = client.build_request(
            "GET",
            hop.url.copy_with(host=str(ip)),
            headers={"Host": hop.url.netloc.decode("ascii")},
            extensions=extensions,
            timeout=timeout,
        )
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as exc:
            log.debug("connecting to %s (%s) failed: %s", hop.host, ip, exc)
            last_error = exc
    raise UpstreamError(
        f"could not connect to the image URL host '{hop.host}' ({last_error}); check that the URL is reachable"
    )


def _shut_at_deadline(response: httpx.Response, deadline: _Deadline) -> threading.Timer | None:
    """Shut the response's socket at the deadline, which ends a read blocked on a slow host at once
    (httpx's timeouts apply per read, so a host sending a byte now and then would never trip them)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:  # a transport without sockets (tests, custom routing): the per-chunk check remains
        return None

    def shut() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(max(0.0, deadline.at - time.monotonic()), shut)
    timer.daemon = True
    timer.start()
    return timer


def _read_capped(response: httpx.Response, max_bytes: int, deadline: _Deadline, host: str) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageInputError(
            f"image is {format_size(int(declared))}; the limit is {format_size(max_bytes)}: send a smaller image"
        )
    body = bytearray()
    # Content-Length may lie or be absent: count what actually arrives (after content decoding).
    # No chunk_size: httpx would buffer up to it, hiding a slow drip from the deadline check.
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise ImageInputError(
                f"image at the URL is larger than the {format_size(max_bytes)} limit; send a smaller image"
            )
        if deadline.passed():
            raise deadline.error(host)
    if deadline.passed():  # the socket shut at the deadline reads as the end of a body without a length
        raise deadline.error(host)
    return bytes(body)


def _get(client: httpx.Client, hop: _Hop, max_bytes: int, deadline: _Deadline) -> FetchedBody | str:
    """One hop: the body of a 2xx answer, or the absolute URL a redirect points to."""
    response = _open(client, hop, deadline)
    watchdog = _shut_at_deadline(response, deadline)
    try:
        if response.status_code in REDIRECT_STATUSES:
            location = response.headers.get("location")
            if not location:
                raise ImageInputError(
                    f"image URL answered HTTP {response.status_code} without a Location; "
                    "send the final URL of the image"
                )
            return str(hop.url.join(location))
        if response.status_code >= 500:
            raise UpstreamError(
                f"the image URL's server failed with HTTP {response.status_code}; "
                "try again later or send the image as base64"
            )
        if not 200 <= response.status_code < 300:
            raise ImageInputError(
                f"image URL answered HTTP {response.status_code}; "
                "check that the URL points at a publicly readable image"
            )
        body = _read_capped(response, max_bytes, deadline, hop.host)
        return FetchedBody(body, response.headers.get("content-type"), str(hop.url))
    finally:
        if watchdog is not None:
            watchdog.cancel()
        response.close()


def _transport_error(exc: httpx.HTTPError, host: str, connect_timeout: float, read_timeout: float) -> UpstreamError:
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(
            f"could not connect to the image URL host '{host}' within {connect_timeout:g} s; "
            "check the URL or send the image as base64"
        )
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(
            f"the image URL server sent nothing for {read_timeout:g} s; check the URL or send the image as base64"
        )
    return UpstreamError(f"downloading the image URL failed ({type(exc).__name__}: {exc}); check the URL")


def fetch_url(
    url: str,
    *,
    max_bytes: int,
    allow_private: bool = False,
    connect_timeout: float = 5.0,
    read_timeout: float = 15.0,
    total_timeout: float = 20.0,
    max_redirects: int = 3,
    resolver: Resolver | None = None,
    transport: httpx.BaseTransport | None = None,
) -> FetchedBody:
    """Download an http(s) URL guarded against SSRF.

    Raises ImageInputError (400) for what the user can fix (a refused address or scheme, a bad
    URL, an HTTP 4xx, a body over the cap, too many redirects) and UpstreamError (502) when the
    image host fails (DNS, connection, timeouts, HTTP 5xx, a broken response).

    `resolver` replaces getaddrinfo and `transport` replaces the HTTP transport (both for tests
    and custom routing); the address checks run the same either way.
    """
    started = time.monotonic()
    deadline = _Deadline(started + total_timeout, total_timeout)
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout)
    transport = transport or httpx.HTTPTransport(verify=_ssl_context(), retries=0)
    # trust_env=False: a proxy from the environment would resolve and connect on its own, unchecked.
    # Accept-Encoding identity: images gain nothing from gzip, and a gzip bomb would inflate each
    # network chunk a thousandfold before the size cap sees it.
    headers = {"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"}
    with httpx.Client(
        transport=transport, timeout=timeout, follow_redirects=False, trust_env=False, headers=headers
    ) as client:
        current = url
        for hop_index in range(max_redirects + 1):
            host = _parse_url(current).raw_host.decode("ascii")
            lookup_s = deadline.left(host, connect_timeout)
            hop = _check_hop(current, allow_private=allow_private, timeout=lookup_s, resolver=resolver)
            log.info("fetching image from %s (%s)", hop.host, ", ".join(map(str, hop.addresses)))
            try:
                result = _get(client, hop, max_bytes, deadline)
            except httpx.HTTPError as exc:
                if deadline.passed():  # a timeout capped at the deadline, or the socket shut at it
                    raise deadline.error(hop.host) from None
                raise _transport_error(exc, hop.host, connect_timeout, read_timeout) from None
            if isinstance(result, str):
                log.debug("redirect %d to %s", hop_index + 1, result)
                current = result
                continue
            log.info("fetched %d bytes from %s in %.2f s", len(result.content), hop.host, time.monotonic() - started)
            return result
    raise ImageInputError(f"image URL redirected more than {max_redirects} times; send the final URL of the image")
