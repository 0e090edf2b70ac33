"""A request's input, checked by the API before anything is queued or stored.

An image URL is downloaded here (the SSRF guard, the size cap and a total deadline of --fetch-timeout
apply), in threads of its own, so a slow host holds only its own request, never a worker or the pose
preview; inline images never wait for those threads. Base64 and data: URIs are decoded, every image's
header is checked (format, pixel count), and OpenPose JSON is read: a request that would fail on these
fails now, with its 400, and is never stored.
"""

from __future__ import annotations

from typing import Any

import anyio

from sd3pose.images import InputLimits, check_image_bytes, is_url, read_source
from sd3pose.pose.openpose_json import pose_from_openpose_json
from sd3pose.request import GenerationRequest


def _resolve(request: GenerationRequest, limits: InputLimits) -> bytes | None:
    if request.pose_keypoints is not None:
        pose_from_openpose_json(request.pose_keypoints)
    if request.image is None:
        return None
    data, content_type = read_source(request.image, limits)
    check_image_bytes(data, limits, content_type)
    return data


async def resolve_input(services: Any, request: GenerationRequest) -> bytes | None:
    """The bytes of the request's image (None when it has only keypoints), after every check that needs
    no model; ImageInputError (400) or UpstreamError (502) otherwise."""
    limiter = services.fetch_limiter if is_url(request.image) else None
    return await anyio.to_thread.run_sync(_resolve, request, services.input_limits, limiter=limiter)
