"""POST /v1/rerank (also /api/v1/rerank): documents ordered by relevance to a query, in the
shape Cohere and Jina clients read: results of {index, relevance_score, document?}, best first.

A cross-encoder model scores each (query, document) pair with its classification head; any other embedding
model scores by the cosine similarity of the query's and each document's embeddings.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.core import http as core
from gateway.encoder_schema import DocumentIn, RerankRequest
from gateway.openai_schema import decode_request
from protocol.embedding import RerankRequest as RerankMessage


async def rerank(request: Request) -> JSONResponse:
    req = decode_request(await request.body(), RerankRequest)
    documents = [d.text if isinstance(d, DocumentIn) else d for d in req.documents]
    request_id = f"rerank-{uuid.uuid4().hex}"
    message = RerankMessage(request_id=request_id, query=req.query, documents=documents)
    model, result = await core.call(request, message, req.model or request.app.state.settings.embedding_model)
    order = sorted(range(len(documents)), key=lambda i: result.scores[i], reverse=True)[: req.top_n]
    results = []
    for i in order:
        entry = {"index": i, "relevance_score": result.scores[i]}
        if req.return_documents:
            entry["document"] = {"text": documents[i]}
        results.append(entry)
    return JSONResponse(
        {
            "id": request_id,
            "model": model,
            "results": results,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            "meta": {"billed_units": {"search_units": 1}, "scoring": result.method},
        }
    )
