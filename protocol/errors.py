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


# Codes a client may retry as they are: the condition is transient on the server's side.
RETRYABLE = frozenset(
    {ErrorCode.WORKER_CRASHED, ErrorCode.WORKER_UNAVAILABLE, ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT}
)
