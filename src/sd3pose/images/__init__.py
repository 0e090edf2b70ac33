"""Safe input loading (URL, base64, data: URI, path) and output encoding (JPEG, PNG, WebP).

Input images only feed pose detection or are pose maps, so every input ends up as an 8-bit RGB
image the right way up; anything unusable raises ImageInputError (HTTP 400) with one sentence
saying what is wrong and how to fix it (UpstreamError, HTTP 502, when the host of an image URL fails).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sd3pose.errors import ImageInputError, InvalidRequestError
from sd3pose.images.net import fetch_url, format_size
from sd3pose.request import OutputFormat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputLimits:
    """What an input image may cost us; the defaults suit a public HTTP service."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked on the header before decoding
    allow_private_urls: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_redirects: int = 3
    allow_local_paths: bool = False  # True only for the CLI: a plain filesystem path is accepted
    total_timeout: float = 20.0  # a whole download, so a server dripping bytes cannot hold a request


# Formats a client can reasonably send. Others are refused before decoding: Pillow's EPS plugin
# runs Ghostscript, and rarely used decoders are attack surface we don't need.
INPUT_FORMATS = tuple(
    fmt
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
    if fmt in Image.registered_extensions().values()
)
_FORMAT_NAMES = "a JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF file"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_WHITESPACE = re.compile(r"\s+")
_BASE64_TEXT = re.compile(r"^[A-Za-z0-9+/=_\s-]+$")
_MAX_PATH_LENGTH = 4096

_MEDIA_TYPES = {
    OutputFormat.jpeg: "image/jpeg",
    OutputFormat.png: "image/png",
    OutputFormat.webp: "image/webp",
}
# PNG zlib level 1 instead of Pillow's 6: generated images barely compress further and level 6
# costs several times the encoding time (bench/encode.py measures both).
PNG_COMPRESS_LEVEL = 1
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _too_big(num_bytes: int, limit: int) -> ImageInputError:
    return ImageInputError(
        f"image is {format_size(num_bytes)}; the limit is {format_size(limit)}: send a smaller image"
    )


# --- text forms: base64, data: URIs, paths -----------------------------------------------------------


# Long base64 text is handled in slices of this many characters (a multiple of 4): each step is then a
# short call, and other threads (an API server's event loop) get the interpreter between them.
_SLICE = 1 << 20
_ASCII_WHITESPACE = " \t\n\r\v\f"


def _by_slice(text: str, step) -> list:
    return [step(text[start : start + _SLICE]) for start in range(0, len(text), _SLICE)]


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Decode standard or URL-safe base64 (whitespace and missing padding tolerated) within a size cap.

    The size is checked from the text's length before anything is decoded.
    """
    # Cheap bound before touching the text: even at one whitespace character per four, this is too big.
    if len(text) * 3 // 5 > max_bytes:
        raise _too_big(len(text) * 3 // 4, max_bytes)
    compact = text
    if not text.isascii() or any(space in text for space in _ASCII_WHITESPACE):
        compact = "".join(_by_slice(text, lambda part: _WHITESPACE.sub("", part)))
    decoded_size = len(compact) * 3 // 4 - (len(compact) - len(compact.rstrip("=")))
    if decoded_size > max_bytes:
        raise _too_big(decoded_size, max_bytes)
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact = compact.rstrip("=")
    if len(compact) % 4 == 1 or not compact:
        raise _not_base64("its length is not that of base64 text")
    compact += "=" * (-len(compact) % 4)
    try:
        return b"".join(_by_slice(compact, lambda part: base64.b64decode(part.encode("ascii"), validate=True)))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _not_base64(str(exc)) from None


def _not_base64(detail: str) -> ImageInputError:
    return ImageInputError(
        f"image is not an http(s) URL, a data: URI or valid base64 ({detail}); "
        "send the image file base64-encoded, as a data: URI or as a URL"
    )


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a `data:[<media type>][;base64],<data>` URI (RFC 2397), within a size cap.

    The declared media type is not trusted either way: the decoder decides what the bytes are.
    """
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ImageInputError("image data: URI has no ',' before its data; send 'data:image/png;base64,<data>'")
    if header.lower().split(";")[-1].strip() == "base64":
        return decode_base64(payload, max_bytes)
    if len(payload) > 3 * max_bytes:  # percent-encoding takes up to three characters per byte
        raise _too_big(len(payload) // 3, max_bytes)
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise _too_big(len(data), max_bytes)
    return data


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """A local image file's bytes (CLI only), refused beyond max_bytes without reading it all."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _too_big(size, max_bytes)
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageInputError(f"could not read the image file '{path}' ({exc.strerror}); check the path") from None
    if len(data) > max_bytes:  # the file grew after stat
        raise _too_big(len(data), max_bytes)
    return data


def _existing_file(text: str) -> Path | None:
    if len(text) > _MAX_PATH_LENGTH or "\0" in text:
        return None
    path = Path(text).expanduser()
    try:
        return path if path.is_file() else None
    except OSError:  # e.g. a name too long for the filesystem
        return None


def is_url(source: str | None) -> bool:
    """True when an `image` field is an http(s) URL (its bytes must be downloaded), not inline data."""
    match = _SCHEME.match(source.lstrip()) if source else None
    return match is not None and match.group(1).lower() in ("http", "https")


def read_source(source: str, limits: InputLimits = InputLimits()) -> tuple[bytes, str | None]:
    """The raw bytes an `image` field refers to, and the Content-Type a URL declared (else None)."""
    if not isinstance(source, str) or not source.strip():
        raise ImageInputError("image is empty; send an http(s) URL, base64-encoded image bytes or a data: URI")
    text = source.strip()
    match = _SCHEME.match(text)
    # One-letter "schemes" are Windows drive letters, which only a CLI path may use.
    if match and not (limits.allow_local_paths and len(match.group(1)) == 1):
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            fetched = fetch_url(
                text,
                max_bytes=limits.max_bytes,
                allow_private=limits.allow_private_urls,
                connect_timeout=limits.connect_timeout,
                read_timeout=limits.read_timeout,
                total_timeout=limits.total_timeout,
                max_redirects=limits.max_redirects,
            )
            return fetched.content, fetched.content_type
        if scheme == "data":
            return decode_data_uri(text, limits.max_bytes), None
        if scheme == "file" and limits.allow_local_paths:
            path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
            return read_image_file(path, limits.max_bytes), None
        raise ImageInputError(
            f"image URL scheme '{scheme}' is not supported; send an http(s) URL, base64 or a data: URI"
        )
    if limits.allow_local_paths:
        path = _existing_file(text)
        if path is not None:
            return read_image_file(path, limits.max_bytes), None
        if not _BASE64_TEXT.match(text):  # '.', '~' or '\\' cannot be base64: the user meant a file
            raise ImageInputError(f"image file '{text[:200]}' does not exist; check the path")
    return decode_base64(text, limits.max_bytes), None


# --- decoding ----------------------------------------------------------------------------------------


def _too_many_pixels(pixel_count: int | None, limit: int, dimensions: str = "") -> ImageInputError:
    size = f"{dimensions}{pixel_count / 1e6:,.1f} megapixels" if pixel_count else "too many pixels"
    return ImageInputError(f"image is {size}; the limit is {limit / 1e6:,.1f} megapixels: send a smaller image")


class _UndecodableError(ImageInputError):
    """The bytes are no image we accept (lets load_image say what a URL sent instead)."""


def _undecodable(reason: str) -> ImageInputError:
    return _UndecodableError(
        f"image could not be decoded ({reason}): send a valid image file, base64-encoded or as a URL"
    )


def _sixteen_bit_to_8(im: Image.Image) -> Image.Image:
    """Greyscale of more than 8 bits to 8-bit L, scaled (Pillow's own convert clips at 255)."""
    values = np.asarray(im).astype(np.float64)
    if im.mode in _SIXTEEN_BIT_MODES:
        full_scale = 65535.0
    elif im.mode == "F":
        full_scale = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    else:  # "I": 32-bit integers of unknown range; assume 8 or 16 bits when they fit
        top = values.max(initial=0.0)
        full_scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else float(top)
    scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB; transparency is composited on black.

    Black, because pose maps are drawn on black: a transparent pose map composited on white
    would turn its background into a white canvas that reads as a different control image.
    """
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return _sixteen_bit_to_8(im).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif im.mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("LA")
    elif im.mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", im.size, (0, 0, 0))
        canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return canvas
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageInputError(
            f"image uses the colour mode {im.mode}, which cannot be converted to RGB; send an RGB or greyscale image"
        ) from None


def _open_checked(data: bytes, limits: InputLimits) -> Image.Image:
    """The image's header, opened and checked against the limits; no pixel is decoded yet."""
    if not data:
        raise ImageInputError("image is empty; send a valid image file, base64-encoded or as a URL")
    if len(data) > limits.max_bytes:
        raise _too_big(len(data), limits.max_bytes)
    try:
        # Pillow's process-wide DecompressionBombWarning is left alone (catch_warnings is not
        # thread-safe); our own limit below is what refuses images.
        im = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError:
        raise _undecodable(f"not {_FORMAT_NAMES}") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own process-wide guard (2 x Image.MAX_IMAGE_PIXELS) fired before ours could.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_many_pixels(int(claimed.group(1)) if claimed else None, limits.max_pixels) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _undecodable(f"its header is corrupt: {exc}") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise _undecodable(f"it claims a size of {width}×{height} pixels")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(width * height, limits.max_pixels, f"{width}×{height} pixels, ")
    return im


def _explained(error: _UndecodableError, content_type: str | None) -> ImageInputError:
    """An undecodable download, said as what the URL sent instead when it declared something else."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared and not declared.startswith("image/"):
        return ImageInputError(f"the image URL returned {declared}, not an image; send a direct link to the image file")
    return error


def check_image_bytes(data: bytes, limits: InputLimits = InputLimits(), content_type: str | None = None) -> None:
    """Refuse bytes that are no image we accept, or too large, from the header alone (cheap: no pixel is
    decoded), so a request with a useless image is answered 400 before it is queued or stored."""
    try:
        _open_checked(data, limits).close()
    except _UndecodableError as exc:
        raise _explained(exc, content_type) from None


def load_image_bytes(data: bytes, limits: InputLimits = InputLimits()) -> Image.Image:
    """Decode image file bytes (an upload, a download) to an upright RGB image within the limits.

    The pixel limit is checked on the header, before any pixel is decoded. (Pillow's own guard,
    2 x Image.MAX_IMAGE_PIXELS = 179 MP by default, still applies on top of `max_pixels`.)
    """
    im = _open_checked(data, limits)
    try:
        im.seek(0)  # animations: the first frame
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise _undecodable(f"the file is truncated or corrupt: {exc}") from None
    log.debug("decoded %s image %dx%d, mode %s", im.format, *im.size, im.mode)
    return to_rgb(_upright(im))


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag, so a phone photo taken sideways is seen as the user saw it."""
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im)
    except Exception as exc:
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
    return im


def load_image(source: str, limits: InputLimits = InputLimits()) -> Image.Image:
    """The image an `image` field names: http(s) URL, raw base64, data: URI (or a path, for the CLI).

    Returns an upright 8-bit RGB image. Raises ImageInputError (400) with a user-facing message,
    or UpstreamError (502) when the host of an image URL fails (see sd3pose.images.net.fetch_url).
    """
    data, content_type = read_source(source, limits)
    try:
        return load_image_bytes(data, limits)
    except _UndecodableError as exc:
        raise _explained(exc, content_type) from None


# --- output encoding ---------------------------------------------------------------------------------


def output_format(fmt: OutputFormat | str) -> OutputFormat:
    """An OutputFormat from its enum or name ('jpeg', 'jpg', 'png', 'webp', any case)."""
    if isinstance(fmt, OutputFormat):
        return fmt
    name = str(fmt).strip().lower()
    name = {"jpg": "jpeg"}.get(name, name)
    try:
        return OutputFormat(name)
    except ValueError:
        raise InvalidRequestError(f"output_format '{fmt}' is not supported; use one of jpeg, png, webp") from None


def media_type(fmt: OutputFormat | str) -> str:
    """The Content-Type of an output format: 'image/jpeg', 'image/png' or 'image/webp'."""
    return _MEDIA_TYPES[output_format(fmt)]


def encode_image(image: Image.Image, fmt: OutputFormat | str, *, quality: int = 95) -> bytes:
    """Encode an image as JPEG, PNG (lossless) or WebP; `quality` (1-100) applies to JPEG and WebP."""
    target = output_format(fmt)
    if not 1 <= quality <= 100:
        raise InvalidRequestError(f"quality must be between 1 and 100 (got {quality})")
    keeps_mode = ("RGB", "L") if target is OutputFormat.jpeg else ("RGB", "RGBA", "L", "LA")
    if image.mode not in keeps_mode:
        image = to_rgb(image)
    buffer = io.BytesIO()
    if target is OutputFormat.jpeg:
        image.save(buffer, "JPEG", quality=quality)
    elif target is OutputFormat.png:
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, "WEBP", quality=quality)
    return buffer.getvalue()


def image_to_base64(image: Image.Image, fmt: OutputFormat | str = OutputFormat.png, *, quality: int = 95) -> str:
    """The encoded image as standard base64 text (no data: prefix)."""
    return base64.b64encode(encode_image(image, fmt, quality=quality)).decode("ascii")


def image_to_data_uri(image: Image.Image, fmt: OutputFormat | str = OutputFormat.png, *, quality: int = 95) -> str:
    """The encoded image as a `data:image/...;base64,` URI."""
    return f"data:{media_type(fmt)};base64,{image_to_base64(image, fmt, quality=quality)}"
