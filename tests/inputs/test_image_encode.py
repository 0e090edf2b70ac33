"""Output encoding: each format decodes back to the image (exactly for PNG), with the right media type."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from input_helpers import astronaut, pixels
from PIL import Image

from sd3pose.errors import InvalidRequestError
from sd3pose.images import encode_image, image_to_base64, image_to_data_uri, load_image, media_type
from sd3pose.request import OutputFormat

# Mean absolute error after a quality-95 round trip of the small photo (see test_image_decode).
LOSSY_MEAN_TOLERANCE = 6.0


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return astronaut()


@pytest.mark.parametrize(
    ("fmt", "pillow_format", "mime"),
    [
        (OutputFormat.jpeg, "JPEG", "image/jpeg"),
        (OutputFormat.png, "PNG", "image/png"),
        (OutputFormat.webp, "WEBP", "image/webp"),
        ("jpg", "JPEG", "image/jpeg"),
        ("PNG", "PNG", "image/png"),
        (" webp ", "WEBP", "image/webp"),
    ],
)
def test_each_format_encodes_what_its_media_type_says(photo: Image.Image, fmt, pillow_format: str, mime: str) -> None:
    data = encode_image(photo, fmt)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == pillow_format
    assert Image.MIME[decoded.format] == mime == media_type(fmt)
    error = np.abs(pixels(decoded.convert("RGB")) - pixels(photo)).mean()
    if pillow_format == "PNG":
        assert error == 0
    else:
        assert error < LOSSY_MEAN_TOLERANCE


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_trades_size_for_fidelity(photo: Image.Image, fmt: str) -> None:
    low, high = encode_image(photo, fmt, quality=30), encode_image(photo, fmt, quality=95)
    assert len(low) < len(high)

    def error(data: bytes) -> float:
        return float(np.abs(pixels(Image.open(io.BytesIO(data)).convert("RGB")) - pixels(photo)).mean())

    assert error(low) > error(high)


def test_rgba_keeps_alpha_in_png_and_is_composited_on_black_in_jpeg() -> None:
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))
    assert Image.open(io.BytesIO(encode_image(rgba, "png"))).mode == "RGBA"
    jpeg = Image.open(io.BytesIO(encode_image(rgba, "jpeg")))
    assert jpeg.mode == "RGB"
    assert pixels(jpeg).max() <= 2  # transparent -> black, up to JPEG noise


@pytest.mark.parametrize("fmt", ["gif", "tiff", ""])
def test_an_unknown_format_is_a_clear_400(photo: Image.Image, fmt: str) -> None:
    expected = f"output_format '{fmt}' is not supported; use one of jpeg, png, webp"
    with pytest.raises(InvalidRequestError, match=expected):
        encode_image(photo, fmt)
    with pytest.raises(InvalidRequestError) as info:
        media_type(fmt)
    assert info.value.status_code == 400


@pytest.mark.parametrize("quality", [0, 101])
def test_quality_out_of_range_is_refused(photo: Image.Image, quality: int) -> None:
    with pytest.raises(InvalidRequestError, match="quality must be between 1 and 100"):
        encode_image(photo, "jpeg", quality=quality)


def test_base64_and_data_uri_round_trip_through_load_image(photo: Image.Image) -> None:
    text = image_to_base64(photo, "png")
    assert base64.b64decode(text) == encode_image(photo, "png")
    uri = image_to_data_uri(photo, "webp", quality=90)
    assert uri.startswith("data:image/webp;base64,")
    assert np.array_equal(pixels(load_image(text)), pixels(photo))
    assert np.abs(pixels(load_image(uri)) - pixels(photo)).mean() < LOSSY_MEAN_TOLERANCE
