"""What a generation or a pose preview hands back: plain data, shared by the pipeline, the job queues
and the routes (no model code, so API-only processes can import it cheaply)."""

from __future__ import annotations

from dataclasses import dataclass

# The file extension of each output media type (result files, ZIP members).
MEDIA_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


@dataclass
class GenerationResult:
    images: list[bytes]  # encoded in the request's output_format
    media_type: str  # "image/jpeg" | "image/png" | "image/webp"
    seeds: list[int]  # the seed of each image
    width: int
    height: int
    pose_png: bytes | None  # the control image, when the request asked for it (return_pose)
    keypoints: dict | None  # OpenPose JSON of that pose, when known
    timings: dict[str, float]  # seconds: load_image, pose, generate, encode, total


@dataclass
class PosePreview:
    pose_png: bytes  # the control image a generation with the same request would use
    keypoints: dict | None
    width: int
    height: int
    detected: bool  # True when a photo went through pose detection
