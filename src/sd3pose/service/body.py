"""Reading request bodies ourselves, so bad JSON is a 400 `{"error": ...}` like every other mistake."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from sd3pose.errors import InvalidRequestError

# The OpenAPI requestBody of the generation routes: the real contract, GenerationRequest.
GENERATION_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
    }
}


async def read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; send a JSON object with at least 'image' and 'prompt'")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from None
