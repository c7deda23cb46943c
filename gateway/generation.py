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
    state = request.app.state
    stale = None
    for attempt in range(2):
        client = await state.workers.acquire(model, stale_instance=stale)
        stream = await client.open(gen, state.settings.connect_timeout)
        try:
            first = await unless_disconnected(request, stream.next())
        except BaseException:
            client.release(stream)
            raise
        if isinstance(first, GenerationError):
            client.release(stream)
            if first.code == ErrorCode.WORKER_CRASHED and attempt == 0:
                stale = client.instance_id
                continue
            raise APIError(first.code, first.message)
        return client, stream, first
    raise AssertionError("unreachable")
