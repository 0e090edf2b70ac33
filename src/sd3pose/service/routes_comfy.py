"""`POST /v1/comfy-workflow`: a generation request as the equivalent ComfyUI workflow (the playground's copy button)."""

from __future__ import annotations

import base64
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from sd3pose.comfy_workflow import ModelFiles, comfy_workflow, pose_image_name
from sd3pose.jobs.inputs import with_image
from sd3pose.request import parse_request
from sd3pose.service.auth import Principal, require
from sd3pose.service.body import read_json
from sd3pose.service.inputs import resolve_input
from sd3pose.service.schemas import error_responses

router = APIRouter()


class ComfyWorkflowResponse(BaseModel):
    workflow: dict[str, dict[str, Any]] = Field(
        ..., description="ComfyUI (v0.12.1) API-format graph: POST it to ComfyUI's /prompt as {prompt: workflow}."
    )
    pose_image: str = Field(..., description="The pose map, base64 PNG: save it in ComfyUI's input/ folder.")
    pose_image_name: str = Field(..., description="The file name the workflow's LoadImage node expects.")
    width: int
    height: int
    seeds: list[int] = Field(..., description="The seed of each image (a random seed, -1, is resolved here).")


@router.post(
    "/v1/comfy-workflow",
    summary="The request as a ComfyUI workflow",
    description="The same body as POST /v1/sd3-med-pose. Answers the ComfyUI workflow that makes the same images "
    "(one KSampler per image, seed + i) and the pose map it loads. Nothing is generated and no credits are used.",
    response_model=ComfyWorkflowResponse,
    tags=["pose"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerationRequest"}}},
        }
    },
    responses=error_responses(400, 401, 403, 429, 500, 502),
)
async def comfy_workflow_route(
    request: Request,
    t5: bool = Query(True, description="false: CLIP-L and CLIP-G only, for a server started with --no-t5."),
    checkpoint: str = Query(ModelFiles.checkpoint, description="SD3 Medium's file in ComfyUI's models/checkpoints."),
    clip_l: str = Query(ModelFiles.clip_l, description="CLIP-L's file in models/text_encoders."),
    clip_g: str = Query(ModelFiles.clip_g, description="CLIP-G's file in models/text_encoders."),
    t5_file: str = Query(ModelFiles.t5, description="T5-XXL's file in models/text_encoders."),
    controlnet: str = Query(ModelFiles.controlnet, description="The pose ControlNet's file in models/controlnet."),
    principal: Principal = Depends(require("pose", rate_limited=True)),
) -> ComfyWorkflowResponse:
    services = request.app.state.services
    gen_request = await read_json(
        request,
        max_bytes=services.settings.max_body_bytes,
        then=lambda body: parse_request(body, max_samples=services.settings.max_samples).with_seed_resolved(),
    )
    # Downloaded (or decoded) before the preview waits for the pose detector, as for /v1/pose.
    image = await resolve_input(services, gen_request, principal.key_id)
    if image is not None:
        gen_request = with_image(gen_request, image)
    preview = await anyio.to_thread.run_sync(services.queue.preview_pose, gen_request, limiter=services.preview_limiter)
    name = pose_image_name(preview.pose_png)
    files = ModelFiles(checkpoint, clip_l, clip_g, t5_file if t5 else None, controlnet)
    return ComfyWorkflowResponse(
        workflow=comfy_workflow(gen_request, width=preview.width, height=preview.height, pose_image=name, files=files),
        pose_image=base64.b64encode(preview.pose_png).decode("ascii"),
        pose_image_name=name,
        width=preview.width,
        height=preview.height,
        seeds=gen_request.seeds,
    )
