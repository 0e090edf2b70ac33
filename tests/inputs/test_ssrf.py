"""The SSRF guard: image URLs must never reach loopback, private or otherwise non-public addresses.

Every target is a real HTTP server on loopback that counts hits. Each forbidden URL must fail with
ImageInputError and leave the server untouched; the same URL with allow_private_urls=True must
reach it, which proves the zero was not a server nobody could reach anyway.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote

import pytest
from input_helpers import HAS_IPV6, PUBLIC_STAND_IN, LoopbackServer, RemapTransport

from sd3pose.errors import ImageInputError, UpstreamError
from sd3pose.images import InputLimits, load_image
from sd3pose.images.net import fetch_url, non_public_reason, parse_ip_literal

FAST = {"connect_timeout": 2.0, "read_timeout": 2.0}
STRICT = InputLimits(**FAST)
TRUSTED_LAN = InputLimits(allow_private_urls=True, **FAST)

# Spellings of the loopback server at 127.0.0.1; all but 'localhost' are numeric and need no DNS.
IPV4_LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "127.1",
    "2130706433",
    "0x7f.1",
    "017700000001",
    "0x7F000001",
    "127.0.0.1.",
    "0.0.0.0",  # connecting to the unspecified address reaches this host on Linux
    "0",
]
# Four dotted parts with leading zeros: httpx's URL parser refuses these outright (no lookup, no hit).
UNPARSEABLE_SPELLINGS = ["0177.0.0.1", "127.0.0.01"]
IPV6_SPELLINGS = ["[::1]", "[0:0:0:0:0:0:0:1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"]


@pytest.mark.parametrize("host", IPV4_LOOPBACK_SPELLINGS)
def test_loopback_spellings_are_refused_without_a_hit(server: LoopbackServer, host: str) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image(server.url(host=host), STRICT)
    assert "only public addresses are allowed" in info.value.message
    assert info.value.status_code == 400
    assert server.hit_count == 0


@pytest.mark.parametrize("host", UNPARSEABLE_SPELLINGS)
def test_octal_dotted_quads_are_refused_as_invalid_without_a_hit(server: LoopbackServer, host: str) -> None:
    for limits in (STRICT, TRUSTED_LAN):
        with pytest.raises(ImageInputError, match=f"host '{host}' is not a valid IPv4 address; check the URL"):
            load_image(server.url(host=host), limits)
    assert server.hit_count == 0


@pytest.mark.parametrize("host", IPV4_LOOPBACK_SPELLINGS)
def test_the_same_spellings_reach_the_server_when_private_urls_are_allowed(server: LoopbackServer, host: str) -> None:
    image = load_image(server.url(host=host), TRUSTED_LAN)
    assert image.size == (96, 64)
    assert server.hit_count == 1


@pytest.mark.parametrize("host", IPV6_SPELLINGS)
def test_ipv6_loopback_spellings_are_refused_without_a_hit(
    server: LoopbackServer, server6: LoopbackServer, host: str
) -> None:
    target = server if "ffff" in host else server6  # IPv4-mapped addresses lead to the IPv4 server
    with pytest.raises(ImageInputError, match="a loopback address; only public addresses are allowed"):
        load_image(target.url(host=host), STRICT)
    assert server.hit_count == 0 and server6.hit_count == 0
    load_image(target.url(host=host), TRUSTED_LAN)
    assert target.hit_count == 1


def test_the_message_names_the_address_and_the_way_out(server: LoopbackServer) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image(server.url(host="2130706433"), STRICT)
    assert info.value.message == (
        "image URL resolves to 127.0.0.1, a loopback address; only public addresses are allowed "
        "(start the server with --allow-private-urls on a trusted LAN)"
    )


# --- redirects ----------------------------------------------------------------------------------------


def _redirect_url(location: str, status: int = 302) -> str:
    """A URL on the (stand-in) public host that redirects to `location`."""
    return f"http://{PUBLIC_STAND_IN}/redirect?status={status}&to={quote(location, safe='')}"


FORBIDDEN_HOSTS = ["127.0.0.1", "localhost", "[::1]", "127.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_loopback_is_refused_without_a_hit(
    server: LoopbackServer, stand_in: LoopbackServer, remap: RemapTransport, host: str, status: int
) -> None:
    with pytest.raises(ImageInputError, match="only public addresses are allowed"):
        fetch_url(_redirect_url(server.url(host=host), status), max_bytes=2**20, transport=remap, **FAST)
    assert stand_in.hit_count == 1  # the allowed first hop was fetched...
    assert server.hit_count == 0  # ...and its redirect was checked before any connection


def test_redirects_between_public_urls_are_followed(stand_in: LoopbackServer, remap: RemapTransport) -> None:
    # The control for the test above: the same setup follows a redirect to a public address.
    body = fetch_url(_redirect_url(f"http://{PUBLIC_STAND_IN}/img.png"), max_bytes=2**20, transport=remap, **FAST)
    assert body.content == stand_in.image_bytes
    assert [path for path, _ in stand_in.hits] == [stand_in.hits[0][0], "/img.png"]


def test_a_redirect_to_loopback_is_followed_when_private_urls_are_allowed(
    server: LoopbackServer, remap: RemapTransport
) -> None:
    # The control that proves the transport lets loopback through: a guard that failed would show hits.
    body = fetch_url(_redirect_url(server.url()), max_bytes=2**20, transport=remap, allow_private=True, **FAST)
    assert body.content == server.image_bytes
    assert server.hit_count == 1


def test_redirect_to_another_scheme_is_refused(stand_in: LoopbackServer, remap: RemapTransport) -> None:
    with pytest.raises(ImageInputError, match="scheme 'file' is not supported"):
        fetch_url(_redirect_url("file:///etc/passwd"), max_bytes=2**20, transport=remap, **FAST)


# --- DNS: one resolution per hop, and the connection goes to the checked address -----------------------


def test_a_host_name_is_resolved_once_and_the_checked_address_is_dialled(
    stand_in: LoopbackServer, remap: RemapTransport
) -> None:
    # A rebinding DNS server: public on the first lookup, loopback on any later one.
    answers = iter([[PUBLIC_STAND_IN], ["127.0.0.1"], ["127.0.0.1"]])
    lookups: list[str] = []

    def rebinding_resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    body = fetch_url(
        "http://images.example.com/img.png", max_bytes=2**20, resolver=rebinding_resolver, transport=remap, **FAST
    )
    assert body.content == stand_in.image_bytes
    assert lookups == ["images.example.com"]
    assert stand_in.hits == [("/img.png", "images.example.com")]  # the original Host header went out


def test_a_name_with_any_non_public_address_is_refused(stand_in: LoopbackServer, remap: RemapTransport) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return [PUBLIC_STAND_IN, "10.1.2.3"]

    with pytest.raises(ImageInputError, match=r"resolves to 10\.1\.2\.3, a private address"):
        fetch_url("http://mixed.example.com/img.png", max_bytes=2**20, resolver=resolver, transport=remap, **FAST)
    assert stand_in.hit_count == 0


@pytest.mark.parametrize("address", ["fec0::1", "fed0:1::10"])
def test_site_local_ipv6_addresses_are_refused(stand_in: LoopbackServer, remap: RemapTransport, address: str) -> None:
    # fec0::/10 reaches internal hosts on networks that still route it; Python calls it global.
    with pytest.raises(ImageInputError, match=f"resolves to {address}, a site-local address; only public") as info:
        fetch_url(f"http://[{address}]/latest/meta-data", max_bytes=2**20, transport=remap, **FAST)
    assert info.value.status_code == 400
    with pytest.raises(ImageInputError, match="a site-local address"):
        fetch_url(
            "http://intranet.example.com/img.png",
            max_bytes=2**20,
            resolver=lambda host, port: [address],
            transport=remap,
            **FAST,
        )
    assert stand_in.hit_count == 0


def test_https_keeps_the_host_name_for_sni_and_certificate_checks(remap: RemapTransport) -> None:
    def resolver(host: str, port: int) -> list[str]:
        return [PUBLIC_STAND_IN]

    # The stand-in speaks plain HTTP, so the TLS handshake fails; what was asked for is what counts.
    with pytest.raises(UpstreamError):
        fetch_url("https://images.example.com/a.png", max_bytes=2**20, resolver=resolver, transport=remap, **FAST)
    request = remap.requests[0]
    assert request.url.scheme == "https"
    assert request.extensions["sni_hostname"] == "images.example.com"
    assert request.headers["Host"] == "images.example.com"


# --- schemes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1:{port}/img.png",
        "gopher://127.0.0.1:{port}/_GET%20/img.png",
        "dict://127.0.0.1:{port}/",
    ],
)
def test_non_http_schemes_are_refused(server: LoopbackServer, template: str) -> None:
    scheme = template.split(":")[0]
    with pytest.raises(ImageInputError, match=f"scheme '{scheme}' is not supported"):
        load_image(template.format(port=server.port), TRUSTED_LAN)
    assert server.hit_count == 0


def test_urls_with_credentials_are_refused(server: LoopbackServer) -> None:
    with pytest.raises(ImageInputError, match="user name or password"):
        load_image(f"http://{PUBLIC_STAND_IN}@127.0.0.1:{server.port}/img.png", TRUSTED_LAN)
    assert server.hit_count == 0


# --- the address rules themselves ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),  # cloud metadata endpoints live here
        ("100.64.0.1", "a non-public address"),  # carrier-grade NAT
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a private address"),  # Python files 240/4 under private as well as reserved
        ("255.255.255.255", "a private address"),
        ("::1", "a loopback address"),
        ("::", "an unspecified address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("fec0::1", "a site-local address"),  # deprecated site-local: Python calls it global
        ("fed0:1::10", "a site-local address"),
        ("ff02::1", "a multicast address"),
        ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "a link-local address"),
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
        ("::7f00:1", "a loopback address"),  # deprecated IPv4-compatible
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # a public host seen through DNS64 on an IPv6-only network
    ],
)
def test_address_classification(address: str, reason: str | None) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("10.0x10.0377.1", "10.16.255.1"),
        ("::1", "::1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),
        ("example.com", None),
        ("1.2.3.example", None),
        ("xn--bcher-kva.example", None),
    ],
)
def test_ip_literals_in_every_spelling_are_normalised(host: str, expected: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed is not None else None) == expected


@pytest.mark.parametrize(
    "host",
    ["1.2.3.4.5", "256.1.1.1", "1.2.3.256", "1.2.16777216", "08.1.1.1", "4294967296", "example.123", "1..1", "::g"],
)
def test_malformed_ip_literals_are_refused(host: str) -> None:
    with pytest.raises(ImageInputError, match="is not a valid IPv[46] address"):
        parse_ip_literal(host)


@pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback")
def test_ipv6_server_is_reachable_as_a_control(server6: LoopbackServer) -> None:
    assert load_image(server6.url(), TRUSTED_LAN).size == (96, 64)
    assert server6.hit_count == 1
