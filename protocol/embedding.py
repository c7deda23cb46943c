"""Data plane for encoder models: embeddings and reranking. Every message carries `request_id`.

gateway -> worker: EmbedRequest or RerankRequest
worker -> gateway: exactly one of Embeddings / RerankScores, or a GenerationError (see protocol.generation)
"""

from __future__ import annotations

from protocol.codec import Message


class EmbedRequest(Message, tag="embed"):
    request_id: str
    inputs: list[str]
    dimensions: int | None = None  # None: the model's own size; smaller only where the model was trained for it
    trace_id: str | None = None  # the client's X-Request-ID, for the worker's log lines
    priority: int = 0  # admission order in the worker's queue, as GenerateRequest's


class Embeddings(Message, tag="embeddings"):
    """One L2-normalised vector per input, in input order, as float32 little-endian rows of `dimensions`
    values: compact on the wire, and exactly the bytes OpenAI's base64 encoding carries."""

    request_id: str
    dimensions: int
    vectors: bytes
    prompt_tokens: int


class RerankRequest(Message, tag="rerank"):
    request_id: str
    query: str
    documents: list[str]
    trace_id: str | None = None  # the client's X-Request-ID, for the worker's log lines


class RerankScores(Message, tag="rerank_scores"):
    """One relevance score per document, in document order (the gateway sorts and cuts to top_n)."""

    request_id: str
    scores: list[float]
    prompt_tokens: int
    method: str  # "cross-encoder" (a classification head scores each pair) or "bi-encoder" (cosine similarity)
