"""MediaPipe landmarks -> OpenPose keypoints (pure numpy, no model).

MediaPipe's pose has 33 landmarks (BlazePose topology), its face mesh 468, its hands 21 in the
same order as OpenPose's hands. Left/right are the person's own in both conventions.
"""

from __future__ import annotations

import numpy as np

from sd3pose.pose.keypoints import NUM_BODY, NUM_FACE, Person

# OpenPose COCO-18 index -> BlazePose index; the neck (1) is the shoulder midpoint.
_BODY_FROM_BLAZEPOSE = (0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
_NECK = 1
_SHOULDERS = (2, 5)  # OpenPose indices

# OpenPose face (iBUG 68) index -> face mesh index, chosen on the canonical mesh: jaw line from the
# person's right ear-level round the chin, brows outer->inner / inner->outer, nose bridge and base,
# eye corners and lids, outer and inner lips. Left/right pairs are mirror-symmetric mesh points.
_FACE_FROM_MESH = (
    127,
    234,
    93,
    132,
    58,
    172,
    150,
    176,
    152,
    400,
    379,
    397,
    288,
    361,
    323,
    454,
    356,  # jaw 0-16
    70,
    63,
    105,
    66,
    107,  # right brow 17-21
    336,
    296,
    334,
    293,
    300,  # left brow 22-26
    168,
    197,
    5,
    4,  # nose bridge 27-30
    98,
    97,
    2,
    326,
    327,  # nose base 31-35
    33,
    160,
    158,
    133,
    153,
    144,  # right eye 36-41
    362,
    385,
    387,
    263,
    373,
    380,  # left eye 42-47
    61,
    40,
    37,
    0,
    267,
    270,
    291,
    321,
    314,
    17,
    84,
    91,  # outer lips 48-59
    78,
    81,
    13,
    311,
    308,
    402,
    14,
    178,  # inner lips 60-67
)
# Pupils (68 right, 69 left): the centre of each eye's six contour points (the plain mesh has no iris).
_RIGHT_EYE = slice(36, 42)
_LEFT_EYE = slice(42, 48)

# A body point below this MediaPipe visibility is reported missing: it is hidden or guessed.
MIN_VISIBILITY = 0.25


def body_from_blazepose(landmarks: np.ndarray, width: float, height: float) -> np.ndarray:
    """(33, 3) normalized x, y, visibility -> (18, 3) pixels x, y, confidence (0 = missing).

    Points outside the image or with low visibility are missing, as OpenPose would report them.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    body = np.zeros((NUM_BODY, 3))
    for target, source in enumerate(_BODY_FROM_BLAZEPOSE):
        if source < 0:
            continue
        x, y, visibility = landmarks[source]
        inside = 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0
        if inside and visibility >= MIN_VISIBILITY:
            body[target] = (x * width, y * height, visibility)
    right, left = body[_SHOULDERS[0]], body[_SHOULDERS[1]]
    if right[2] > 0 and left[2] > 0:
        body[_NECK] = ((right[0] + left[0]) / 2, (right[1] + left[1]) / 2, min(right[2], left[2]))
    return body


def hand_from_mediapipe(landmarks: np.ndarray | None, width: float, height: float) -> np.ndarray | None:
    """(21, 2+) normalized -> (21, 3) pixels with confidence 1 (the hand model gives no per-point score)."""
    if landmarks is None:
        return None
    landmarks = np.asarray(landmarks, dtype=np.float64)
    hand = np.ones((21, 3))
    hand[:, 0] = landmarks[:, 0] * width
    hand[:, 1] = landmarks[:, 1] * height
    return hand


def face_from_mesh(landmarks: np.ndarray | None, width: float, height: float) -> np.ndarray | None:
    """(468+, 2+) normalized face mesh -> (70, 3) OpenPose face points in pixels."""
    if landmarks is None:
        return None
    mesh = np.asarray(landmarks, dtype=np.float64)[:, :2] * (width, height)
    face = np.ones((NUM_FACE, 3))
    face[:68, :2] = mesh[list(_FACE_FROM_MESH)]
    face[68, :2] = face[_RIGHT_EYE, :2].mean(axis=0)
    face[69, :2] = face[_LEFT_EYE, :2].mean(axis=0)
    return face


def person_from_mediapipe(
    pose: np.ndarray,
    left_hand: np.ndarray | None,
    right_hand: np.ndarray | None,
    face: np.ndarray | None,
    width: float,
    height: float,
) -> Person:
    """One person from MediaPipe Holistic's four landmark sets, all normalized to a width x height image."""
    return Person(
        body=body_from_blazepose(pose, width, height),
        left_hand=hand_from_mediapipe(left_hand, width, height),
        right_hand=hand_from_mediapipe(right_hand, width, height),
        face=face_from_mesh(face, width, height),
    )
