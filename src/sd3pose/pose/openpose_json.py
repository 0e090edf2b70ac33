"""OpenPose JSON in and out: the format OpenPose writes and pose editors exchange.

    {"people": [{"pose_keypoints_2d": [x, y, c, ...], "hand_left_keypoints_2d": [...],
                 "hand_right_keypoints_2d": [...], "face_keypoints_2d": [...]}],
     "canvas_width": W, "canvas_height": H}

Body keypoints may be COCO-18 (what pose ControlNets use) or BODY_25 (OpenPose's default
model, mapped to COCO-18). Missing points are 0, 0, 0; an absent or empty part list means the
part was not detected. Coordinates are pixels of the canvas, or normalised to 0-1 of the canvas
(what the ControlNet OpenPose preprocessors of controlnet_aux, sd-webui-controlnet and ComfyUI
write): a document whose present points all lie within [0, 1] is read as normalised.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sd3pose.errors import InvalidRequestError
from sd3pose.pose.keypoints import NUM_BODY, NUM_FACE, NUM_HAND, Person, Pose

# BODY_25 index for each COCO-18 point (BODY_25 adds a mid-hip at 8 and six foot points at the end).
_COCO_FROM_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
MAX_PEOPLE = 100
MAX_CANVAS = 16384
# Points may lie outside the canvas (limbs out of frame), but not more than this many canvas sides
# away: farther is a broken document, and would overflow the renderer's integer coordinates.
MAX_OUTSIDE = 16
# A canvas at least this large cannot hold a whole skeleton inside one pixel: such points are normalised.
NORMALISED_MIN_CANVAS = 8


def _flat(points: np.ndarray | None) -> list[float]:
    if points is None:
        return []
    return [float(v) for v in points.reshape(-1)]


def pose_to_openpose_json(pose: Pose) -> dict[str, Any]:
    """The pose as an OpenPose JSON document (plain lists and numbers, ready for json.dumps)."""
    return {
        "version": 1.3,
        "people": [
            {
                "pose_keypoints_2d": _flat(person.body),
                "hand_left_keypoints_2d": _flat(person.left_hand),
                "hand_right_keypoints_2d": _flat(person.right_hand),
                "face_keypoints_2d": _flat(person.face),
            }
            for person in pose.people
        ],
        "canvas_width": int(pose.width),
        "canvas_height": int(pose.height),
    }


def _canvas_side(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        raise InvalidRequestError(
            f"pose keypoints: '{key}' is missing; give the size of the image the coordinates refer to"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"pose keypoints: '{key}' must be a whole number of pixels (got {value!r})")
    if not math.isfinite(value):  # 1e400 and NaN parse as JSON numbers
        raise InvalidRequestError(f"pose keypoints: '{key}' must be a finite whole number of pixels (got {value!r})")
    if value != int(value):
        raise InvalidRequestError(f"pose keypoints: '{key}' must be a whole number of pixels (got {value!r})")
    if not 1 <= value <= MAX_CANVAS:
        raise InvalidRequestError(f"pose keypoints: '{key}' must be between 1 and {MAX_CANVAS} (got {value})")
    return int(value)


def _points(
    person: dict[str, Any], key: str, counts: tuple[int, ...], where: str, canvas: tuple[int, int]
) -> np.ndarray | None:
    values = person.get(key)
    if values is None or (isinstance(values, list) and len(values) == 0):
        return None
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidRequestError(f"pose keypoints: {where}.{key} must be a flat list of numbers x, y, confidence")
    if not all(math.isfinite(v) for v in values):
        bad = next(v for v in values if not math.isfinite(v))
        raise InvalidRequestError(
            f"pose keypoints: {where}.{key} contains {bad!r}; every x, y and confidence must be a finite number"
        )
    if len(values) not in tuple(3 * c for c in counts):
        expected = " or ".join(str(3 * c) for c in counts)
        raise InvalidRequestError(
            f"pose keypoints: {where}.{key} has {len(values)} numbers; expected {expected} (x, y, confidence per point)"
        )
    points = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    # A point with confidence 0 (or less) is missing whatever its coordinates say.
    points[points[:, 2] <= 0] = 0.0
    width, height = canvas
    limit = MAX_OUTSIDE * max(width, height)
    far = np.abs(points[:, :2]).max(axis=1) > limit
    if far.any():
        x, y = points[np.argmax(far), :2]
        raise InvalidRequestError(
            f"pose keypoints: {where}.{key} has a point at ({x:g}, {y:g}), more than {MAX_OUTSIDE} canvas sides "
            f"outside the {width}x{height} canvas; send coordinates in pixels of the canvas (or normalised to 0-1)"
        )
    return points


def _is_normalised(people: list[Person], width: int, height: int) -> bool:
    """Whether every present point lies within [0, 1]: coordinates relative to the canvas, not pixels."""
    if max(width, height) < NORMALISED_MIN_CANVAS:
        return False
    present = [
        points[points[:, 2] > 0, :2] for person in people for points in person.parts().values() if points is not None
    ]
    coordinates = np.concatenate(present) if present else np.empty((0, 2))
    return coordinates.size > 0 and bool(((coordinates >= 0) & (coordinates <= 1)).all())


def pose_from_openpose_json(data: dict[str, Any]) -> Pose:
    """Parse an OpenPose JSON document; InvalidRequestError saying what is wrong when it is malformed."""
    if not isinstance(data, dict):
        raise InvalidRequestError("pose keypoints must be a JSON object with 'people', 'canvas_width', 'canvas_height'")
    people_data = data.get("people")
    if not isinstance(people_data, list):
        raise InvalidRequestError("pose keypoints: 'people' must be a list of people (it may be empty)")
    if len(people_data) > MAX_PEOPLE:
        raise InvalidRequestError(f"pose keypoints: at most {MAX_PEOPLE} people are supported (got {len(people_data)})")
    width = _canvas_side(data, "canvas_width")
    height = _canvas_side(data, "canvas_height")
    canvas = (width, height)
    people = []
    for index, person in enumerate(people_data):
        where = f"people[{index}]"
        if not isinstance(person, dict):
            raise InvalidRequestError(f"pose keypoints: {where} must be an object with pose_keypoints_2d etc.")
        body = _points(person, "pose_keypoints_2d", (NUM_BODY, 25), where, canvas)
        if body is None:
            body = np.zeros((NUM_BODY, 3))
        elif len(body) == 25:
            body = body[list(_COCO_FROM_BODY25)]
        face = _points(person, "face_keypoints_2d", (NUM_FACE, 68), where, canvas)
        if face is not None and len(face) == 68:
            face = np.concatenate([face, np.zeros((2, 3))])  # no pupils given
        people.append(
            Person(
                body=body,
                left_hand=_points(person, "hand_left_keypoints_2d", (NUM_HAND,), where, canvas),
                right_hand=_points(person, "hand_right_keypoints_2d", (NUM_HAND,), where, canvas),
                face=face,
            )
        )
    pose = Pose(people, width, height)
    if _is_normalised(people, width, height):
        # The ControlNet preprocessors write x/W, y/H; read as pixels they would all land in pixel 0-1.
        pose = pose.mapped(width, height, 0.0, 0.0, width, height)
    return pose
