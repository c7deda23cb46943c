"""What the OpenAPI document says of each handler beyond its route: the struct its body is decoded with (the same
class the handler passes to `decode_request`), its query parameters, and the media types of its answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from gateway import activity, metrics
from gateway.batches import routes as batches
from gateway.dialects import completions, embeddings, rerank
from gateway.dialects.anthropic import routes as anthropic
from gateway.dialects.anthropic.schema import CountTokensRequest, MessagesRequest
from gateway.dialects.audio import routes as audio
from gateway.dialects.audio.codec import MEDIA_TYPES
from gateway.dialects.audio.formats import FORMATS
from gateway.dialects.chat import routes as chat
from gateway.dialects.chat.schema import ChatCompletionRequest
from gateway.dialects.responses import routes as responses
from gateway.dialects.responses.schema import ResponsesRequest
from gateway.routes import admin, aliases, auth, pulls, sessions

JSON = "application/json"
SSE = "text/event-stream"
STREAMED = (JSON, SSE)  # a JSON answer, or server-sent events with "stream": true


class Page(msgspec.Struct, kw_only=True):
    """OpenAI's cursor pages (gateway/pagination.py)."""

    limit: Annotated[int, Meta(ge=1, le=100)] = 20
    after: str | None = None


class ItemsPage(Page, kw_only=True):
    order: Literal["asc", "desc"] = "desc"


class FilesQuery(msgspec.Struct, kw_only=True):
    purpose: str | None = None


class ActivityQuery(msgspec.Struct, kw_only=True):
    limit: Annotated[int, Meta(ge=1)] | None = None


# Multipart forms are read field by field (request.form()), not decoded into a struct: these describe the fields
# their handlers read. `bytes` fields are the uploaded files.
class TranscriptionForm(msgspec.Struct, kw_only=True):
    file: bytes
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: Literal[FORMATS] = "json"  # type: ignore[valid-type]
    temperature: Annotated[float, Meta(ge=0, le=1)] = 0.0
    stream: bool = False


class FileUploadForm(msgspec.Struct, kw_only=True):
    file: bytes
    purpose: Literal["batch"]


@dataclass(frozen=True)
class Operation:
    body: type[msgspec.Struct] | None = None  # the JSON body's struct
    form: type[msgspec.Struct] | None = None  # a multipart body's fields
    body_optional: bool = False  # an empty body stands for the struct's defaults
    query: type[msgspec.Struct] | None = None
    answers: tuple[str, ...] = (JSON,)  # media types of a success
    status: str = "200"  # of a success


OPERATIONS: dict[object, Operation] = {
    chat.chat_completions: Operation(body=ChatCompletionRequest, answers=STREAMED),
    completions.completions: Operation(body=completions.CompletionRequest, answers=STREAMED),
    responses.create: Operation(body=ResponsesRequest, answers=STREAMED),
    responses.input_items: Operation(query=ItemsPage),
    anthropic.messages: Operation(body=MessagesRequest, answers=STREAMED),
    anthropic.count_tokens: Operation(body=CountTokensRequest),
    embeddings.embeddings: Operation(body=embeddings.EmbeddingRequest),
    rerank.rerank: Operation(body=rerank.RerankRequest),
    audio.transcriptions: Operation(form=TranscriptionForm, answers=(JSON, "text/plain", SSE)),
    audio.translations: Operation(form=TranscriptionForm, answers=(JSON, "text/plain")),
    audio.speech: Operation(body=audio.SpeechBody, answers=tuple(dict.fromkeys(MEDIA_TYPES.values()))),
    batches.upload: Operation(form=FileUploadForm),
    batches.list_files: Operation(query=FilesQuery),
    batches.file_content: Operation(answers=("application/octet-stream",)),
    batches.create_batch: Operation(body=batches.BatchRequest),
    batches.list_batches: Operation(query=Page),
    pulls.pull_model: Operation(body=pulls.PullRequest, answers=STREAMED),
    admin.load_model: Operation(body=admin.OnHost, body_optional=True),
    admin.unload_model: Operation(body=admin.OnHost, body_optional=True),
    aliases.add_alias: Operation(body=aliases.NewAlias, status="201"),
    sessions.create_session: Operation(body=sessions.CreateSession, body_optional=True, status="201"),
    auth.issue_token: Operation(body=auth.TokenRequest, body_optional=True),
    metrics.metrics: Operation(answers=("text/plain",)),
    activity.list_activity: Operation(query=ActivityQuery),
}
