"""Decoding inputs that arrive as text (base64, data: URI, a CLI path) or bytes (an upload).

Photos are scikit-image's astronaut; every expected value is derived from the source image, not
hard-coded. Lossless formats must round-trip exactly; JPEG within a stated tolerance.
"""

from __future__ import annotations

import base64
import io
import struct
import textwrap
import zlib
from pathlib import Path
from urllib.parse import quote_from_bytes

import cv2
import numpy as np
import pytest
from input_helpers import astronaut, encode, pixels
from PIL import Image

from sd3pose.errors import ImageInputError
from sd3pose.images import InputLimits, decode_base64, load_image, load_image_bytes

# Mean absolute error allowed after one JPEG round trip at quality 95 (4:2:0 chroma) of the small,
# busy 96x64 photo, on a 0-255 scale; measured 3.3. A wrong orientation or channel order gives > 30.
JPEG_MEAN_TOLERANCE = 6.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return astronaut()


@pytest.fixture(scope="module")
def png(photo: Image.Image) -> bytes:
    return encode(photo)


# --- base64 and data: URIs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="raw base64"),
        pytest.param(lambda s: "data:image/png;base64," + s, id="data URI"),
        pytest.param(lambda s: "DATA:image/png;BASE64," + s, id="data URI upper case"),
        pytest.param(lambda s: "data:;base64," + s, id="data URI without media type"),
        pytest.param(lambda s: "data:image/jpeg;base64," + s, id="data URI with a wrong media type"),
        pytest.param(lambda s: "\n".join(textwrap.wrap(s, 76)) + "\n", id="wrapped at 76 like base64(1)"),
        pytest.param(lambda s: "data:image/png;base64,\r\n" + "\r\n".join(textwrap.wrap(s, 64)), id="CRLF"),
        pytest.param(lambda s: "  " + " ".join(textwrap.wrap(s, 10)) + "\t ", id="spaces and tabs"),
        pytest.param(lambda s: s.replace("+", "-").replace("/", "_").rstrip("="), id="URL-safe, no padding"),
    ],
)
def test_base64_forms_decode_to_the_original_pixels(photo: Image.Image, png: bytes, wrap) -> None:
    image = load_image(wrap(b64(png)))
    assert image.mode == "RGB"
    assert np.array_equal(pixels(image), pixels(photo))


def test_percent_encoded_data_uri(photo: Image.Image, png: bytes) -> None:
    image = load_image("data:image/png," + quote_from_bytes(png))
    assert np.array_equal(pixels(image), pixels(photo))


def test_too_big_base64_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real_decode = base64.b64decode
    monkeypatch.setattr(base64, "b64decode", lambda data, **kw: decoded.append(len(data)) or real_decode(data, **kw))
    limits = InputLimits(max_bytes=1024 * 1024)
    big = "QUFB" * (1024 * 1024)  # 4 MiB of base64 = 3 MiB of bytes
    for text in (big, "data:image/png;base64," + big, "QUFB" * (1024 * 1024 // 3 + 1)):  # the last: 2 bytes too many
        with pytest.raises(ImageInputError, match=r"; the limit is 1 MB: send a smaller image"):
            load_image(text, limits)
    assert decoded == []
    # The control: the spy does see a decode that is allowed to happen.
    decode_base64("QUFB" * 1024, limits.max_bytes)
    assert decoded == [4096]


def test_the_size_message_names_both_sizes() -> None:
    with pytest.raises(ImageInputError) as info:
        load_image("QUFB" * (31 * 1024 * 1024 // 3), InputLimits())
    assert info.value.message == "image is 31 MB; the limit is 20 MB: send a smaller image"


@pytest.mark.parametrize("text", ["not base64 at all!", "QUFB*QUFB", "QUFBQ", "QQ==QQ=="])
def test_invalid_base64_is_refused(text: str) -> None:
    with pytest.raises(ImageInputError, match="image is not an http\\(s\\) URL, a data: URI or valid base64"):
        load_image(text)


def test_a_data_uri_without_a_comma_is_refused() -> None:
    with pytest.raises(ImageInputError, match="data: URI has no ','"):
        load_image("data:image/png;base64")


@pytest.mark.parametrize("text", ["", "   \n"])
def test_an_empty_image_field_is_refused(text: str) -> None:
    with pytest.raises(ImageInputError, match="image is empty"):
        load_image(text)


# --- what Pillow cannot or must not decode --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"<html><body>hello</body></html>", id="HTML"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", id="EPS (would run Ghostscript)"),
        pytest.param(b"P6\n2 2\n255\n" + bytes(12), id="PPM (not an accepted format)"),
        pytest.param(b"\x00" * 64, id="zeros"),
    ],
)
def test_data_that_is_not_an_accepted_image_format_is_refused(data: bytes) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image(b64(data))
    assert info.value.message == (
        "image could not be decoded (not a JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF file): "
        "send a valid image file, base64-encoded or as a URL"
    )
    assert info.value.status_code == 400


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_a_truncated_file_is_refused(photo: Image.Image, fmt: str) -> None:
    data = encode(photo, fmt)
    with pytest.raises(ImageInputError, match=r"image could not be decoded \((the file is truncated|its header)"):
        load_image_bytes(data[: len(data) // 2])


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (8000, 6000, "image is 8000×6000 pixels, 48.0 megapixels; the limit is 40.0 megapixels"),
        # Beyond Pillow's own guard (179 MP), which fires first; the message stays ours.
        (100_000, 100_000, "image is 10,000.0 megapixels; the limit is 40.0 megapixels"),
    ],
)
def test_a_decompression_bomb_is_refused_from_its_header(width: int, height: int, expected: str) -> None:
    with pytest.raises(ImageInputError) as info:
        load_image_bytes(_png_claiming(width, height))
    assert info.value.message == expected + ": send a smaller image"


def test_the_pixel_limit_is_ours_not_pillows(photo: Image.Image) -> None:
    big = photo.resize((600, 400))
    with pytest.raises(ImageInputError, match="600×400 pixels, 0.2 megapixels; the limit is 0.1 megapixels"):
        load_image_bytes(encode(big), InputLimits(max_pixels=100_000))
    assert load_image_bytes(encode(big), InputLimits(max_pixels=240_000)).size == (600, 400)


def test_bytes_over_the_cap_are_refused(png: bytes) -> None:
    with pytest.raises(ImageInputError, match="; the limit is "):
        load_image_bytes(png, InputLimits(max_bytes=len(png) - 1))
    assert load_image_bytes(png, InputLimits(max_bytes=len(png))).size == (96, 64)


# --- orientation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "stored_from_upright"),
    [
        (3, Image.Transpose.ROTATE_180),
        (6, Image.Transpose.ROTATE_90),  # the camera was turned clockwise: stored rotated left
        (8, Image.Transpose.ROTATE_270),
        (2, Image.Transpose.FLIP_LEFT_RIGHT),
    ],
)
def test_exif_orientation_is_applied(photo: Image.Image, orientation: int, stored_from_upright) -> None:
    stored = photo.transpose(stored_from_upright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = load_image(b64(encode(stored, "JPEG", quality=95, exif=exif.tobytes())))
    assert image.size == photo.size
    assert np.abs(pixels(image) - pixels(photo)).mean() < JPEG_MEAN_TOLERANCE


def test_without_orientation_a_transposed_image_stays_as_stored(photo: Image.Image) -> None:
    # The control: the JPEG path alone does not transpose, and the tolerance tells orientations apart.
    stored = photo.transpose(Image.Transpose.ROTATE_180)
    image = load_image(b64(encode(stored, "JPEG", quality=95)))
    assert np.abs(pixels(image) - pixels(stored)).mean() < JPEG_MEAN_TOLERANCE
    assert np.abs(pixels(image) - pixels(photo)).mean() > 5 * JPEG_MEAN_TOLERANCE


# --- colour modes -----------------------------------------------------------------------------------


def test_transparency_is_composited_on_black() -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, :, :3] = (200, 100, 50)
    rgba[0, :, 3] = (0, 128, 255)
    image = load_image_bytes(encode(Image.fromarray(rgba, "RGBA")))
    expected = np.rint(rgba[..., :3] * (rgba[..., 3:] / 255.0))  # premultiplied = over black
    assert np.abs(pixels(image) - expected).max() <= 1
    assert pixels(image)[0, 0].tolist() == [0, 0, 0]


def test_grey_with_alpha_is_composited_on_black() -> None:
    la = Image.fromarray(np.array([[[180, 0], [180, 255]]], np.uint8), "LA")
    assert pixels(load_image_bytes(encode(la))).tolist() == [[[0, 0, 0], [180, 180, 180]]]


def test_a_palette_with_a_transparent_entry_is_composited_on_black() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    for fmt in ("PNG", "GIF"):
        data = encode(palette, fmt, transparency=0)
        assert pixels(load_image_bytes(data)).tolist() == [[[0, 0, 0], [0, 255, 0]]]


def test_an_rgb_png_with_a_transparent_colour_is_composited_on_black() -> None:
    # PNG tRNS on a truecolour image: one colour is fully transparent (here the white background).
    rgb = Image.new("RGB", (2, 1), (255, 255, 255))
    rgb.putpixel((1, 0), (0, 255, 0))
    data = encode(rgb, "PNG", transparency=(255, 255, 255))
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    assert pixels(load_image_bytes(data)).tolist() == [[[0, 0, 0], [0, 255, 0]]]


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    image = load_image_bytes(encode(Image.fromarray(values)))
    assert Image.open(io.BytesIO(encode(Image.fromarray(values)))).mode == "I;16"
    assert pixels(image)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(pixels(image)[..., 0], pixels(image)[..., 2])


def test_sixteen_bit_colour_is_reduced_to_eight_bits() -> None:
    bgr = np.zeros((2, 2, 3), np.uint16)
    bgr[..., 2] = 65535  # red
    bgr[..., 1] = 32896
    ok, buffer = cv2.imencode(".png", bgr)
    assert ok
    assert pixels(load_image_bytes(buffer.tobytes()))[0, 0].tolist() == [255, 128, 0]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_becomes_rgb(photo: Image.Image, mode: str) -> None:
    grey = photo.convert(mode)
    image = load_image_bytes(encode(grey))
    assert image.mode == "RGB"
    assert np.array_equal(pixels(image)[..., 1], pixels(grey.convert("L")))


def test_cmyk_jpeg_becomes_rgb(photo: Image.Image) -> None:
    data = encode(photo.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = load_image_bytes(data)
    assert image.mode == "RGB"
    assert np.abs(pixels(image) - pixels(photo)).mean() < JPEG_MEAN_TOLERANCE


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG", "MPO"])
def test_an_animation_gives_its_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    params = {"MPO": {}, "WEBP": {"lossless": True}}.get(fmt, {"duration": 100, "loop": 0})
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert np.abs(pixels(load_image_bytes(data))[4, 4] - [255, 0, 0]).max() <= 2  # MPO is JPEG: off by 1


@pytest.mark.parametrize(
    ("fmt", "lossless"), [("PNG", True), ("BMP", True), ("TIFF", True), ("WEBP", False), ("JPEG", False)]
)
def test_accepted_formats_decode(photo: Image.Image, fmt: str, lossless: bool) -> None:
    image = load_image_bytes(encode(photo, fmt, quality=95) if fmt in ("JPEG", "WEBP") else encode(photo, fmt))
    error = np.abs(pixels(image) - pixels(photo)).mean()
    assert error == 0 if lossless else error < JPEG_MEAN_TOLERANCE


# --- local paths (CLI only) -------------------------------------------------------------------------


def test_paths_are_read_only_when_allowed(tmp_path: Path, photo: Image.Image, png: bytes) -> None:
    path = tmp_path / "person.png"
    path.write_bytes(png)
    with pytest.raises(ImageInputError, match="base64"):
        load_image(str(path))  # the HTTP default: a path is just bad base64, never a file read
    with pytest.raises(ImageInputError, match="scheme 'file' is not supported"):
        load_image(path.as_uri())
    cli = InputLimits(allow_local_paths=True)
    assert np.array_equal(pixels(load_image(str(path), cli)), pixels(photo))
    assert np.array_equal(pixels(load_image(path.as_uri(), cli)), pixels(photo))
    assert np.array_equal(pixels(load_image(b64(png), cli)), pixels(photo))  # base64 still works


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.png"
    with pytest.raises(ImageInputError) as info:
        load_image(str(missing), InputLimits(allow_local_paths=True))
    assert info.value.message == f"image file '{missing}' does not exist; check the path"


def test_a_file_over_the_cap_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageInputError, match="; the limit is "):
        load_image(str(path), InputLimits(allow_local_paths=True, max_bytes=1024))
