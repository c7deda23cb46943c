"""OpenAI embeddings, POST /v1/embeddings (also /api/v1/embeddings), from an embedding model's worker: the request
type (a wrong type or an empty input is a 400 naming the field, before any model is loaded), the EmbedRequest
it becomes, the answer (float lists or base64) and the routes. Errors are OpenAI's shape. A request that names
no model goes to the gateway's default embedding model (EMBEDDING_DEFAULT_MODEL).
"""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Literal

import msgspec
import numpy as np
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.core import http as core
from gateway.core.caller import Caller
from gateway.dialects.bounds import TOKEN_LIMIT
from gateway.dialects.dialect import Dialect, post
from gateway.request_body import decode_request
from protocol.embedding import EmbedRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request

Text = Annotated[str, Meta(min_length=1)]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: Text | Annotated[list[Text], Meta(min_length=1, max_length=MAX_INPUTS)]
    model: str | None = None  # None: the gateway's default embedding model
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1, le=TOKEN_LIMIT)] | None = None
    user: str | None = None


def _encode(vectors: bytes, dimensions: int, encoding_format: str) -> list:
    rows = np.frombuffer(vectors, dtype="<f4").reshape(-1, dimensions)
    if encoding_format == "base64":  # what OpenAI sends: each vector's float32 little-endian bytes, base64
        return [base64.b64encode(row.tobytes()).decode() for row in rows]
    return rows.tolist()


async def embeddings(request: Request) -> JSONResponse:
    req = decode_request(await request.body(), EmbeddingRequest)
    return JSONResponse(await _embed(request.app.state, core.caller_of(request), req))


async def batch_line(state, caller: Caller, body: bytes) -> dict:
    """One line of a batch (`state`: the app's): the answer, as the handler gives it."""
    return await _embed(state, caller, decode_request(body, EmbeddingRequest))


async def _embed(state, caller: Caller, req: EmbeddingRequest) -> dict:
    inputs = [req.input] if isinstance(req.input, str) else req.input
    message = EmbedRequest(request_id=f"embd-{uuid.uuid4().hex}", inputs=inputs, dimensions=req.dimensions)
    model, result = await state.core.call(caller, message, req.model or state.settings.embedding_model)
    data = [
        {"object": "embedding", "index": i, "embedding": vector}
        for i, vector in enumerate(_encode(result.vectors, result.dimensions, req.encoding_format))
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


DIALECT = Dialect(
    name="openai-embeddings",
    routes=post("/embeddings", embeddings),
)
