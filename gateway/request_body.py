"""A request body decoded into its typed request (a msgspec Struct), validated at the edge.

Unknown fields are ignored (clients and SDKs send extras); known fields are checked for type and range, and a
violation is a 400 naming the offending field as the error's `param`. Every dialect and endpoint decodes here.
"""

from __future__ import annotations

import re

import msgspec

from gateway.errors import APIError
from protocol import ErrorCode

_AT = re.compile(r" - at `\$\.?(.*)`$")
_MISSING = re.compile(r"missing required field `(\w+)`")


def decode_request(body: bytes, cls: type[msgspec.Struct]):
    """Bytes -> typed request; malformed JSON and schema violations become 400s naming the field."""
    try:
        return msgspec.json.decode(body, type=cls)
    except msgspec.ValidationError as exc:
        raise invalid(exc) from None
    except msgspec.DecodeError as exc:
        raise APIError(ErrorCode.INVALID_REQUEST, f"The request body is not valid JSON: {exc}", param=None) from None


def invalid(exc: msgspec.ValidationError, within: str = "") -> APIError:
    """A schema violation as a 400 naming the field; `within`: where the validated value sits in the request
    (for a part decoded on its own, such as `input[2]`)."""
    text = str(exc)
    at, missing = _AT.search(text), _MISSING.search(text)
    path = ".".join(p for p in (at and at.group(1), missing and missing.group(1)) if p)
    joint = "." if within and path and not path.startswith("[") else ""
    param = (within + joint + path) or None
    message = _AT.sub("", text)
    return APIError(ErrorCode.INVALID_REQUEST, f"{message} at '{param}'" if param else message, param=param)
