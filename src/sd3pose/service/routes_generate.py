"""The generation API: sync `POST /v1/sd3-med-pose` and the async v2 job routes."""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, Response
from starlette.types import Receive, Scope, Send

from sd3pose.errors import InvalidRequestError
from sd3pose.jobs.contract import JobInfo, JobStatus
from sd3pose.request import GenerationRequest, parse_request
from sd3pose.results import MEDIA_EXTENSIONS, GenerationResult
from sd3pose.service.auth import Principal, require
from sd3pose.service.body import GENERATION_BODY, ClientGoneError, read_json
from sd3pose.service.errors import NotFoundError, ServiceError, ServiceTimeoutError
from sd3pose.service.inputs import resolve_input
from sd3pose.service.schemas import (
    AsyncSubmitted,
    ImagesResponse,
    JobResultResponse,
    JobStatusResponse,
    error_responses,
)

router = APIRouter()

WAIT_SLICE_S = 0.25
# How long a cancelled sync job may take to stop (its next step) before the 504 goes out anyway.
CANCEL_SETTLE_S = 2.0

SYNC_RESPONSES = {
    200: {
        "description": "base64=false: the image bytes (samples=1), or a ZIP archive of every image "
        "(`image_<i>_seed_<seed>.<ext>`, plus `pose.png` and `keypoints.json` with return_pose) when "
        "samples > 1 or return_pose. base64=true: JSON. Headers: x-seed (first image), x-seeds (all), "
        "x-remaining-credits.",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}},
        },
    },
    **error_responses(400, 401, 403, 406, 429, 500, 502, 503, 504),
}


def _metrics(info: JobInfo, timings: dict[str, float] | None = None) -> dict[str, float]:
    metrics = {k: round(v, 4) for k, v in (timings or info.result_meta.get("timings", {})).items()}
    if info.started_at is not None:
        metrics["queue_time"] = round(info.started_at - info.created_at, 4)
        if info.finished_at is not None:
            metrics["inference_time"] = round(info.finished_at - info.started_at, 4)
    return metrics


def _raise_failure(info: JobInfo) -> None:
    raise ServiceError(info.error or "the job failed", info.error_code or 500)


def _cancel(services: Any, job_id: str, reason: str) -> JobInfo | None:
    """Cancel a sync job and give a running one a moment to stop, so the answer shows the refund.

    Returns the job instead when it ended by itself first: completed (it is paid for: deliver it) or
    failed with its own error (which says more than a timeout would).
    """
    services.queue.cancel(job_id, reason)
    info = services.queue.wait(job_id, CANCEL_SETTLE_S)
    if info is None or not info.done:
        return None
    return info if info.status is JobStatus.COMPLETED or info.error != reason else None


async def _wait_sync(request: Request, job_id: str) -> JobInfo:
    """Wait for a sync job; cancel it if the client leaves or the timeout passes."""
    services = request.app.state.services
    timeout_s = services.settings.sync_timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        info = await anyio.to_thread.run_sync(services.queue.wait, job_id, max(0.0, min(WAIT_SLICE_S, remaining)))
        if info is None:
            raise ServiceError(f"the result of request {job_id} was lost; submit it again", 500)
        if info.done:
            return info
        if await request.is_disconnected():
            reason = "the client disconnected before the image was ready"
            if finished := await anyio.to_thread.run_sync(_cancel, services, job_id, reason):
                return finished
            raise ClientGoneError("the client disconnected before its image was ready")
        if remaining <= 0:
            reason = f"timed out after {timeout_s:g} s"
            if finished := await anyio.to_thread.run_sync(_cancel, services, job_id, reason):
                return finished
            raise ServiceTimeoutError(
                f"the image was not ready within {timeout_s:g} s; use fewer steps or samples, "
                "or the async API (POST /v2/sd3-med-pose)"
            )


def _zip(result: GenerationResult) -> bytes:
    extension = MEDIA_EXTENSIONS.get(result.media_type, "bin")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, (data, seed) in enumerate(zip(result.images, result.seeds, strict=True)):
            archive.writestr(f"image_{index}_seed_{seed}.{extension}", data)
        if result.pose_png is not None:
            archive.writestr("pose.png", result.pose_png)
        if result.keypoints is not None:
            archive.writestr("keypoints.json", json.dumps(result.keypoints))
    return buffer.getvalue()


# Large bodies go out in pieces of this size: the server then copies and sends one piece at a time,
# waiting for the socket between them, instead of copying the whole answer in one step of the event loop.
BODY_PIECE = 1 << 20


class PiecewiseResponse(Response):
    """A Response whose body is sent in BODY_PIECE pieces (same headers, Content-Length included)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, max(len(body), 1), BODY_PIECE):
            end = start + BODY_PIECE
            await send({"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < len(body)})


def _images_json(result: GenerationResult, metrics: dict[str, float]) -> bytes:
    """The `base64=true` answer (ImagesResponse) as JSON bytes.

    The base64 texts are joined in as they are: their alphabet needs no JSON escaping, and a serialiser
    that scans megabytes of them holds the interpreter, and so every other request, for the whole answer.
    """
    images = [base64.b64encode(data) for data in result.images]
    pose = b'"' + base64.b64encode(result.pose_png) + b'"' if result.pose_png is not None else b"null"
    # The small fields through the model; image, images and pose_image take these places.
    rest = ImagesResponse(
        image="",
        images=[],
        seed=result.seeds[0],
        seeds=result.seeds,
        media_type=result.media_type,
        width=result.width,
        height=result.height,
        keypoints=result.keypoints,
        metrics=metrics,
    ).model_dump_json(exclude={"image", "images", "pose_image"})
    return b"".join(
        [
            b'{"image":"',
            images[0],
            b'","images":["',
            b'","'.join(images),
            b'"],"pose_image":',
            pose,
            b",",
            rest[1:].encode(),
        ]
    )


def render_sync(gen_request: GenerationRequest, result: GenerationResult, info: JobInfo) -> Response:
    """The sync answer: the image, a ZIP of several, or JSON (base64=true). Megabytes of encoding:
    call it in a worker thread."""
    headers = {"x-seed": str(result.seeds[0]), "x-seeds": ",".join(str(s) for s in result.seeds)}
    if gen_request.base64_output:
        body = _images_json(result, _metrics(info, result.timings))
        return PiecewiseResponse(body, media_type="application/json", headers=headers)
    if len(result.images) == 1 and not gen_request.return_pose:
        return PiecewiseResponse(result.images[0], media_type=result.media_type, headers=headers)
    headers["content-disposition"] = 'attachment; filename="images.zip"'
    return PiecewiseResponse(_zip(result), media_type="application/zip", headers=headers)


@router.post(
    "/v1/sd3-med-pose",
    summary="Generate images (sync)",
    openapi_extra=GENERATION_BODY,
    responses=SYNC_RESPONSES,
    response_class=Response,
    tags=["generate"],
)
async def generate_sync(request: Request, principal: Principal = Depends(require("generate", charged=True))):
    services = request.app.state.services
    gen_request = (await _read_generation_request(request)).with_seed_resolved()
    image = await resolve_input(services, gen_request, principal.key_id)
    info = await anyio.to_thread.run_sync(services.submit, gen_request, principal, "sync", image)
    request.state.job_id = info.id
    info = await _wait_sync(request, info.id)
    if info.status is JobStatus.FAILED:
        _raise_failure(info)
    result = await anyio.to_thread.run_sync(services.queue.result, info.id)
    if result is None:
        raise ServiceError(f"the result of request {info.id} was lost; submit it again", 500)
    request.state.timings = {k: round(v, 4) for k, v in result.timings.items()}
    return await anyio.to_thread.run_sync(render_sync, gen_request, result, info)


async def _read_generation_request(request: Request) -> GenerationRequest:
    settings = request.app.state.services.settings

    def validate(body: Any) -> GenerationRequest:
        return parse_request(body, max_samples=settings.max_samples)

    return await read_json(request, max_bytes=settings.max_body_bytes, then=validate)


# --- async (v2) ---------------------------------------------------------------------------------------
# The read routes are plain `def`: FastAPI runs them in its thread pool, so job lookups and result
# reads (SQLite and files, or Redis) never block the event loop.


@router.post(
    "/v2/sd3-med-pose",
    summary="Queue a generation (async)",
    openapi_extra=GENERATION_BODY,
    response_model=AsyncSubmitted,
    responses=error_responses(400, 401, 403, 406, 429, 500, 502, 503),
    tags=["async"],
)
async def generate_async(request: Request, principal: Principal = Depends(require("async", charged=True))):
    services = request.app.state.services
    gen_request = (await _read_generation_request(request)).with_seed_resolved()
    image = await resolve_input(services, gen_request, principal.key_id)
    info = await anyio.to_thread.run_sync(services.submit, gen_request, principal, "async", image)
    request.state.job_id = info.id
    status_url = str(request.url_for("job_status", request_id=info.id))
    return AsyncSubmitted(
        request_id=info.id,
        poll_url=status_url,
        status_url=status_url,
        response_url=str(request.url_for("job_result", request_id=info.id)),
    )


def _own_job(request: Request, principal: Principal, request_id: str) -> JobInfo:
    info = request.app.state.services.queue.get(request_id)
    # Another key's job looks exactly like an unknown one.
    if info is None or (principal.key is not None and info.key_id != principal.key.id):
        raise NotFoundError(f"no request {request_id!r}: unknown, made with another key, or its result expired")
    return info


@router.get(
    "/v2/requests/{request_id}/status",
    name="job_status",
    summary="Status and progress of a queued request",
    response_model=JobStatusResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 404),
    tags=["async"],
)
def job_status(request_id: str, request: Request, principal: Principal = Depends(require("async"))):
    return _status_response(_own_job(request, principal, request_id))


def _status_response(info: JobInfo) -> JobStatusResponse:
    progress = {"step": info.progress[0], "total": info.progress[1]} if info.progress else None
    return JobStatusResponse(
        request_id=info.id, status=info.status.value, metrics=_metrics(info), progress=progress, error=info.error
    )


@router.post(
    "/v2/requests/{request_id}/cancel",
    name="job_cancel",
    summary="Cancel a queued or running request",
    description="A queued request ends FAILED at once; a running one stops at its next step. Either way "
    "nothing is charged and its result (`response_url`) answers 504. The answer is the request's status.",
    response_model=JobStatusResponse,
    response_model_exclude_none=True,
    status_code=202,
    responses=error_responses(400, 401, 403, 404),
    tags=["async"],
)
def job_cancel(request_id: str, request: Request, principal: Principal = Depends(require("async"))):
    queue = request.app.state.services.queue
    info = _own_job(request, principal, request_id)
    if info.status in (JobStatus.COMPLETED, JobStatus.FAILED):
        raise InvalidRequestError(
            f"request {request_id!r} has already ended ({info.status.value}); only a QUEUED or PROCESSING "
            "request can be cancelled"
        )
    queue.cancel(info.id, "the request was cancelled by its client; submit it again for images")
    return _status_response(queue.get(info.id) or info)


@router.get(
    "/v2/requests/{request_id}",
    name="job_result",
    summary="Result of a queued request",
    response_model=JobResultResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 403, 404, 500, 502, 504),
    tags=["async"],
)
def job_result(request_id: str, request: Request, principal: Principal = Depends(require("async"))):
    info = _own_job(request, principal, request_id)
    if info.status is JobStatus.FAILED:
        _raise_failure(info)
    if info.status is not JobStatus.COMPLETED:
        return JobResultResponse(request_id=info.id, status=info.status.value, metrics=_metrics(info))
    meta = info.result_meta
    output = [str(request.url_for("job_image", request_id=info.id, index=i)) for i in range(meta["count"])]
    return JobResultResponse(
        request_id=info.id,
        status=info.status.value,
        output=output,
        seeds=meta["seeds"],
        media_type=meta["media_type"],
        width=meta["width"],
        height=meta["height"],
        pose_url=str(request.url_for("job_pose", request_id=info.id)) if meta.get("pose") else None,
        keypoints=meta.get("keypoints"),
        metrics=_metrics(info),
    )


def _completed_result(request: Request, principal: Principal, request_id: str) -> GenerationResult:
    info = _own_job(request, principal, request_id)
    result = request.app.state.services.queue.result(info.id) if info.status is JobStatus.COMPLETED else None
    if result is None:
        raise NotFoundError(f"request {request_id!r} has no images (status {info.status.value})")
    return result


IMAGE_CONTENT = {
    200: {"content": {t: {"schema": {"type": "string", "format": "binary"}} for t in MEDIA_EXTENSIONS}},
    **error_responses(400, 401, 403, 404),
}


@router.get(
    "/v2/requests/{request_id}/images/{index}",
    name="job_image",
    summary="One image of a completed request",
    response_class=Response,
    responses=IMAGE_CONTENT,
    tags=["async"],
)
def job_image(request_id: str, index: int, request: Request, principal: Principal = Depends(require("async"))):
    result = _completed_result(request, principal, request_id)
    if not 0 <= index < len(result.images):
        raise NotFoundError(
            f"image index {index} does not exist; this request has {len(result.images)} image(s) "
            f"(0 to {len(result.images) - 1})"
        )
    return PiecewiseResponse(
        result.images[index], media_type=result.media_type, headers={"x-seed": str(result.seeds[index])}
    )


@router.get(
    "/v2/requests/{request_id}/pose",
    name="job_pose",
    summary="The pose map of a completed request",
    response_class=Response,
    tags=["async"],
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(400, 401, 403, 404),
    },
)
def job_pose(request_id: str, request: Request, principal: Principal = Depends(require("async"))):
    result = _completed_result(request, principal, request_id)
    if result.pose_png is None:
        raise NotFoundError(f"request {request_id!r} kept no pose map; send return_pose=true to keep it")
    return Response(result.pose_png, media_type="image/png")
