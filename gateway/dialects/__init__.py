"""The API dialects the gateway speaks, one module (or small package) each, over one generation core.

A dialect holds its request schema (msgspec structs), its translation into the worker's GenerateRequest (or an
encoder message), its rendering of the answer, whole and streamed, its error shape, and its routes, declared as
a Dialect (dialect.py). Underneath, gateway/core/ runs every generation: a handler asks it for an Answer
(`core.answer`) or hands it a renderer for a stream (`core.stream`), and never talks to a worker itself.

How to add one (gateway/dialects/responses/ is the latest):
1. Write `gateway/dialects/<name>.py`, or a package `<name>/{schema,translate,render,routes}.py` once one file
   would pass ~400 lines. Decode the body with `gateway.request_body.decode_request(body, YourRequest)`;
   translate it into a `protocol.generation.GenerateRequest`; answer with
   `await core.answer(request, gen, model)` (an Answer: text, tool calls, Finished with usage) or
   `await core.stream(request, gen, model, render, wire)`, where `render(generation)` is an async generator of
   SSE bytes that iterates `async for event in generation` (TextChunks, then Finished; `generation.first` and
   `generation.model_id` are known before it starts; `gateway/sse.py` frames events) and `wire` (a
   core.http.StreamWire) says how a late error and a keepalive look on your wire: it ends the stream with the
   error when the events raise APIError, so a renderer never handles one. Reuse `openai_common` if you
   speak an OpenAI dialect. Leave the sampling fields a request may leave unset out of the GenerateRequest and
   pass what the request set of them as `asked` (a sampling_defaults.Asked; `openai_common.asked` builds one):
   the core fills the rest from the model's defaults and the request's preset, and logs the result.
2. Declare `DIALECT = Dialect(name=..., routes=[Route(...), ...])`, with `error_shape` (an APIError -> body)
   and `error_scope` if your errors are not OpenAI's: every error on those paths, the middleware's 401/413/429
   and 404s included, then takes your shape.
3. Add it to DIALECTS below. The app mounts its routes; nothing else needs editing.
Cross-cutting concerns observe the core instead of being called from a handler (gateway/core/__init__.py).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.batches import routes as batches
from gateway.dialects import anthropic, audio, chat, completions, embeddings, rerank, responses
from gateway.dialects.dialect import Dialect
from gateway.errors import register_error_shape

DIALECTS: list[Dialect] = [
    chat.DIALECT,
    completions.DIALECT,
    responses.DIALECT,
    anthropic.DIALECT,
    embeddings.DIALECT,
    rerank.DIALECT,
    audio.DIALECT,
    batches.DIALECT,  # the Files and Batch APIs: OpenAI's shapes, lines answered by the dialects above
]

for _dialect in DIALECTS:
    register_error_shape(_dialect.owns, _dialect.error_shape)


def routes() -> list[BaseRoute]:
    """Every dialect's routes, for the app."""
    return [route for dialect in DIALECTS for route in dialect.routes]
