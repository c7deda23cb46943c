"""One request, one answer: sending an encoder request (embed, rerank) to the worker serving its model."""

from __future__ import annotations

from starlette.requests import Request

from gateway.generation import start_generation


async def call_worker(request: Request, message, model: str):
    """The worker's result for `message` (its one event); errors arrive as APIError with their own status.

    The same path as a generation's first token: the model is loaded if needed, a worker found gone is
    replaced once, and a client that leaves meanwhile aborts the request.
    """
    client, stream, result = await start_generation(request, message, model)
    client.release(stream)  # the result was the request's last event: this only forgets the stream
    return client.model_id, result
