"""Keypoints in OpenPose order: the data every other pose module exchanges.

Body: the 18 points of OpenPose's COCO model; hands: 21 points each; face: 68 points of the
iBUG 300-W layout plus the two pupils (70). Each point is (x, y, confidence) in pixels of the
pose's canvas; confidence 0 means "missing" (OpenPose writes such points as 0, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BODY_POINTS = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
BODY = {name: index for index, name in enumerate(BODY_POINTS)}
NUM_BODY = 18
NUM_HAND = 21
NUM_FACE = 70


def _as_points(value: np.ndarray | None, count: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (count, 3):
        raise ValueError(f"{name} must have shape ({count}, 3), got {array.shape}")
    return array


@dataclass
class Person:
    """One person's keypoints; hands and face are None when not detected or not given."""

    body: np.ndarray  # (18, 3)
    left_hand: np.ndarray | None = None  # (21, 3), the person's own left hand
    right_hand: np.ndarray | None = None  # (21, 3)
    face: np.ndarray | None = None  # (70, 3)

    def __post_init__(self) -> None:
        self.body = _as_points(self.body, NUM_BODY, "body")
        self.left_hand = _as_points(self.left_hand, NUM_HAND, "left_hand")
        self.right_hand = _as_points(self.right_hand, NUM_HAND, "right_hand")
        self.face = _as_points(self.face, NUM_FACE, "face")

    def parts(self) -> dict[str, np.ndarray | None]:
        return {"body": self.body, "left_hand": self.left_hand, "right_hand": self.right_hand, "face": self.face}

    def mapped(self, scale_x: float, scale_y: float, offset_x: float, offset_y: float) -> Person:
        """This person under x' = x*scale_x + offset_x, y' = y*scale_y + offset_y (missing points stay 0)."""

        def move(points: np.ndarray | None) -> np.ndarray | None:
            if points is None:
                return None
            out = points.copy()
            present = out[:, 2] > 0
            out[present, 0] = out[present, 0] * scale_x + offset_x
            out[present, 1] = out[present, 1] * scale_y + offset_y
            return out

        return Person(move(self.body), move(self.left_hand), move(self.right_hand), move(self.face))

    def without(self, hands: bool = False, face: bool = False, body: bool = False) -> Person:
        """A copy with the named parts removed (body is zeroed, since it is always present)."""
        return Person(
            np.zeros((NUM_BODY, 3)) if body else self.body.copy(),
            None if hands or self.left_hand is None else self.left_hand.copy(),
            None if hands or self.right_hand is None else self.right_hand.copy(),
            None if face or self.face is None else self.face.copy(),
        )


@dataclass
class Pose:
    """Everybody found in one image, in pixels of a width x height canvas."""

    people: list[Person] = field(default_factory=list)
    width: int = 0
    height: int = 0

    def mapped(self, scale_x: float, scale_y: float, offset_x: float, offset_y: float, width: int, height: int) -> Pose:
        """The same people in another canvas (see Person.mapped)."""
        return Pose([p.mapped(scale_x, scale_y, offset_x, offset_y) for p in self.people], width, height)
