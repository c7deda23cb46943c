"""Error codes from any process, turned into HTTP errors in the API dialect of the path. Only the gateway does
this: OpenAI's shape everywhere except the Anthropic Messages paths, which get Anthropic's (see error_body)."""

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
    ErrorCode.INVALID_API_KEY: (401, "authentication_error"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_error"),
    ErrorCode.MODEL_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.REQUEST_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.INVALID_HOST: (400, "invalid_request_error"),
    ErrorCode.NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.METHOD_NOT_ALLOWED: (405, "invalid_request_error"),
    ErrorCode.SESSION_NOT_FOUND: (404, "invalid_request_error"),
    ErrorCode.SESSION_STORE_UNAVAILABLE: (503, "server_error"),
}
RETRY_AFTER_SECONDS = 1

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
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
ANTHROPIC_PATHS = ("/v1/messages", "/anthropic/")


def is_anthropic_path(path: str) -> bool:
    """The Anthropic Messages API's paths (/v1/messages, /v1/messages/count_tokens, /anthropic/...)."""
    return path == "/v1/messages" or path.startswith(("/v1/messages/", "/anthropic/"))


def error_body(path: str, status: int, code: str, message: str, type_: str, param: str | None = None) -> dict:
    """THE choice of error shape, by request path: Anthropic's on the Anthropic Messages paths,
    {"type": "error", "error": {"type", "message"}}; OpenAI's everywhere else,
    {"error": {"message", "type", "param", "code"}}."""
    if is_anthropic_path(path):
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class APIError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.status, self.type = _STATUS.get(code, (500, "server_error"))
        if status is not None:
            self.status = status
        self.headers = headers or {}

    @classmethod
    def from_event(cls, event) -> APIError:
        """From a GenerationError or CallFailed that crossed a process boundary."""
        return cls(event.code, event.message)

    def body(self, path: str = "") -> dict:
        return error_body(path, self.status, self.code, self.message, self.type, self.param)

    def response(self, path: str = "") -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status == 503 else {}
        return JSONResponse(self.body(path), status_code=self.status, headers=headers | self.headers)
