"""Rerank, POST /v1/rerank (also /api/v1/rerank): documents ordered by relevance to a query, in the
shape Cohere and Jina clients read: results of {index, relevance_score, document?}, best first.

A cross-encoder model scores each (query, document) pair with its classification head; any other embedding
model scores by the cosine similarity of the query's and each document's embeddings.

The request type, the RerankRequest it becomes, the answer and the routes; errors are OpenAI's shape.
"""

from __future__ import annotations

import uuid
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.core import http as core
from gateway.dialects.dialect import Dialect, post
from gateway.request_body import decode_request
from protocol.embedding import RerankRequest as RerankMessage

MAX_DOCUMENTS = 1000

Text = Annotated[str, Meta(min_length=1)]


class DocumentIn(msgspec.Struct):
    text: Text


class RerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    documents: Annotated[list[Text | DocumentIn], Meta(min_length=1, max_length=MAX_DOCUMENTS)]
    model: str | None = None  # None: the gateway's default embedding model scores by cosine similarity
    top_n: Annotated[int, Meta(ge=1, le=MAX_DOCUMENTS)] | None = None  # None: every document
    return_documents: bool = True


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


DIALECT = Dialect(
    name="rerank",
    routes=post("/rerank", rerank),
)
