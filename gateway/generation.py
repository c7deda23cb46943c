"""Starting a generation on the right worker, for any API dialect."""

from __future__ import annotations

from starlette.requests import Request

from gateway.errors import APIError
from gateway.streaming import unless_disconnected
from gateway.worker_client import RequestStream, WorkerClient
from protocol import ErrorCode
from protocol.generation import GenerateRequest, GenerationError, TextChunk


async def start_generation(
    request: Request, gen: GenerateRequest, model: str
) -> tuple[WorkerClient, RequestStream, TextChunk]:
    """Send `gen` to the worker serving `model` and wait for its first token.

    Waiting for it before answering lets errors found at admission (context length, a worker that is gone)
    get their own status code instead of an error inside a 200 stream. A worker that dies before producing
    anything is replaced and the request sent once more: nothing has reached the client, so the retry is
    invisible. Raises APIError, or ClientGone if the client leaves meanwhile (the generation is aborted).
    """
    client, stream, first = await _send(request, gen, model, stale_instance=None)
    if isinstance(first, GenerationError) and first.code == ErrorCode.WORKER_CRASHED:
        client, stream, first = await _send(request, gen, model, stale_instance=client.instance_id)
    if isinstance(first, GenerationError):
        raise APIError.from_event(first)
    return client, stream, first


async def _send(request: Request, gen: GenerateRequest, model: str, stale_instance: str | None):
    client = await request.app.state.workers.acquire(model, stale_instance)
    stream = await client.open(gen, request.app.state.settings.connect_timeout)
    try:
        first = await unless_disconnected(request, stream.next())
    except BaseException:
        client.release(stream)
        raise
    if isinstance(first, GenerationError):
        client.release(stream)
    return client, stream, first
