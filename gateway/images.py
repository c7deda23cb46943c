"""Image inputs of chat requests: OpenAI `image_url` parts turned into the image file's bytes.

Data URLs always; http(s) URLs only where the operator enabled them (GATEWAY_IMAGE_URLS=1), fetched with a
time and size limit. Every image is checked here (size, a format Pillow reads, pixel count), so a bad image is
a 400 or 413 before any model loads; the worker decodes the bytes again for its processor.
"""

from __future__ import annotations

import base64
import binascii
import io

import httpx

from gateway.config import GatewaySettings
from gateway.errors import APIError
from protocol import ErrorCode


def _too_large(size: str, limit: int, param: str) -> APIError:
    return APIError(
        ErrorCode.INVALID_REQUEST,
        f"The image is too large ({size}); the limit is {limit} bytes",
        param=param,
        status=413,
    )


def _from_data_url(url: str, limit: int, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise APIError(
            ErrorCode.INVALID_REQUEST, "An image data URL must look like data:image/<format>;base64,<data>", param=param
        )
    if len(payload) * 3 // 4 > limit + 3:  # refused before decoding: base64 is 4 characters per 3 bytes
        raise _too_large(f"about {len(payload) * 3 // 4} bytes", limit, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(ErrorCode.INVALID_REQUEST, "The image data URL is not valid base64", param=param) from None


async def _fetch(url: str, settings: GatewaySettings, param: str) -> bytes:
    limit = settings.max_image_bytes
    try:
        async with (
            httpx.AsyncClient(timeout=settings.image_fetch_timeout, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise APIError(
                    ErrorCode.INVALID_REQUEST, f"Fetching the image gave HTTP {response.status_code}", param=param
                )
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > limit:
                    raise _too_large(f"more than {limit} bytes", limit, param)
            return bytes(data)
    except httpx.HTTPError as exc:
        raise APIError(ErrorCode.INVALID_REQUEST, f"The image could not be fetched: {exc!r}", param=param) from None


def check_image(data: bytes, settings: GatewaySettings, param: str) -> None:
    """Size, a format Pillow reads, and pixel count: a 400 or 413 naming `param` otherwise."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > settings.max_image_bytes:
        raise _too_large(f"{len(data)} bytes", settings.max_image_bytes, param)
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
    if url.startswith("data:"):
        data = _from_data_url(url, settings.max_image_bytes, param)
    elif url.startswith(("http://", "https://")):
        if not settings.image_urls:
            raise APIError(
                ErrorCode.INVALID_REQUEST,
                "Image URLs are not enabled on this server; send the image as a data URL (data:image/png;base64,...)",
                param=param,
            )
        data = await _fetch(url, settings, param)
    else:
        raise APIError(ErrorCode.INVALID_REQUEST, "image_url.url must be a data URL or an http(s) URL", param=param)
    check_image(data, settings, param)
    return data
