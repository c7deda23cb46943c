"""Starting a generation on the right worker, for any API dialect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec
from starlette.requests import Request

from gateway.auth import route_model
from gateway.errors import APIError
from gateway.streaming import ClientGone, EventStreamResponse, sse, unless_disconnected
from gateway.telemetry import record_of
from gateway.worker_client import RequestStream, WorkerClient
from protocol import ErrorCode
from protocol.generation import Finished, GenerateRequest, GenerationError, TextChunk, TokenLogprob, ToolCall

_REPLACEABLE = (ErrorCode.WORKER_CRASHED, ErrorCode.SHUTTING_DOWN)
_charging: set[asyncio.Task] = set()  # token charges under way (a task must be referenced until it ends)


async def start_generation(
    request: Request, gen: GenerateRequest, model: str
) -> tuple[WorkerClient, RequestStream, TextChunk]:
    """Send `gen` to the worker serving `model` and wait for its first token.

    `model` is what the request named ("" for none): the calling service's default model stands in for none,
    and the supervisor refuses a model the service may not use (after resolving aliases) with a 403.

    Waiting for it before answering lets errors found at admission (context length, a worker that is gone)
    get their own status code instead of an error inside a 200 stream. A worker that dies before producing
    anything, or was already shutting down (evicted, or unloaded for idleness, as the request reached it), is
    replaced and the request sent once more: nothing has reached the client, so the retry is invisible.
    Raises APIError, or ClientGone if the client leaves meanwhile (the generation is aborted).
    """
    request_id = getattr(request.state, "request_id", None)
    if getattr(gen, "trace_id", "") is None and request_id:  # every dialect's request carries X-Request-ID
        gen = msgspec.structs.replace(gen, trace_id=request_id)
    client, stream, first = await _send(request, gen, model, stale_instance=None)
    if isinstance(first, GenerationError) and first.code in _REPLACEABLE:
        client, stream, first = await _send(request, gen, model, stale_instance=client.instance_id)
    if isinstance(first, GenerationError):
        raise APIError.from_event(first)
    return client, stream, first


@dataclass
class Generated:
    """A whole (non-streamed) generation."""

    model_id: str  # the model that served it
    end: Finished
    text: str
    logprobs: list[TokenLogprob]
    tool_calls: list[ToolCall]


async def generate(request: Request, gen: GenerateRequest, model: str) -> Generated:
    """Run `gen` to its end. Raises APIError, or ClientGone (the generation is aborted)."""
    client, stream, first = await start_generation(request, gen, model)
    try:
        end, text, logprobs, calls = await unless_disconnected(request, _collect(stream, first))
    finally:
        client.release(stream)  # aborts the generation in the worker unless it finished
    if isinstance(end, GenerationError):
        raise APIError.from_event(end)
    return Generated(client.model_id, end, text, logprobs, calls)


async def _collect(stream, event):
    text, entries, calls = [], [], []
    while not isinstance(event, Finished | GenerationError):
        text.append(event.text)
        entries.extend(event.logprobs or ())
        calls.extend(event.tool_calls)
        event = await stream.next()
    return event, "".join(text), entries, calls


async def _send(request: Request, gen: GenerateRequest, model: str, stale_instance: str | None):
    name, allowed = route_model(request, model)
    client = await request.app.state.workers.acquire(name, stale_instance, allowed)
    stream = await client.open(gen, request.app.state.settings.connect_timeout)
    stream.observer = _observer(request, client.model_id)
    try:
        first = await unless_disconnected(request, stream.next())
    except BaseException:
        client.release(stream)
        raise
    if isinstance(first, GenerationError):
        client.release(stream)
    return client, stream, first


def _observer(request: Request, model_id: str):
    """What every generation's events feed, whatever the API dialect: the request's telemetry record, and the
    service's tokens-per-minute window once the answer's size is known."""
    record = record_of(request)
    if record is not None:
        record.model = model_id
    service, limiter = getattr(request.state, "service", None), request.app.state.limiter

    def observe(event) -> None:
        if record is not None:
            record.observe_event(event)
        if isinstance(event, Finished):
            task = asyncio.get_running_loop().create_task(limiter.charge_tokens(service, event.usage.total_tokens))
            _charging.add(task)
            task.add_done_callback(_charging.discard)

    return observe


# Renders the SSE body of a started generation in one API dialect.
Render = Callable[[WorkerClient, RequestStream, TextChunk], AsyncIterator[bytes]]
KEEPALIVE = b": keepalive\n\n"  # an SSE comment: clients ignore it, proxies and client timeouts see traffic


def openai_error_event(exc: APIError) -> bytes:
    return sse(exc.body())


async def stream_generation(
    request: Request,
    gen: GenerateRequest,
    model: str,
    render: Render,
    error_event: Callable[[APIError], bytes] = openai_error_event,
) -> EventStreamResponse:
    """A streaming answer. If the first token comes within the keepalive interval, errors found at admission
    still get their own status code; otherwise (a model loading, or waiting for memory) the 200 event stream
    starts at once with keepalive comments until the generation starts, and an error becomes an error event.
    """
    interval = request.app.state.settings.keepalive_seconds
    starting = asyncio.ensure_future(start_generation(request, gen, model))
    done, _ = await asyncio.wait({starting}, timeout=interval)
    if done:
        client, stream, first = starting.result()
        return EventStreamResponse(render(client, stream, first), on_close=lambda: client.release(stream))
    started: list[tuple[WorkerClient, RequestStream]] = []

    async def body():
        while not (await asyncio.wait({starting}, timeout=interval))[0]:
            yield KEEPALIVE
        try:
            client, stream, first = starting.result()
        except APIError as exc:
            yield error_event(exc)
            return
        except ClientGone:
            return
        started.append((client, stream))
        async for chunk in render(client, stream, first):
            yield chunk

    def close() -> None:
        starting.cancel()  # a client gone while waiting: the load may go on, the request does not
        for client, stream in started:
            client.release(stream)

    return EventStreamResponse(body(), on_close=close)
