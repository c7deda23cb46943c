"""One ASGI middleware that times every request and hands it to the metrics, the activity log and the access log.

Being a middleware, it covers every route, including ones added later, without edits to them. What only a
generation knows (the model, first-token time, token counts) reaches the request's RequestRecord as an observer
of the generation core (`RequestRecord.observer`, registered by gateway/core/http.py). The record is found with
`record_of(request)`: it is in the request's state, which Starlette shares with inner middleware (the auth
middleware's `request.state.service` is read from the same place once the answer has been sent).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from starlette.requests import Request

from gateway import metrics
from gateway.activity import ActivityLog
from protocol.audio import AudioChunk, SpeechDone, Transcript, TranscriptPart
from protocol.generation import Finished, GenerationError, TextChunk

access_log = logging.getLogger("gateway.access")
BODY_CAPTURE_LIMIT = 256 * 1024  # bytes of a request body kept for the activity log's preview


@dataclass
class RequestRecord:
    method: str
    path: str
    started: float  # perf_counter
    wall_time: float  # time.time(), for the activity log
    route: str = "unmatched"
    status: int = 0
    service: str = "anonymous"
    model: str | None = None
    duration: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None  # the error code of a generation that failed (inside a 200 stream too)
    # Speech: seconds of audio transcribed or spoken, and the model's own time on them.
    audio_seconds: float = 0.0
    audio_direction: str = ""  # "transcribed" or "spoken"
    audio_processing_seconds: float = 0.0

    def observer(self, caller, model_id: str):
        """The generation core's ObserverFactory for this request (gateway/core/http.py registers it)."""
        self.model = model_id
        return self.observe_event

    def observe_event(self, event) -> None:
        """Called with each event of the generation this request started."""
        now = time.perf_counter()
        if isinstance(event, TextChunk | TranscriptPart | AudioChunk) and self.first_token_at is None:
            self.first_token_at = now
        elif isinstance(event, Transcript):
            self.finished_at, self.error = now, None
            self.audio_seconds, self.audio_direction = event.duration, "transcribed"
            self.audio_processing_seconds = event.processing_seconds
        elif isinstance(event, SpeechDone):
            self.finished_at, self.error = now, None
            self.audio_seconds, self.audio_direction = event.samples / max(event.sample_rate, 1), "spoken"
            self.audio_processing_seconds = event.processing_seconds
        elif isinstance(event, Finished):
            self.finished_at, u = now, event.usage
            self.prompt_tokens, self.completion_tokens, self.cached_tokens = (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
            )
            self.error = None
        elif isinstance(event, GenerationError):
            self.error = event.code

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def real_time_factor(self) -> float | None:
        """The model's time per second of audio (below 1: faster than real time)."""
        return self.audio_processing_seconds / self.audio_seconds if self.audio_seconds > 0 else None

    @property
    def decode_tps(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or self.completion_tokens < 2:
            return None
        elapsed = self.finished_at - self.first_token_at
        return (self.completion_tokens - 1) / elapsed if elapsed > 0 else None


def record_of(request: Request) -> RequestRecord | None:
    return getattr(request.state, "telemetry", None)


class Telemetry:
    """Pure ASGI (not BaseHTTPMiddleware), so streamed bodies pass through untouched and are timed to the end."""

    def __init__(self, app, activity: ActivityLog):
        self.app = app
        self.activity = activity

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope["method"], scope["path"], time.perf_counter(), time.time())
        state = scope.setdefault("state", {})
        state["telemetry"] = record
        body = bytearray()

        async def receive_and_keep():
            message = await receive()
            if message["type"] == "http.request" and len(body) < BODY_CAPTURE_LIMIT:
                body.extend(message.get("body", b"")[: BODY_CAPTURE_LIMIT - len(body)])
            return message

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        metrics.IN_PROGRESS.inc()
        try:
            await self.app(scope, receive_and_keep, send_and_note)
        except Exception:
            record.status = record.status or 500  # the outermost error handler answers it
            raise
        finally:
            metrics.IN_PROGRESS.dec()
            record.route = getattr(scope.get("route"), "path", None) or "unmatched"  # the router put it there
            record.duration = time.perf_counter() - record.started
            record.status = record.status or 499  # no answer started: the client left first
            if record.model is None and record.status < 400:  # the admin routes name their model in the path
                record.model = scope.get("path_params", {}).get("model_id")
            service = state.get("service")
            record.service = getattr(service, "name", None) or "anonymous"
            metrics.observe(record)
            _access_log(record)
            if record.method not in ("GET", "HEAD", "OPTIONS"):
                self.activity.add(record, bytes(body))


def _access_log(record: RequestRecord) -> None:
    """One line per request: what was asked and how it went, never the query string, a key or content."""
    fields = {
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "duration_ms": round(record.duration * 1000, 1),
        "service": record.service,
    }
    access_log.info("%s %s %d", record.method, record.path, record.status, extra={"fields": fields})
