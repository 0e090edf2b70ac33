"""`sd3pose pose IMAGE --output ... --json ... --parts ...`."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from sd3pose.cli import app
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
    assert "not a readable image" in result.output and "Traceback" not in result.output

    photo = tmp_path / "coffee.png"
    coffee.save(photo)
    result = CliRunner().invoke(app, ["pose", str(photo), "--output", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "no person found in the image" in result.output
    assert not (tmp_path / "x.png").exists()
