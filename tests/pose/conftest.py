"""Shared fixtures: the MediaPipe models load once per test session; real photos from scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from sd3pose.pose.detect import PoseDetector, get_detector


def _rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array).convert("RGB")


@pytest.fixture(scope="session")
def detector() -> PoseDetector:
    return get_detector()


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    return _rgb(data.astronaut())


@pytest.fixture(scope="session")
def camera() -> Image.Image:
    return _rgb(data.camera())


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    return _rgb(data.coffee())


@pytest.fixture(scope="session")
def brick() -> Image.Image:
    return _rgb(data.brick())


@pytest.fixture(scope="session")
def astronaut_pose(detector, astronaut):
    return detector.detect(astronaut)


@pytest.fixture(scope="session")
def side_by_side():
    def join(left: Image.Image, right: Image.Image) -> Image.Image:
        out = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
        out.paste(left, (0, 0))
        out.paste(right, (left.width, 0))
        return out

    return join
