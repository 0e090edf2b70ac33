"""Reading request bodies ourselves: capped while they stream in, parsed in a worker thread, and refused
before parsing when they would build too many objects; bad JSON is a 400 `{"error": ...}` like every
other mistake.

The standard library's parser stays (a streaming parser spends a Python step per value and is slow on
the one long string a photo is). What makes `json.loads` dangerous is not a long string (one object,
bounded by the body cap) but millions of small values: 30 MB of `{},` become gigabytes of Python
objects. Every value json.loads creates follows one of `,` `:` `[` `{` in the raw bytes, so counting
those four bytes (a C scan, milliseconds) bounds what parsing can build, and a body over
MAX_JSON_VALUES is refused unparsed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from sd3pose.errors import InvalidRequestError
from sd3pose.images.net import format_size
from sd3pose.request import MAX_SEED
from sd3pose.service.errors import ServiceError

T = TypeVar("T")

# The most values a body may hold. The largest real request: OpenPose JSON of 100 people (the cap) is
# about 41,000 numbers, plus a prompt and negative prompt of 10,000 characters that may all be commas.
MAX_JSON_VALUES = 100_000
# Status 499 (as nginx logs it): the client went away; nobody reads this answer.
CLIENT_CLOSED = 499

# The OpenAPI requestBody of the generation routes: the real contract, GenerationRequest.
GENERATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
    }
}


class ClientGoneError(ServiceError):
    """The client closed the connection before its request (or our answer) was complete: not our fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CLIENT_CLOSED)


def _too_large(max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"the request body is larger than the {format_size(max_bytes)} limit; send a smaller image "
        "(or pass it as a URL)"
    )


async def _read_capped(request: Request, max_bytes: int) -> bytearray:
    """The body, refused as soon as it passes `max_bytes` (declared or streamed): never buffered whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
    except ClientDisconnect:
        raise ClientGoneError(f"the client disconnected after sending {len(body)} bytes of its request") from None
    return body


def value_bound(raw: bytes | bytearray) -> int:
    """At least the number of values `json.loads(raw)` would create (containers, keys and scalars)."""
    return raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{") + 1


def parse_json(raw: bytes | bytearray) -> Any:
    """The JSON document in `raw`, or InvalidRequestError (400) saying what is wrong with it."""
    if not raw or raw.isspace():
        raise InvalidRequestError("the request body is empty; send a JSON object with at least 'image' and 'prompt'")
    values = value_bound(raw)
    if values > MAX_JSON_VALUES:
        raise InvalidRequestError(
            f"the request body has too many JSON values or is nested too deeply (up to {values:,} values; at most "
            f"{MAX_JSON_VALUES:,} are read, which OpenPose keypoints of 100 people fit easily): send the image as "
            "one base64 string and pose_keypoints as OpenPose's flat lists"
        )
    try:
        return json.loads(raw, parse_int=_bounded_int)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:  # json gives up on very deep nesting with RecursionError, not ValueError
        raise InvalidRequestError("the request body is nested too deeply; send a flat JSON object") from None


def _bounded_int(text: str) -> int:
    """A JSON integer, refused with a plain message when it is longer than Python converts (4,300 digits):
    json.loads would otherwise fail with advice meant for the server's own code."""
    digits = len(text.lstrip("-"))
    if digits > sys.get_int_max_str_digits() > 0:
        raise InvalidRequestError(
            f"the request body has a whole number of {digits:,} digits; no field takes a number that long "
            f"(seed, the largest, is at most {MAX_SEED}): send the field's value in its documented range"
        )
    return int(text)


def _identity(value: Any) -> Any:
    return value


async def read_json(request: Request, *, max_bytes: int, then: Callable[[Any], T] = _identity) -> T:
    """The JSON body of `request`, at most `max_bytes` long, passed through `then` (validation); the
    parsing and `then` run in a worker thread, so a large body never holds up other requests."""
    raw = await _read_capped(request, max_bytes)
    return await anyio.to_thread.run_sync(lambda: then(parse_json(raw)))
