"""OpenPose JSON in and out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd3pose.errors import InvalidRequestError
from sd3pose.pose import build_control_image, pose_from_openpose_json, pose_to_openpose_json, render_pose
from sd3pose.pose.keypoints import BODY
from sd3pose.request import PoseMode, ResizeMode


def test_round_trip_of_a_detected_pose_renders_the_same_map(astronaut_pose):
    text = json.dumps(pose_to_openpose_json(astronaut_pose))
    data = json.loads(text)
    assert set(data["people"][0]) == {
        "pose_keypoints_2d",
        "hand_left_keypoints_2d",
        "hand_right_keypoints_2d",
        "face_keypoints_2d",
    }
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


# A standing figure as the ControlNet OpenPose preprocessors write it: x / canvas_width, y / canvas_height.
NORMALISED_BODY = [
    0.5,
    0.2,
    1,
    0.5,
    0.3,
    1,
    0.4,
    0.3,
    1,
    0.35,
    0.45,
    1,
    0.33,
    0.6,
    1,
    0.6,
    0.3,
    1,
    0.65,
    0.45,
    1,
    0.67,
    0.6,
    1,
    0.45,
    0.6,
    1,
    0.45,
    0.8,
    1,
    0.45,
    0.95,
    1,
    0.55,
    0.6,
    1,
    0.55,
    0.8,
    1,
    0.55,
    0.95,
    1,
    0.48,
    0.18,
    1,
    0.52,
    0.18,
    1,
    0.46,
    0.19,
    1,
    0.54,
    0.19,
    1,
]
NORMALISED_HAND = [v for i in range(21) for v in (0.33 + 0.002 * i, 0.6 + 0.003 * i, 0.9)]


def _document(body: list[float], hand: list[float], width: int, height: int) -> dict:
    return {
        "people": [{"pose_keypoints_2d": body, "hand_left_keypoints_2d": hand, "face_keypoints_2d": None}],
        "canvas_width": width,
        "canvas_height": height,
    }


def _in_pixels(values: list[float], width: int, height: int) -> list[float]:
    return [v * (width if i % 3 == 0 else height if i % 3 == 1 else 1) for i, v in enumerate(values)]


def _drawn_box(document: dict) -> tuple[int, int, int, int]:
    result = build_control_image(
        None, document, mode=PoseMode.auto, parts=["body", "hands"], width=512, height=768, resize_mode=ResizeMode.crop
    )
    ys, xs = np.nonzero(np.asarray(result.image).sum(axis=2))
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_normalised_coordinates_from_controlnet_preprocessors_are_scaled_to_the_canvas():
    normalised = _document(NORMALISED_BODY, NORMALISED_HAND, 512, 768)
    pixels = _document(_in_pixels(NORMALISED_BODY, 512, 768), _in_pixels(NORMALISED_HAND, 512, 768), 512, 768)
    box = _drawn_box(normalised)
    assert box[2] - box[0] > 100 and box[3] - box[1] > 400  # a whole figure, not a speck in pixels 0-5
    np.testing.assert_allclose(box, _drawn_box(pixels), atol=2)
    pose = pose_from_openpose_json(normalised)
    np.testing.assert_allclose(pose.people[0].body[BODY["nose"]], (256, 153.6, 1))
    np.testing.assert_allclose(
        pose.people[0].left_hand[:, :2], np.reshape(_in_pixels(NORMALISED_HAND, 512, 768), (21, 3))[:, :2]
    )


def test_pixel_coordinates_are_left_as_they_are():
    body = _in_pixels(NORMALISED_BODY, 512, 768)
    pose = pose_from_openpose_json(_document(body, [], 512, 768))
    np.testing.assert_array_equal(pose.people[0].body, np.reshape(body, (18, 3)))
    # On a canvas of a few pixels, points within 0-1 are just pixels.
    tiny = [0.5, 1.0, 1.0] + [0.0] * 51
    assert pose_from_openpose_json(_document(tiny, [], 2, 2)).people[0].body[0].tolist() == [0.5, 1.0, 1.0]


def _far_point_document() -> dict:
    body = [0.0] * 54
    body[0:3] = [256, 100, 1]
    body[3:6] = [3e8, 200, 1]  # an editor left the neck far off the canvas
    return {"people": [{"pose_keypoints_2d": body}], "canvas_width": 512, "canvas_height": 512}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"people": [], "canvas_width": 1e400, "canvas_height": 512}',
            r"'canvas_width' must be a finite whole number of pixels \(got inf\)",
        ),
        (
            '{"people": [], "canvas_width": 512, "canvas_height": NaN}',
            r"'canvas_height' must be a finite whole number of pixels \(got nan\)",
        ),
        (
            '{"people": [{"pose_keypoints_2d": [1e400]}], "canvas_width": 512, "canvas_height": 512}',
            r"people\[0\].pose_keypoints_2d contains inf; every x, y and confidence must be a finite number",
        ),
        (
            '{"people": [{"face_keypoints_2d": [NaN]}], "canvas_width": 512, "canvas_height": 512}',
            r"people\[0\].face_keypoints_2d contains nan",
        ),
        (
            json.dumps(_far_point_document()),
            r"people\[0\].pose_keypoints_2d has a point at \(3e\+08, 200\), more than 16 canvas sides outside the "
            r"512x512 canvas",
        ),
    ],
)
def test_non_finite_and_absurd_numbers_are_refused_with_a_400(text, message):
    # Python's json reads 1e400 as inf and accepts NaN; unchecked, these end in OverflowError,
    # ValueError or a cv2 TypeError (HTTP 500).
    with pytest.raises(InvalidRequestError, match=message) as caught:
        build_control_image(
            None,
            json.loads(text),
            mode=PoseMode.auto,
            parts=["body"],
            width=512,
            height=512,
            resize_mode=ResizeMode.crop,
        )
    assert caught.value.status_code == 400
