"""`POST /v1/pose`: the skeleton a generation would use, for previews (the playground shows it)."""

from __future__ import annotations

import base64

import anyio
from fastapi import APIRouter, Depends, Request

from sd3pose.errors import InvalidRequestError
from sd3pose.jobs.inputs import with_image
from sd3pose.request import GenerationRequest, parse_request
from sd3pose.service.auth import Principal, require
from sd3pose.service.body import read_json
from sd3pose.service.inputs import resolve_input
from sd3pose.service.schemas import PoseRequest, PoseResponse, error_responses

router = APIRouter()

POSE_FIELDS = tuple(PoseRequest.model_fields)


@router.post(
    "/v1/pose",
    summary="Detect the pose (preview)",
    response_model=PoseResponse,
    tags=["pose"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PoseRequest"}}},
        }
    },
    responses=error_responses(400, 401, 403, 429, 500, 502),
)
async def preview_pose(request: Request, principal: Principal = Depends(require("pose", rate_limited=True))):
    services = request.app.state.services

    def validate(body: object) -> GenerationRequest:
        if not isinstance(body, dict):
            raise InvalidRequestError("the request body must be a JSON object with 'image' (or 'pose_keypoints')")
        # The same validation as a generation request; the prompt is irrelevant to the pose.
        fields = {name: body[name] for name in POSE_FIELDS if name in body}
        return parse_request({**fields, "prompt": "pose preview"}, max_samples=services.settings.max_samples)

    gen_request = await read_json(request, max_bytes=services.settings.max_body_bytes, then=validate)
    # Downloaded (or decoded) here, before the preview waits for the pose detector: no lock is held
    # across a download.
    image = await resolve_input(services, gen_request, principal.key_id)
    if image is not None:
        gen_request = with_image(gen_request, image)
    preview = await anyio.to_thread.run_sync(services.queue.preview_pose, gen_request, limiter=services.preview_limiter)
    return PoseResponse(
        pose_image=base64.b64encode(preview.pose_png).decode("ascii"),
        keypoints=preview.keypoints,
        width=preview.width,
        height=preview.height,
        detected=preview.detected,
    )
