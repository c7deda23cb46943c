"""Data plane: the gateway talks to the worker that holds a model. Every message carries `request_id`.

gateway -> worker: GenerateRequest, Abort (and the requests of protocol.embedding and protocol.audio)
worker -> gateway: TextChunk*, then exactly one of Finished or GenerationError (or an encoder or speech result)
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from protocol.audio import AudioChunk, SpeechDone, SpeechRequest, TranscribeRequest, Transcript, TranscriptPart
from protocol.codec import Message, decoder
from protocol.embedding import Embeddings, EmbedRequest, RerankRequest, RerankScores
from protocol.errors import RETRYABLE, ErrorCode


class Role(StrEnum):
    """Who wrote a chat message. A StrEnum encodes as its value: the wire carries the same strings as before."""

    SYSTEM = "system"
    DEVELOPER = "developer"  # OpenAI's newer name for system; the worker treats it as one
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class FinishReason(StrEnum):
    STOP = "stop"  # an end-of-sequence token or a stop sequence
    LENGTH = "length"  # max_tokens, or the end of the context
    TOOL_CALLS = "tool_calls"  # the output ended after calling tools


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    arguments: str  # a JSON object, as text (what OpenAI sends; Anthropic's gateway route parses it)


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = []  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None  # a tool message: the tool that answered
    images: list[bytes] = []  # raw image bytes (PNG, JPEG, ...), for vision models


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str = ""
    parameters: dict = {}  # a JSON schema for the arguments object


class ToolChoice(msgspec.Struct, frozen=True, kw_only=True):
    mode: str = "auto"  # auto: the model decides; none: no call; required: at least one call
    name: str | None = None  # with required: this tool must be called


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # None: up to the end of the model's context
    stop: list[str] = []
    seed: int | None = None
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float | None = None  # None or 1.0: off
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per token, with logprobs


class SamplingDefaults(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The settings a request may leave to the server: the config's `defaults:` (global and per model) and its named
    `presets:`, and what a request set itself of them. None: not set at this level; `over` layers two levels."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    system_prompt: str | None = None  # a system message for chat requests that bring none

    def over(self, lower: SamplingDefaults) -> SamplingDefaults:
        """These settings where set, `lower`'s elsewhere."""
        mine = msgspec.structs.asdict(self)
        return SamplingDefaults(**{f: v if v is not None else getattr(lower, f) for f, v in mine.items()})


class GenerateRequest(Message, tag="generate"):
    request_id: str
    # Exactly one of the two: chat messages (the worker applies the tokenizer's chat template) or a raw prompt.
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    sampling: SamplingParams = SamplingParams()
    tools: list[ToolSpec] = []
    tool_choice: ToolChoice = ToolChoice()
    # The output must be JSON valid against this schema ({"type": "object"} for any object): enforced token by
    # token by constrained decoding.
    json_schema: dict | None = None
    count_only: bool = False  # answer Finished with the prompt's token count at once, generating nothing
    # The client's X-Request-ID (or the one the gateway gave it), for the worker's log lines.
    trace_id: str | None = None
    # A stored conversation: if it does not fit the context, the oldest turns are dropped (system messages kept)
    # instead of refusing the request.
    trim_history: bool = False
    # Extra variables for the chat template, e.g. {"enable_thinking": false} to keep a reasoning model quiet.
    chat_template_kwargs: dict = {}
    # A reasoning model thinks at most this many tokens, then its end-of-thinking marker is forced. None: no cap.
    reasoning_budget: int | None = None
    # Admission order in the worker's queue: higher first, arrival order among equals. Batch lines send -1.
    priority: int = 0


class Abort(Message, tag="abort"):
    request_id: str


class TopLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = []


class TextChunk(Message, tag="chunk"):
    request_id: str
    text: str
    completion_tokens: int  # generated so far, including this chunk
    logprobs: list[TokenLogprob] | None = None  # the tokens behind `text`, when the request asked for them
    tool_calls: list[ToolCall] = []  # calls parsed from the output; their text is not in `text`
    # A reasoning model's thinking, apart from the answer (`text`): its markers are in neither.
    reasoning: str = ""
    # On a sequence's first chunk: the prompt's length and how much of it came from the prompt cache, so a
    # dialect can report them before the end (Anthropic's message_start does).
    prompt_tokens: int = 0
    cached_tokens: int = 0


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV state came from the prompt cache
    reasoning_tokens: int = 0  # of the completion tokens, those spent thinking

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Finished(Message, tag="finished"):
    request_id: str
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the stop sequence that ended the output, if one did
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    draft_accepted_tokens: int = 0  # with speculative decoding: tokens the model took from its draft


class GenerationError(Message, tag="error"):
    request_id: str
    code: ErrorCode
    message: str
    retryable: bool = False
    param: str | None = None  # the request field at fault, when one is (the API error's `param`)


def failure(request_id: str, code: ErrorCode, message: str, param: str | None = None) -> GenerationError:
    """A request's error event; whether a client may retry follows from the code."""
    return GenerationError(request_id=request_id, code=code, message=message, retryable=code in RETRYABLE, param=param)


WorkerOutbound = (
    TextChunk
    | Finished
    | GenerationError
    | Embeddings
    | RerankScores
    | TranscriptPart
    | Transcript
    | AudioChunk
    | SpeechDone
)
TERMINAL = (Finished, GenerationError, Embeddings, RerankScores, Transcript, SpeechDone)


def worker_inbound_decoder() -> msgspec.msgpack.Decoder:
    return decoder(GenerateRequest, Abort, EmbedRequest, RerankRequest, TranscribeRequest, SpeechRequest)


def worker_outbound_decoder() -> msgspec.msgpack.Decoder:
    return decoder(
        TextChunk,
        Finished,
        GenerationError,
        Embeddings,
        RerankScores,
        TranscriptPart,
        Transcript,
        AudioChunk,
        SpeechDone,
    )
