"""OpenPose JSON in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd3pose.errors import InvalidRequestError
from sd3pose.pose import pose_from_openpose_json, pose_to_openpose_json, render_pose
from sd3pose.pose.keypoints import BODY


def test_round_trip_of_a_detected_pose_renders_the_same_map(astronaut_pose):
    text = json.dumps(pose_to_openpose_json(astronaut_pose))
    data = json.loads(text)
    assert set(data["people"][0]) == {
        "pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d", "face_keypoints_2d",
    }  # fmt: skip
    assert (data["canvas_width"], data["canvas_height"]) == (512, 512)
    assert len(data["people"][0]["pose_keypoints_2d"]) == 54
    assert len(data["people"][0]["face_keypoints_2d"]) == 210
    assert data["people"][0]["hand_left_keypoints_2d"] == []  # no hand found: OpenPose writes an empty list
    back = pose_from_openpose_json(data)
    assert (back.width, back.height) == (512, 512)
    np.testing.assert_array_equal(back.people[0].body, astronaut_pose.people[0].body)
    np.testing.assert_array_equal(back.people[0].face, astronaut_pose.people[0].face)
    assert back.people[0].left_hand is None
    original = np.asarray(render_pose(astronaut_pose, 512, 512))
    assert np.array_equal(np.asarray(render_pose(back, 512, 512)), original)
    assert original.any()


def test_body25_from_openpose_itself_is_mapped_to_coco18():
    body25 = np.zeros((25, 3))
    body25[:, 0] = np.arange(25) * 10  # x encodes the BODY_25 index
    body25[:, 1] = 5
    body25[:, 2] = 0.9
    pose = pose_from_openpose_json(
        {"people": [{"pose_keypoints_2d": body25.ravel().tolist()}], "canvas_width": 300, "canvas_height": 200}
    )
    body = pose.people[0].body
    assert body[BODY["neck"], 0] == 10
    assert body[BODY["right_hip"], 0] == 90  # BODY_25 has the mid-hip at 8
    assert body[BODY["left_ear"], 0] == 180
    assert pose.people[0].face is None and pose.people[0].left_hand is None


def test_zero_confidence_points_are_missing_and_68_point_faces_get_no_pupils():
    body = [5.0, 6.0, 0.0] * 18
    face = [1.0, 2.0, 0.8] * 68
    pose = pose_from_openpose_json(
        {"people": [{"pose_keypoints_2d": body, "face_keypoints_2d": face}], "canvas_width": 10, "canvas_height": 10}
    )
    assert not pose.people[0].body.any()
    assert pose.people[0].face.shape == (70, 3) and pose.people[0].face[68:].sum() == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"canvas_width": 5, "canvas_height": 5}, "'people' must be a list"),
        ({"people": []}, "'canvas_width' is missing"),
        ({"people": [], "canvas_width": 0, "canvas_height": 5}, "between 1 and"),
        ({"people": [], "canvas_width": "wide", "canvas_height": 5}, "whole number"),
        ({"people": ["x"], "canvas_width": 5, "canvas_height": 5}, r"people\[0\] must be an object"),
        (
            {"people": [{"pose_keypoints_2d": [1, 2, 3, 4]}], "canvas_width": 5, "canvas_height": 5},
            r"people\[0\].pose_keypoints_2d has 4 numbers; expected 54 or 75",
        ),
        (
            {"people": [{"hand_left_keypoints_2d": ["a"] * 63}], "canvas_width": 5, "canvas_height": 5},
            "flat list of numbers",
        ),
    ],
)
def test_malformed_json_says_what_is_wrong(data, message):
    with pytest.raises(InvalidRequestError, match=message) as caught:
        pose_from_openpose_json(data)
    assert caught.value.status_code == 400
