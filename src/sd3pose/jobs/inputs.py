"""Input images travel beside a queued request, not inside it.

The API resolves a request's `image` (URL, base64 or data: URI) to its bytes before queuing; the job
store keeps those bytes once per SHA-256, outside the job record, until the job ends; the request it
records names them as `sha256:<hex>`. A worker gets the request back with the bytes as base64 text, so
the pipeline decodes it like any base64 image and never fetches a URL itself.
"""

from __future__ import annotations

import base64
import hashlib

from sd3pose.errors import InvalidRequestError
from sd3pose.request import GenerationRequest

REFERENCE_PREFIX = "sha256:"


def content_hash(data: bytes) -> str:
    """The name an input is stored under: the SHA-256 of its bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def with_reference(request: GenerationRequest, digest: str) -> GenerationRequest:
    """The request as a job records it: its image named by the stored bytes' hash."""
    return request.model_copy(update={"image": REFERENCE_PREFIX + digest})


def to_record(request: GenerationRequest, image: bytes | None) -> tuple[GenerationRequest, str | None]:
    """What a queue records for a new job: the request with its image named by hash, and that hash
    (None without an input image). The seed must be resolved already: a rerun must draw the same noise."""
    if request.seed < 0:
        raise InvalidRequestError("internal: resolve the seed before submitting")
    if image is None:
        return request, None
    digest = content_hash(image)
    return with_reference(request, digest), digest


def referenced_input(request: GenerationRequest) -> str | None:
    """The hash a recorded request's image names, or None when it has no stored input."""
    image = request.image
    return image[len(REFERENCE_PREFIX) :] if image is not None and image.startswith(REFERENCE_PREFIX) else None


def with_image(request: GenerationRequest, data: bytes) -> GenerationRequest:
    """The request as a worker runs it: the image's bytes inline, as base64."""
    return request.model_copy(update={"image": base64.b64encode(data).decode("ascii")})
