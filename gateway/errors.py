"""Error codes from any process, turned into HTTP errors. Only the gateway does this.

An APIError carries its code's HTTP status and OpenAI error type. Its body takes the shape of the API dialect that
owns the request's path: each dialect registers its shape for its paths (gateway/dialects/__init__.py registers
every dialect's), and every other path gets OpenAI's, {"error": {"message", "type", "param", "code"}}, the
server's default. Middleware errors (401, 413, 429, a bad Host) go through the same lookup, `APIError.response(path)`.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse

from protocol import ErrorCode

# code -> (HTTP status, OpenAI error type)
_STATUS = {
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: (400, "invalid_request_error"),
    ErrorCode.MODEL_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.MODEL_LOAD_FAILED: (503, "server_error"),
    ErrorCode.MODEL_FAILED: (503, "server_error"),
    # The model can never fit: retrying will not help, so not 503 (whose Retry-After invites a retry).
    ErrorCode.INSUFFICIENT_MEMORY: (507, "server_error"),
    ErrorCode.WORKER_CRASHED: (503, "server_error"),
    ErrorCode.WORKER_UNAVAILABLE: (503, "server_error"),
    ErrorCode.SHUTTING_DOWN: (503, "server_error"),
    ErrorCode.OVERLOADED: (503, "server_error"),
    ErrorCode.TIMEOUT: (504, "server_error"),
    ErrorCode.INVALID_API_KEY: (401, "authentication_error"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_error"),
    ErrorCode.MODEL_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.REQUEST_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: (415, "invalid_request_error"),
    ErrorCode.INVALID_HOST: (400, "invalid_request_error"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorCode.SESSION_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.SESSION_STORE_UNAVAILABLE: (503, "server_error"),
    ErrorCode.STORE_UNAVAILABLE: (503, "server_error"),
    ErrorCode.CONFLICT: (409, "invalid_request_error"),
    ErrorCode.PULL_FAILED: (502, "server_error"),
}
RETRY_AFTER_SECONDS = 1

ErrorShape = Callable[["APIError"], dict]  # an error -> the body a dialect answers it with
_shapes: list[tuple[Callable[[str], bool], ErrorShape]] = []  # (owns a path, its shape), in registration order


class APIError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        type_: str | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status, self.type = _STATUS.get(code, (500, "server_error"))
        if status is not None:
            self.status = status
        if type_ is not None:
            self.type = type_
        self.headers = headers or {}

    @classmethod
    def from_event(cls, event) -> APIError:
        """From a GenerationError or CallFailed that crossed a process boundary."""
        return cls(event.code, event.message, param=getattr(event, "param", None))

    def body(self, path: str = "") -> dict:
        """The body in the shape of the dialect that owns `path` (OpenAI's for any other)."""
        return shape_for(path)(self)

    def response(self, path: str = "") -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else {}
        return JSONResponse(self.body(path), status_code=self.status, headers=headers | self.headers)


def internal_error(request_id: str | None) -> APIError:
    """What a client learns of a failure inside the gateway: not the exception's text, which goes to the log
    with the request id the client can quote."""
    return APIError(
        ErrorCode.INTERNAL, f"Internal server error; the server log has the details under request id {request_id}"
    )


def openai_error_body(error: APIError) -> dict:
    """OpenAI's error shape: the OpenAI dialects' and the server's default."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def register_error_shape(owns: Callable[[str], bool], shape: ErrorShape) -> None:
    """Errors on the paths `owns` accepts take `shape` (the first registration that owns a path wins)."""
    _shapes.append((owns, shape))


def shape_for(path: str) -> ErrorShape:
    return next((shape for owns, shape in _shapes if owns(path)), openai_error_body)


def error_body(path: str, status: int, code: str, message: str, type_: str, param: str | None = None) -> dict:
    """The body of an error with this status and OpenAI type, in the shape of the dialect that owns `path`."""
    return shape_for(path)(APIError(code, message, param=param, status=status, type_=type_))
