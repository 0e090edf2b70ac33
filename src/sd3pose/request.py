"""The validated parameter set of one generation request, shared by HTTP, CLI and workers.

Field names, defaults and ranges are the hosted "SD3 Medium Pose ControlNet" API's contract;
the fields after `base64` are sd3pose extensions, all optional.
"""

from __future__ import annotations

import math
import secrets
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sd3pose.errors import InvalidRequestError
from sd3pose.prompt_syntax import parse_prompt
from sd3pose.sampling.caveats import caveat_list, caveat_summary
from sd3pose.sampling.names import (
    SAMPLER_NAMES,
    SCHEDULER_NAMES,
    resolve_sampler_name,
    resolve_scheduler_name,
)

DEFAULT_NEGATIVE_PROMPT = "low quality,less details"
DEFAULT_SEED = 698845
DEFAULT_MAX_SAMPLES = 4
MAX_SEED = 2**32 - 1
# Width and height must be multiples of the VAE factor (8) times the transformer patch size (2).
SIZE_MULTIPLE = 16
MIN_SIDE = 64
MAX_SIDE = 2048
# OpenPose JSON nests three levels ({people: [{pose_keypoints_2d: [...]}]}); more is not keypoints.
MAX_KEYPOINTS_DEPTH = 8


class PoseMode(str, Enum):
    auto = "auto"
    detect = "detect"
    none = "none"


class PosePart(str, Enum):
    body = "body"
    hands = "hands"
    face = "face"


class ResizeMode(str, Enum):
    crop = "crop"
    fill = "fill"
    stretch = "stretch"


class OutputFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"
    webp = "webp"


class GenerationRequest(BaseModel):
    """One request of `POST /v1/sd3-med-pose` (and of the CLI and the workers)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", use_enum_values=False)

    image: str | None = Field(
        None,
        description="A photo of a person or a rendered pose map: http(s) URL, raw base64 or data: URI. "
        "Required unless pose_keypoints is given.",
    )
    prompt: str = Field(
        ...,
        min_length=1,
        max_length=10_000,
        description="What to draw. Read whole (CLIP in 77-token windows, T5 unabridged). Emphasis as in "
        "ComfyUI: (words) weighs 1.1x, (words:1.3) sets the weight 1.3, groups nest, \\( and \\) are literal brackets. "
        "embedding:name is dropped, as ComfyUI drops an embedding it does not have (this server has none).",
    )
    negative_prompt: str = Field(
        DEFAULT_NEGATIVE_PROMPT, max_length=10_000, description="What to avoid (same syntax as the prompt)."
    )
    num_inference_steps: int = Field(20, ge=1, le=100, description="Denoising steps.")
    guidance_scale: float = Field(7.0, ge=1.0, le=20.0, description="Classifier-free guidance scale.")
    seed: int = Field(
        DEFAULT_SEED,
        ge=-1,
        le=MAX_SEED,
        description="Seed of sample 0 (sample i uses seed+i, modulo 2^32, each on its own; ComfyUI would draw "
        "a batch from one seed); -1 = random.",
    )
    samples: int = Field(
        1,
        ge=1,
        description="Number of images (1 to the server's cap, 4 by default).",
        json_schema_extra={"maximum": DEFAULT_MAX_SAMPLES},
    )
    strength: float = Field(0.8, ge=0.0, le=1.0, description="ControlNet conditioning strength.")
    sampler: str = Field(
        "dpmpp_2m",
        description="Sampler: ComfyUI's algorithm of that name. These pairs misbehave on SD3 as they do in "
        f"ComfyUI (x-caveats says why): {caveat_summary()}.",
        json_schema_extra={"enum": list(SAMPLER_NAMES), "x-caveats": caveat_list()},
    )
    scheduler: str = Field(
        "sgm_uniform", description="Sigma schedule.", json_schema_extra={"enum": list(SCHEDULER_NAMES)}
    )
    base64_output: bool = Field(
        False, alias="base64", description="false: raw image bytes; true: JSON with base64 images."
    )

    # Extensions beyond the hosted API.
    width: int | None = Field(
        None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIZE_MULTIPLE,
        description="Output width, a multiple of 16. Default: the input's aspect ratio at the model's native size.",
    )
    height: int | None = Field(
        None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIZE_MULTIPLE, description="Output height, a multiple of 16."
    )
    pose_mode: PoseMode = Field(
        PoseMode.auto, description="auto: detect on photos, use pose maps as is; detect: always; none: never."
    )
    pose_parts: list[PosePart] = Field(
        [PosePart.body, PosePart.hands, PosePart.face],
        min_length=1,
        description="Which parts of a detected pose to draw.",
    )
    control_start: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Where the ControlNet starts acting, from 0 (pure noise) to 1 (the image): ComfyUI's "
        "start_percent, mapped to a noise level through SD3's flow schedule.",
    )
    control_end: float = Field(
        1.0, ge=0.0, le=1.0, description="Where the ControlNet stops acting (ComfyUI's end_percent), edge included."
    )
    resize_mode: ResizeMode = Field(
        ResizeMode.crop, description="How a control image of another aspect ratio is fitted."
    )
    output_format: OutputFormat = Field(OutputFormat.jpeg, description="Encoding of the output images.")
    return_pose: bool = Field(False, description="Also return the pose map and the keypoints (base64=true).")
    pose_keypoints: dict[str, Any] | None = Field(
        None, description="OpenPose JSON ({people: [...], canvas_width, canvas_height}) instead of an image."
    )

    @field_validator("image", "prompt", "negative_prompt")
    @classmethod
    def _valid_unicode(cls, value: str | None) -> str | None:
        if value is not None:
            _check_text(value)
        return value

    @field_validator("pose_keypoints")
    @classmethod
    def _plain_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            _check_json(value, depth=1)
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _emphasis_readable(cls, value: str) -> str:
        try:
            parse_prompt(value)  # refuses weights such as (word:inf) before the job is queued
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        try:
            return resolve_sampler_name(value)
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        try:
            return resolve_scheduler_name(value)
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None

    @field_validator("width", "height", mode="before")
    @classmethod
    def _multiple_of_16(cls, value: Any) -> Any:
        # Before pydantic's own multiple_of check, so the message can suggest the nearest valid sizes.
        if isinstance(value, int) and not isinstance(value, bool) and value % SIZE_MULTIPLE:
            lower = value // SIZE_MULTIPLE * SIZE_MULTIPLE
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE} (try {lower} or {lower + SIZE_MULTIPLE})")
        return value

    @field_validator("samples")
    @classmethod
    def _samples_cap(cls, value: int, info: ValidationInfo) -> int:
        cap = (info.context or {}).get("max_samples", DEFAULT_MAX_SAMPLES)
        if value > cap:
            raise ValueError(f"must be at most {cap} on this server")
        return value

    @field_validator("pose_parts")
    @classmethod
    def _drop_repeated_parts(cls, value: list[PosePart]) -> list[PosePart]:
        # An empty list is refused by min_length; a part named twice is drawn once.
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> GenerationRequest:
        if self.image is None and self.pose_keypoints is None:
            raise InvalidRequestError("field 'image' is required (or send 'pose_keypoints' instead)")
        if self.control_start >= self.control_end:
            raise InvalidRequestError(
                f"control_start must be smaller than control_end (got {self.control_start} and {self.control_end})"
            )
        return self

    def with_seed_resolved(self) -> GenerationRequest:
        """Replace seed -1 by a random seed, so the seed actually used can be reported back."""
        if self.seed != -1:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED - DEFAULT_MAX_SAMPLES * 4)})

    @property
    def seeds(self) -> list[int]:
        """The seed of each sample: sample i uses seed + i, wrapping from MAX_SEED to 0.

        The wrap keeps every reported seed a valid `seed`, so any one image can be requested again alone.
        """
        if self.seed < 0:
            raise RuntimeError("resolve the random seed first (with_seed_resolved)")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.samples)]


def _check_text(value: str) -> None:
    """JSON may carry lone surrogate escapes ("\\ud800"), which are not text: jobs could not be stored."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "contains a lone surrogate escape such as \\ud800, which is not text; send valid UTF-8"
            ) from None


def _check_json(value: Any, depth: int) -> None:
    if depth > MAX_KEYPOINTS_DEPTH:
        raise ValueError(
            f"is nested deeper than {MAX_KEYPOINTS_DEPTH} levels; send OpenPose JSON "
            "({people: [{pose_keypoints_2d: [...]}], canvas_width, canvas_height})"
        )
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error.get("loc", ())) or "body"
    kind = error.get("type", "")
    message = error.get("msg", "invalid value")
    if kind == "missing":
        return f"field '{field}' is required"
    # pydantic prefixes custom messages with "Value error, "; the field name says the rest.
    message = message.removeprefix("Value error, ")
    if "input" in error and kind not in ("string_too_long",):
        shown = repr(error["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"field '{field}': {message} (got {shown})"
    return f"field '{field}': {message}"


def parse_request(data: Any, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> GenerationRequest:
    """Validate a request body; raise InvalidRequestError with a message naming every bad field."""
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object with at least 'image' and 'prompt'")
    try:
        return GenerationRequest.model_validate(data, context={"max_samples": max_samples})
    except InvalidRequestError:
        raise
    except ValidationError as exc:
        raise InvalidRequestError("; ".join(_describe(e) for e in exc.errors())) from None


def default_size(source_width: int, source_height: int, native: int = 1024, multiple: int = 64) -> tuple[int, int]:
    """The output size for an input of this shape: same aspect ratio, about native² pixels.

    Sides are multiples of `multiple`; the aspect ratio is clamped to 1:4..4:1.
    """
    if source_width <= 0 or source_height <= 0:
        return native, native
    aspect = min(max(source_width / source_height, 0.25), 4.0)
    width = native * math.sqrt(aspect)
    height = native / math.sqrt(aspect)
    width = max(multiple, round(width / multiple) * multiple)
    height = max(multiple, round(height / multiple) * multiple)
    return int(width), int(height)
