"""Request types of the encoder endpoints: OpenAI embeddings, and rerank in the common Cohere/Jina shape.

Validated at the edge like the chat types (see gateway/openai_schema.py): a wrong type or an empty input is a
400 naming the field, before any model is loaded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_INPUTS = 2048  # OpenAI's limit on inputs per embeddings request
MAX_DOCUMENTS = 1000

Text = Annotated[str, Meta(min_length=1)]


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    input: Text | Annotated[list[Text], Meta(min_length=1, max_length=MAX_INPUTS)]
    model: str | None = None  # None: the gateway's default embedding model
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class DocumentIn(msgspec.Struct):
    text: Text


class RerankRequest(msgspec.Struct, kw_only=True):
    query: Text
    documents: Annotated[list[Text | DocumentIn], Meta(min_length=1, max_length=MAX_DOCUMENTS)]
    model: str | None = None  # None: the gateway's default embedding model scores by cosine similarity
    top_n: Annotated[int, Meta(ge=1)] | None = None  # None: every document
    return_documents: bool = True
