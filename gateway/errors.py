"""Error codes from any process, turned into HTTP errors in the shape of the API that was called (OpenAI, or
Anthropic under /v1/messages and /anthropic/). Only the gateway does this."""

from __future__ import annotations

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
    ErrorCode.TIMEOUT: (504, "server_error"),
    "permission_denied": (403, "permission_error"),  # the gateway's own: an admin-only endpoint
}
RETRY_AFTER_SECONDS = 1
# HTTP status -> Anthropic error type (what the anthropic SDK and Claude Code expect); others are api_error.
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
ANTHROPIC_PREFIXES = ("/v1/messages", "/anthropic/")


def is_anthropic(path: str) -> bool:
    return path.startswith(ANTHROPIC_PREFIXES)


class APIError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status, self.type = _STATUS.get(code, (500, "server_error"))
        if status is not None:
            self.status = status

    @classmethod
    def from_event(cls, event) -> APIError:
        """From a GenerationError or CallFailed that crossed a process boundary."""
        return cls(event.code, event.message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict:
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPE.get(self.status, "api_error"), "message": self.message},
        }

    def body_for(self, path: str) -> dict:
        return self.anthropic_body() if is_anthropic(path) else self.body()

    def response(self, path: str = "") -> JSONResponse:
        """The error as the API under `path` renders it."""
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else None
        return JSONResponse(self.body_for(path), status_code=self.status, headers=headers)
