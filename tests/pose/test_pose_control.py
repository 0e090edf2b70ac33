"""The request step "input -> control image": modes, pose-map recognition, resize modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sd3pose.errors import InvalidRequestError
from sd3pose.pose import build_control_image, looks_like_pose_map, pose_to_openpose_json, render_pose
from sd3pose.pose.fit import Fit
from sd3pose.pose.keypoints import BODY
from sd3pose.request import PoseMode, ResizeMode


def _jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_pose_maps_are_recognised_and_photos_are_not(astronaut_pose, astronaut, camera, coffee, brick):
    rendered = render_pose(astronaut_pose, 512, 512)
    assert looks_like_pose_map(rendered)
    assert looks_like_pose_map(render_pose(astronaut_pose, 512, 512, parts=["body"]))
    assert looks_like_pose_map(_jpeg(rendered))  # pose maps travel as JPEG too
    assert looks_like_pose_map(rendered.resize((300, 200)))
    for photo in (astronaut, camera, coffee, brick):
        assert not looks_like_pose_map(photo)
    assert not looks_like_pose_map(Image.new("RGB", (64, 64)))  # nothing drawn
    dark = (np.asarray(astronaut, dtype=np.float32) * 0.25).astype(np.uint8)  # an underexposed photo
    assert not looks_like_pose_map(Image.fromarray(dark))


def test_auto_uses_a_rendered_map_as_is_and_detects_a_photo(detector, astronaut, astronaut_pose):
    pose_map = render_pose(astronaut_pose, 512, 512)
    kept = build_control_image(
        pose_map,
        None,
        mode=PoseMode.auto,
        parts=["body", "hands", "face"],
        width=512,
        height=512,
        resize_mode=ResizeMode.crop,
        detector=detector,
    )
    assert not kept.detected and kept.pose is None
    assert np.array_equal(np.asarray(kept.image), np.asarray(pose_map))

    detected = build_control_image(
        astronaut,
        None,
        mode=PoseMode.auto,
        parts=["body", "hands", "face"],
        width=512,
        height=512,
        resize_mode=ResizeMode.crop,
        detector=detector,
    )
    assert detected.detected and len(detected.pose.people) == 1
    assert np.array_equal(np.asarray(detected.image), np.asarray(pose_map))


def test_mode_none_fits_the_input_and_detect_sees_no_person_in_a_map(detector, astronaut, astronaut_pose):
    none = build_control_image(
        astronaut,
        None,
        mode=PoseMode.none,
        parts=["body"],
        width=256,
        height=128,
        resize_mode=ResizeMode.stretch,
        detector=detector,
    )
    assert none.image.size == (256, 128) and none.image.mode == "RGB" and not none.detected
    expected = astronaut.resize((256, 128), Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(none.image, np.int16) - np.asarray(expected, np.int16)).mean() < 6


def test_parts_limit_both_the_map_and_the_returned_keypoints(detector, astronaut):
    result = build_control_image(
        astronaut,
        None,
        mode=PoseMode.detect,
        parts=["body"],
        width=512,
        height=512,
        resize_mode=ResizeMode.crop,
        detector=detector,
    )
    person = result.pose.people[0]
    assert person.face is None and person.left_hand is None
    assert person.body[BODY["nose"], 2] > 0
    pixels = np.asarray(result.image).reshape(-1, 3)
    assert not np.all(pixels == 255, axis=1).any()  # no white face dots


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_keypoints_and_images_are_fitted_the_same_way(astronaut_pose, mode):
    """Render at the source size then fit the image, or fit the keypoints then render: same place."""
    width, height = 768, 384
    via_image = Fit.between(512, 512, width, height, mode).image(render_pose(astronaut_pose, 512, 512, ["body"]))
    result = build_control_image(
        None,
        pose_to_openpose_json(astronaut_pose),
        mode=PoseMode.auto,
        parts=["body"],
        width=width,
        height=height,
        resize_mode=mode,
    )
    assert result.image.size == (width, height) and result.pose.width == width
    a = np.asarray(via_image).any(axis=2)
    b = np.asarray(result.image).any(axis=2)
    assert a.sum() > 1000
    # Where something is drawn: the drawn areas overlap almost entirely (only stroke widths differ).
    overlap = (a & b).sum() / min(a.sum(), b.sum())
    assert overlap > 0.8, overlap
    centre_a = np.argwhere(a).mean(axis=0)
    centre_b = np.argwhere(b).mean(axis=0)
    assert np.abs(centre_a - centre_b).max() < 4
    nose = result.pose.people[0].body[BODY["nose"]]
    fit = Fit.between(512, 512, width, height, mode)
    source = astronaut_pose.people[0].body[BODY["nose"]]
    assert nose[0] == pytest.approx(source[0] * fit.scale_x + fit.offset_x)
    assert nose[1] == pytest.approx(source[1] * fit.scale_y + fit.offset_y)


def test_fill_pads_with_black_and_crop_cuts_the_sides(astronaut):
    fill = np.asarray(Fit.between(512, 512, 256, 128, ResizeMode.fill).image(astronaut))
    assert fill.shape == (128, 256, 3)
    assert not fill[:, :60].any() and not fill[:, -60:].any() and fill[:, 64:192].any()
    crop = Fit.between(512, 512, 256, 128, ResizeMode.crop)
    assert crop.scale_x == crop.scale_y == 0.5 and crop.offset_y == -64


def test_missing_input_and_bad_parts_are_clear_errors():
    with pytest.raises(InvalidRequestError, match="send an image"):
        build_control_image(
            None, None, mode=PoseMode.auto, parts=["body"], width=64, height=64, resize_mode=ResizeMode.crop
        )
    with pytest.raises(InvalidRequestError, match="unknown pose part"):
        build_control_image(
            Image.new("RGB", (8, 8)),
            None,
            mode=PoseMode.none,
            parts=["tail"],
            width=64,
            height=64,
            resize_mode=ResizeMode.crop,
        )


def test_large_pose_map_shrinks_without_losing_its_lines(astronaut_pose):
    big = render_pose(astronaut_pose, 2048, 2048, ["body"])
    fitted = np.asarray(Fit.between(2048, 2048, 256, 256, ResizeMode.stretch).image(big), dtype=np.float32)
    reference = np.asarray(big.resize((256, 256), Image.Resampling.BOX), dtype=np.float32)
    assert np.abs(fitted - reference).mean() < 2.0  # a proper area-averaged shrink, not sparse sampling
    assert looks_like_pose_map(Image.fromarray(fitted.astype(np.uint8)))
