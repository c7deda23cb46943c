"""What the OpenAI dialects share (chat completions, completions, and the Responses API next): the common request
fields and their sampling parameters, the usage dict, the fingerprint, and how a stream ends or fails on OpenAI's
wire. Not a dialect itself: it declares no routes."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from gateway.core.http import StreamWire
from gateway.errors import openai_error_body
from gateway.sse import sse
from protocol.generation import Finished, SamplingParams

SYSTEM_FINGERPRINT = "mlx-llm-server"
DONE = b"data: [DONE]\n\n"  # the last event of an OpenAI stream
# A late error is an unnamed event holding OpenAI's error body; keepalives are SSE comments.
OPENAI_WIRE = StreamWire(error=lambda exc: sse(openai_error_body(exc)))


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class OpenAIRequest(msgspec.Struct, kw_only=True):
    """The fields chat completions and completions share: the model, sampling, streaming."""

    model: str | None = None  # None: the server's default model
    temperature: Annotated[float, Meta(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    top_k: Annotated[int, Meta(ge=0)] = 0
    min_p: Annotated[float, Meta(ge=0, le=1)] = 0.0
    repetition_penalty: Annotated[float, Meta(gt=0)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1)] = 1
    user: str | None = None


def sampling(req: OpenAIRequest, max_tokens: int | None, **more) -> SamplingParams:
    """The worker's sampling parameters from the shared fields (`more`: a dialect's own, such as logprobs)."""
    return SamplingParams(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=max_tokens,
        stop=[req.stop] if isinstance(req.stop, str) else (req.stop or []),
        seed=req.seed,
        top_k=req.top_k,
        min_p=req.min_p,
        repetition_penalty=req.repetition_penalty,
        **more,
    )


def include_usage(options: StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


def usage(event: Finished) -> dict:
    u = event.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }
