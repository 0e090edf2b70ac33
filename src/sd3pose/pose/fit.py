"""Fitting an input of one size into the output frame (resize_mode), for images and keypoints alike.

One affine map x' = x*scale_x + offset_x (same for y) describes every mode, so a pose map and
the keypoints it was drawn from always stay aligned:
- crop: scale to cover the frame, centre-crop;
- fill: scale to fit inside the frame, pad with black;
- stretch: scale each axis on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from sd3pose.pose.keypoints import Pose
from sd3pose.request import ResizeMode


@dataclass(frozen=True)
class Fit:
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    @classmethod
    def between(cls, src_width: int, src_height: int, width: int, height: int, mode: ResizeMode | str) -> Fit:
        mode = ResizeMode(mode)
        if mode is ResizeMode.stretch:
            return cls(width / src_width, height / src_height, 0.0, 0.0, width, height)
        pick = max if mode is ResizeMode.crop else min
        scale = pick(width / src_width, height / src_height)
        return cls(scale, scale, (width - src_width * scale) / 2, (height - src_height * scale) / 2, width, height)

    def pose(self, pose: Pose) -> Pose:
        return pose.mapped(self.scale_x, self.scale_y, self.offset_x, self.offset_y, self.width, self.height)

    def image(self, image: Image.Image) -> Image.Image:
        """The image resampled into the frame; areas outside the source are black."""
        if image.size == (self.width, self.height):
            return image.copy()
        # PIL's affine transform maps output pixels back to input pixels: invert our map.
        inverse = (
            1 / self.scale_x,
            0.0,
            -self.offset_x / self.scale_x,
            0.0,
            1 / self.scale_y,
            -self.offset_y / self.scale_y,
        )
        downscale = min(self.scale_x, self.scale_y) < 1
        # Reduce first when shrinking a lot, or the affine (bilinear) sampling aliases thin pose lines.
        if downscale:
            factor = int(1 / max(self.scale_x, self.scale_y))
            if factor >= 2:
                image = image.reduce(factor)
                inverse = (
                    inverse[0] / factor,
                    0.0,
                    inverse[2] / factor,
                    0.0,
                    inverse[4] / factor,
                    inverse[5] / factor,
                )
        return image.transform(
            (self.width, self.height),
            Image.Transform.AFFINE,
            inverse,
            resample=Image.Resampling.BILINEAR,
            fillcolor=(0, 0, 0),
        )
