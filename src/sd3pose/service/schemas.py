"""Response shapes, for the OpenAPI document (and so schemathesis can check responses against it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sd3pose.request import MAX_SIDE, MIN_SIDE, PoseMode, PosePart, ResizeMode


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: str = Field(..., description="What is wrong and how to fix it.")


class ImagesResponse(BaseModel):
    """`base64=true` answer of `POST /v1/sd3-med-pose`."""

    image: str = Field(..., description="The first image, base64 (no data: prefix).")
    images: list[str] = Field(..., description="Every image, base64, in seed order.")
    seed: int = Field(..., description="Seed of the first image.")
    seeds: list[int] = Field(..., description="Seed of each image (sample i uses seed + i).")
    media_type: str = Field(..., description="image/jpeg, image/png or image/webp.")
    width: int
    height: int
    pose_image: str | None = Field(None, description="The pose map used, base64 PNG (return_pose=true).")
    keypoints: dict[str, Any] | None = Field(None, description="OpenPose JSON of the pose (return_pose=true).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Seconds per stage; inference_time.")


class AsyncSubmitted(BaseModel):
    request_id: str
    status: Literal["QUEUED"] = "QUEUED"
    poll_url: str
    status_url: str
    response_url: str


class Progress(BaseModel):
    step: int
    total: int


class JobStatusResponse(BaseModel):
    request_id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
    metrics: dict[str, float] = Field(default_factory=dict)
    progress: Progress | None = Field(None, description="Sampling steps done (while PROCESSING).")
    error: str | None = None


class JobResultResponse(BaseModel):
    request_id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
    output: list[str] | None = Field(None, description="URL of each image on this server (when COMPLETED).")
    seeds: list[int] | None = None
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    pose_url: str | None = Field(None, description="URL of the pose map (return_pose=true).")
    keypoints: dict[str, Any] | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="inference_time and seconds per stage.")


class PoseRequest(BaseModel):
    """Body of `POST /v1/pose`: the pose-related fields of a generation request, same meaning."""

    image: str | None = Field(None, description="Photo or pose map: http(s) URL, raw base64 or data: URI.")
    pose_mode: PoseMode = PoseMode.auto
    pose_parts: list[PosePart] = Field(default_factory=lambda: [PosePart.body, PosePart.hands, PosePart.face])
    pose_keypoints: dict[str, Any] | None = Field(None, description="OpenPose JSON instead of an image.")
    width: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, description="Multiple of 16.")
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, description="Multiple of 16.")
    resize_mode: ResizeMode = ResizeMode.crop


class PoseResponse(BaseModel):
    pose_image: str = Field(..., description="The skeleton map, base64 PNG.")
    keypoints: dict[str, Any] | None = Field(None, description="OpenPose JSON (null for a ready pose map).")
    width: int
    height: int
    detected: bool = Field(..., description="True when a pose was detected in a photo.")


class HealthResponse(BaseModel):
    status: str
    detail: str | None = None


ERROR_CODES: dict[int, str] = {
    400: "Bad parameters or unusable image.",
    401: "Missing or invalid API key.",
    403: "The key lacks permission for this route.",
    404: "Unknown route, or unknown/expired request id.",
    405: "Method not allowed.",
    406: "Not enough credits.",
    429: "Rate limited or queue full; see Retry-After.",
    500: "Internal error (the server logged the details).",
    502: "The host of an input image URL failed.",
    503: "The server's storage is full (serve --max-disk); nothing was charged, retry later.",
    504: "Timed out.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": ERROR_CODES[code]} for code in codes}
