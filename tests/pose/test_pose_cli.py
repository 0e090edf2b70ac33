"""`sd3pose pose IMAGE --output ... --json ... --parts ...`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from sd3pose.cli import app
from sd3pose.cli.pose import open_photo
from sd3pose.errors import ImageInputError
from sd3pose.images import load_image_bytes
from sd3pose.pose.keypoints import BODY


def test_pose_command_writes_map_and_json_from_a_rotated_phone_photo(tmp_path, astronaut):
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: "rotate 90 degrees counter-clockwise to view"
    astronaut.transpose(Image.Transpose.ROTATE_270).save(photo, quality=92, exif=exif.tobytes())
    skeleton, keypoints = tmp_path / "skeleton.png", tmp_path / "keypoints.json"
    result = CliRunner().invoke(
        app, ["pose", str(photo), "--output", str(skeleton), "--json", str(keypoints), "--parts", "body,face"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(keypoints.read_text())
    assert (data["canvas_width"], data["canvas_height"]) == (512, 512)
    assert len(data["people"]) == 1
    body = np.array(data["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    nose, left_shoulder = body[BODY["nose"]], body[BODY["left_shoulder"]]
    assert abs(nose[0] - 222) < 15 and abs(nose[1] - 126) < 15  # upright: EXIF applied
    assert left_shoulder[1] > nose[1]
    assert data["people"][0]["hand_left_keypoints_2d"] == []  # hands not asked for
    with Image.open(skeleton) as image:
        assert image.size == (512, 512) and image.mode == "RGB"
        pixels = np.asarray(image)
    assert (pixels == 255).all(axis=2).any()  # face dots drawn


def test_pose_command_reports_bad_input_in_one_line(tmp_path, coffee):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    result = CliRunner().invoke(app, ["pose", str(not_image), "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "notes.txt: image could not be decoded" in result.output and "Traceback" not in result.output

    photo = tmp_path / "coffee.png"
    coffee.save(photo)
    result = CliRunner().invoke(app, ["pose", str(photo), "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no person found in the image" in result.output
    assert not (tmp_path / "x.png").exists()


def test_a_16_bit_greyscale_photo_opens_like_its_8_bit_version(tmp_path):
    camera8 = data.camera()
    photo8, photo16 = tmp_path / "camera8.png", tmp_path / "camera16.png"
    Image.fromarray(camera8).save(photo8)
    Image.fromarray(camera8.astype(np.uint16) * 257).save(photo16)  # full 16-bit range, same picture
    with Image.open(photo16) as stored:
        assert stored.mode.startswith("I")  # really a 16-bit file
    opened16, opened8 = np.asarray(open_photo(photo16)), np.asarray(open_photo(photo8))
    assert opened16.shape == (512, 512, 3)
    assert (opened16 == 255).all(axis=2).mean() < 0.01  # not clipped to white
    np.testing.assert_array_equal(opened16, opened8)
    # The same decoding as the API's.
    np.testing.assert_array_equal(opened16, np.asarray(load_image_bytes(photo16.read_bytes())))


def test_open_photo_names_a_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="could not read the image file .*missing.png.*; check the path"):
        open_photo(tmp_path / "missing.png")
