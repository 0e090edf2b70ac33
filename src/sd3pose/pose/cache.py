"""Pose detection cached by image content: the same photo sent again skips MediaPipe entirely.

Re-rolling seeds or trying prompts on one photo is the common pattern, and detection (~0.1-0.5 s
on the CPU) is then the slowest fixed cost of a request. The key is the decoded pixels (mode, size,
a 128-bit BLAKE2 digest), so a re-encoded but identical image hits too.
"""

from __future__ import annotations

import copy
import logging

from PIL import Image

from sd3pose.cache import LruCache, image_digest
from sd3pose.pose.detect import PoseDetector
from sd3pose.pose.keypoints import Pose

log = logging.getLogger(__name__)

DEFAULT_POSE_CACHE_SIZE = 64


class CachedPoseDetector:
    """Wraps a PoseDetector; `detect` returns a copy of the cached keypoints for an image seen before."""

    def __init__(self, detector: PoseDetector, maxsize: int = DEFAULT_POSE_CACHE_SIZE) -> None:
        self.detector = detector
        self.cache: LruCache[Pose] = LruCache(maxsize)

    def detect(self, image: Image.Image) -> Pose:
        key = image_digest(image)
        before = self.cache.hits
        pose = self.cache.get_or_compute(key, lambda: self.detector.detect(image))
        if self.cache.hits > before:
            log.debug("pose detection: cache hit for a %dx%d image", *image.size)
        # A copy, so a caller that edits the keypoints cannot change what later requests get.
        return copy.deepcopy(pose)

    def close(self) -> None:
        self.cache.clear()
        self.detector.close()
