"""The generation core seen from an HTTP request: the request as a Caller, and a streamed answer's lifecycle.

A dialect's handler calls `start`, `answer` or `call` (the core's methods, for this request), or `stream` with a
renderer (a Generation -> SSE bytes) and its StreamWire. `stream` owns what happens before and after the
renderer runs: if the first event comes within the keepalive interval, errors found at admission still get
their own status code; otherwise (a model loading, or waiting for memory) the 200 event stream starts at once
with the dialect's keepalive until the generation starts. An APIError after the 200 (at admission, or raised
by the events) ends the stream with the dialect's error event. However the stream ends (finished, failed, or
the client gone), the generation is released: a client that leaves aborts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request

from gateway.core.caller import Caller, ClientGone
from gateway.core.generation import Answer, Generation, GenerationCore, WorkerRequest
from gateway.errors import APIError, internal_error
from gateway.logs import request_id_var
from gateway.sampling_defaults import Asked
from gateway.sse import KEEPALIVE, EventStreamResponse
from gateway.telemetry import record_of
from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.generation import GenerateRequest

log = logging.getLogger("gateway.http")
Render = Callable[[Generation], AsyncIterator[bytes]]  # a started generation -> the SSE body, in one dialect


@dataclass(frozen=True)
class StreamWire:
    """What a dialect's stream looks like where the core writes to it itself."""

    error: Callable[[APIError], bytes]  # an error after the 200: the dialect's error event
    keepalive: bytes = KEEPALIVE  # sent every GATEWAY_KEEPALIVE_SECONDS while the model loads


def caller_of(request: Request) -> Caller:
    """The request as the core's Caller: its service, its X-Request-ID, its telemetry record as an observer, and
    its affinity (set by a dialect on `request.state`, e.g. a chat session's)."""
    record = record_of(request)
    return Caller(
        service=getattr(request.state, "service", None),
        trace_id=getattr(request.state, "request_id", None),
        observers=(record.observer,) if record is not None else (),
        gone=lambda: _disconnected(request),
        affinity=getattr(request.state, "affinity", None),
    )


def core_of(request: Request) -> GenerationCore:
    return request.app.state.core


async def start(request: Request, gen: WorkerRequest, model: str, asked: Asked | None = None) -> Generation:
    return await core_of(request).start(caller_of(request), gen, model, asked)


async def answer(request: Request, gen: GenerateRequest, model: str, asked: Asked | None = None) -> Answer:
    return await core_of(request).answer(caller_of(request), gen, model, asked)


async def call(
    request: Request, message: EmbedRequest | RerankRequest, model: str
) -> tuple[str, Embeddings | RerankScores]:
    return await core_of(request).call(caller_of(request), message, model)


async def stream(
    request: Request, gen: GenerateRequest, model: str, render: Render, wire: StreamWire, asked: Asked | None = None
):
    """A streamed answer (an EventStreamResponse); raises APIError for an error found at admission in time."""
    interval = core_of(request).settings.keepalive_seconds
    starting = asyncio.ensure_future(start(request, gen, model, asked))
    done, _ = await asyncio.wait({starting}, timeout=interval)
    if done:
        generation = starting.result()
        return EventStreamResponse(_until_error(render(generation), wire), on_close=generation.release)
    started: list[Generation] = []

    async def body():
        while not (await asyncio.wait({starting}, timeout=interval))[0]:
            yield wire.keepalive
        try:
            generation = starting.result()
        except ClientGone:
            return
        started.append(generation)
        async for chunk in render(generation):
            yield chunk

    def close() -> None:
        starting.cancel()  # a client gone while waiting: the load may go on, the request does not
        for generation in started:
            generation.release()

    return EventStreamResponse(_until_error(body(), wire), on_close=close)


async def _until_error(chunks: AsyncIterator[bytes], wire: StreamWire) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except APIError as exc:
        yield wire.error(exc)
    except Exception:  # after the 200: the stream ends with the dialect's error event, the details go to the log
        request_id = request_id_var.get()
        log.exception("unhandled error in a stream (request id %s)", request_id)
        yield wire.error(internal_error(request_id))


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
