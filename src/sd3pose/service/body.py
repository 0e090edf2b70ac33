"""Reading request bodies ourselves, so bad JSON is a 400 `{"error": ...}` like every other mistake."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from sd3pose.errors import InvalidRequestError
from sd3pose.images.net import format_size

# The OpenAPI requestBody of the generation routes: the real contract, GenerationRequest.
GENERATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
    }
}


def _too_large(max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"the request body is larger than the {format_size(max_bytes)} limit; send a smaller image "
        "(or pass it as a URL)"
    )


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes `max_bytes` (declared or streamed): never buffered whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    return bytes(body)


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The JSON body of `request`, at most `max_bytes` long; InvalidRequestError (400) otherwise."""
    raw = await _read_capped(request, max_bytes)
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; send a JSON object with at least 'image' and 'prompt'")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:  # json gives up on very deep nesting with RecursionError, not ValueError
        raise InvalidRequestError("the request body is nested too deeply; send a flat JSON object") from None
