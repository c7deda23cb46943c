"""Data plane: the gateway talks to the worker that holds a model. Every message carries `request_id`.

gateway -> worker: GenerateRequest, Abort
worker -> gateway: TextChunk*, then exactly one of Finished or GenerationError
"""

from __future__ import annotations

import msgspec

from protocol.codec import Message, decoder
from protocol.errors import RETRYABLE


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    content: str


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


class GenerateRequest(Message, tag="generate"):
    request_id: str
    # Exactly one of the two: chat messages (the worker applies the tokenizer's chat template) or a raw prompt.
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    sampling: SamplingParams = SamplingParams()
    # The client's X-Request-ID (or the one the gateway gave it), for the worker's log lines.
    trace_id: str | None = None
    # A stored conversation: if it does not fit the context, the oldest turns are dropped (system messages kept)
    # instead of refusing the request.
    trim_history: bool = False


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


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV state came from the prompt cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Finished(Message, tag="finished"):
    request_id: str
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"
    usage: Usage
    prompt_tps: float = 0.0
    generation_tps: float = 0.0


class GenerationError(Message, tag="error"):
    request_id: str
    code: str  # an ErrorCode value
    message: str
    retryable: bool = False


def failure(request_id: str, code: str, message: str) -> GenerationError:
    """A request's error event; whether a client may retry follows from the code."""
    return GenerationError(request_id=request_id, code=code, message=message, retryable=code in RETRYABLE)


WorkerOutbound = TextChunk | Finished | GenerationError
TERMINAL = (Finished, GenerationError)


def worker_inbound_decoder() -> msgspec.msgpack.Decoder:
    return decoder(GenerateRequest, Abort)


def worker_outbound_decoder() -> msgspec.msgpack.Decoder:
    return decoder(TextChunk, Finished, GenerationError)
