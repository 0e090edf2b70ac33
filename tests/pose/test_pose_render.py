"""Rendering in the OpenPose / ControlNet convention: colours, limb order, parts, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from sd3pose.errors import InvalidRequestError
from sd3pose.pose import Person, Pose, render_pose
from sd3pose.pose.keypoints import BODY
from sd3pose.pose.render import BODY_COLORS, BODY_LIMBS, HAND_EDGE_COLORS


def _standing(width: int = 512, height: int = 512) -> Pose:
    """A front-facing figure with arms out, in a 512x512 frame scaled to width x height."""
    points = {
        "nose": (256, 100),
        "neck": (256, 160),
        "right_shoulder": (196, 160),
        "right_elbow": (136, 220),
        "right_wrist": (96, 300),
        "left_shoulder": (316, 160),
        "left_elbow": (376, 220),
        "left_wrist": (416, 300),
        "right_hip": (221, 300),
        "right_knee": (211, 390),
        "right_ankle": (206, 470),
        "left_hip": (291, 300),
        "left_knee": (301, 390),
        "left_ankle": (306, 470),
        "right_eye": (241, 88),
        "left_eye": (271, 88),
        "right_ear": (226, 96),
        "left_ear": (286, 96),
    }
    body = np.zeros((18, 3))
    for name, (x, y) in points.items():
        body[BODY[name]] = (x * width / 512, y * height / 512, 1.0)
    # A spread hand below the right wrist: five fingers of four joints, fanning downwards.
    hand = np.ones((21, 3))
    hand[0, :2] = (96, 300)
    for finger in range(5):
        angle = np.radians(40 + 25 * finger)
        for joint in range(4):
            reach = 25 * (joint + 1)
            hand[1 + 4 * finger + joint, :2] = (96 + np.cos(angle) * reach, 300 + np.sin(angle) * reach)
    hand[:, :2] *= (width / 512, height / 512)
    face = np.column_stack([np.linspace(236, 276, 70), np.full(70, 110.0), np.ones(70)])
    face[:, :2] *= (width / 512, height / 512)
    return Pose([Person(body, right_hand=hand, face=face)], width, height)


def _pixel(image, x, y) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[int(round(y)), int(round(x))])


def test_limbs_and_joints_use_the_openpose_palette():
    pose = _standing()
    image = render_pose(pose, 512, 512, parts=["body"])
    body = pose.people[0].body
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS, strict=False):
        # A point on the limb a third of the way along: away from both joint dots.
        x, y = body[a, :2] + (body[b, :2] - body[a, :2]) * 0.45
        if np.hypot(*(body[b, :2] - body[a, :2])) < 30:
            continue  # head limbs are too short to sample clear of the dots
        assert _pixel(image, x, y) == tuple(int(c * 0.6) for c in color), (a, b)
    for index, color in enumerate(BODY_COLORS):
        assert _pixel(image, *body[index, :2]) == color, index
    assert _pixel(image, 10, 10) == (0, 0, 0)
    # The person's right arm is orange-yellow, the left arm green: not mirrored.
    assert _pixel(image, *body[BODY["right_elbow"], :2]) == (255, 255, 0)
    assert _pixel(image, *body[BODY["left_elbow"], :2]) == (0, 255, 0)
    assert _pixel(image, 226, 160) == (153, 0, 0)  # neck -> right shoulder: dimmed red


def test_parts_switch_body_hands_and_face():
    pose = _standing()
    colours = {}
    for parts in (["body"], ["hands"], ["face"], ["body", "hands", "face"]):
        pixels = np.asarray(render_pose(pose, 512, 512, parts=parts)).reshape(-1, 3)
        colours[tuple(parts)] = {tuple(p) for p in pixels[pixels.any(axis=1)]}
    assert colours[("face",)] == {(255, 255, 255)}
    assert (0, 0, 255) in colours[("hands",)]  # hand joints
    assert set(HAND_EDGE_COLORS[1:4]) <= colours[("hands",)]
    assert (255, 255, 255) not in colours[("body",)] and (0, 0, 255) in colours[("body",)]
    assert colours[("body",)] | colours[("hands",)] | colours[("face",)] >= colours[("body", "hands", "face")]
    with pytest.raises(InvalidRequestError, match="unknown pose part"):
        render_pose(pose, 64, 64, parts=["feet"])


def test_missing_points_are_not_drawn():
    pose = _standing()
    pose.people[0].body[BODY["left_elbow"]] = 0
    image = render_pose(pose, 512, 512, parts=["body"])
    assert _pixel(image, 376, 220) == (0, 0, 0)
    assert _pixel(image, 346, 190) == (0, 0, 0)  # the upper-arm limb went with it


def test_drawn_at_the_generation_size_with_strokes_scaled():
    small = np.asarray(render_pose(_standing(), 512, 512, parts=["body"]))
    large_image = render_pose(_standing(), 1024, 1024, parts=["body"])
    large = np.asarray(large_image)
    assert large_image.size == (1024, 1024)
    # The same figure twice as large: twice the drawn area in each direction, four times the pixels.
    ratio = large.any(axis=2).sum() / small.any(axis=2).sum()
    assert 3.6 < ratio < 4.4
    # A 1024 render of the 512 pose (keypoints rescaled) equals rendering the 1024 pose.
    rescaled = np.asarray(render_pose(_standing(), 1024, 1024, parts=["body"]))
    assert np.array_equal(rescaled, large)
    # Limb thickness: the vertical upper leg's horizontal cross-section, 2 x stickwidth at 512.
    row = small[345]
    run = np.flatnonzero(np.all(row == tuple(int(c * 0.6) for c in BODY_COLORS[7]), axis=1))
    assert 6 <= len(run) <= 10


@pytest.mark.parametrize("far", [1e5, 3e8, float("inf")])
def test_points_too_far_outside_the_map_are_refused_not_overflowed(far):
    # cv2 takes 32-bit coordinates: ~1.34e8 pixels would end in a TypeError (HTTP 500).
    pose = _standing()
    pose.people[0].body[BODY["left_wrist"], 0] = far
    with pytest.raises(InvalidRequestError, match="more than 64 map sides outside the 512x512 pose map") as caught:
        render_pose(pose, 512, 512)
    assert caught.value.status_code == 400


def test_a_limb_reaching_out_of_the_frame_is_still_drawn():
    pose = _standing()
    pose.people[0].body[BODY["left_wrist"], :2] = (5000, 300)  # ten map sides off to the right
    image = np.asarray(render_pose(pose, 512, 512, ["body"]))
    assert image[215:230, 500:512].any()  # the forearm (from the elbow at 376, 220) runs to the edge
