"""The glue: output size rules, pose models loaded ahead of the first request, keypoint-only requests."""

from __future__ import annotations

import base64
import io

import pytest
from tiny_jobs import pose_map

from sd3pose.pipeline import Generator, output_size
from sd3pose.pose.openpose_json import pose_from_openpose_json
from sd3pose.request import parse_request


def canvas(width: int, height: int) -> dict:
    return {"canvas_width": width, "canvas_height": height, "people": []}


@pytest.fixture(scope="module")
def generator(tiny_engine) -> Generator:
    return Generator(tiny_engine)


@pytest.mark.parametrize(
    ("source", "extra", "expected"),
    [
        ((400, 100), {}, (256, 64)),  # 4:1 at about the tiny model's native 128x128 pixels, sides multiples of 64
        ((100, 100), {}, (128, 128)),
        ((300, 200), {"width": 96}, (96, 64)),  # one side given: the other follows the input's aspect ratio
        ((300, 200), {"height": 96}, (144, 96)),
        ((300, 200), {"width": 80, "height": 160}, (80, 160)),  # both given: used as they are
    ],
)
def test_output_size_follows_the_input_aspect_ratio(
    generator: Generator, source: tuple[int, int], extra: dict, expected: tuple[int, int]
) -> None:
    request = parse_request({"prompt": "x", "pose_keypoints": canvas(*source), **extra})
    keypoints = pose_from_openpose_json(request.pose_keypoints)
    assert output_size(request, None, keypoints, generator.engine.native_resolution) == expected


def test_warm_up_loads_the_pose_models_before_the_first_request(tiny_engine) -> None:
    fresh = Generator(tiny_engine)
    assert fresh._detector is None  # lazily: a CLI run on a ready pose map never loads mediapipe
    fresh.warm_up()
    assert fresh._detector is not None


def test_a_ready_pose_map_in_auto_mode_never_loads_the_pose_models(tiny_engine) -> None:
    buffer = io.BytesIO()
    pose_map(128, 128).save(buffer, format="PNG")
    fresh = Generator(tiny_engine)
    request = parse_request(
        {
            "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "prompt": "x",
            "num_inference_steps": 1,
            "pose_mode": "auto",
        }
    )
    result = fresh.run(request)
    assert len(result.images) == 1
    assert fresh._detector is None  # auto mode kept the map as it is, so MediaPipe stayed unloaded
