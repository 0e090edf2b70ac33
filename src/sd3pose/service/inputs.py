"""A request's input, checked by the API before anything is queued or stored.

An image URL is downloaded here (the SSRF guard, the size cap and a total deadline of --fetch-timeout
apply), in threads of its own, so a slow host holds only its own request, never a worker or the pose
preview; inline images never wait for those threads, and one key's downloads take at most
FETCHES_PER_KEY of them (its further URLs wait their turn), so one key's slow hosts cannot hold up
every other key's. Base64 and data: URIs are decoded, every image's
header is checked (format, pixel count), and OpenPose JSON is read: a request that would fail on these
fails now, with its 400, and is never stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
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


FETCHES_PER_KEY = 4


class KeyFetchSlots:
    """At most `per_key` image downloads of one API key at a time; the others of that key wait.

    Used only from the event loop (no lock needed). A key's limiter exists while it has downloads
    running or waiting, so the table never outgrows the keys in use.
    """

    def __init__(self, per_key: int = FETCHES_PER_KEY) -> None:
        self.per_key = per_key
        self._slots: dict[str, tuple[anyio.CapacityLimiter, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key_id: str | None) -> AsyncIterator[None]:
        if key_id is None:  # auth off: one caller, bounded by the shared threads alone
            yield
            return
        if key_id not in self._slots:
            self._slots[key_id] = (anyio.CapacityLimiter(self.per_key), [0])
        limiter, users = self._slots[key_id]
        users[0] += 1
        try:
            async with limiter:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[key_id]

    def in_use(self) -> int:
        """How many keys have downloads running or waiting."""
        return len(self._slots)


async def resolve_input(services: Any, request: GenerationRequest, key_id: str | None) -> bytes | None:
    """The bytes of the request's image (None when it has only keypoints), after every check that needs
    no model; ImageInputError (400) or UpstreamError (502) otherwise. `key_id`: whose download it is."""
    if not is_url(request.image):
        return await anyio.to_thread.run_sync(_resolve, request, services.input_limits)
    async with services.key_fetch_slots.hold(key_id):
        return await anyio.to_thread.run_sync(_resolve, request, services.input_limits, limiter=services.fetch_limiter)
