"""The "request input -> control image" step: keypoints, a ready pose map, or a photo to detect."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from sd3pose.errors import InvalidRequestError, NoPersonFoundError
from sd3pose.pose.detect import PoseDetector, get_detector
from sd3pose.pose.fit import Fit
from sd3pose.pose.keypoints import Pose
from sd3pose.pose.openpose_json import pose_from_openpose_json
from sd3pose.pose.render import normalize_parts, render_pose
from sd3pose.request import PoseMode, PosePart, ResizeMode

log = logging.getLogger(__name__)

# Pose-map test thresholds (on a <=256-pixel copy, HSV in 0..255): a pose map is mostly black, and
# what is drawn is vivid colour (limbs, joints) or white (face dots), with some vivid colour.
_DARK_VALUE = 48
_MIN_DARK_FRACTION = 0.6
_MIN_DRAWN_FRACTION = 0.001
_VIVID_SATURATION = 150
_WHITE_SATURATION = 60
_WHITE_VALUE = 180
_MIN_POSE_LIKE_FRACTION = 0.75  # of the drawn pixels
_MIN_VIVID_FRACTION = 0.25  # of the drawn pixels


@dataclass
class ControlResult:
    image: Image.Image  # RGB, exactly width x height: what the ControlNet sees
    pose: Pose | None  # keypoints in the width x height frame, when known (detected or given)
    detected: bool  # True when a photo went through detection


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto black (the pose-map background)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def looks_like_pose_map(image: Image.Image) -> bool:
    """True when the image looks like a rendered OpenPose skeleton rather than a photo.

    Mostly black, and nearly everything drawn is saturated colour or white. A face-only map (white
    dots alone) is not recognised: send it with pose_mode=none.
    """
    small = _rgb(image)
    small.thumbnail((256, 256), Image.Resampling.NEAREST)  # nearest keeps line colours unblended
    hsv = np.asarray(small.convert("HSV"), dtype=np.int32).reshape(-1, 3)
    saturation, value = hsv[:, 1], hsv[:, 2]
    drawn = value >= _DARK_VALUE
    total = len(hsv)
    drawn_count = int(drawn.sum())
    if drawn_count < _MIN_DRAWN_FRACTION * total or (total - drawn_count) < _MIN_DARK_FRACTION * total:
        return False
    vivid = drawn & (saturation >= _VIVID_SATURATION)
    white = drawn & (saturation <= _WHITE_SATURATION) & (value >= _WHITE_VALUE)
    pose_like = int(vivid.sum() + white.sum())
    return pose_like >= _MIN_POSE_LIKE_FRACTION * drawn_count and vivid.sum() >= _MIN_VIVID_FRACTION * drawn_count


def _select_parts(pose: Pose, parts: frozenset[str]) -> Pose:
    people = [
        person.without(hands="hands" not in parts, face="face" not in parts, body="body" not in parts)
        for person in pose.people
    ]
    return Pose(people, pose.width, pose.height)


def build_control_image(
    image: Image.Image | None,
    keypoints: Pose | dict[str, Any] | None,
    *,
    mode: PoseMode,
    parts: Iterable[PosePart | str],
    width: int,
    height: int,
    resize_mode: ResizeMode,
    detector: PoseDetector | None = None,
) -> ControlResult:
    """The control image of a request, exactly width x height.

    Keypoints (OpenPose JSON, or a Pose already parsed from it), when given, win over the image.
    Otherwise the image is used as is (mode none, or mode auto and it looks like a pose map) or goes
    through detection (mode detect, or a photo in mode auto). Raises NoPersonFoundError when
    detection finds nobody.
    """
    selected = normalize_parts(parts)
    if not selected:
        raise InvalidRequestError("pose_parts must name at least one of body, hands, face")
    mode = PoseMode(mode)
    if keypoints is not None:
        given = keypoints if isinstance(keypoints, Pose) else pose_from_openpose_json(keypoints)
        fitted = _select_parts(Fit.between(given.width, given.height, width, height, resize_mode).pose(given), selected)
        log.info("control image from %d person(s) of given keypoints", len(fitted.people))
        return ControlResult(render_pose(fitted, width, height, selected), fitted, detected=False)
    if image is None:
        raise InvalidRequestError("send an image (a photo or a pose map) or pose_keypoints")
    image = _rgb(image)
    fit = Fit.between(image.width, image.height, width, height, resize_mode)
    if mode is PoseMode.none or (mode is PoseMode.auto and looks_like_pose_map(image)):
        log.info("control image: the input is used as the pose map (pose_mode=%s)", mode.value)
        return ControlResult(fit.image(image), None, detected=False)
    detected = (detector or get_detector()).detect(image)
    if not detected.people:
        raise NoPersonFoundError()
    fitted = _select_parts(fit.pose(detected), selected)
    log.info("control image: %d person(s) detected", len(fitted.people))
    return ControlResult(render_pose(fitted, width, height, selected), fitted, detected=True)
