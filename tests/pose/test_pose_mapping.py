"""MediaPipe landmark sets -> OpenPose order (no model: synthetic landmarks with known answers)."""

from __future__ import annotations

import numpy as np

from sd3pose.pose.keypoints import BODY
from sd3pose.pose.mediapipe_map import MIN_VISIBILITY, body_from_blazepose, face_from_mesh, hand_from_mediapipe

# BlazePose indices of the points OpenPose keeps.
BLAZEPOSE = {
    "nose": 0,
    "left_eye": 2,
    "right_eye": 5,
    "left_ear": 7,
    "right_ear": 8,
    "left_shoulder": 11,
    "right_shoulder": 12,
    "left_elbow": 13,
    "right_elbow": 14,
    "left_wrist": 15,
    "right_wrist": 16,
    "left_hip": 23,
    "right_hip": 24,
    "left_knee": 25,
    "right_knee": 26,
    "left_ankle": 27,
    "right_ankle": 28,
}


def _blazepose() -> np.ndarray:
    rng = np.random.default_rng(0)
    landmarks = np.column_stack([rng.uniform(0.05, 0.95, (33, 2)), np.ones(33)])
    return landmarks


def test_every_openpose_body_point_comes_from_the_same_named_blazepose_point():
    landmarks = _blazepose()
    body = body_from_blazepose(landmarks, 200, 100)
    for name, source in BLAZEPOSE.items():
        np.testing.assert_allclose(body[BODY[name], :2], landmarks[source, :2] * (200, 100))
        assert body[BODY[name], 2] == 1.0
    shoulders = (landmarks[11, :2] + landmarks[12, :2]) / 2 * (200, 100)
    np.testing.assert_allclose(body[BODY["neck"], :2], shoulders)


def test_hidden_or_outside_points_are_missing_and_so_is_a_neck_without_both_shoulders():
    landmarks = _blazepose()
    landmarks[BLAZEPOSE["left_wrist"], 2] = MIN_VISIBILITY - 0.01
    landmarks[BLAZEPOSE["right_ankle"], 1] = 1.2  # below the image
    landmarks[BLAZEPOSE["left_shoulder"], 0] = -0.1
    body = body_from_blazepose(landmarks, 100, 100)
    for name in ("left_wrist", "right_ankle", "left_shoulder", "neck"):
        assert tuple(body[BODY[name]]) == (0.0, 0.0, 0.0), name
    assert body[BODY["right_shoulder"], 2] > 0


def test_hands_keep_mediapipe_order_and_face_takes_68_mesh_points_plus_pupils():
    hand = np.column_stack([np.linspace(0, 1, 21), np.linspace(1, 0, 21)])
    out = hand_from_mediapipe(hand, 50, 80)
    np.testing.assert_allclose(out[:, :2], hand * (50, 80))
    assert np.all(out[:, 2] == 1)
    assert hand_from_mediapipe(None, 50, 80) is None

    mesh = np.random.default_rng(1).uniform(0, 1, (468, 3))
    face = face_from_mesh(mesh, 100, 100)
    assert face.shape == (70, 3)
    np.testing.assert_allclose(face[8, :2], mesh[152, :2] * 100)  # chin
    np.testing.assert_allclose(face[36, :2], mesh[33, :2] * 100)  # right eye, outer corner
    np.testing.assert_allclose(face[45, :2], mesh[263, :2] * 100)  # left eye, outer corner
    np.testing.assert_allclose(face[68, :2], face[36:42, :2].mean(axis=0))
    np.testing.assert_allclose(face[69, :2], face[42:48, :2].mean(axis=0))
    assert len({tuple(p) for p in face[:68, :2]}) == 68  # 68 distinct mesh points
