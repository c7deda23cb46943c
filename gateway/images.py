"""Image inputs of every dialect: OpenAI `image_url` parts and Anthropic base64 sources turned into the image
file's bytes, checked.

Data URLs always; http(s) URLs only where the operator enabled them (gateway/image_fetch.py). Every image is
checked here: base64 that decodes (any fault in it a 400), a format a vision model reads (PNG, JPEG, WebP, GIF,
told by the bytes' magic numbers, which must agree with the declared media type), size, pixel count, and at most
`max_images` per request, so a bad image is a 400 or 413 before any model loads; the worker decodes the bytes
again for its processor.
"""

from __future__ import annotations

import base64
import binascii
import io

from gateway.config import GatewaySettings
from gateway.errors import APIError
from gateway.image_fetch import fetch_image
from protocol import ErrorCode

# The formats a vision model's processor reads, by the bytes they start with.
SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
MEDIA_TYPES = (*SIGNATURES, "image/webp")


def media_type_of(data: bytes) -> str | None:
    """The image format `data` is in, by its magic number (WebP: a RIFF container of type WEBP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media for media, starts in SIGNATURES.items() if data.startswith(starts)), None)


def decode_base64(text: str, param: str) -> bytes:
    """Strict base64 (any stray, non-ASCII or padding fault, or nothing at all, is a 400 naming `param`)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise APIError(ErrorCode.INVALID_REQUEST, "The image data is not valid base64", param=param) from None
    if not data:
        raise APIError(ErrorCode.INVALID_REQUEST, "The image data is empty", param=param)
    return data


def count_image(count: int, settings: GatewaySettings, param: str) -> None:
    """Refuse the `count`th image of a request if it is one more than the server takes."""
    if count > settings.max_images:
        raise APIError(
            ErrorCode.INVALID_REQUEST,
            f"A request may hold at most {settings.max_images} images",
            param=param,
        )


def _too_large(size: str, limit: int, param: str) -> APIError:
    return APIError(
        ErrorCode.INVALID_REQUEST,
        f"The image is too large ({size}); the limit is {limit} bytes",
        param=param,
        status=413,
    )


def _from_data_url(url: str, limit: int, param: str) -> tuple[bytes, str]:
    """The image in a data URL, and the media type it declares."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise APIError(
            ErrorCode.INVALID_REQUEST, "An image data URL must look like data:image/<format>;base64,<data>", param=param
        )
    if len(payload) * 3 // 4 > limit + 3:  # refused before decoding: base64 is 4 characters per 3 bytes
        raise _too_large(f"about {len(payload) * 3 // 4} bytes", limit, param)
    declared = header.removeprefix("data:").removesuffix(";base64").lower()
    return decode_base64(payload, param), "image/jpeg" if declared == "image/jpg" else declared


def check_image(data: bytes, settings: GatewaySettings, param: str, declared: str | None = None) -> None:
    """Size, a format a vision model reads (the `declared` media type's, if one was), pixel count: a 400 or 413
    naming `param` otherwise."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > settings.max_image_bytes:
        raise _too_large(f"{len(data)} bytes", settings.max_image_bytes, param)
    found = media_type_of(data)
    if found is None:
        message = f"The image is not in a format a vision model reads ({', '.join(MEDIA_TYPES)})"
        raise APIError(ErrorCode.INVALID_REQUEST, message, param=param)
    if declared is not None and declared != found:
        message = f"The image is declared {declared} but its bytes are {found}"
        raise APIError(ErrorCode.INVALID_REQUEST, message, param=param)
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        message = "The image is not in a format that can be read"
        raise APIError(ErrorCode.INVALID_REQUEST, message, param=param) from None
    if width * height > settings.max_image_pixels:
        raise APIError(
            ErrorCode.INVALID_REQUEST,
            f"The image is too large ({width}x{height} pixels); the limit is {settings.max_image_pixels} pixels",
            param=param,
            status=413,
        )


async def image_bytes(image_url: dict, settings: GatewaySettings, param: str) -> bytes:
    """The image an `image_url` part points at, checked; raises APIError (400/413) naming `param`."""
    url = image_url.get("url")
    if not isinstance(url, str) or not url:
        raise APIError(ErrorCode.INVALID_REQUEST, "image_url.url must be a non-empty string", param=param)
    declared = None
    if url.startswith("data:"):
        data, declared = _from_data_url(url, settings.max_image_bytes, param)
    elif url.startswith(("http://", "https://")):
        if not settings.image_urls:
            raise APIError(
                ErrorCode.INVALID_REQUEST,
                "Image URLs are not enabled on this server; send the image as a data URL (data:image/png;base64,...)",
                param=param,
            )
        data = await fetch_image(url, settings, param)  # what a server says its type is, is often wrong: not checked
    else:
        raise APIError(ErrorCode.INVALID_REQUEST, "image_url.url must be a data URL or an http(s) URL", param=param)
    check_image(data, settings, param, declared)
    return data
