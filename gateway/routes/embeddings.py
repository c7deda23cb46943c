"""POST /v1/embeddings (also /api/v1/embeddings): OpenAI embeddings from an embedding model's worker."""

from __future__ import annotations

import base64
import uuid

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.core import http as core
from gateway.encoder_schema import EmbeddingRequest
from gateway.openai_schema import decode_request
from protocol.embedding import EmbedRequest


def _encode(vectors: bytes, dimensions: int, encoding_format: str) -> list:
    rows = np.frombuffer(vectors, dtype="<f4").reshape(-1, dimensions)
    if encoding_format == "base64":  # what OpenAI sends: each vector's float32 little-endian bytes, base64
        return [base64.b64encode(row.tobytes()).decode() for row in rows]
    return rows.tolist()


async def embeddings(request: Request) -> JSONResponse:
    req = decode_request(await request.body(), EmbeddingRequest)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    message = EmbedRequest(request_id=f"embd-{uuid.uuid4().hex}", inputs=inputs, dimensions=req.dimensions)
    model, result = await core.call(request, message, req.model or request.app.state.settings.embedding_model)
    data = [
        {"object": "embedding", "index": i, "embedding": vector}
        for i, vector in enumerate(_encode(result.vectors, result.dimensions, req.encoding_format))
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": model, "usage": usage})
