"""Detection on real photos (scikit-image), against hand-labelled positions.

Labels were read off the photos by eye (pixels of the 512x512 originals); tolerances are a few
times the labelling uncertainty and well below the distances that would mean a wrong body part.
"""

from __future__ import annotations

import io
import math
import threading

import numpy as np
import pytest
from PIL import Image, ImageOps

from sd3pose.errors import NoPersonFoundError
from sd3pose.pose import build_control_image, get_detector
from sd3pose.pose.detect import MAX_WINDOWS, _windows
from sd3pose.pose.keypoints import BODY
from sd3pose.request import PoseMode, ResizeMode

# Astronaut (Eileen Collins), facing the camera: her right is the image's left.
ASTRONAUT_FACE_BOX = (170, 50, 295, 190)
ASTRONAUT = {
    "nose": ((222, 126), 15),
    "right_eye": ((202, 104), 15),
    "left_eye": ((245, 104), 15),
    "right_shoulder": ((105, 245), 45),
    "left_shoulder": ((320, 255), 45),
    "right_wrist": ((145, 488), 40),  # the purple glove at the bottom edge
}
# Cameraman, in profile looking right through a camera.
CAMERA_NOSE = ((250, 163), 20)
CAMERA_RIGHT_EAR = ((188, 142), 25)


def _point(person, name: str) -> tuple[float, float, float]:
    x, y, confidence = person.body[BODY[name]]
    return float(x), float(y), float(confidence)


def _assert_near(person, name: str, label: tuple[float, float], tolerance: float, offset=(0, 0), scale=1.0) -> None:
    x, y, confidence = _point(person, name)
    assert confidence > 0, f"{name} not detected"
    expected = (label[0] * scale + offset[0], label[1] * scale + offset[1])
    distance = math.dist((x, y), expected)
    assert distance <= tolerance * scale, f"{name} at ({x:.0f}, {y:.0f}), {distance:.0f} px from {expected}"


# The glove is half out of the frame: the wrist's visibility is near the cut-off, so only the plain
# PNG test requires it; the others check the points MediaPipe is sure of.
CLEAR = ("nose", "right_eye", "left_eye", "right_shoulder", "left_shoulder")


def _check_astronaut(person, offset=(0, 0), scale=1.0, names=CLEAR) -> None:
    for name in names:
        label, tolerance = ASTRONAUT[name]
        _assert_near(person, name, label, tolerance, offset, scale)


def test_astronaut_keypoints_land_on_the_hand_labels(astronaut_pose):
    assert astronaut_pose.width == 512 and astronaut_pose.height == 512
    assert len(astronaut_pose.people) == 1
    person = astronaut_pose.people[0]
    _check_astronaut(person, names=tuple(ASTRONAUT))
    nose_x, nose_y, _ = _point(person, "nose")
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    assert x0 <= nose_x <= x1 and y0 <= nose_y <= y1
    # Shoulders below the nose; her right side on the image's left (not swapped).
    for side in ("right_shoulder", "left_shoulder"):
        assert _point(person, side)[1] > nose_y + 60
    assert _point(person, "right_shoulder")[0] < nose_x < _point(person, "left_shoulder")[0]
    assert _point(person, "right_eye")[0] < nose_x < _point(person, "left_eye")[0]
    # The neck is the shoulder midpoint.
    neck = person.body[BODY["neck"]]
    shoulders = person.body[[BODY["right_shoulder"], BODY["left_shoulder"]], :2].mean(axis=0)
    np.testing.assert_allclose(neck[:2], shoulders, atol=1e-6)
    # Her left wrist is hidden behind the helmet and the hips are below the frame: reported missing.
    assert _point(person, "left_wrist")[2] == 0
    assert _point(person, "right_hip")[2] == 0


def test_astronaut_face_points_are_laid_out_like_a_face(astronaut_pose):
    face = astronaut_pose.people[0].face
    assert face is not None and face.shape == (70, 3)
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    assert np.all((face[:, 0] >= x0) & (face[:, 0] <= x1) & (face[:, 1] >= y0) & (face[:, 1] <= y1))
    nose_tip, chin, mouth_bottom = face[30], face[8], face[57]
    assert face[19, 1] < face[68, 1] < nose_tip[1] < mouth_bottom[1] < chin[1]  # brow, pupil, nose, lip, chin
    assert face[0, 0] < face[36, 0] < face[39, 0] < face[42, 0] < face[45, 0] < face[16, 0]  # jaw and eye corners
    assert face[48, 0] < face[51, 0] < face[54, 0]  # mouth corners around the top lip
    body = astronaut_pose.people[0].body
    assert math.dist(face[68, :2], body[BODY["right_eye"], :2]) < 12  # pupils agree with the body model
    assert math.dist(face[69, :2], body[BODY["left_eye"], :2]) < 12


def test_cameraman_in_profile(detector, camera):
    pose = detector.detect(camera)
    assert len(pose.people) == 1
    person = pose.people[0]
    _assert_near(person, "nose", *CAMERA_NOSE)
    _assert_near(person, "right_ear", *CAMERA_RIGHT_EAR)
    # Looking right: the nose is right of the ear; the shoulder is below the ear.
    assert _point(person, "nose")[0] > _point(person, "right_ear")[0] + 20
    assert _point(person, "right_shoulder")[1] > _point(person, "right_ear")[1]


@pytest.mark.parametrize("order", ["camera+astronaut", "astronaut+astronaut"])
def test_two_photos_side_by_side_give_two_people(detector, astronaut, camera, side_by_side, order):
    left = camera if order.startswith("camera") else astronaut
    pose = detector.detect(side_by_side(left, astronaut))
    assert len(pose.people) == 2
    people = sorted(pose.people, key=lambda p: _point(p, "nose")[0])
    if left is camera:
        _assert_near(people[0], "nose", *CAMERA_NOSE)
    else:
        _check_astronaut(people[0])
    _check_astronaut(people[1], offset=(512, 0))


@pytest.mark.parametrize("photo", ["coffee", "brick"])
def test_photo_without_a_person(detector, request, photo):
    image = request.getfixturevalue(photo)
    assert detector.detect(image).people == []
    with pytest.raises(NoPersonFoundError) as caught:
        build_control_image(
            image,
            None,
            mode=PoseMode.detect,
            parts=["body"],
            width=256,
            height=256,
            resize_mode=ResizeMode.crop,
            detector=detector,
        )
    assert caught.value.status_code == 400
    assert caught.value.message == (
        "no person found in the image; send a clearer photo, or pose_mode=none for a ready pose map"
    )


def test_exif_rotated_phone_photo_is_upright_before_detection(detector, astronaut):
    # A phone stores the pixels sideways and says "rotate 90 degrees clockwise" (orientation 6).
    sideways = astronaut.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as stored:
        upright = ImageOps.exif_transpose(stored)
    pose = detector.detect(upright)
    assert len(pose.people) == 1
    _check_astronaut(pose.people[0])


def test_large_photo_keypoints_are_in_its_own_pixels(detector, astronaut):
    big = astronaut.resize((1600, 1600), Image.Resampling.BICUBIC)
    pose = detector.detect(big)
    assert (pose.width, pose.height) == (1600, 1600)
    assert len(pose.people) == 1
    _check_astronaut(pose.people[0], scale=1600 / 512)


def test_models_load_once_and_calls_from_threads_agree(detector, astronaut, camera, astronaut_pose):
    assert get_detector() is detector
    detector.detect(camera)  # call history must not matter (MediaPipe's face/hand tracking is off)
    results = [None, None]

    def work(slot: int) -> None:
        results[slot] = detector.detect(astronaut)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for pose in results:
        np.testing.assert_array_equal(pose.people[0].body, astronaut_pose.people[0].body)
        np.testing.assert_array_equal(pose.people[0].face, astronaut_pose.people[0].face)


class _CountingDetector:
    """Stands in for the person-detector graph and counts its runs (each one holds the shared lock)."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def process(self, inputs):
        self.calls += 1
        return self.real.process(inputs)


@pytest.mark.parametrize(
    ("size", "max_runs"),
    [
        ((1024, 1), 0),
        ((4000, 3), 0),
        ((1, 4000), 0),
        ((8000, 64), 0),
        ((1024, 64), 1 + MAX_WINDOWS),
        ((64, 1024), 1 + MAX_WINDOWS),
    ],
)
def test_thin_images_cost_a_bounded_number_of_detector_runs(detector, monkeypatch, size, max_runs):
    # Uncapped, an 85-byte 1024x1 PNG buys 2048 windows per pass: ~27 s holding the shared detector lock.
    counting = _CountingDetector(detector._person_detector)
    monkeypatch.setattr(detector, "_person_detector", counting)
    pose = detector.detect(Image.new("RGB", size, (90, 90, 90)))
    assert pose.people == [] and (pose.width, pose.height) == size
    assert counting.calls <= max_runs
    if max_runs:
        assert counting.calls > 0  # the control: a thin but searchable image is still searched


@pytest.mark.parametrize("size", [(1024, 1), (4000, 3), (1024, 64), (3, 4000), (1536, 512), (1024, 700)])
def test_windows_are_capped_and_still_cover_the_long_side(size):
    whole, *windows = _windows(*size)
    assert whole == (0, 0, *size)
    assert len(windows) <= MAX_WINDOWS
    along = 0 if size[0] > size[1] else 1
    spans = [(w[along], w[along + 2]) for w in windows]
    assert spans[0][0] == 0 and spans[-1][1] == max(size)
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert next_start - start <= (end - start) / 2 + 1  # half overlapping: nobody falls between two
        assert end - start >= min(size)


def test_a_wide_strip_still_gets_square_windows_of_its_height():
    # Below the cap nothing changes: 1536x512 is searched in five 512-pixel squares, half overlapping.
    assert _windows(1536, 512)[1:] == [(i * 256, 0, i * 256 + 512, 512) for i in range(5)]
