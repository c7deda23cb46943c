"""Server-sent events: the framing every dialect streams in, and the response that carries them.

`sse` frames an unnamed event (OpenAI's `data: {...}`), `sse_event` a named one whose payload repeats its name as
`type` (Anthropic's `event: message_start`, and OpenAI's Responses API). KEEPALIVE is a comment: clients ignore
it, while proxies and client timeouts see traffic.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec
from starlette.responses import StreamingResponse

KEEPALIVE = b": keepalive\n\n"


def sse(payload: dict) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def sse_event(kind: str, payload: dict) -> bytes:
    return f"event: {kind}\ndata: ".encode() + msgspec.json.encode({"type": kind} | payload) + b"\n\n"


async def prime() -> None:
    """StreamingResponse runs each stream in an anyio task group, and anyio imports that lazily, on first use: take
    the import at startup, not in the first stream's first tokens (about 90 ms of compiling where no .pyc is kept)."""
    async with anyio.create_task_group():
        pass


class EventStreamResponse(StreamingResponse):
    """An SSE response that calls `on_close` however it ends: finished, failed, or cancelled by a disconnect."""

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
