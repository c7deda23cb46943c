"""The activity log: the last N API calls this gateway answered, for the dashboard and operators.

GET    /api/activity-logs?limit=50   newest first; a service without admin rights sees only its own calls
DELETE /api/activity-logs            clear it (an admin service; keyless development mode is one)

Kept in memory per gateway process (ACTIVITY_LOG_SIZE entries, default 200); GET polls (the dashboard's, model
lists) are not logged, so they cannot push the calls that matter out. A preview holds the start of the last
user message (or prompt/input/query), with keys, tokens, e-mail addresses and inline images blanked out.
"""

from __future__ import annotations

import json
import re
from collections import deque
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth import require_admin
from gateway.errors import APIError
from protocol import ErrorCode

PREVIEW_CHARS = 120
_SECRETS = [
    (re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+"), "[image]"),
    (re.compile(r"\b(?:sk|pk|rk|key|api|tok)[-_][A-Za-z0-9_-]{8,}"), "[key]"),
    (re.compile(r"\bBearer\s+\S+", re.IGNORECASE), "Bearer [key]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[jwt]"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), "[number]"),  # card and account numbers
]


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI/Anthropic content parts, or a batch of prompts/inputs
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")  # any JSON value in a request that failed validation
                parts.append(text if isinstance(text, str) else "[image]" if "image" in str(part.get("type")) else "")
        return " ".join(p for p in parts if p)
    return ""


def _payload(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def preview(payload: dict) -> str:
    """A short, sanitised view of what was asked."""
    text = ""
    messages = payload.get("messages")
    if isinstance(messages, list):
        turns = [m for m in messages if isinstance(m, dict)]
        users = [m for m in turns if m.get("role") == "user"] or turns
        text = _text(users[-1].get("content")) if users else ""
    for key in ("prompt", "input", "query"):
        if not text and key in payload:
            text = _text(payload[key])
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


class ActivityLog:
    def __init__(self, size: int):
        self.size = size
        self._entries: deque[dict] = deque(maxlen=size)

    def add(self, record, body: bytes) -> None:
        payload = _payload(body)
        asked = payload.get("model")  # when the request failed before a model was resolved
        self._entries.append(
            {
                "time": datetime.fromtimestamp(record.wall_time, UTC).isoformat(timespec="milliseconds"),
                "method": record.method,
                "route": record.route,
                "path": record.path,
                "service": record.service,
                "model": record.model or (asked if isinstance(asked, str) else None),
                "status": record.status,
                "latency_ms": round(record.duration * 1000, 1),
                "ttft_ms": None if record.ttft is None else round(record.ttft * 1000, 1),
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "tokens_per_second": None if record.decode_tps is None else round(record.decode_tps, 1),
                # Speech requests: seconds of audio in (transcribed) or out (spoken), in place of tokens.
                "audio_seconds": round(record.audio_seconds, 2) if record.audio_seconds else None,
                "real_time_factor": None if record.real_time_factor is None else round(record.real_time_factor, 3),
                "error": record.error,
                "preview": preview(payload),
            }
        )

    def entries(self, service: str | None = None) -> list[dict]:
        """Newest first; only `service`'s own when given."""
        return [e for e in reversed(self._entries) if service is None or e["service"] == service]

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count


async def list_activity(request: Request) -> JSONResponse:
    log: ActivityLog = request.app.state.activity
    try:
        limit = int(request.query_params.get("limit", log.size))
    except ValueError:
        raise APIError(ErrorCode.INVALID_REQUEST, "limit must be an integer", param="limit") from None
    if limit < 1:
        raise APIError(ErrorCode.INVALID_REQUEST, "limit must be at least 1", param="limit")
    service = request.state.service  # set by the auth middleware (the admin "local" without keys)
    own = None if service.admin else service.name
    entries = log.entries(own)
    return JSONResponse({"object": "list", "capacity": log.size, "total": len(entries), "data": entries[:limit]})


async def clear_activity(request: Request) -> JSONResponse:
    require_admin(request, "clear the activity log")
    return JSONResponse({"cleared": request.app.state.activity.clear()})
