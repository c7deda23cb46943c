"""Error codes that cross process boundaries. Only the gateway turns them into HTTP statuses and API bodies."""

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    ABORTED = "aborted"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_FAILED = "model_failed"  # too many crashes; an operator must load it again
    INSUFFICIENT_MEMORY = "insufficient_memory"  # larger than the whole memory budget: never attempted
    WORKER_CRASHED = "worker_crashed"
    WORKER_UNAVAILABLE = "worker_unavailable"
    SHUTTING_DOWN = "shutting_down"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    MALFORMED_FRAME = "malformed_frame"
    TIMEOUT = "timeout"
    INTERNAL = "internal_error"
    OVERLOADED = "overloaded"  # a bounded queue is full: retry shortly
    CONFLICT = "conflict"  # the store or alias table is not in a state that allows it (a model in use, a name taken)
    PULL_FAILED = "pull_failed"  # a download from the hub (or its conversion) did not complete
    # The gateway's edge: who is calling and what they may do.
    INVALID_API_KEY = "invalid_api_key"  # no key, an unknown key, or a bad, expired or tampered token
    PERMISSION_DENIED = "permission_denied"  # an admin endpoint called with a service's key
    MODEL_NOT_ALLOWED = "model_not_allowed"  # the model exists, but not for this service
    RATE_LIMITED = "rate_limit_exceeded"
    REQUEST_TOO_LARGE = "request_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # development mode: an API POST that is not JSON
    INVALID_HOST = "invalid_host"  # a Host header outside the trusted hosts
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    SESSION_NOT_FOUND = "session_not_found"  # unknown, expired, or another service's
    SESSION_STORE_UNAVAILABLE = "session_store_unavailable"  # Redis unreachable
    STORE_UNAVAILABLE = "store_unavailable"  # where stored responses or batches live (Redis) is unreachable


# Codes a client may retry as they are: the condition is transient on the server's side.
RETRYABLE = frozenset(
    {
        ErrorCode.WORKER_CRASHED,
        ErrorCode.WORKER_UNAVAILABLE,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.TIMEOUT,
        ErrorCode.OVERLOADED,
    }
)
