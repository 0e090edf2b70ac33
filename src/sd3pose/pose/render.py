"""Keypoints -> the skeleton image pose ControlNets were trained on (the OpenPose convention).

Black canvas; 17 body limbs as filled ellipses in the 18-colour OpenPose palette at 60 % brightness,
then the 18 joints as full-colour dots; hand skeletons with edge colours spread over the hue
circle and blue joints; face points as white dots. Sizes are the convention's pixel sizes at a
512-pixel short side, scaled with the canvas.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterable

import cv2
import numpy as np
from PIL import Image

from sd3pose.errors import InvalidRequestError
from sd3pose.pose.keypoints import Person, Pose

# The OpenPose palette (RGB), one colour per limb and per joint.
BODY_COLORS = (
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 170),
    (255, 0, 85),
)
# Limbs in drawing order (COCO-18 indices): neck to shoulders, arms, legs, head.
BODY_LIMBS = (
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)
LIMB_BRIGHTNESS = 0.6
HAND_EDGES = (
    (0, 1),
    (1, 2),
    (2, 3),
    (3, 4),
    (0, 5),
    (5, 6),
    (6, 7),
    (7, 8),
    (0, 9),
    (9, 10),
    (10, 11),
    (11, 12),
    (0, 13),
    (13, 14),
    (14, 15),
    (15, 16),
    (0, 17),
    (17, 18),
    (18, 19),
    (19, 20),
)
HAND_EDGE_COLORS = tuple(
    tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
    for i in range(len(HAND_EDGES))
)
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)
# Sizes at a 512-pixel short side.
REFERENCE_SIDE = 512
STICK_WIDTH = 4
BODY_JOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_JOINT_RADIUS = 4
FACE_DOT_RADIUS = 3

PARTS = ("body", "hands", "face")
# Subpixel precision for cv2 drawing: coordinates are passed as fixed point with this many bits.
_SHIFT = 4
_ONE = 1 << _SHIFT
# cv2 takes 32-bit integer coordinates (28 integer bits at this shift). Points may lie outside the map
# (limbs out of frame), but this many map sides away is a broken pose, and would overflow.
MAX_OUTSIDE_SIDES = 64


def normalize_parts(parts: Iterable[object]) -> frozenset[str]:
    """Part names (strings or PosePart) as a set, checked."""
    names = frozenset(str(getattr(part, "value", part)).strip().lower() for part in parts)
    unknown = sorted(names - set(PARTS))
    if unknown:
        raise InvalidRequestError(f"unknown pose part(s) {', '.join(unknown)}; use body, hands and/or face")
    return names


def _fixed(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _dot(canvas: np.ndarray, x: float, y: float, radius: float, color: tuple[int, int, int]) -> None:
    cv2.circle(canvas, _fixed(x, y), max(1, int(round(radius * _ONE))), color, thickness=-1, shift=_SHIFT)


def _draw_body(canvas: np.ndarray, body: np.ndarray, scale: float) -> None:
    half_width = STICK_WIDTH * scale
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS, strict=False):
        if body[a, 2] <= 0 or body[b, 2] <= 0:
            continue
        (xa, ya), (xb, yb) = body[a, :2], body[b, :2]
        length = math.hypot(xb - xa, yb - ya)
        angle = math.degrees(math.atan2(yb - ya, xb - xa))
        # An ellipse polygon spanning the limb, as OpenPose draws it; ellipse2Poly works in whole
        # pixels, so build it in fixed point for crisp, subpixel-placed limbs.
        polygon = cv2.ellipse2Poly(
            _fixed((xa + xb) / 2, (ya + yb) / 2),
            (int(round(length / 2 * _ONE)), max(1, int(round(half_width * _ONE)))),
            int(round(angle)),
            0,
            360,
            1,
        )
        dim = tuple(int(c * LIMB_BRIGHTNESS) for c in color)
        cv2.fillConvexPoly(canvas, polygon, dim, shift=_SHIFT)
    for (x, y, confidence), color in zip(body, BODY_COLORS, strict=False):
        if confidence > 0:
            _dot(canvas, x, y, BODY_JOINT_RADIUS * scale, color)


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, scale: float) -> None:
    thickness = max(1, int(round(HAND_LINE_WIDTH * scale)))
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS, strict=True):
        if hand[a, 2] > 0 and hand[b, 2] > 0:
            cv2.line(canvas, _fixed(*hand[a, :2]), _fixed(*hand[b, :2]), color, thickness, shift=_SHIFT)
    for x, y, confidence in hand:
        if confidence > 0:
            _dot(canvas, x, y, HAND_JOINT_RADIUS * scale, HAND_JOINT_COLOR)


def _draw_face(canvas: np.ndarray, face: np.ndarray, scale: float) -> None:
    for x, y, confidence in face:
        if confidence > 0:
            _dot(canvas, x, y, FACE_DOT_RADIUS * scale, FACE_COLOR)


def _draw_person(canvas: np.ndarray, person: Person, parts: frozenset[str], scale: float) -> None:
    if "body" in parts:
        _draw_body(canvas, person.body, scale)
    if "hands" in parts:
        for hand in (person.left_hand, person.right_hand):
            if hand is not None:
                _draw_hand(canvas, hand, scale)
    if "face" in parts and person.face is not None:
        _draw_face(canvas, person.face, scale)


def _check_drawable(pose: Pose, width: int, height: int) -> None:
    limit = MAX_OUTSIDE_SIDES * max(width, height)
    for person in pose.people:
        for points in person.parts().values():
            if points is None:
                continue
            present = points[points[:, 2] > 0, :2]
            if not np.isfinite(present).all() or (np.abs(present) > limit).any():
                raise InvalidRequestError(
                    f"pose keypoints lie more than {MAX_OUTSIDE_SIDES} map sides outside the {width}x{height} "
                    "pose map; send points on or near the canvas they refer to"
                )


def render_pose(pose: Pose, width: int, height: int, parts: Iterable[object] = PARTS) -> Image.Image:
    """The pose map (RGB, width x height). Keypoints are scaled from the pose's canvas if it differs."""
    if width <= 0 or height <= 0:
        raise InvalidRequestError(f"the pose map size must be positive (got {width}x{height})")
    selected = normalize_parts(parts)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    if pose.width and pose.height and (pose.width, pose.height) != (width, height):
        pose = pose.mapped(width / pose.width, height / pose.height, 0.0, 0.0, width, height)
    _check_drawable(pose, width, height)
    scale = min(width, height) / REFERENCE_SIDE
    for person in pose.people:
        _draw_person(canvas, person, selected, scale)
    return Image.fromarray(canvas, "RGB")
